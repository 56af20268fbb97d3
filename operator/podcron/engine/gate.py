"""What the engine asks before it starts a scheduled tick when several replicas share the jobs.

The engine does not know about replicas. With a :class:`FiringGate` it starts
a scheduled or catch-up tick only when the gate says :attr:`Verdict.START`;
without one (a single replica, the CLI) it starts every tick. docs/ha.md
describes the protocol behind the gate (:mod:`podcron.ha` implements it).

Keys are job UIDs (:attr:`podcron.engine.spec.JobSpec.uid`); ticks are the
scheduled instants, in seconds since the epoch. Manual runs never ask.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Verdict(enum.Enum):
    """What may happen to one tick of one job on this replica, now."""

    #: This replica owns the job and the tick is within its acknowledged fire bound.
    START = "start"
    #: Another replica starts this tick (it owns the job, or the tick is below the start bound).
    NOT_OWNER = "not-owner"
    #: Owned, but not yet: the tick is above the acknowledged fire bound, or the job's
    #: start bound is not known yet. Ask again after :meth:`GateListener.bound_moved`.
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Gain:
    """A job this replica now owns, and from which tick on."""

    key: str
    #: Ticks at or below this are not this replica's; the ones above that are due are caught up.
    start_bound: float
    #: When the previous owner was fenced: ticks in (uncertain_from, start_bound] may have
    #: started there. They are counted as uncertain and never started here. None otherwise.
    uncertain_from: float | None = None


class GateListener(Protocol):
    """The engine's side: told on the event loop's thread when the gate's answers change."""

    def bound_moved(self) -> None:
        """The acknowledged fire bound moved or a start bound became known: held ticks may go."""
        ...

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        """Jobs this replica now owns (with their start bounds) and jobs it no longer owns."""
        ...

    def decide_due(self) -> None:
        """The replica is about to give its jobs up: decide every tick due by now, now.

        The engine asks about the ticks due on one instant a batch at a time, one batch a
        loop turn; a release between two batches would leave the instant to the successors
        as uncertain for the jobs not asked yet, and those ticks started by nobody.
        """
        ...


class FiringGate(Protocol):
    """Which ticks this replica may start. Every method is called on the event loop's thread."""

    def verdict(self, key: str, tick: float) -> Verdict:
        """Whether this replica may start ``tick`` of job ``key`` now; cheap (called per tick)."""
        ...

    def set_listener(self, listener: GateListener) -> None:
        """Where to report changes; set once, by the engine that consults the gate."""
        ...

    def asked_before(self, instant: float) -> None:
        """Every scheduled tick due before ``instant`` was decided: started, counted or not ours.

        The engine asks in due order, a batch at a time: the ticks of one instant may
        be split across batches. A handover between two batches must not take the
        instant as done for the jobs not asked yet (docs/ha.md, rule 4). Nor a tick
        held (asked, answered HOLD): dropped when its job is lost, it never started.
        """
        ...
