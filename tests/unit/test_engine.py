"""The engine on a real asyncio loop: runs, policies, timeouts, catch-up, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from podcron.config import Settings
from podcron.context import JobContext, Trigger
from podcron.engine import (
    DISPATCH_BATCH,
    ConcurrencyPolicy,
    Engine,
    History,
    RunCounts,
    RunFinished,
    RunStatus,
)
from podcron.errors import JobAlreadyRunning, JobNotFound, TooManyManualRuns
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import DEADLINE, Recorder, engine_on_loop_clock, spec

# On a fake loop clock, but for the tests of plain def jobs (engine_support says why).
# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]


@pytest.fixture
async def engine() -> Any:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0, worker_threads=4)
    yield engine
    await engine.shutdown()


async def test_async_job_runs_on_each_tick_with_its_context(engine: Engine) -> None:
    recorder = Recorder(engine)
    contexts: list[JobContext] = []

    async def job(ctx: JobContext) -> None:
        contexts.append(ctx)

    engine.upsert(spec(job, args={"retentionDays": 7}))
    await recorder.until(lambda: len(recorder.finished()) >= 2)
    first, second = contexts[:2]
    assert first.job_id == "ns/job"
    assert (first.namespace, first.name) == ("ns", "job")
    assert first.trigger is Trigger.SCHEDULED
    assert first.args == {"retentionDays": 7}
    assert first.scheduled_time.microsecond == 0  # every 1s ticks on whole seconds
    assert second.scheduled_time - first.scheduled_time == timedelta(seconds=1)
    assert all(e.status is RunStatus.SUCCESS for e in recorder.finished())
    assert all(0 <= e.lateness_seconds < 0.5 for e in recorder.started())
    snapshot = engine.snapshot("ns/job")
    assert snapshot.history.counts.succeeded >= 2
    assert snapshot.next_run_time is not None
    assert snapshot.next_run_time > datetime.now(UTC) - timedelta(seconds=0.1)


@pytest.mark.looptime(False)
async def test_plain_def_job_runs_in_a_worker_thread(engine: Engine) -> None:
    recorder = Recorder(engine)
    threads: list[str] = []

    def job(ctx: JobContext) -> None:
        threads.append(threading.current_thread().name)

    engine.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) >= 1)
    assert threads[0].startswith("podcron-job")
    assert recorder.finished()[0].status is RunStatus.SUCCESS


@pytest.mark.looptime(False)  # the plain __call__ runs in a worker thread, on real time
async def test_a_callable_object_runs_where_its_call_method_says(engine: Engine) -> None:
    """An object whose ``__call__`` is ``async def`` runs on the loop, else in a thread."""
    recorder = Recorder(engine)
    threads: dict[str, str] = {}

    class OnTheLoop:
        async def __call__(self, ctx: JobContext) -> None:
            threads[ctx.name] = threading.current_thread().name

    class InAThread:
        def __call__(self, ctx: JobContext) -> None:
            threads[ctx.name] = threading.current_thread().name

    engine.upsert(spec(OnTheLoop(), name="loop", every="1h"))
    engine.upsert(spec(InAThread(), name="thread", every="1h"))
    engine.trigger("ns/loop")
    engine.trigger("ns/thread")
    await recorder.until(lambda: len(recorder.finished()) == 2)
    assert threads["loop"] == threading.main_thread().name
    assert threads["thread"].startswith("podcron-job")
    assert all(e.status is RunStatus.SUCCESS for e in recorder.finished())


async def test_exception_is_a_failure_with_traceback_and_others_keep_running(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(engine)

    async def broken(ctx: JobContext) -> None:
        raise ValueError("boom")

    async def healthy(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(broken, name="broken"))
    engine.upsert(spec(healthy, name="healthy"))
    with caplog.at_level(logging.ERROR):
        await recorder.until(
            lambda: (
                len(recorder.finished("ns/broken")) >= 2
                and len(recorder.finished("ns/healthy")) >= 2
            )
        )
    failure = recorder.finished("ns/broken")[0]
    assert failure.status is RunStatus.FAILURE
    assert failure.error == "ValueError: boom"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, "the failure must be logged at ERROR"
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError
    history = engine.snapshot("ns/broken").history
    assert history.last_error == "ValueError: boom"
    assert history.counts.failed >= 2
    assert history.counts.succeeded == 0
    assert all(e.status is RunStatus.SUCCESS for e in recorder.finished("ns/healthy"))


def _manual_runs(recorder: Recorder) -> list[RunFinished]:
    return [e for e in recorder.finished() if e.trigger is Trigger.MANUAL]


async def test_async_timeout_cancels_the_run(engine: Engine) -> None:
    recorder = Recorder(engine)
    cancelled = asyncio.Event()

    async def slow(ctx: JobContext) -> None:
        assert ctx.deadline is not None
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    engine.upsert(spec(slow, every="10s", timeout_seconds=0.2))
    engine.trigger("ns/job")
    # A 10 s boundary may fall inside the run; its tick is skipped (Forbid) and is not this run.
    await recorder.until(lambda: bool(_manual_runs(recorder)))
    finished = _manual_runs(recorder)[0]
    assert finished.status is RunStatus.FAILURE
    assert finished.error is not None
    assert finished.error.startswith("TimeoutError")
    assert cancelled.is_set()
    assert 0.2 <= finished.duration_seconds < 1.0


@pytest.mark.looptime(False)
async def test_thread_timeout_is_signalled_through_the_context(engine: Engine) -> None:
    recorder = Recorder(engine)
    saw_cancel = threading.Event()

    def slow(ctx: JobContext) -> None:
        deadline = time.monotonic() + 5
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled:
            saw_cancel.set()

    engine.upsert(spec(slow, every="10s", timeout_seconds=0.2))
    engine.trigger("ns/job")
    await recorder.until(lambda: bool(_manual_runs(recorder)))
    assert _manual_runs(recorder)[0].status is RunStatus.FAILURE
    assert await asyncio.to_thread(saw_cancel.wait, DEADLINE)


async def test_forbid_skips_ticks_while_running_and_refuses_manual_runs(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def long(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(long))
    with caplog.at_level(logging.INFO, logger="podcron.engine"):
        await recorder.until(
            lambda: any(e.status is RunStatus.SKIPPED for e in recorder.finished())
        )
    with pytest.raises(JobAlreadyRunning, match=r"^job 'ns/job' is already running \(") as refused:
        engine.trigger("ns/job")
    assert refused.value.job_id == "ns/job"
    assert len(recorder.started()) == 1
    tick = next(e for e in recorder.finished() if e.status is RunStatus.SKIPPED).scheduled_time
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped
    assert skipped[0].getMessage() == (
        f"job ns/job skipped its {tick.isoformat()} tick: a run is active"
        " (concurrencyPolicy Forbid)"
    )
    assert getattr(skipped[0], "job_id", None) == "ns/job", "the line names its job"
    assert skipped[0].levelno == logging.INFO
    assert engine.snapshot("ns/job").history.counts.skipped >= 1
    release.set()


async def test_allow_overlaps_runs(engine: Engine) -> None:
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def long(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(long, every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
    engine.trigger("ns/job")
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.started()) == 2)
    assert engine.running_count == 2
    release.set()
    await recorder.until(lambda: len(recorder.finished()) == 2)
    assert all(e.status is RunStatus.SUCCESS for e in recorder.finished())


async def test_replace_cancels_the_active_run_then_starts(engine: Engine) -> None:
    recorder = Recorder(engine)
    triggers: list[Trigger] = []

    async def long(ctx: JobContext) -> None:
        triggers.append(ctx.trigger)
        await asyncio.sleep(30)

    engine.upsert(spec(long, every="1h", concurrency_policy=ConcurrencyPolicy.REPLACE))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.started()) == 1)
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1 and len(recorder.started()) == 2)
    replaced = recorder.finished()[0]
    assert replaced.status is RunStatus.FAILURE
    assert replaced.error is not None
    assert replaced.error.startswith("Replaced")
    assert engine.running_count == 1


async def test_global_limit_bounds_concurrent_scheduled_runs() -> None:
    engine = engine_on_loop_clock(max_concurrent_runs=1)
    recorder = Recorder(engine)
    active, peak = 0, 0

    async def job(ctx: JobContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1

    for name in ("a", "b", "c"):
        engine.upsert(spec(job, name=name, every="1s", concurrency_policy=ConcurrencyPolicy.ALLOW))
    await recorder.until(lambda: len(recorder.finished()) >= 3)
    assert peak == 1
    await engine.shutdown()


async def test_manual_trigger_parent_trace_reaches_the_job(engine: Engine) -> None:
    recorder = Recorder(engine)
    headers: list[dict[str, str]] = []

    async def job(ctx: JobContext) -> None:
        headers.append(ctx.trace_headers())

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job", trace_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert recorder.finished()[0].trigger is Trigger.MANUAL
    assert headers[0]["traceparent"].split("-")[1] == trace_id


# A def body runs in a real thread: on the fake loop clock the wait would not wait for it.
@pytest.mark.looptime(False)
@pytest.mark.parametrize("body", ["async def", "def"])
async def test_without_tracing_only_a_callers_trace_is_current_in_a_run(
    engine: Engine, body: str
) -> None:
    """Tracing off: no span is made current, unless the run was asked for within a trace."""
    recorder = Recorder(engine)
    seen: list[tuple[str | None, str | None]] = []

    def look(ctx: JobContext) -> None:
        current = trace.get_current_span().get_span_context()
        traced = f"{current.trace_id:032x}" if current.is_valid else None
        seen.append((traced, ctx.trace_headers().get("traceparent")))

    async def async_job(ctx: JobContext) -> None:
        look(ctx)

    engine.upsert(
        spec(
            look if body == "def" else async_job,
            every="1h",
            concurrency_policy=ConcurrencyPolicy.ALLOW,
        )
    )
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    engine.trigger("ns/job", trace_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    await recorder.until(lambda: len(recorder.finished()) == 2)
    assert seen[0] == (None, None)
    assert seen[1][0] == trace_id
    assert (seen[1][1] or "").split("-")[1:2] == [trace_id]


async def test_trigger_unknown_job_raises(engine: Engine) -> None:
    with pytest.raises(JobNotFound, match="'ns/none'"):
        engine.trigger("ns/none")
    engine.remove("ns/none")  # nothing to forget: no error either


async def test_remove_stops_ticks_and_cancels_the_active_run(engine: Engine) -> None:
    recorder = Recorder(engine)

    async def long(ctx: JobContext) -> None:
        await asyncio.sleep(30)

    engine.upsert(spec(long, name="other", every="1h"))
    engine.upsert(spec(long, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.started()) == 1)
    assert [s.spec.job_id for s in engine.snapshots()] == ["ns/job", "ns/other"], "by job id"
    engine.remove("ns/job")
    assert [s.spec.job_id for s in engine.snapshots()] == ["ns/other"]
    assert engine.running_count == 0
    with pytest.raises(JobNotFound, match="'ns/job'"):
        engine.snapshot("ns/job")


async def test_zero_jobs_arm_no_timer(engine: Engine) -> None:
    assert engine.next_wakeup is None
    engine.upsert(spec(lambda ctx: None, every="1h"))
    assert engine.next_wakeup is not None
    engine.remove("ns/job")
    engine.upsert(spec(lambda ctx: None, name="other", every="1h", suspended=True))
    await asyncio.sleep(0)
    assert engine.snapshot("ns/other").next_run_time is None


async def test_update_rearms_and_keeps_history(engine: Engine) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    before = engine.snapshot("ns/job")
    after = engine.upsert(spec(job, every="1s"))
    assert after.history.counts.total == 1
    assert before.next_run_time is not None
    assert after.next_run_time is not None
    assert after.next_run_time < before.next_run_time
    await recorder.until(lambda: len(recorder.finished()) == 2)
    assert recorder.finished()[1].trigger is Trigger.SCHEDULED


async def test_more_jobs_due_at_once_than_one_dispatch_slice_all_run_on_time(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)
    count = 3 * DISPATCH_BATCH + 1

    async def job(ctx: JobContext) -> None:
        pass

    for index in range(count):
        engine.upsert(spec(job, name=f"job-{index}", every="1s"))
    await recorder.until(lambda: len({e.job_id for e in recorder.finished()}) == count)
    first_runs = {e.job_id: e for e in reversed(recorder.started())}
    assert all(e.lateness_seconds < 0.5 for e in first_runs.values())


async def test_a_job_recreated_under_the_same_id_does_not_inherit_its_timer(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, every="1s"))
    engine.remove("ns/job")
    engine.upsert(spec(job, every="1s", suspended=True))
    engine.upsert(spec(job, name="witness", every="1s"))
    # Two witness ticks: the removed job's first tick has certainly passed.
    await recorder.until(lambda: len(recorder.finished("ns/witness")) >= 2)
    assert recorder.started("ns/job") == []


async def test_history_is_restored_and_kept_as_one_object_until_a_run(engine: Engine) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    restored = History(
        last_run_time=datetime.now(UTC) - timedelta(minutes=5),
        last_status=RunStatus.FAILURE,
        last_error="ValueError: boom",
        counts=RunCounts(total=3, succeeded=2, failed=1, skipped=4),
    )
    first = engine.upsert(spec(job, every="1h"), history=restored)
    assert first.history == restored
    assert engine.snapshot("ns/job").history is first.history, "unchanged, not rebuilt"
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    after = engine.snapshot("ns/job").history
    assert after.counts == RunCounts(total=4, succeeded=3, failed=1, skipped=4)
    assert after.last_status is RunStatus.SUCCESS
    assert after.last_error == "ValueError: boom", "a success keeps the last error"
    assert after.last_run_time is not None
    assert restored.last_run_time is not None
    assert after.last_run_time > restored.last_run_time


async def test_runs_another_writer_counted_since_a_base_are_added_to_the_jobs_own(
    engine: Engine,
) -> None:
    async def job(ctx: JobContext) -> None:
        pass

    started = datetime.now(UTC) - timedelta(minutes=5)
    own = History(
        last_run_time=started,
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=5, succeeded=4, failed=1, skipped=2),
    )
    engine.upsert(spec(job, every="1h"), history=own)
    # Status held 3 runs and 1 skipped tick when this replica last wrote; 2 of its own runs
    # and 1 skipped tick are not written yet, and the other writer counted 4 runs (2 of them
    # failures) and 2 skipped ticks since: each counter keeps all of them, none twice.
    base = RunCounts(total=3, succeeded=2, failed=1, skipped=1)
    found = History(
        last_run_time=started,
        last_status=RunStatus.FAILURE,
        counts=RunCounts(total=7, succeeded=4, failed=3, skipped=3),
    )
    engine.continue_history("ns/job", found, base=base)
    history = engine.snapshot("ns/job").history
    kept = RunCounts(total=9, succeeded=6, failed=3, skipped=4)
    assert history.counts == kept
    assert history.last_status is RunStatus.SUCCESS, "its own run of that time is not written"
    # Once its own runs are written, the same start found says more than its own copy.
    engine.continue_history("ns/job", found, base=kept)
    assert engine.snapshot("ns/job").history.last_status is RunStatus.FAILURE
    # A later run found is taken; counters someone lowered take nothing away.
    later = History(
        last_run_time=started + timedelta(minutes=1),
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=1),
    )
    engine.continue_history("ns/job", later, base=kept)
    history = engine.snapshot("ns/job").history
    assert history.counts == kept
    assert (history.last_run_time, history.last_status) == (later.last_run_time, RunStatus.SUCCESS)


def _hour_ago_history() -> History:
    return History(
        last_run_time=datetime.now(UTC) - timedelta(hours=3),
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=5, succeeded=5),
    )


async def test_catch_up_runs_the_missed_tick_once_within_the_deadline(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    with caplog.at_level(logging.INFO, logger="podcron.engine"):
        snapshot = engine.upsert(
            spec(job, every="1h", starting_deadline_seconds=3600), history=_hour_ago_history()
        )
    assert snapshot.running, "the catch-up run starts at registration"
    await recorder.until(lambda: len(recorder.finished()) == 1)
    finished = recorder.finished()[0]
    assert finished.trigger is Trigger.CATCH_UP
    assert finished.scheduled_time.minute == 0
    assert finished.scheduled_time.second == 0
    assert engine.snapshot("ns/job").history.counts.total == 6, "counters continue"
    assert [r.getMessage() for r in caplog.records if "catches up" in r.getMessage()] == [
        f"job ns/job catches up on its tick of {finished.scheduled_time.isoformat()}"
    ]
    # Updated with the status it was registered with (not written yet): no second catch-up.
    engine.upsert(
        spec(job, every="1h", starting_deadline_seconds=3600), history=_hour_ago_history()
    )
    assert not engine.snapshot("ns/job").running


async def test_a_catch_up_run_is_no_manual_run() -> None:
    """It needs no room in the manual runs' budget, which a manual run here uses up."""
    engine = engine_on_loop_clock(max_manual_runs=1, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(job, name="manual", every="1h"))
    engine.trigger("ns/manual")
    engine.upsert(
        spec(job, every="1h", starting_deadline_seconds=3600), history=_hour_ago_history()
    )
    await recorder.until(lambda: len(recorder.started()) == 2)
    assert recorder.started("ns/job")[0].trigger is Trigger.CATCH_UP
    release.set()
    await engine.shutdown()


