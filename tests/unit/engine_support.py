"""What engine tests share: an event recorder to wait on, a JobSpec builder, a loop-driven clock.

Tests marked ``looptime`` run on a fake loop clock (the ``looptime`` plugin):
whenever the loop would sleep, its time jumps to the next timer, so a job due
every second runs every simulated second and the test waits no real time.
Their engine reads the wall clock from the loop (:class:`LoopClock`), so the
two clocks move together. The loop cannot know when a worker thread will be
done, so tests of plain ``def`` jobs run on real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from podcron.engine import Engine, JobEvent, JobSpec, RunFinished, RunStarted, RunStatus
from podcron.entrypoints import JobTarget
from podcron.schedules import parse_schedule
from podcron.telemetry import span_export
from podcron.telemetry.run_telemetry import RunTelemetry

# Each wait below is on an event with this deadline; no test sleeps to hope.
DEADLINE = 5.0


class LoopClock:
    """A wall clock that advances with the running loop's clock, from the real time at its start.

    On a fake loop clock it is a fake wall clock; on a real loop, the real one
    (as far as the loop's monotonic clock keeps with it).
    """

    def __init__(self) -> None:
        self._offset: float | None = None

    def wall(self) -> float:
        now = asyncio.get_running_loop().time()
        if self._offset is None:
            self._offset = time.time() - now
        return now + self._offset

    def step(self, seconds: float) -> None:
        """Move the wall clock on by ``seconds``: to a timer, as if the loop had stood still."""
        self.wall()
        assert self._offset is not None
        self._offset += seconds


def engine_on_loop_clock(clock: LoopClock | None = None, **options: Any) -> Engine:
    """An engine whose wall clock is the loop's (see :class:`LoopClock`), without the watchdog.

    The watchdog's thread compares the loop's heartbeat with real time, which
    a fake loop clock leaves behind.
    """
    return Engine(clock=clock or LoopClock(), loop_watchdog=False, **options)


E = TypeVar("E", bound=JobEvent)


class Recorder:
    """Collects engine events and lets a test wait for the ones it expects."""

    def __init__(self, engine: Engine) -> None:
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()
        engine.add_listener(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def finished(self, job_id: str | None = None) -> list[RunFinished]:
        return [
            e
            for e in self.events
            if isinstance(e, RunFinished) and (job_id is None or e.job_id == job_id)
        ]

    def started(self, job_id: str | None = None) -> list[RunStarted]:
        return [
            e
            for e in self.events
            if isinstance(e, RunStarted) and (job_id is None or e.job_id == job_id)
        ]

    def of(self, kind: type[E], job_id: str | None = None) -> list[E]:
        """The events of one kind (ThreadAbandoned, ThreadReturned, ...)."""
        return [
            e for e in self.events if isinstance(e, kind) and (job_id is None or e.job_id == job_id)
        ]

    def count(self, name: str, status: RunStatus) -> int:
        return sum(1 for e in self.finished() if e.name == name and e.status is status)

    async def until(self, condition: Callable[[], bool], within: float = DEADLINE) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def spec(
    target: JobTarget,
    name: str = "job",
    *,
    every: str = "1s",
    schedule: dict[str, Any] | None = None,
    **fields: Any,
) -> JobSpec:
    return JobSpec(
        job_id=f"ns/{name}",
        namespace="ns",
        name=name,
        entry_point=f"tests:{name}",
        target=target,
        schedule=parse_schedule(schedule or {"every": every}),
        **fields,
    )


def spans_in_memory() -> tuple[InMemorySpanExporter, span_export.Pipeline]:
    """A span pipeline that keeps every span it exports, for a test to read back.

    Spans go out as each ends (no batching); shut ``pipeline.provider`` down after.
    """
    exported = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exported)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return exported, span_export.Pipeline.of(provider, processor)


def counted(registry: CollectorRegistry, name: str) -> float:
    """The counter ``name`` on ``registry``, summed over its series (one per job)."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == name
    )


class SpansMade(RunTelemetry):
    """Telemetry that notes, for each span made, the wall clock (the loop's) it was made at."""

    __slots__ = ("_clock", "made")

    def __init__(self, clock: LoopClock, spans: span_export.Pipeline) -> None:
        super().__init__(spans=spans)
        self._clock = clock
        # Per span: when it was made (the engine's wall clock, and real time in ns, which
        # the span's own times are in), the tick it is for, its span id.
        self.made: list[tuple[float, int, datetime, int]] = []

    def start_span(self, **fields: Any) -> trace.Span:
        span = super().start_span(**fields)
        made = (self._clock.wall(), time.time_ns(), fields["scheduled_time"])
        self.made.append((*made, span.get_span_context().span_id))
        return span

    def shutdown(self) -> None:
        assert self.spans is not None
        self.spans.provider.shutdown()

    def ahead(self, due: datetime, by_more_than: float = 0.0) -> dict[int, int]:
        """The spans for ``due`` made more than ``by_more_than`` seconds before it was due:
        span id, made at (real ns)."""
        return {
            span_id: ns
            for at, ns, scheduled, span_id in self.made
            if scheduled == due and at < due.timestamp() - by_more_than
        }
