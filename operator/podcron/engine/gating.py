"""The engine's side of a firing gate: ticks held back, and the catch-up of a gained job.

Pure: no loop and no clock (``now`` is passed in). With a gate
(:mod:`podcron.engine.gate`) the engine asks before it starts a tick; a tick
the gate holds waits here until the gate's bounds move. A job this replica
gains gets its due ticks per docs/ha.md rule 7, which :func:`plan_catch_up`
works out: every tick above the start bound that is at most the job's
allowance late (``startingDeadlineSeconds``, 10 s when unset), oldest first,
at most ten (only the newest when the job's ticks may not run side by side:
:func:`runs_side_by_side`); earlier ones are missed, and those the previous owner may have
started (its uncertain window) are counted and never started here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from podcron.context import Trigger
from podcron.engine.spec import ConcurrencyPolicy, JobSpec
from podcron.schedules import Every, Schedule

#: How late a gained or held tick may still start when the job sets no startingDeadlineSeconds.
DEFAULT_ALLOWANCE_SECONDS = 10.0
#: At most this many ticks of one job are caught up at a gain, or held at once.
MAX_CATCH_UP_TICKS = 10
# Counting the ticks of a wall-clock schedule walks them one by one (DST makes
# arithmetic wrong), about 20 us each; it stops here (16 hours of a cron job due
# every minute), so a start bound from long ago cannot hold the loop for long.
# Past it, the missed count is a lower bound.
COUNT_LIMIT = 1_000
_MICROSECOND = timedelta(microseconds=1)


def runs_side_by_side(spec: JobSpec) -> bool:
    """Whether several late ticks of the job may start together (concurrencyPolicy Allow).

    Under Forbid or Replace all but one of them would be skipped or replaced at
    once: only the newest starts, as the engine's timer coalesces the ticks a
    blocked loop missed, and the older ones count as missed.
    """
    return spec.concurrency_policy is ConcurrencyPolicy.ALLOW


def allowance(spec: JobSpec) -> float:
    """How late a tick of this job may start: its starting deadline, or the default."""
    deadline = spec.starting_deadline_seconds
    return DEFAULT_ALLOWANCE_SECONDS if deadline is None else deadline


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def count_ticks(schedule: Schedule, after: float, upto: float) -> int:
    """How many ticks fall in (``after``, ``upto``]; at most :data:`COUNT_LIMIT` but for ``every``.

    An ``after`` of minus infinity (no start bound: nobody owned the job
    before) counts nothing: no tick of it was anyone's to start.
    """
    if not math.isfinite(after) or not after < upto:
        return 0
    if isinstance(schedule, Every):
        last, first = (
            schedule.last_at_or_before(_utc(upto)),
            schedule.last_at_or_before(_utc(after)),
        )
        if last is None or first is None:
            return 0
        return (last - first) // schedule.interval
    count = 0
    cursor = schedule.next_after(_utc(after))
    while cursor is not None and cursor.timestamp() <= upto and count < COUNT_LIMIT:
        count += 1
        cursor = schedule.next_after(cursor)
    return count


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a gain means for one job: the ticks to start, and the ones to count."""

    #: Tick times to start, oldest first.
    ticks: tuple[float, ...]
    #: Ticks above the start bound too late (or too many) to start.
    missed: int
    #: Ticks in the previous owner's uncertain window: maybe started there, never here.
    uncertain: int


def plan_catch_up(
    schedule: Schedule,
    *,
    start_bound: float,
    uncertain_from: float | None,
    now: float,
    before: float | None,
    allowance_seconds: float,
) -> CatchUp:
    """The ticks of a gained job above ``start_bound`` that are due to start now.

    ``before`` is the job's next armed tick: it and the ticks after it are the
    timer's, so they are left out; the ticks before it are this plan's (up to
    ``now`` when the job has no next tick). Ticks below ``now - allowance_seconds`` or
    beyond the newest :data:`MAX_CATCH_UP_TICKS` are missed.
    """
    uncertain = 0 if uncertain_from is None else count_ticks(schedule, uncertain_from, start_bound)
    # Up to the next armed tick, not to ``now``: the ticks before it are behind the timer,
    # whether due on the clock as it reads now or not. The wall clock is set to the API
    # server's, and after it stepped back, ticks the timer passed (asked, not owned then)
    # are not due again yet; planned up to ``now`` they would start nowhere, uncounted.
    upto = now if before is None else before
    cursor = schedule.last_at_or_before(_utc(upto))
    if cursor is not None and before is not None and cursor.timestamp() >= before:
        cursor = schedule.last_at_or_before(cursor - _MICROSECOND)
    if cursor is None:
        return CatchUp((), 0, uncertain)
    # The newest tick that is this catch-up's: the ones to start end with it, the missed
    # ones are those in (start_bound, newest] that are not started.
    newest = cursor.timestamp()
    newest_first: list[float] = []
    oldest_allowed = now - allowance_seconds
    while cursor is not None and len(newest_first) < MAX_CATCH_UP_TICKS:
        tick = cursor.timestamp()
        if tick <= start_bound or tick < oldest_allowed:
            break
        newest_first.append(tick)
        cursor = schedule.last_at_or_before(cursor - _MICROSECOND)
    missed = count_ticks(schedule, start_bound, newest) - len(newest_first)
    return CatchUp(tuple(reversed(newest_first)), max(missed, 0), uncertain)