@pytest.mark.parametrize("ran", ["never", "its-last-tick"])
async def test_no_catch_up_for_a_job_that_never_ran_or_ran_its_last_tick(
    engine: Engine, ran: str
) -> None:
    async def job(ctx: JobContext) -> None:
        pass

    job_spec = spec(job, every="1h", starting_deadline_seconds=3600)
    if ran == "never":
        history = History(counts=RunCounts(skipped=3))
    else:
        # Started right on its last tick: that tick is not missed.
        history = History(
            last_run_time=job_spec.schedule.last_at_or_before(datetime.now(UTC)),
            last_status=RunStatus.SUCCESS,
            counts=RunCounts(total=1, succeeded=1),
        )
    assert not engine.upsert(job_spec, history=history).running


async def test_no_catch_up_without_deadline_or_when_too_old(engine: Engine) -> None:
    async def job(ctx: JobContext) -> None:
        pass

    without = engine.upsert(spec(job, name="a", every="1h"), history=_hour_ago_history())
    # A 2-hour tick is at least an hour old half the time; a 1 ms deadline never fits.
    too_old = engine.upsert(
        spec(job, name="b", every="2h", starting_deadline_seconds=0.001),
        history=_hour_ago_history(),
    )
    assert not without.running
    assert not too_old.running


