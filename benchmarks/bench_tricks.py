"""What each speed trick of the engine saves against the plain way (docs/performance.md).

Run with ``.venv/bin/python benchmarks/bench_tricks.py`` (needs valgrind): CPU
instructions per operation, counted by valgrind's callgrind in a child process
that does the operation ``OPS`` times, minus a child that does everything but
the operation, with the trick and the plain way. A count, so a loaded machine
does not move it (it only makes the run slower). Prints one table and a
``RESULT tricks ...`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

from opentelemetry.sdk.trace import SpanProcessor

from harness import callgrind_instructions

OPS = 5_000
SCHEDULED = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


# -- instructions per operation ----------------------------------------------------


def _timeout_guard(variant: str) -> Callable[[], None]:
    async def loop() -> None:
        for _ in range(OPS):
            if variant == "plain":
                async with asyncio.timeout(None):  # noqa: ASYNC100 - its cost is the point
                    pass
            # The trick: a run without a timeout calls its body with no context manager.

    return lambda: asyncio.run(loop())


def _run_timeout(variant: str) -> Callable[[], None]:
    from podcron.engine.runs import deadline_of
    from podcron.engine.timeouts import RunTimeout

    started = SCHEDULED.timestamp()

    async def loop() -> None:
        for _ in range(OPS):
            if variant == "trick":
                deadline_of(started, 30.0)
                RunTimeout(30.0).end(None)
            elif variant == "plain":
                datetime.fromtimestamp(started, UTC) + timedelta(seconds=30.0)
                async with asyncio.timeout(30.0):  # noqa: ASYNC100 - its cost is the point
                    pass

    return lambda: asyncio.run(loop())


def _job_context(variant: str) -> Callable[[], None]:
    import dataclasses
    import logging

    from podcron.context import Cancellation, JobContext, Trigger

    # The same fields as a frozen dataclass, what JobContext was.
    frozen = dataclasses.make_dataclass(
        "FrozenJobContext",
        [(name, object) for name in JobContext._fields],
        frozen=True,
        slots=True,
        kw_only=True,
    )
    kind = {"trick": JobContext, "plain": frozen}.get(variant)
    log = logging.LoggerAdapter(logging.getLogger("podcron.job"))
    cancelled = Cancellation()

    def loop() -> None:
        for _ in range(OPS):
            if kind is not None:
                kind(
                    job_id="shop/report",
                    namespace="shop",
                    name="report",
                    trigger=Trigger.SCHEDULED,
                    scheduled_time=SCHEDULED,
                    args={},
                    log=log,
                    deadline=None,
                    cancelled=cancelled,
                    trace_context=None,
                    resources=None,
                    config=None,
                )

    return loop


def _run_slot(variant: str) -> Callable[[], None]:
    from podcron.engine.budgets import Slots

    async def loop() -> None:
        ours = Slots(1)
        semaphore = asyncio.Semaphore(1)
        for _ in range(OPS):
            if variant == "trick":
                ours.try_take()
                ours.give()
            elif variant == "plain":
                await semaphore.acquire()
                semaphore.release()

    return lambda: asyncio.run(loop())


class _NoExport(SpanProcessor):
    """A span processor that drops every span: what is measured is opening and ending."""


def _run_span(variant: str) -> Callable[[], None]:
    from opentelemetry.sdk.trace import TracerProvider

    from podcron.telemetry.run_telemetry import RunTelemetry
    from podcron.telemetry.span_export import TRACER_NAME, VERSION, Pipeline

    provider = TracerProvider()
    processor = _NoExport()
    provider.add_span_processor(processor)
    telemetry = RunTelemetry(spans=Pipeline.of(provider, processor))
    tracer = provider.get_tracer(TRACER_NAME, VERSION)

    def loop() -> None:
        for _ in range(OPS):
            if variant == "trick":
                with telemetry.start_span(
                    job_id="shop/report",
                    trigger="scheduled",
                    entry_point="shop.jobs:report",
                    scheduled_time=SCHEDULED,
                    parent=None,
                ):
                    pass
            elif variant == "plain":
                with tracer.start_span(
                    "podcron.job.run",
                    attributes={
                        "podcron.job.id": "shop/report",
                        "podcron.job.trigger": "scheduled",
                        "podcron.job.entry_point": "shop.jobs:report",
                        "podcron.job.scheduled_time": "2026-11-27T05:00:00.000Z",
                    },
                ):
                    pass

    return loop


def _resource_hash(variant: str) -> Callable[[], None]:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    from podcron.telemetry.span_export import HashedOnceResource

    # What the pipeline builds, as the exporter hashes it once per span it encodes.
    plain = Resource.create({"service.name": "podcron", "service.version": "1"}).merge(
        OTELResourceDetector().detect()
    )
    ours = HashedOnceResource(plain)

    def loop() -> None:
        for _ in range(OPS):
            if variant == "trick":
                hash(ours)
            elif variant == "plain":
                hash(plain)

    return loop


def _metrics(variant: str) -> Callable[[], None]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from podcron.telemetry.metrics import DURATION_BUCKETS, LATENESS_BUCKETS, JobMetrics

    registry = CollectorRegistry()
    ours = JobMetrics(registry)
    ours.job_added("shop", "report")
    labels = ("namespace", "name")
    runs = Counter("runs", "", [*labels, "trigger", "status"], registry=registry)
    duration = Histogram("duration", "", labels, buckets=DURATION_BUCKETS, registry=registry)
    success = Gauge("success", "", labels, registry=registry)
    lateness = Histogram("lateness", "", buckets=LATENESS_BUCKETS, registry=registry)
    running = Gauge("running", "", registry=registry)
    queued = Gauge("queued", "", registry=registry)

    def loop() -> None:
        # One run's updates: queued, started (lateness), ended, recorded.
        for _ in range(OPS):
            if variant == "trick":
                ours.run_queued()
                ours.run_started("scheduled", 0.002)
                ours.run_ended()
                ours.run_recorded(
                    "shop",
                    "report",
                    trigger="scheduled",
                    status="success",
                    duration_seconds=0.01,
                    ended_at=1e9,
                )
            elif variant == "plain":
                queued.inc()
                queued.dec()
                running.inc()
                lateness.observe(0.002)
                running.dec()
                runs.labels("shop", "report", "scheduled", "success").inc()
                duration.labels("shop", "report").observe(0.01)
                success.labels("shop", "report").set(1e9)

    return loop


def _next_tick(variant: str) -> Callable[[], None]:
    from podcron.schedules import Every

    every = Every(interval=timedelta(milliseconds=7_333))
    now = SCHEDULED.timestamp() + 0.123

    def loop() -> None:
        # What the engine does to arm an every job's next tick, as a due time in seconds.
        for _ in range(OPS):
            if variant == "trick":
                every.next_timestamp_after(now)
            elif variant == "plain":
                following = every.next_after(datetime.fromtimestamp(now, UTC))
                if following is not None:
                    following.timestamp()

    return loop


SCRAPED_JOBS = 1_000  # OPS job renders: five scrapes of a thousand jobs


def _scrape(variant: str) -> Callable[[], None]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from podcron.telemetry.metrics import DURATION_BUCKETS, JobMetrics

    # Every per-job series, each job with one run: written as text, or by prometheus-client
    # from its labelled metrics (what the trick's collector used to hand it costs the same).
    ours = JobMetrics(None)
    registry = CollectorRegistry()
    labels = ("namespace", "name")
    runs = Counter("podcron_job_runs", "", [*labels, "trigger", "status"], registry=registry)
    duration = Histogram("d", "", labels, buckets=DURATION_BUCKETS, registry=registry)
    gauges = [Gauge(f"g{index}", "", labels, registry=registry) for index in range(3)]
    counters = [Counter(f"c{index}", "", labels, registry=registry) for index in range(2)]
    for index in range(SCRAPED_JOBS):
        job = ("bench", f"job-{index:05d}")
        ours.job_added(*job)
        ours.job_interval(*job, 30.0)
        ours.run_recorded(
            *job, trigger="scheduled", status="success", duration_seconds=0.01, ended_at=1e9
        )
        for status in ("success", "failure", "skipped"):
            runs.labels(*job, "scheduled", status).inc(status == "success")
        duration.labels(*job).observe(0.01)
        for metric in (*gauges, *counters):
            metric.labels(*job)

    def loop() -> None:
        for _ in range(OPS // SCRAPED_JOBS):
            if variant == "trick":
                ours.exposition(False).encode()
            elif variant == "plain":
                generate_latest(registry)

    return loop


RUN_EVENTS_PER_PATCH = 10  # 1,000 one-second jobs: 2,000 run events/s, 100 patches/s at most


def _status_fields(variant: str) -> Callable[[], None]:
    from functools import partial

    from bench_telemetry import BATCH, ManualRuns
    from podcron import runrecord
    from podcron.controller.conditions import JobConditions
    from podcron.controller.status import StatusWriter

    async def loop() -> None:
        runs = ManualRuns()
        await runs.run(BATCH)  # a job that has run: its status has every field
        engine, job_id = runs.engine, ManualRuns.JOB_ID
        conditions = JobConditions()
        writer = StatusWriter(lambda namespace, name, status, resource_version=None: None)

        def fields() -> dict[str, object]:
            snapshot = engine.snapshot(job_id)
            return runrecord.run_status(snapshot.record) | conditions.status(job_id)

        # OPS run events, then the patches a writer at its ceiling sends for them.
        for _ in range(OPS // RUN_EVENTS_PER_PATCH):
            for _ in range(RUN_EVENTS_PER_PATCH):
                if variant == "trick":
                    writer.update_when_sent("bench", "noop", partial(fields))
                elif variant == "plain":
                    writer.update("bench", "noop", fields())
            writer._take(("bench", "noop"))
        writer.close()

    return lambda: asyncio.run(loop())


OPERATIONS: dict[str, Callable[[str], Callable[[], None]]] = {
    "run span (open and end)": _run_span,
    "the resource's hash, per exported span": _resource_hash,
    "timeout guard of a run without timeout": _timeout_guard,
    "deadline and timeout guard of a run with timeoutSeconds": _run_timeout,
    "a run's JobContext": _job_context,
    "a free run slot, taken and given back": _run_slot,
    "metric updates of one run": _metrics,
    "status of one run event (a patch per 10)": _status_fields,
    "next tick of an every job, in seconds": _next_tick,
    "one job's series in a scrape (1,000 jobs)": _scrape,
}


def _instructions(operation: str, variant: str) -> int:
    """Instructions callgrind counts for a child doing ``operation`` as ``variant``."""
    return callgrind_instructions(
        [sys.executable, __file__, "instructions-child", operation, variant]
    )


# -- the parent --------------------------------------------------------------------


def _rows() -> Iterator[tuple[str, str, str]]:
    for operation in OPERATIONS:
        print(f"  counting instructions: {operation} ...", file=sys.stderr, flush=True)
        base = _instructions(operation, "none")
        trick = (_instructions(operation, "trick") - base) / OPS
        plain = (_instructions(operation, "plain") - base) / OPS
        yield operation, f"{trick:,.0f} instr", f"{plain:,.0f} instr"


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["instructions-child"]:
        operation, variant = argv[1], argv[2]
        OPERATIONS[operation](variant)()
        return
    rows = list(_rows())
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'with the trick':>22}  {'without':>22}")
    for name, trick, plain in rows:
        print(f"{name:{width}}  {trick:>22}  {plain:>22}")
    load = os.getloadavg()[0]
    print(f"(load {load:.1f}; instruction counts do not depend on it)")
    print(
        "RESULT tricks " + " | ".join(f"{name}: {trick} vs {plain}" for name, trick, plain in rows)
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
