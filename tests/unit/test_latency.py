"""podcron.latency: the switch interval, heap freezing, and why freezing jobs is safe."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from podcron import latency
from podcron.context import JobContext
from podcron.engine import Engine, RunStatus
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import DEADLINE, Recorder, spec


@pytest.fixture(autouse=True)
def restored_process() -> Iterator[None]:
    """Each test leaves the interpreter as it found it: default interval, nothing frozen."""
    interval = sys.getswitchinterval()
    gc.unfreeze()
    yield
    gc.unfreeze()
    sys.setswitchinterval(interval)


def test_tune_process_shortens_the_switch_interval_and_freezes_the_heap() -> None:
    assert gc.get_freeze_count() == 0
    latency.tune_process()
    assert sys.getswitchinterval() == pytest.approx(latency.SWITCH_INTERVAL_SECONDS)
    assert gc.get_freeze_count() > 1000  # the modules loaded so far, at least


async def test_a_wave_of_registrations_is_frozen_and_a_trickle_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(latency, "FREEZE_CHECK_SECONDS", 0.0)
    jobs = [0]
    checked = asyncio.Event()

    def job_count() -> int:
        checked.set()
        return jobs[0]

    async def next_check() -> None:
        # Two checks: the one in progress may have read the count before it changed.
        for _ in range(2):
            checked.clear()
            await asyncio.wait_for(checked.wait(), DEADLINE)

    freezer = asyncio.create_task(latency.freeze_after_registrations(job_count))
    try:
        jobs[0] = latency.FREEZE_AFTER_NEW_JOBS - 1
        await next_check()
        assert gc.get_freeze_count() == 0
        jobs[0] = latency.FREEZE_AFTER_NEW_JOBS
        await next_check()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        # Jobs replaced by as many new ones count as new.
        jobs[0] = 0
        await next_check()
        gc.unfreeze()
        jobs[0] = latency.FREEZE_AFTER_NEW_JOBS
        await next_check()
        assert gc.get_freeze_count() > 0
    finally:
        freezer.cancel()


@pytest.fixture
def full_pass_due() -> Iterator[None]:
    """The collector one middle-generation pass from a full pass of its own; restored after."""
    enabled = gc.isenabled()
    gc.collect()
    for _ in range(gc.get_threshold()[2]):
        gc.collect(1)  # each counts towards the next full pass
    yield
    if enabled:
        gc.enable()


@pytest.mark.usefixtures("full_pass_due")
@pytest.mark.parametrize(
    ("quiet_for", "enabled", "now"),
    [
        (None, True, True),  # nothing to start at all
        (latency.QUIET_SECONDS, True, True),
        (latency.QUIET_SECONDS - 0.01, True, False),  # runs due too soon
        (10.0, False, False),  # a burst is being started, the collector off
    ],
)
def test_a_full_pass_is_run_early_only_when_one_is_near_and_no_run_is(
    quiet_for: float | None, enabled: bool, now: bool
) -> None:
    if not enabled:
        gc.disable()
    assert latency.full_pass_now(quiet_for) is now


def test_no_full_pass_is_run_early_while_the_collector_is_not_near_one() -> None:
    gc.collect()
    assert latency.full_pass_now(None) is False


@pytest.mark.usefixtures("full_pass_due")
async def test_the_quiet_collector_runs_the_full_pass_at_a_quiet_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(latency, "COLLECT_CHECK_SECONDS", 0.0)
    passes: list[int] = []
    full = asyncio.Event()

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            passes.append(info["generation"])
            if info["generation"] == 2:
                full.set()

    quiet = [0.0]  # runs due now: not quiet
    gc.callbacks.append(on_collection)
    collector = asyncio.create_task(latency.collect_when_quiet(lambda: quiet[0]))
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        assert 2 not in passes, "no full pass while runs are due"
        quiet[0] = 10.0
        await asyncio.wait_for(full.wait(), DEADLINE)
    finally:
        collector.cancel()
        gc.callbacks.remove(on_collection)


async def test_a_removed_jobs_objects_leave_no_cycles_behind() -> None:
    """What makes freezing jobs safe: frozen, they are still freed when removed."""
    await _run_freeze_and_remove_jobs()
    gc.unfreeze()
    # Whatever else the process holds may be cyclic garbage; none may be podcron's.
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = {type(each).__qualname__ for each in gc.garbage if _is_podcrons(each)}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == set()


async def _run_freeze_and_remove_jobs() -> None:
    """Jobs of each kind run once, are frozen with the heap, then removed."""
    engine = Engine(
        worker_threads=2, telemetry=RunTelemetry(metrics=JobMetrics(CollectorRegistry()))
    )
    outcomes = Recorder(engine)

    async def async_job(ctx: JobContext) -> None:
        ctx.log.info("async run")

    def thread_job(ctx: JobContext) -> None:
        ctx.log.info("thread run")

    async def failing_job(ctx: JobContext) -> None:
        raise ValueError("a failure's traceback is a cycle while it is alive")

    targets = {"async": async_job, "thread": thread_job, "failing": failing_job}
    for name, target in targets.items():
        engine.upsert(spec(target, name, every="1h"))
        engine.trigger(f"ns/{name}")
    await outcomes.until(lambda: len(outcomes.finished()) == len(targets))
    assert outcomes.count("failing", RunStatus.FAILURE) == 1
    await engine.shutdown()
    gc.collect()
    gc.freeze()
    for name in targets:
        engine.remove(f"ns/{name}")


def _is_podcrons(thing: object) -> bool:
    return type(thing).__module__.startswith("podcron.")
