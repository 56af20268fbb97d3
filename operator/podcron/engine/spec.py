"""A job as the engine is given it (:class:`JobSpec`) and shows it (:class:`JobSnapshot`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from podcron.entrypoints import JobTarget
from podcron.runrecord import History, RunRecord
from podcron.schedules import Schedule


class ConcurrencyPolicy(enum.StrEnum):
    """What a tick does while a run of the same job is active."""

    FORBID = "Forbid"
    ALLOW = "Allow"
    REPLACE = "Replace"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One job as the engine needs it: already validated and resolved."""

    job_id: str
    namespace: str
    name: str
    entry_point: str
    target: JobTarget
    schedule: Schedule
    args: Mapping[str, Any] = field(default_factory=dict)
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    suspended: bool = False
    timeout_seconds: float | None = None
    starting_deadline_seconds: float | None = None
    # The shared resources its runs get in ctx.resources (spec.resources).
    resources: tuple[str, ...] = ()
    #: What the firing gate knows the job by (engine/gate.py): the object's metadata.uid,
    #: new for an object deleted and created again under the same name. Empty: the job id.
    uid: str = ""

    def __post_init__(self) -> None:
        if not self.uid:
            # Frozen: the one way to fill a default taken from another field.
            object.__setattr__(self, "uid", self.job_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSnapshot:
    """A job's state at one instant, safe to hand to other layers."""

    spec: JobSpec
    running: bool
    next_run_time: datetime | None
    history: History

    @property
    def record(self) -> RunRecord:
        """Its run record, which :mod:`podcron.runrecord` shapes as JSON."""
        return RunRecord(self.history, self.next_run_time, self.running)
