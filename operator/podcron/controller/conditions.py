"""A ScheduledJob's conditions and failure streak, as the operator last wrote them.

Two conditions, as ``kubectl describe`` and ``kubectl wait --for=condition=…`` read them:

* ``Ready``: the spec is valid and the job is scheduled (reason ``Scheduled``) or
  suspended (``Suspended``); ``False`` with the reason the spec cannot run
  (``InvalidSchedule``, ``EntryPointNotAllowed``, …). Runs do not change it.
* ``LastRunSucceeded``: how the last run ended (``RunSucceeded``, or ``RunFailed``
  with the error as message); absent until a run has ended. Skipped ticks are not
  runs and leave it alone.

``consecutiveFailures`` counts failed runs since the last success. Status read
from the object lags behind what was last written while the status writer
coalesces, so this module keeps its own copy; a job seen for the first time in
this process (operator start) continues from its status, so a restart neither
resets the streak nor moves a condition's ``lastTransitionTime``.

Merge patches replace lists whole: every patch carries the full list of
conditions, never one alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from podcron import runrecord

READY = "Ready"
LAST_RUN_SUCCEEDED = "LastRunSucceeded"
_ORDER = (READY, LAST_RUN_SUCCEEDED)


def make_condition(
    previous: Mapping[str, Any] | None, kind: str, *, ok: bool, reason: str, message: str
) -> dict[str, Any]:
    """Condition ``kind``; as in Kubernetes' own, the transition time moves with the status only."""
    status = "True" if ok else "False"
    unchanged = previous is not None and previous.get("status") == status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            previous.get("lastTransitionTime")
            if unchanged and previous is not None
            else runrecord.format_time(datetime.now(UTC).replace(microsecond=0))
        ),
    }


def _from_status(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for condition in status.get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") in _ORDER:
            found[condition["type"]] = condition
    return found


def ready_in(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``Ready`` condition a job's status holds, if any."""
    return _from_status(status).get(READY)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class _Job:
    conditions: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    failures: int = 0


class JobConditions:
    """Per job: the conditions and ``consecutiveFailures`` last written."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}

    def seed(self, job_id: str, status: Mapping[str, Any]) -> None:
        """Continue from ``status`` for a job this process has not written yet."""
        if job_id not in self._jobs:
            self._jobs[job_id] = _Job(
                conditions=_from_status(status), failures=_count(status.get("consecutiveFailures"))
            )

    def ready(self, job_id: str) -> Mapping[str, Any] | None:
        """The job's ``Ready`` condition, if it has one."""
        job = self._jobs.get(job_id)
        return None if job is None else job.conditions.get(READY)

    def set_ready(self, job_id: str, *, ok: bool, reason: str, message: str) -> dict[str, Any]:
        """Set ``Ready``; returns the new condition."""
        job = self._jobs.setdefault(job_id, _Job())
        condition = make_condition(
            job.conditions.get(READY), READY, ok=ok, reason=reason, message=message
        )
        job.conditions[READY] = condition
        return condition

    def run_ended(self, job_id: str, *, succeeded: bool, error: str | None) -> None:
        """A run ended: update ``LastRunSucceeded`` and the failure streak."""
        job = self._jobs.setdefault(job_id, _Job())
        job.failures = 0 if succeeded else job.failures + 1
        status = "True" if succeeded else "False"
        reason = "RunSucceeded" if succeeded else "RunFailed"
        message = "the last run succeeded" if succeeded else error or ""
        previous = job.conditions.get(LAST_RUN_SUCCEEDED)
        if previous is not None and (
            previous.get("status"),
            previous.get("reason"),
            previous.get("message"),
        ) == (status, reason, message):
            return  # the same as before: kept, not rebuilt for every run
        job.conditions[LAST_RUN_SUCCEEDED] = make_condition(
            previous, LAST_RUN_SUCCEEDED, ok=succeeded, reason=reason, message=message
        )

    def status(self, job_id: str) -> dict[str, Any]:
        """The status fields this module owns: every condition, and the failure streak."""
        job = self._jobs.get(job_id) or _Job()
        return {
            "conditions": [job.conditions[kind] for kind in _ORDER if kind in job.conditions],
            "consecutiveFailures": job.failures,
        }

    def forget(self, job_id: str) -> None:
        """Drop a deleted job."""
        self._jobs.pop(job_id, None)
