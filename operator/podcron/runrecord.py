"""A job's run record: what is known of its past runs, and its shapes as JSON.

The engine keeps a :class:`History` per job; the operator writes it to the
ScheduledJob's status and restores it from there at start-up, and the System
API shows it under its own names. Each of those shapes is built here, from one
table of fields (:data:`RUN_FIELDS`), so that they cannot drift apart.
Pure: no I/O, nothing of Kubernetes or of the engine.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload


class RunStatus(enum.StrEnum):
    """The outcome of one run, or of one tick that did not run."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCounts:
    """Run counters; ``total`` counts runs (succeeded + failed), not skipped ticks."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What is known of a job's past runs; the operator restores it from status."""

    last_run_time: datetime | None = None
    last_status: RunStatus | None = None
    last_duration_seconds: float | None = None
    last_error: str | None = None
    counts: RunCounts = RunCounts()


# -- JSON shapes -------------------------------------------------------------


@overload
def format_time(moment: datetime) -> str: ...
@overload
def format_time(moment: None) -> None: ...
def format_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with milliseconds and ``Z``: whole seconds would blur sub-second ticks."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: object) -> datetime | None:
    """The inverse of :func:`format_time`; ``None`` for anything that is not a time."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A job's run record at one instant: its history, next run and whether a run is active."""

    history: History
    next_run_time: datetime | None
    running: bool


@dataclass(frozen=True, slots=True)
class RunField:
    """One field of the run record, by its name in status and in the System API.

    ``status_key`` is a path (``runs.total`` is ``total`` inside ``runs``);
    ``api_key`` is ``None`` for a field the System API does not show.
    """

    status_key: str
    api_key: str | None
    value: Callable[[RunRecord], object]


def _duration(record: RunRecord) -> float | None:
    duration = record.history.last_duration_seconds
    return None if duration is None else round(duration, 3)


def _last_status(record: RunRecord) -> str | None:
    status = record.history.last_status
    return None if status is None else status.value


#: Every field of the run record, in the System API's order.
RUN_FIELDS = (
    RunField("running", "running", lambda record: record.running),
    RunField("nextRunTime", "nextExecutionTime", lambda record: format_time(record.next_run_time)),
    RunField(
        "lastRunTime", "lastExecutionTime", lambda record: format_time(record.history.last_run_time)
    ),
    RunField("lastRunStatus", "lastExecutionStatus", _last_status),
    RunField("lastRunDurationSeconds", "lastDurationSeconds", _duration),
    RunField("lastError", None, lambda record: record.history.last_error),
    RunField("runs.total", "totalExecutions", lambda record: record.history.counts.total),
    RunField("runs.succeeded", "successCount", lambda record: record.history.counts.succeeded),
    RunField("runs.failed", "failureCount", lambda record: record.history.counts.failed),
    RunField("runs.skipped", "skippedCount", lambda record: record.history.counts.skipped),
)


def run_status(record: RunRecord) -> dict[str, Any]:
    """The ScheduledJob status fields that move as the job runs."""
    status: dict[str, Any] = {}
    for field in RUN_FIELDS:
        *parents, key = field.status_key.split(".")
        place = status
        for parent in parents:
            place = place.setdefault(parent, {})
        place[key] = field.value(record)
    return status


def run_metadata(record: RunRecord) -> dict[str, Any]:
    """The System API's JobMetadata fields that move as the job runs, in its order."""
    return {field.api_key: field.value(record) for field in RUN_FIELDS if field.api_key}


def history_from_status(status: Mapping[str, Any]) -> History:
    """What :func:`run_status` wrote (by an earlier operator), so counters survive restarts."""
    runs = status.get("runs") or {}

    def count(key: str) -> int:
        value = runs.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    last_status = status.get("lastRunStatus")
    duration = status.get("lastRunDurationSeconds")
    return History(
        last_run_time=parse_time(status.get("lastRunTime")),
        last_status=RunStatus(last_status) if last_status in set(RunStatus) else None,
        last_duration_seconds=float(duration) if isinstance(duration, int | float) else None,
        last_error=status.get("lastError"),
        counts=RunCounts(
            total=count("total"),
            succeeded=count("succeeded"),
            failed=count("failed"),
            skipped=count("skipped"),
        ),
    )
