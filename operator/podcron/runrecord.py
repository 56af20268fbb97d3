"""A job's run record: what is known of its past runs, and its shapes as JSON.

The engine keeps a :class:`History` per job; the operator writes it to the
ScheduledJob's status and restores it from there at start-up, and the System
API shows it under its own names. Each of those shapes is built here, from one
table of fields (:data:`RUN_FIELDS`), so that they cannot drift apart.
Pure: no I/O, nothing of Kubernetes or of the engine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


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