async def test_shutdown_with_nothing_running_is_immediate() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=25)
    engine.upsert(spec(lambda ctx: None, every="1h"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await engine.shutdown()
    assert loop.time() - started < 1.0


async def test_shutdown_interrupts_runs_that_outlive_the_timeout() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=0.5)
    recorder = Recorder(engine)
    polite_done = asyncio.Event()
    release = asyncio.Event()

    async def stubborn(ctx: JobContext) -> None:
        # Swallows even task cancellation: the engine must give up on it anyway.
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def polite(ctx: JobContext) -> None:
        await ctx.cancelled
        polite_done.set()

    engine.upsert(spec(stubborn, name="stubborn", every="1h"))
    engine.upsert(spec(polite, name="polite", every="1h"))
    engine.trigger("ns/stubborn")
    engine.trigger("ns/polite")
    try:
        await recorder.until(lambda: len(recorder.started()) == 2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await engine.shutdown()
        assert loop.time() - started < 2.0
        assert polite_done.is_set()
        outcomes = {e.name: e for e in recorder.finished()}
        assert outcomes["polite"].status is RunStatus.SUCCESS
        assert outcomes["stubborn"].status is RunStatus.FAILURE
        assert outcomes["stubborn"].error is not None
        assert outcomes["stubborn"].error.startswith("Interrupted")
    finally:
        release.set()  # else a failing check leaves the stubborn task to hang the loop's close


async def test_a_jobs_own_timeout_error_is_a_plain_failure(engine: Engine) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        raise TimeoutError("upstream took too long")

    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert recorder.finished()[0].error == "TimeoutError: upstream took too long"


async def test_every_start_end_and_skipped_tick_marks_the_job_changed(engine: Engine) -> None:
    """Readers rebuild what they derive from a job's snapshot only when it was marked."""
    changed = engine.watch_changes()
    marked: list[set[str]] = []
    engine.add_listener(lambda event: marked.append(changed.take()))
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(job, every="1h"))  # Forbid
    engine.trigger("ns/job")
    # Two ticks skipped in a row: nothing but the outcome recorded moves the version.
    await recorder.until(lambda: recorder.count("job", RunStatus.SKIPPED) == 2, within=7200 + 5)
    release.set()
    await recorder.until(lambda: recorder.count("job", RunStatus.SUCCESS) == 1)
    engine.trigger("ns/job")
    await recorder.until(lambda: recorder.count("job", RunStatus.SUCCESS) == 2)
    assert len(marked) == len(recorder.events) == 6
    assert marked == [{"ns/job"}] * 6, "each event saw the job marked since the one before"
    first, second = [e.scheduled_time for e in recorder.finished() if e.status is RunStatus.SKIPPED]
    assert second - first == timedelta(hours=1), "each skipped tick keeps its own time"


async def test_each_outcome_recorded_at_shutdown_marks_its_job_changed() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    changed = engine.watch_changes()
    marked: list[set[str]] = []
    engine.add_listener(
        lambda event: marked.append(changed.take()) if isinstance(event, RunFinished) else None
    )
    release = asyncio.Event()

    async def stubborn(ctx: JobContext) -> None:
        # Ignores cancellation: shutdown records it as interrupted while it runs on.
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    for name in ("a", "b"):
        engine.upsert(spec(stubborn, name=name, every="1h"))
        engine.trigger(f"ns/{name}")
    try:
        await recorder.until(lambda: len(recorder.started()) == 2)
        await engine.shutdown()
    finally:
        release.set()  # else the runs would outlive the test's loop
    assert [(e.name, e.status) for e in recorder.finished()] == [
        ("a", RunStatus.FAILURE),
        ("b", RunStatus.FAILURE),
    ]
    assert marked[1] == {"ns/b"}, "the second outcome marked its job too"


async def test_no_job_is_registered_once_shutdown_began() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    await engine.shutdown()
    with pytest.raises(RuntimeError, match=r"^the engine is shutting down$"):
        engine.upsert(spec(lambda ctx: None, every="1h"))


async def test_each_tick_sets_the_jobs_interval_gauge_to_the_gap_to_its_next() -> None:
    registry = CollectorRegistry()
    engine = engine_on_loop_clock(
        shutdown_timeout_seconds=1.0, telemetry=RunTelemetry(metrics=JobMetrics(registry))
    )
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, every="1h"))
    await recorder.until(lambda: len(recorder.finished()) == 1, within=3600 + 5)
    intervals = [
        (sample.labels, sample.value)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "podcron_job_interval_seconds"
    ]
    assert intervals == [({"namespace": "ns", "name": "job"}, 3600.0)], "one series: the job's"
    await engine.shutdown()


