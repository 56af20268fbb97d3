"""A job's run record: what is known of its past runs, and its shapes as JSON.

The engine keeps a :class:`History` per job; the operator writes it to the
ScheduledJob's status and restores it from there at start-up, and the System
API shows it under its own names. Each of those shapes is built here, from one
table of fields (:data:`RUN_FIELDS`), so that they cannot drift apart. The
same goes for a job's last runs (:class:`PastRun`, :data:`PAST_RUN_FIELDS`,
the System API's ``/runs``) and its last failures (:class:`FailedRun`,
:data:`FAILURE_FIELDS`, ``status.recentFailures``).
Pure: no I/O, nothing of Kubernetes or of the engine.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, overload

#: How many failures ``status.recentFailures`` keeps, newest first.
RECENT_FAILURES = 3
#: The longest error a past run or a recent failure keeps; the full text (up to
#: the engine's limit) is ``status.lastError`` and the run's log line.
ERROR_SUMMARY_LIMIT = 200


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

    def __add__(self, other: RunCounts) -> RunCounts:
        return RunCounts(
            total=self.total + other.total,
            succeeded=self.succeeded + other.succeeded,
            failed=self.failed + other.failed,
            skipped=self.skipped + other.skipped,
        )

    def since(self, base: RunCounts) -> RunCounts:
        """What was counted after ``base``; nothing of a counter someone lowered since."""
        return RunCounts(
            total=max(0, self.total - base.total),
            succeeded=max(0, self.succeeded - base.succeeded),
            failed=max(0, self.failed - base.failed),
            skipped=max(0, self.skipped - base.skipped),
        )

    def covers(self, other: RunCounts) -> bool:
        """Whether every counter is at least ``other``'s."""
        return (
            self.total >= other.total
            and self.succeeded >= other.succeeded
            and self.failed >= other.failed
            and self.skipped >= other.skipped
        )

    def as_status(self) -> dict[str, int]:
        """The counters as ``status.runs`` holds them."""
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedRun:
    """A failed run as status keeps it: when it started, why it ran, why it failed, its trace."""

    time: datetime
    trigger: str
    error: str | None
    # The run's exported trace (0: none).
    trace_id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What is known of a job's past runs; the operator restores it from status."""

    last_run_time: datetime | None = None
    last_status: RunStatus | None = None
    last_duration_seconds: float | None = None
    last_error: str | None = None
    counts: RunCounts = RunCounts()
    #: The last :data:`RECENT_FAILURES` failures, newest first.
    recent_failures: tuple[FailedRun, ...] = ()


class PastRun(NamedTuple):
    """One outcome in a job's run history: a run, or a tick that did not run (SKIPPED).

    A tuple, as it is made for every run: times are wall-clock seconds,
    ``started`` is ``None`` for a skipped tick, and ``error`` is a summary of at
    most :data:`ERROR_SUMMARY_LIMIT` characters (why the tick was skipped, for one).
    """

    trigger: str
    scheduled_time: datetime
    started: float | None
    ended: float
    status: RunStatus
    error: str | None
    # The run's exported trace (0: none).
    trace_id: int


def error_summary(error: str) -> str:
    """``error`` cut to :data:`ERROR_SUMMARY_LIMIT` characters, saying so where it was cut.

    Cut only after Secret values were taken out: a value cut in two would
    no longer be recognised.
    """
    if len(error) <= ERROR_SUMMARY_LIMIT:
        return error
    return error[: ERROR_SUMMARY_LIMIT - 1] + "\u2026"


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


def format_trace_id(trace_id: int) -> str | None:
    """A trace id as W3C Trace Context writes it (32 hex digits); ``None`` for 0 (none)."""
    return f"{trace_id:032x}" if trace_id else None


def _parse_trace_id(text: object) -> int:
    if not isinstance(text, str) or len(text) != 32:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class FailureField:
    """One field of a ``status.recentFailures`` item."""

    status_key: str
    value: Callable[[FailedRun], object]


