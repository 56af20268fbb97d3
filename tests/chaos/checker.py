"""What the ledger and the counters say about a chaos run, and the RESULT line.

Pure functions over what the run collected: the ledger's entries, the jobs' schedules, the
measured window, the faults with their times, and counters read from ``/metrics``. The claim
checked is: every (job, tick) is started at most once, and, outside the ticks the operators
counted as uncertain or missed for that job, exactly once. Per job: a count for one job
cannot excuse a tick lost by another.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from podcron.schedules import Schedule
from tests.jobs.podcron_chaosjobs.ledger import Entry

#: Faults of the control plane rather than of an operator.
CONTROL_PLANE_KINDS = frozenset({"apiserver", "etcd"})
#: docs/ha.md's L (the operator's default leaseStaleSeconds), when a run does not set it.
DEFAULT_LEASE_STALE_SECONDS = 6.0


def _key(tick: float) -> int:
    """A tick as whole milliseconds: the ledger writes three decimals."""
    return round(tick * 1000)


def expected_ticks(schedule: Schedule, start: float, end: float) -> set[int]:
    """The ticks of ``schedule`` in ``[start, end)`` (wall-clock seconds), as milliseconds."""
    ticks: set[int] = set()
    following = schedule.next_after(datetime.fromtimestamp(start - 0.001, UTC))
    while following is not None and following.timestamp() < end:
        ticks.add(_key(following.timestamp()))
        following = schedule.next_after(following)
    return ticks


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected fault, as the checker needs it: what, on whom (a replica and its pid), when.

    When on two clocks: the harness's monotonic one (the ledger's) and its wall clock (the one
    the jobs' ticks are on: the API server's, on this machine).
    """

    kind: str
    target: str
    pid: int
    monotonic: float
    wall: float
    #: For a control-plane fault: when the API server answered again (monotonic), so that
    #: a failover it overlapped is also timed without the control plane's own outage.
    healed: float = math.nan
    #: How long the fault lasted as planned (a killed process's time down, a pause's length).
    seconds: float = 0.0

    def overlaps(self, start: float, end: float) -> bool:
        """Whether the fault was on at some moment of [start, end] (monotonic)."""
        return self.monotonic <= end and start <= self.monotonic + self.seconds


@dataclass(frozen=True, slots=True)
class Takeover:
    """A job the faulted process was starting ticks of, and when another process started it.

    ``next_start``: seconds from the fault to that start; it includes the wait for the job's
    next tick, up to its interval. ``outage``: the same less that wait, counted from the job's
    first tick due after the fault (from the fault itself when it was due before): how long the
    job went without a replica to start it. Both NaN when no other process started it.
    """

    next_start: float
    outage: float
    #: Of the seconds from the fault to ``next_start``, those the control plane was down
    #: (a failover needs the API server: nothing can be fenced or handed over meanwhile).
    control_plane_down: float = 0.0
    #: The latest of the same process's other starts of the same tick, of jobs it had
    #: before the fault: how late that tick started anyway (a busy machine, every job due
    #: on the same instant). 0 when it started no such job then.
    usual_lateness: float = 0.0

    @property
    def own_outage(self) -> float:
        """The outage less the control plane's: the operators' part of it."""
        return self.outage - self.control_plane_down

    @property
    def added(self) -> float:
        """The outage beyond the usual lateness of its start: what the take-over itself added."""
        return max(0.0, self.outage - self.usual_lateness)