async def test_a_jobs_series_are_set_from_restored_status_and_dropped_with_the_job() -> None:
    registry = CollectorRegistry()
    engine = engine_on_loop_clock(
        shutdown_timeout_seconds=1.0, telemetry=RunTelemetry(metrics=JobMetrics(registry))
    )

    async def job(ctx: JobContext) -> None:
        pass

    def value(metric: str, name: str) -> float | None:
        return registry.get_sample_value(metric, {"namespace": "ns", "name": name})

    ended = datetime(2026, 1, 1, tzinfo=UTC)
    last_runs = {
        "ok": History(
            last_run_time=ended, last_status=RunStatus.SUCCESS, last_duration_seconds=2.5
        ),
        "untimed": History(last_run_time=ended, last_status=RunStatus.SUCCESS),
        "failed": History(last_run_time=ended, last_status=RunStatus.FAILURE),
    }
    for name, history in last_runs.items():
        engine.upsert(spec(job, name, every="1h"), history=history)
    last_success = "podcron_job_last_success_timestamp_seconds"
    # When the last run ended: it started at last_run_time, and ran for its duration.
    assert value(last_success, "ok") == ended.timestamp() + 2.5
    assert value(last_success, "untimed") == ended.timestamp()
    assert value(last_success, "failed") is None, "no success known"
    assert value("podcron_job_interval_seconds", "ok") == 3600, "known before its first tick"
    engine.remove("ns/ok")
    assert value("podcron_job_interval_seconds", "ok") is None
    assert value(last_success, "ok") is None
    assert registry.get_sample_value("podcron_jobs_registered") == 2
    await engine.shutdown()


