"""Plain ``def`` jobs whose threads outlive their runs: the job stays running, others go on.

Each test's hung bodies wait on a ``threading.Event`` that the test sets at
the end, so no thread outlives the test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from podcron.config import Settings
from podcron.context import JobContext
from podcron.engine import (
    ABANDON_AFTER_SECONDS,
    ConcurrencyPolicy,
    Engine,
    RunStatus,
    ThreadAbandoned,
    ThreadReturned,
)
from podcron.entrypoints import JobTarget
from podcron.errors import JobAlreadyRunning
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import DEADLINE, E, Recorder, engine_on_loop_clock, spec

# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = pytest.mark.asyncio_debug

# How long a hung body waits at most: far beyond any test, yet finite.
HUNG_FOR = 60.0


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of each test: every hung body returns."""
    event = threading.Event()
    yield event
    event.set()


def hung_job(
    release: threading.Event,
    calls: list[str] | None = None,
    returned: list[str] | None = None,
) -> JobTarget:
    def hung(ctx: JobContext) -> None:
        if calls is not None:
            calls.append(ctx.job_id)
        release.wait(HUNG_FOR)  # ignores ctx.cancelled, as a stuck call would
        if returned is not None:
            returned.append(ctx.job_id)

    return hung


async def test_a_timed_out_thread_keeps_its_job_running_until_it_returns(
    release: threading.Event,
) -> None:
    registry = CollectorRegistry()
    engine = Engine(
        worker_threads=2,
        shutdown_timeout_seconds=1.0,
        telemetry=RunTelemetry(metrics=JobMetrics(registry)),
    )
    recorder = Recorder(engine)
    calls: list[str] = []
    running_when_returned: list[bool] = []

    def on_event(event: object) -> None:
        if isinstance(event, ThreadReturned):
            running_when_returned.append(engine.snapshot("ns/job").running)

    engine.add_listener(on_event)
    engine.upsert(spec(hung_job(release, calls), every="1s", timeout_seconds=0.2))
    await recorder.until(lambda: recorder.count("job", RunStatus.FAILURE) == 1)
    timed_out = recorder.finished()[-1]
    assert (timed_out.error or "").startswith("TimeoutError: run exceeded 0.2s")
    # The outcome is recorded at the deadline; the job is still running.
    assert engine.snapshot("ns/job").running
    with pytest.raises(JobAlreadyRunning, match="Forbid"):
        engine.trigger("ns/job")
    await recorder.until(lambda: recorder.count("job", RunStatus.SKIPPED) >= 1)
    (abandoned,) = await _until_one(recorder, ThreadAbandoned)
    assert abandoned.abandoned_threads == 1
    assert abandoned.error == timed_out.error
    assert engine.abandoned_threads == 1
    assert registry.get_sample_value("podcron_job_threads_abandoned") == 1
    assert calls == ["ns/job"], "one body ran: Forbid held while its thread ran"
    release.set()
    await _until_one(recorder, ThreadReturned)
    assert running_when_returned == [False]
    assert engine.abandoned_threads == 0
    assert registry.get_sample_value("podcron_job_threads_abandoned") == 0
    history = engine.snapshot("ns/job").history
    assert history.counts.failed == 1
    assert history.counts.total == history.counts.succeeded + history.counts.failed
    await engine.shutdown()


async def test_hung_def_jobs_do_not_starve_other_def_jobs_nor_hold_up_shutdown(
    release: threading.Event,
) -> None:
    # One worker thread: without replacements, the first hung job would hold it for good.
    engine = Engine(worker_threads=1, shutdown_timeout_seconds=3600)
    recorder = Recorder(engine)
    returned: list[str] = []

    def quick(ctx: JobContext) -> None:
        pass

    engine.upsert(
        spec(hung_job(release, returned=returned), name="hung", every="1s", timeout_seconds=0.2)
    )
    await recorder.until(lambda: recorder.count("hung", RunStatus.FAILURE) >= 1)
    engine.upsert(spec(quick, name="quick", every="1s"))  # no timeout: it must run, not hang
    await recorder.until(lambda: recorder.count("quick", RunStatus.SUCCESS) >= 2)
    assert recorder.count("hung", RunStatus.FAILURE) == 1
    assert recorder.count("quick", RunStatus.FAILURE) == 0
    # Nothing is left to wait for but a thread whose run ended: shutdown does not wait
    # for it (with a 3600 s shutdown timeout, waiting would outlast this deadline).
    async with asyncio.timeout(DEADLINE):
        await engine.shutdown()
    # A shutdown that waited in a blocking call would outlast the deadline unseen (the loop
    # cannot time out while blocked): what tells is that the hung body has not returned.
    assert returned == [], "shutdown returned while the hung thread still ran"


