"""What engine tests share: an event recorder to wait on, and a JobSpec builder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from podcron.engine import Engine, JobEvent, JobSpec, RunFinished, RunStarted, RunStatus
from podcron.entrypoints import JobTarget
from podcron.schedules import parse_schedule

# Each wait below is on an event with this deadline; no test sleeps to hope.
DEADLINE = 5.0

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