async def test_history_found_in_status_is_taken_when_it_counts_more_ticks(engine: Engine) -> None:
    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, every="1h"), history=History(counts=RunCounts(total=5, succeeded=5)))
    changed = engine.watch_changes()
    # Another replica ran the job meanwhile: its runs and skipped ticks count 7 to our 5.
    found = History(
        last_run_time=datetime.now(UTC) - timedelta(minutes=1),
        last_status=RunStatus.FAILURE,
        counts=RunCounts(total=4, succeeded=3, failed=1, skipped=3),
    )
    engine.continue_history("ns/job", found)
    assert engine.snapshot("ns/job").history.counts == found.counts
    assert engine.snapshot("ns/job").history.last_status is RunStatus.FAILURE
    assert changed.take() == {"ns/job"}, "readers of the job list see the change"
    # Status counting as many ticks, or fewer, is behind this replica's copy.
    for behind in (RunCounts(total=7, succeeded=7), RunCounts(total=6, succeeded=6)):
        engine.continue_history("ns/job", History(last_status=RunStatus.SUCCESS, counts=behind))
        assert engine.snapshot("ns/job").history.counts == found.counts
        assert engine.snapshot("ns/job").history.last_status is RunStatus.FAILURE
    changed.take()
    engine.continue_history("ns/job", found, base=found.counts)
    assert changed.take() == {"ns/job"}


