"""A registered job between runs: its spec, its history, its active runs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from podcron.engine.runs import ActiveRun
from podcron.engine.spec import ConcurrencyPolicy, JobSpec
from podcron.entrypoints import JobTarget
from podcron.runrecord import History


def is_async(target: JobTarget) -> bool:
    """Whether the job's body is a coroutine function (else it runs in a thread)."""
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


@dataclass(slots=True, eq=False)
class JobState:
    """A registered job: its spec, its history, its next due time and its active runs."""

    spec: JobSpec
    is_async: bool
    # Replaced, not changed, by each run: a snapshot handed out keeps its own.
    history: History
    # The wall-clock time of its next tick, None when it has none.
    next_due: float | None = None
    active: dict[int, ActiveRun] = field(default_factory=dict)
    removed: bool = False


def why_busy(job: JobState, *, manual: bool, threads_per_job: int) -> str | None:
    """Why a job with active runs may not start another now, or None when it may."""
    policy = job.spec.concurrency_policy
    if policy is ConcurrencyPolicy.FORBID:
        return "concurrencyPolicy Forbid"
    if policy is ConcurrencyPolicy.REPLACE:
        if any(run.cancel_reason is not None for run in job.active.values()):
            return "the run it would replace has not stopped yet (concurrencyPolicy Replace)"
        return None
    if not job.is_async and len(job.active) >= threads_per_job:
        return f"its {len(job.active)} runs hold the threads one job may use (threadsPerJob)"
    # One queued tick per job is enough: more would pile up without bound
    # while the run slots are all taken. (Manual runs have their own budget.)
    if not manual and any(run.started is None for run in job.active.values()):
        return "a run of it still waits for a run slot (concurrencyPolicy Allow)"
    return None