@dataclass(slots=True)
class GainTally:
    """What the jobs gained together lost: said in one line, whatever their number.

    A failover moves every job of the replica that died, thousands at once; a line
    each would hold the loop, and the successor's catch-up with it, for the whole
    time it takes to write them. Which jobs lost ticks is in the per-job counters.
    """

    jobs: int = 0
    missed: int = 0
    missed_jobs: int = 0
    uncertain: int = 0
    uncertain_jobs: int = 0

    def add(self, missed: int, uncertain: int) -> None:
        """One job gained, and the ticks of it counted missed and uncertain."""
        self.jobs += 1
        self.missed += missed
        self.missed_jobs += missed > 0
        self.uncertain += uncertain
        self.uncertain_jobs += uncertain > 0

    def describe(self) -> str | None:
        """The line to log, or None when no tick was lost."""
        if not self.missed and not self.uncertain:
            return None
        return (
            f"{self.jobs} jobs gained: {self.missed} ticks missed (of {self.missed_jobs} jobs), "
            f"{self.uncertain} ticks uncertain (of {self.uncertain_jobs} jobs; maybe started by "
            "a fenced replica, not run again); podcron_ticks_missed_total and "
            "podcron_ticks_uncertain_total name the jobs"
        )


class HeldTicks:
    """Ticks the gate answered HOLD for, per job id, oldest first: at most ten a job.

    Ticks of a held job that no longer wait (the older ones past ten, and those a late
    timer passed over while the job was held) are *passed over*: missed if this replica
    keeps the job, but not counted until it knows it does. Should the job move to another
    replica first, its successor accounts for them (it starts them, or counts them missed
    or uncertain), and counted here as well they would have two outcomes.
    """

    __slots__ = ("_earliest", "_passed", "_ticks")

    def __init__(self) -> None:
        self._ticks: dict[str, list[tuple[float, Trigger]]] = {}
        # Per job: how many ticks were passed over while it was held, and the oldest of them.
        self._passed: dict[str, tuple[int, float]] = {}
        # The oldest tick held or passed over, kept as ticks come (asked about after every
        # timer batch, which at an outage's end can hold thousands of jobs); None once
        # ticks left.
        self._earliest: float | None = math.inf

    def __bool__(self) -> bool:
        return bool(self._ticks)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._ticks

    def __len__(self) -> int:
        return sum(len(ticks) for ticks in self._ticks.values())

    def hold(self, job_id: str, tick: float, trigger: Trigger, passed_over: int = 0) -> None:
        """Keep ``tick`` of ``job_id``; ``passed_over`` ticks after it were passed over."""
        ticks = self._ticks.setdefault(job_id, [])
        ticks.append((tick, trigger))
        if self._earliest is not None:
            self._earliest = min(self._earliest, tick)
        overflow = len(ticks) - MAX_CATCH_UP_TICKS
        if overflow > 0:
            self._pass_over(job_id, overflow, ticks[0][0])
            del ticks[:overflow]
        if passed_over:
            # They come after ``tick``: it bounds them from below.
            self._pass_over(job_id, passed_over, tick)

    def _pass_over(self, job_id: str, count: int, oldest: float) -> None:
        before, earliest = self._passed.get(job_id, (0, math.inf))
        self._passed[job_id] = (before + count, min(earliest, oldest))
        if self._earliest is not None:
            self._earliest = min(self._earliest, oldest)

    def earliest(self) -> float:
        """The oldest tick held or passed over, of any job; infinity when none is.

        Neither started nor counted: the gate must not take it as decided.
        """
        if self._earliest is None:
            self._earliest = min(
                min((ticks[0][0] for ticks in self._ticks.values()), default=math.inf),
                min((oldest for _, oldest in self._passed.values()), default=math.inf),
            )
        return self._earliest

    def forget(self, job_id: str) -> None:
        """Drop the job's held and passed-over ticks: lost, removed, or caught up on a gain."""
        held = self._ticks.pop(job_id, None)
        passed = self._passed.pop(job_id, None)
        if held is not None or passed is not None:
            self._earliest = None

    def passed_over(self, job_id: str) -> int:
        """How many ticks of the job were passed over, now missed here: they are forgotten."""
        count, _ = self._passed.pop(job_id, (0, math.inf))
        if count:
            self._earliest = None
        return count

    def take(self) -> dict[str, list[tuple[float, Trigger]]]:
        """Every held tick, now no longer held: the caller holds again what must still wait.

        The ticks passed over stay: the caller reads them (:meth:`passed_over`) once one of
        the job's ticks started, or forgets them with the job.
        """
        taken, self._ticks = self._ticks, {}
        self._earliest = None
        return taken