async def test_a_job_suspended_after_registration_stops_ticking_until_resumed(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) == 1)
    changed = engine.watch_changes()
    suspended = engine.upsert(spec(job, suspended=True))
    assert suspended.next_run_time is None
    assert changed.take() == {"ns/job"}, "readers of the job list see it suspended"
    assert engine.next_wakeup is None, "its armed tick is gone with it"
    await asyncio.sleep(5)
    assert len(recorder.finished()) == 1
    resumed = engine.upsert(spec(job))
    assert resumed.next_run_time is not None
    await recorder.until(lambda: len(recorder.finished()) == 2)


async def test_a_job_rescheduled_to_later_moves_the_timer_with_it(engine: Engine) -> None:
    first = engine.upsert(spec(lambda ctx: None, every="1s"))
    assert first.next_run_time is not None
    assert engine.next_wakeup == first.next_run_time.timestamp()
    later = engine.upsert(spec(lambda ctx: None, every="1h"))
    assert later.next_run_time is not None
    assert engine.next_wakeup == later.next_run_time.timestamp(), "not the old, sooner time"


async def test_an_update_to_another_body_runs_the_new_one_on_the_loop(engine: Engine) -> None:
    recorder = Recorder(engine)
    ran: list[str] = []

    async def old(ctx: JobContext) -> None:
        ran.append("old")

    async def new(ctx: JobContext) -> None:
        ran.append("new")

    engine.upsert(spec(old, every="1h"))
    engine.upsert(spec(new, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert ran == ["new"]


async def test_a_job_registered_again_under_a_new_uid_runs_on(engine: Engine) -> None:
    # Deleted and created again under the same name while the operator was not watching.
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, uid="first"))
    engine.upsert(spec(job, uid="second"))
    await recorder.until(lambda: len(recorder.finished()) == 1)