async def test_allow_caps_the_threads_of_one_def_job(release: threading.Event) -> None:
    engine = Engine(worker_threads=4, threads_per_job=2, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    calls: list[str] = []
    engine.upsert(
        spec(hung_job(release, calls), every="1s", concurrency_policy=ConcurrencyPolicy.ALLOW)
    )
    await recorder.until(lambda: recorder.count("job", RunStatus.SKIPPED) >= 1)
    assert len(calls) == 2
    with pytest.raises(JobAlreadyRunning, match="threadsPerJob"):
        engine.trigger("ns/job")
    release.set()
    await engine.shutdown()


async def test_replace_waits_for_the_replaced_thread_and_refuses_meanwhile(
    release: threading.Event,
) -> None:
    engine = Engine(worker_threads=4, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    lock = threading.Lock()
    bodies, peak = 0, 0

    def job(ctx: JobContext) -> None:
        nonlocal bodies, peak
        with lock:
            bodies += 1
            peak = max(peak, bodies)
        release.wait(HUNG_FOR)
        with lock:
            bodies -= 1

    engine.upsert(spec(job, every="1h", concurrency_policy=ConcurrencyPolicy.REPLACE))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.started()) == 1)
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert (recorder.finished()[0].error or "").startswith("Replaced")
    # The replacement waits for the replaced body; until it returns, no third run.
    with pytest.raises(JobAlreadyRunning, match="has not stopped yet"):
        engine.trigger("ns/job")
    assert len(recorder.started()) == 1
    release.set()
    await recorder.until(lambda: len(recorder.finished()) == 2)
    assert recorder.finished()[1].status is RunStatus.SUCCESS
    assert len(recorder.started()) == 2
    assert peak == 1, "Replace never ran two bodies at once"
    await engine.shutdown()


async def test_a_thread_that_returns_soon_after_cancellation_is_not_abandoned() -> None:
    engine = Engine(worker_threads=2, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)

    def polite(ctx: JobContext) -> None:
        while not ctx.cancelled:
            threading.Event().wait(0.01)

    engine.upsert(spec(polite, every="1h", timeout_seconds=0.2))
    engine.trigger("ns/job")
    await recorder.until(lambda: bool(recorder.finished()) and not _active(engine))
    assert recorder.of(ThreadAbandoned) == []
    assert engine.abandoned_threads == 0
    assert [e.status for e in recorder.finished()] == [RunStatus.FAILURE]
    await engine.shutdown()


def _active(engine: Engine) -> bool:
    return engine.snapshot("ns/job").running


async def _until_one(recorder: Recorder, kind: type[E]) -> list[E]:
    await recorder.until(lambda: len(recorder.of(kind)) >= 1)
    return recorder.of(kind)


async def test_one_thread_per_job_is_the_least_an_engine_takes() -> None:
    with pytest.raises(ValueError, match=r"^threads_per_job must be at least 1, got 0$"):
        Engine(threads_per_job=0)
    engine = Engine(threads_per_job=1, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)

    def quick(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(quick, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: recorder.count("job", RunStatus.SUCCESS) == 1)
    await engine.shutdown()


@pytest.mark.looptime
async def test_a_thread_that_outlives_shutdown_is_not_abandoned(release: threading.Event) -> None:
    """Shutdown leaves its threads to whoever owns the process: none counts as abandoned."""
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    engine.upsert(spec(hung_job(release), every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.started()) == 1)
    await engine.shutdown()
    assert [e.status for e in recorder.finished()] == [RunStatus.FAILURE]
    # On the fake loop clock (no real time passes), well past the time after which a
    # thread that outlives its run's outcome counts as abandoned.
    with pytest.raises(TimeoutError):
        await recorder.until(
            lambda: bool(recorder.of(ThreadAbandoned)), within=10 * ABANDON_AFTER_SECONDS
        )
    assert engine.abandoned_threads == 0


async def test_an_engine_built_without_budgets_takes_the_operators_defaults() -> None:
    # Library users (and podcron.testing) build engines without the operator's settings:
    # they get the thread pool the documented defaults size.
    engine = Engine(shutdown_timeout_seconds=1.0)
    defaults = Settings()
    threads = 2 * defaults.worker_threads + defaults.max_manual_runs
    assert engine._budgets.pool._max_workers == threads
    await engine.shutdown()