#: Every field of a ``status.recentFailures`` item.
FAILURE_FIELDS = (
    FailureField("time", lambda failure: format_time(failure.time)),
    FailureField("trigger", lambda failure: failure.trigger),
    FailureField("error", lambda failure: failure.error),
    FailureField("traceId", lambda failure: format_trace_id(failure.trace_id)),
)


def _recent_failures(record: RunRecord) -> list[dict[str, object]]:
    return [
        {field.status_key: field.value(failure) for field in FAILURE_FIELDS}
        for failure in record.history.recent_failures
    ]


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
    RunField("recentFailures", None, _recent_failures),
)


#: The status fields of a job's last run (its counters apart).
LAST_RUN_KEYS = frozenset(
    field.status_key
    for field in RUN_FIELDS
    if "." not in field.status_key and field.status_key != "nextRunTime"
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


def _time_of(moment: float | None) -> str | None:
    return None if moment is None else format_time(datetime.fromtimestamp(moment, UTC))


def _duration_of(run: PastRun) -> float | None:
    return None if run.started is None else round(run.ended - run.started, 3)


@dataclass(frozen=True, slots=True)
class PastRunField:
    """One field of a past run as the System API shows it (``/_sys/job/{ns}/{name}/runs``)."""

    api_key: str
    value: Callable[[PastRun], object]


#: Every field of a past run, in the System API's order.
PAST_RUN_FIELDS = (
    PastRunField("trigger", lambda run: run.trigger),
    PastRunField("status", lambda run: run.status.value),
    PastRunField("scheduledTime", lambda run: format_time(run.scheduled_time)),
    PastRunField("startTime", lambda run: _time_of(run.started)),
    PastRunField("endTime", lambda run: _time_of(run.ended)),
    PastRunField("durationSeconds", _duration_of),
    PastRunField("error", lambda run: run.error),
    PastRunField("traceId", lambda run: format_trace_id(run.trace_id)),
)


def past_run(run: PastRun) -> dict[str, Any]:
    """The System API's PastRun object for one run, in its order."""
    return {field.api_key: field.value(run) for field in PAST_RUN_FIELDS}


def _failures_from_status(items: object) -> tuple[FailedRun, ...]:
    """What ``recentFailures`` holds, skipping any item that is not one (edited by hand)."""
    if not isinstance(items, list):
        return ()
    failures = []
    for item in items[:RECENT_FAILURES]:
        if not isinstance(item, Mapping):
            continue
        time, trigger, error = (
            parse_time(item.get("time")),
            item.get("trigger"),
            item.get("error"),
        )
        if time is None or not isinstance(trigger, str):
            continue
        failures.append(
            FailedRun(
                time=time,
                trigger=trigger,
                error=error if isinstance(error, str) else None,
                trace_id=_parse_trace_id(item.get("traceId")),
            )
        )
    return tuple(failures)


def counts_from_status(status: Mapping[str, Any]) -> RunCounts:
    """The run counters in ``status`` (0 for one missing or edited into a non-number)."""
    runs = status.get("runs")
    if not isinstance(runs, Mapping):
        return RunCounts()

    def count(key: str) -> int:
        value = runs.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return RunCounts(
        total=count("total"),
        succeeded=count("succeeded"),
        failed=count("failed"),
        skipped=count("skipped"),
    )


def history_from_status(status: Mapping[str, Any]) -> History:
    """What :func:`run_status` wrote (by an earlier operator), so counters survive restarts."""
    last_status = status.get("lastRunStatus")
    duration = status.get("lastRunDurationSeconds")
    return History(
        last_run_time=parse_time(status.get("lastRunTime")),
        last_status=RunStatus(last_status) if last_status in set(RunStatus) else None,
        last_duration_seconds=float(duration) if isinstance(duration, int | float) else None,
        last_error=status.get("lastError"),
        counts=counts_from_status(status),
        recent_failures=_failures_from_status(status.get("recentFailures")),
    )