async def test_an_engine_built_without_budgets_has_the_operators_defaults() -> None:
    settings = Settings()
    engine = engine_on_loop_clock()
    recorder = Recorder(engine)
    release = asyncio.Event()
    entered: list[str] = []

    async def hold(ctx: JobContext) -> None:
        entered.append(ctx.name)
        await release.wait()

    try:
        # Manual runs: the budget's worth start, one more is refused.
        for index in range(settings.max_manual_runs):
            engine.upsert(spec(hold, f"manual-{index}", every="1h"))
            engine.trigger(f"ns/manual-{index}")
        engine.upsert(spec(hold, "one-more", every="1h"))
        with pytest.raises(TooManyManualRuns):
            engine.trigger("ns/one-more")
        # Scheduled runs: as many run at once as the budget allows, one more waits.
        for index in range(settings.max_concurrent_runs + 1):
            engine.upsert(spec(hold, f"scheduled-{index}", every="1s"))

        def scheduled() -> int:
            return sum(1 for name in entered if name.startswith("scheduled-"))

        await recorder.until(lambda: scheduled() == settings.max_concurrent_runs)
        await asyncio.sleep(0.5)
        assert scheduled() == settings.max_concurrent_runs, "the one more waits"
        release.set()
        # Each job keeps its last run_history_limit outcomes.
        engine.upsert(spec(lambda ctx: None, "kept", every="1s"))
        await recorder.until(
            lambda: len(recorder.finished("ns/kept")) > settings.run_history_limit, within=60
        )
        assert len(engine.runs("ns/kept")) == settings.run_history_limit
    finally:
        release.set()
        await engine.shutdown()