@dataclass(frozen=True, slots=True)
class FaultCost:
    """What one SIGKILL or SIGTERM cost its jobs: their take-overs (see :class:`Takeover`)."""

    fault: Fault
    takeovers: tuple[Takeover, ...]

    def describe(self, window_start: float) -> str:
        """One line: the fault, when in the window, and its jobs' outages."""
        taken = [t for t in self.takeovers if not math.isnan(t.outage)]
        head = (
            f"{self.fault.kind} on {self.fault.target} at +{self.fault.wall - window_start:.1f}s:"
            f" {len(self.takeovers)} jobs"
        )
        if not taken:
            return f"{head}, none started elsewhere"
        outages = sorted(t.outage for t in taken)
        median = outages[(len(outages) - 1) // 2]
        own = max(t.own_outage for t in taken)
        added = max(t.added for t in taken)
        return (
            f"{head}, {len(taken)} started elsewhere; outage p50 {median:.2f}s"
            f" max {outages[-1]:.2f}s (own {own:.2f}s, beyond the tick's usual lateness"
            f" {added:.2f}s)"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Everything the RESULT line reports."""

    replicas: int
    jobs: int
    ticks: int
    #: Of ticks in the window (comparable with ``ticks``), and of every tick in the ledger.
    duplicates: int
    duplicates_all: int
    missed: int
    missed_outside_window: int
    #: The operators' counts, over all jobs; None where they do not export them (every
    #: missing tick is then missed outside).
    uncertain: int | None
    counted_missed: int | None
    #: Over the jobs of every SIGKILLed process: their outages' p99 (see Takeover), and the
    #: p99 of the seconds to their next start, the wait for their next tick included.
    failover_p99_s: float
    failover_next_start_p99_s: float
    failovers_unrecovered: int
    #: The same over SIGTERMed processes, the maximum.
    sigterm_handover_max_s: float
    sigterm_next_start_max_s: float
    #: The failover p99 and handover maximum less what the control plane was down.
    failover_own_p99_s: float
    sigterm_handover_own_max_s: float
    #: The same less the usual lateness of the start that ended each (Takeover.added).
    failover_added_p99_s: float
    sigterm_handover_added_max_s: float
    #: The failover p99 over the SIGKILLs alone (no other replica's or the control plane's
    #: fault within L of it, see judge), and how many they were.
    failover_alone_p99_s: float
    failovers_alone: int
    writes_per_s: float
    lease_writes_per_s: float
    #: The jobs behind ``missed_outside_window``, by name.
    uncounted: tuple[Uncounted, ...] = ()
    #: Ticks the operators skipped (concurrencyPolicy Forbid), over all jobs; None as above.
    skipped: int | None = None
    #: Each SIGKILL and SIGTERM, in order, with its jobs' take-overs.
    costs: tuple[FaultCost, ...] = ()

    def result_line(self, extra: Mapping[str, object] | None = None) -> str:
        fields: dict[str, object] = {
            "replicas": self.replicas,
            "jobs": self.jobs,
            "ticks": self.ticks,
            "duplicates": self.duplicates,
            "missed_outside_window": self.missed_outside_window,
            "uncertain": _count(self.uncertain),
            "failover_p99_s": _seconds(self.failover_p99_s),
            "sigterm_handover_max_s": _seconds(self.sigterm_handover_max_s),
            "writes_per_s": f"{self.writes_per_s:.1f}",
            "lease_writes_per_s": f"{self.lease_writes_per_s:.2f}",
            "duplicates_all": self.duplicates_all,
            "missed": self.missed,
            "counted_missed": _count(self.counted_missed),
            "skipped": _count(self.skipped),
            "failover_next_start_p99_s": _seconds(self.failover_next_start_p99_s),
            "sigterm_next_start_max_s": _seconds(self.sigterm_next_start_max_s),
            "failovers_unrecovered": self.failovers_unrecovered,
            "failover_own_p99_s": _seconds(self.failover_own_p99_s),
            "sigterm_handover_own_max_s": _seconds(self.sigterm_handover_own_max_s),
            "failover_added_p99_s": _seconds(self.failover_added_p99_s),
            "sigterm_handover_added_max_s": _seconds(self.sigterm_handover_added_max_s),
            "failover_alone_p99_s": _seconds(self.failover_alone_p99_s),
            "failovers_alone": self.failovers_alone,
            **(extra or {}),
        }
        return "RESULT chaos " + " ".join(f"{key}={value}" for key, value in fields.items())


def _count(value: int | None) -> str:
    return "none" if value is None else str(value)


def _seconds(value: float) -> str:
    return "none" if math.isnan(value) else f"{value:.2f}"


def duplicates(entries: Iterable[Entry], start: float = -math.inf, end: float = math.inf) -> int:
    """Starts beyond the first of each (job, tick), for ticks in ``[start, end)``."""
    starts = collections.Counter(
        (entry.job, _key(entry.tick)) for entry in entries if start <= entry.tick < end
    )
    return sum(count - 1 for count in starts.values())


def missing(
    entries: Iterable[Entry], schedules: Mapping[str, Schedule], start: float, end: float
) -> tuple[int, dict[str, set[int]]]:
    """(ticks expected in ``[start, end)`` over all jobs, per job those no one started)."""
    started: dict[str, set[int]] = collections.defaultdict(set)
    for entry in entries:
        started[entry.job].add(_key(entry.tick))
    expected, missed = 0, {}
    for job, schedule in schedules.items():
        due = expected_ticks(schedule, start, end)
        expected += len(due)
        missed[job] = due - started[job]
    return expected, missed


@dataclass(frozen=True, slots=True)
class Uncounted:
    """A job that missed more ticks in the window than the operators counted for it."""

    job: str
    counted: int
    #: Its missing ticks, seconds since the epoch, oldest first.
    ticks: tuple[float, ...]

    def describe(self) -> str:
        shown = " ".join(f"{tick:.0f}" for tick in self.ticks[:12])
        more = f" (+{len(self.ticks) - 12})" if len(self.ticks) > 12 else ""
        return f"{self.job}: {len(self.ticks)} missing, {self.counted} counted: {shown}{more}"


def takeovers(
    entries: Sequence[Entry],
    fault: Fault,
    schedules: Mapping[str, Schedule],
    control_plane: Sequence[Fault] = (),
) -> list[Takeover]:
    """For each job the faulted process was starting ticks of: when another process started it.

    A job is the process's when its last start before the fault was there. The outage
    counts from the first tick the process did not start: the fault is noted as the signal
    is sent (after the read of its counters, which may take seconds), and a tick its loop
    reached before the signal's handler ran was started by it.
    ``control_plane``: the API server and etcd faults, whose time down (to ``healed``)
    inside each takeover is noted beside it.
    """
    last_before: dict[str, Entry] = {}
    last_of_process: dict[str, float] = {}
    for entry in entries:
        if entry.monotonic < fault.monotonic:
            last_before[entry.job] = entry
        if entry.pid == fault.pid:
            last_of_process[entry.job] = max(entry.tick, last_of_process.get(entry.job, -math.inf))
    affected = {job for job, entry in last_before.items() if entry.pid == fault.pid}
    first_after: dict[str, Entry] = {}
    for entry in sorted(entries, key=lambda e: e.monotonic):
        if (
            entry.job in affected
            and entry.job not in first_after
            and entry.monotonic > fault.monotonic
            and entry.pid != fault.pid
        ):
            first_after[entry.job] = entry
    usual = _usual_lateness(entries, fault, affected, first_after.values())
    found = []
    for job in sorted(affected):
        first = first_after.get(job)
        next_start = math.nan if first is None else first.monotonic - fault.monotonic
        after = max(fault.wall, last_of_process[job])
        due = schedules[job].next_after(datetime.fromtimestamp(after, UTC))
        wait = 0.0 if due is None else max(0.0, due.timestamp() - fault.wall)
        down = sum(
            max(
                0.0,
                min(cp.healed, fault.monotonic + next_start) - max(cp.monotonic, fault.monotonic),
            )
            for cp in control_plane
            if not math.isnan(cp.healed)
        )
        found.append(
            Takeover(
                next_start,
                next_start - wait,
                down if down > 0 else 0.0,
                0.0 if first is None else usual.get((first.pid, _key(first.tick)), 0.0),
            )
        )
    return found


def _usual_lateness(
    entries: Iterable[Entry], fault: Fault, affected: set[str], firsts: Iterable[Entry]
) -> dict[tuple[int, int], float]:
    """Per (pid, tick) of the ``firsts``: the latest of that process's starts of that tick for
    jobs not in ``affected``, as lateness (by the harness's monotonic clock)."""
    offset = fault.monotonic - fault.wall  # harness monotonic less wall
    wanted = {(entry.pid, _key(entry.tick)) for entry in firsts}
    late: dict[tuple[int, int], list[float]] = collections.defaultdict(list)
    for entry in entries:
        key = (entry.pid, _key(entry.tick))
        if key in wanted and entry.job not in affected:
            late[key].append(entry.monotonic - offset - entry.tick)
    # Not below 0: a replica's clock, the API server's as it reads it, may run a little
    # ahead, and a take-over cannot be "beyond" an early start by more than its outage.
    return {key: max(0.0, *values) for key, values in late.items()}


def p99(values: Sequence[float]) -> float:
    """The 99th percentile by nearest rank; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def judge(
    *,
    entries: Sequence[Entry],
    schedules: Mapping[str, Schedule],
    window: tuple[float, float],
    faults: Sequence[Fault],
    replicas: int,
    uncertain: Mapping[str, int] | None,
    counted_missed: Mapping[str, int] | None,
    writes: float,
    lease_writes: float,
    seconds: float,
    skipped: Mapping[str, int] | None = None,
    lease_stale: float = DEFAULT_LEASE_STALE_SECONDS,
) -> Verdict:
    """The verdict on one run.

    ``uncertain`` and ``counted_missed`` are the operators' ``podcron_ticks_uncertain_total``
    and ``podcron_ticks_missed_total`` per job, summed over every process; ``None`` where the
    operator does not export them, and then every missing tick is missed outside a counted
    window. ``skipped`` is their ``podcron_job_runs_total{status="skipped"}``: a tick skipped
    under concurrencyPolicy Forbid has that outcome and is not started. A job's counts cover
    its ticks outside the window too: they excuse at most as many of its missing ticks as
    they say.
    ``writes`` and ``lease_writes`` are mutating requests the API server counted in the
    window of ``seconds``. ``lease_stale`` is the operators' L: a SIGKILL is *alone* when no
    fault of another process or of the control plane was on within L of it either way, so
    its failover is the protocol's for one lost replica (two lost within L can take up to
    2L, docs/ha.md rule 6).
    """
    ticks, missed = missing(entries, schedules, *window)
    excused = (
        collections.Counter(uncertain or {})
        + collections.Counter(counted_missed or {})
        + collections.Counter(skipped or {})
    )
    uncounted = tuple(
        Uncounted(job, excused[job], tuple(tick / 1000 for tick in sorted(lost)))
        for job, lost in sorted(missed.items())
        if len(lost) > excused[job]
    )
    plane = [f for f in faults if f.kind in CONTROL_PLANE_KINDS]
    costs = tuple(
        FaultCost(f, tuple(takeovers(entries, f, schedules, plane)))
        for f in faults
        if f.kind in ("kill", "term")
    )
    failovers = [t for c in costs if c.fault.kind == "kill" for t in c.takeovers]
    handovers = [t for c in costs if c.fault.kind == "term" for t in c.takeovers]
    recovered = [t for t in failovers if not math.isnan(t.next_start)]
    handed = [t for t in handovers if not math.isnan(t.next_start)]
    alone = [
        c
        for c in costs
        if c.fault.kind == "kill"
        and c.takeovers
        and not any(
            other.target != c.fault.target
            and other.overlaps(c.fault.monotonic - lease_stale, c.fault.monotonic + lease_stale)
            for other in faults
        )
    ]
    alone_recovered = [t for c in alone for t in c.takeovers if not math.isnan(t.next_start)]
    return Verdict(
        replicas=replicas,
        jobs=len(schedules),
        ticks=ticks,
        duplicates=duplicates(entries, *window),
        duplicates_all=duplicates(entries),
        missed=sum(len(lost) for lost in missed.values()),
        missed_outside_window=sum(len(u.ticks) - u.counted for u in uncounted),
        uncertain=None if uncertain is None else sum(uncertain.values()),
        counted_missed=None if counted_missed is None else sum(counted_missed.values()),
        failover_p99_s=p99([t.outage for t in recovered]),
        failover_next_start_p99_s=p99([t.next_start for t in recovered]),
        failovers_unrecovered=len(failovers) - len(recovered) + len(handovers) - len(handed),
        sigterm_handover_max_s=max((t.outage for t in handed), default=math.nan),
        sigterm_next_start_max_s=max((t.next_start for t in handed), default=math.nan),
        failover_own_p99_s=p99([t.own_outage for t in recovered]),
        sigterm_handover_own_max_s=max((t.own_outage for t in handed), default=math.nan),
        failover_added_p99_s=p99([t.added for t in recovered]),
        sigterm_handover_added_max_s=max((t.added for t in handed), default=math.nan),
        failover_alone_p99_s=p99([t.outage for t in alone_recovered]),
        failovers_alone=len(alone),
        writes_per_s=writes / seconds if seconds > 0 else 0.0,
        lease_writes_per_s=lease_writes / seconds if seconds > 0 else 0.0,
        uncounted=uncounted,
        skipped=None if skipped is None else sum(skipped.values()),
        costs=costs,
    )