@pytest.mark.looptime(False)
async def test_an_engine_built_without_budgets_runs_the_operators_threads_per_job() -> None:
    engine = Engine(loop_watchdog=False)
    release = threading.Event()

    def hold(ctx: JobContext) -> None:
        release.wait(DEADLINE)

    try:
        engine.upsert(spec(hold, every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
        for _ in range(Settings().threads_per_job):
            engine.trigger("ns/job")
        with pytest.raises(JobAlreadyRunning, match="threadsPerJob"):
            engine.trigger("ns/job")
    finally:
        release.set()
        await engine.shutdown()


async def test_an_engine_built_without_budgets_waits_the_operators_shutdown_timeout() -> None:
    engine = engine_on_loop_clock()
    recorder = Recorder(engine)
    never = asyncio.Event()

    async def deaf(ctx: JobContext) -> None:
        await never.wait()  # does not look at ctx.cancelled

    engine.upsert(spec(deaf, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: bool(recorder.started()))
    loop = asyncio.get_running_loop()
    began = loop.time()
    await engine.shutdown()
    # On the fake loop clock: how long shutdown waited before it cancelled the run.
    assert loop.time() - began == pytest.approx(Settings().shutdown_timeout_seconds, abs=0.1)
    assert recorder.finished()[0].status is RunStatus.FAILURE
