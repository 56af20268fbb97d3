"""The :class:`Engine`: registration, dispatch by overlap policy, a run's steps, shutdown.

One timer serves every job: a :class:`podcron.engine.duequeue.DueQueue` of
due times and a single ``loop.call_at`` handle for the earliest one, so 10,000
jobs cost one timer and zero jobs cost none. Due times are wall-clock
(schedules are about wall time) while asyncio timers run on the loop's
monotonic clock, so each wake-up re-reads the wall clock: a clock stepped back
re-arms instead of firing early, and a clock stepped forward fires what became
due instead of skipping it. The runs of an instant more than a batch of jobs are
due at are made ready ahead of it (dispatched, their tasks waiting for it) and
let go together at it.

A run goes start → execute → record: it waits for what it needs
(:class:`podcron.engine.budgets.RunBudgets`), its body runs
(:func:`podcron.engine.runs.execute`), and its outcome is recorded exactly
once (:class:`podcron.engine.recording.Recorder`), when the body
returns, fails or is cancelled, or at its deadline. docs/engine.md explains
the model and its budgets.

With a :class:`podcron.engine.gate.FiringGate` (several replicas) each
scheduled tick is started only when the gate answers START, right before
dispatch; held ticks wait in :class:`podcron.engine.gating.HeldTicks`, and a
job this replica gains is caught up from its start bound (docs/ha.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podcron.context import Trigger
from podcron.engine.budgets import RunBudgets
from podcron.engine.changes import ChangedJobs, JobChanges
from podcron.engine.clock import SYSTEM_CLOCK, Clock
from podcron.engine.duequeue import DueQueue
from podcron.engine.events import Listener, Listeners
from podcron.engine.gate import FiringGate, Gain, Verdict
from podcron.engine.gating import (
    GainTally,
    HeldTicks,
    allowance,
    count_ticks,
    plan_catch_up,
    runs_side_by_side,
)
from podcron.engine.jobs import JobState, is_async, past_run
from podcron.engine.runner import RUN_TASK_PREFIX, Runner
from podcron.engine.shutdown import NOT_STARTED
from podcron.engine.spec import JobSnapshot, JobSpec
from podcron.errors import JobNotFound
from podcron.jobconfig import ConfigSource
from podcron.resources import ResourceManager
from podcron.runrecord import History, PastRun, RunCounts, RunStatus
from podcron.telemetry.run_span import parent_from_headers
from podcron.telemetry.run_telemetry import RunTelemetry
from podcron.watchdog import LoopWatchdog

log = logging.getLogger("podcron.engine")

# Long timers are cut into slices of at most this length: the monotonic timer
# cannot notice a wall-clock step, so a daily job re-checks the wall clock
# once a minute rather than firing hours off after an NTP correction.
MAX_SLEEP_SECONDS = 60.0
# At most this many runs start per timer callback; the timer then fires again
# at once, after the runs just started. Hundreds of jobs can fall due together
# with tens of thousands registered: started all at once, their pending tasks
# set off the garbage collector, whose passes then promote them to its oldest
# generation and bring on full collections (over 100 ms each) every few
# seconds. Slices also let the loop's other callbacks in between.
DISPATCH_BATCH = 32
# The runs of an instant more than a batch of jobs are due at are made ready this long
# ahead of it, a run each (at most READY_AHEAD_MAX_SECONDS): dispatched, their tasks
# started, waiting in them for the instant (docs/engine.md, "Made ready ahead"). About
# twice what it took a run on the benchmark machine: too little and the last batches are
# made ready after the instant, as they all were before; too much and they wait longer.
READY_AHEAD_PER_RUN_SECONDS = 50e-6
READY_AHEAD_MAX_SECONDS = 0.25


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Instant:
    """An instant whose runs are being made ready ahead of it."""

    at: float
    #: What each run made ready waits on, set at the instant.
    waits: list[asyncio.Future[None]]
    #: Jobs decided to start at it, with a run active still: dispatched at it.
    busy: list[tuple[JobState, datetime]]
    #: What lets them go at it.
    timer: asyncio.TimerHandle | None = None


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _say_lost(tally: GainTally) -> None:
    line = tally.describe()
    if line is not None:
        log.warning("%s", line)


def _interval(job: JobState, now: float) -> float | None:
    """From the job's latest tick to its next, as armed; None while it has no next tick."""
    if job.next_due is None:
        return None
    latest = job.spec.schedule.last_at_or_before(_utc(now))
    return None if latest is None else job.next_due - latest.timestamp()


def _last_success(history: History | None) -> float | None:
    """When the last run ended, if status says it succeeded (status keeps only the last run)."""
    if history is None or history.last_status is not RunStatus.SUCCESS:
        return None
    if history.last_run_time is None:
        return None
    return history.last_run_time.timestamp() + (history.last_duration_seconds or 0.0)


def _ticks_counted(history: History) -> int:
    return _ticks_counted_in(history.counts)


def _ticks_counted_in(counts: RunCounts) -> int:
    return counts.total + counts.skipped


def _job_of_task(task: asyncio.Task[Any]) -> str | None:
    name = task.get_name()
    return name[len(RUN_TASK_PREFIX) :] if name.startswith(RUN_TASK_PREFIX) else None


class Engine:
    """Runs registered jobs on time. Every method must be called on the event loop's thread.

    The budgets (``max_concurrent_runs``, ``max_manual_runs``,
    ``worker_threads``) are :class:`podcron.engine.budgets.RunBudgets`';
    ``threads_per_job`` bounds the active runs one plain ``def`` job may have
    under Allow: ticks beyond are skipped, manual runs refused. And under
    Allow, a tick is skipped while an earlier run of the same job still waits
    to start, so the queue holds at most one run per job.

    ``resources`` and ``config`` give each run its ``ctx.resources`` (those its
    spec lists) and ``ctx.config``; the configuration's Secret values are
    taken out of failed runs' errors.

    With a ``gate``, ticks start only when it answers START, and the engine is
    the gate's :class:`podcron.engine.gate.GateListener`: the catch-up of a new
    job is the gate's (a job's start bound), not its history's.
    Each job keeps its last ``run_history_limit`` outcomes (:meth:`runs`; 0: none).
    """

    def __init__(
        self,
        *,
        max_concurrent_runs: int = 100,
        max_manual_runs: int = 10,
        worker_threads: int = 8,
        threads_per_job: int = 2,
        shutdown_timeout_seconds: float = 25.0,
        listeners: Iterable[Listener] = (),
        telemetry: RunTelemetry | None = None,
        clock: Clock = SYSTEM_CLOCK,
        loop_watchdog: bool = True,
        resources: ResourceManager | None = None,
        config: ConfigSource | None = None,
        gate: FiringGate | None = None,
        run_history_limit: int = 20,
    ) -> None:
        if run_history_limit < 0:
            raise ValueError(f"run_history_limit must not be negative, got {run_history_limit}")
        self._run_history_limit = run_history_limit
        self._budgets = RunBudgets(
            max_concurrent_runs=max_concurrent_runs,
            max_manual_runs=max_manual_runs,
            worker_threads=worker_threads,
        )
        self._listeners = Listeners(listeners)
        telemetry = telemetry or RunTelemetry()
        self._metrics = telemetry.metrics
        self._changes = JobChanges()
        self._runner = Runner(
            budgets=self._budgets,
            threads_per_job=threads_per_job,
            telemetry=telemetry,
            listeners=self._listeners,
            clock=clock,
            resources=resources,
            config=config,
            changes=self._changes,
        )
        self._jobs: dict[str, JobState] = {}
        self._clock = clock
        self._due = DueQueue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        # How long ahead of its due time the timer fires, to make its runs ready.
        self._timer_ahead = 0.0
        # The instant whose runs are being made ready ahead of it, what each waits on, and
        # the timer that lets them go at it.
        self._instant: _Instant | None = None
        self._shutdown_timeout = shutdown_timeout_seconds
        self._loop_watchdog = loop_watchdog
        self._watchdog: LoopWatchdog | None = None
        self._closing = False
        self._gate = gate
        # Kept only with a gate, which speaks of job uids: uid -> job id, the ticks it holds
        # back, and gains of jobs not registered yet (applied when they are).
        self._job_ids: dict[str, str] = {}
        self._held = HeldTicks()
        self._early_gains: dict[str, Gain] = {}
        if gate is not None:
            gate.set_listener(self)

    # -- registration -----------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every :data:`JobEvent`; it must be quick and not block."""
        self._listeners.add(listener)

    def upsert(self, spec: JobSpec, *, history: History | None = None) -> JobSnapshot:
        """Register a job, or replace the spec of a registered one, and arm it.

        A replaced job keeps its history and its active runs; only its timer
        is re-armed. For a newly registered job, ``history`` (restored from
        status) seeds the counters, and its ``last_run_time`` decides the one
        catch-up run ``starting_deadline_seconds`` allows.
        """
        if self._closing:
            raise RuntimeError("the engine is shutting down")
        if self._watchdog is None and self._loop_watchdog:
            # Started with the first job, on the loop it watches: no job, nothing to watch.
            metrics = self._metrics
            self._watchdog = LoopWatchdog(
                asyncio.get_running_loop(),
                holder=_job_of_task,
                on_lag=None if metrics is None else metrics.loop_lag,
            )
            self._watchdog.start()
        job = self._jobs.get(spec.job_id)
        is_new = job is None
        same_schedule = False
        if job is None:
            job = JobState.restored(spec, history, run_history_limit=self._run_history_limit)
            self._jobs[spec.job_id] = job
            if self._metrics is not None:
                self._metrics.job_added(
                    spec.namespace, spec.name, last_success=_last_success(history)
                )
        else:
            if job.spec.uid != spec.uid:
                self._job_ids.pop(job.spec.uid, None)
            same_schedule = job.spec.schedule == spec.schedule
            job.spec = spec
            job.is_async = is_async(spec.target)
        now = self._clock.wall()
        due = job.next_due
        if same_schedule and due is not None and due <= now:
            # A tick already due that the timer has not reached (the loop is behind) stays
            # armed: re-armed from now, a change of another field would drop it unnoticed.
            self._arm_at(job, due)
        else:
            # Not at a tick taken already: one made ready ahead of its instant is not past.
            self._arm(job, after=max(now, job.taken))
        if self._metrics is not None:
            self._metrics.job_interval(spec.namespace, spec.name, _interval(job, now))
        if self._gate is not None:
            self._job_ids[spec.uid] = spec.job_id
            gain = self._early_gains.pop(spec.uid, None)
            if gain is not None:
                tally = GainTally()
                tally.add(*self._catch_up_gain(job, gain, now))
                _say_lost(tally)
        elif is_new and history is not None:
            self._catch_up(job, history, now)
        self._set_timer()
        return self._snapshot(job)

    def remove(self, job_id: str) -> None:
        """Forget a job at once: no tick fires after this, and its active runs are cancelled."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.removed = True
        if self._gate is not None:
            self._job_ids.pop(job.spec.uid, None)
            self._held.forget(job_id)
        if self._metrics is not None:
            self._metrics.job_removed(job.spec.namespace, job.spec.name)
        self._disarm(job)
        for run in job.active.values():
            self._runner.cancel(run, "Deleted: the ScheduledJob was deleted")

    def trigger(
        self, job_id: str, *, trace_headers: Mapping[str, str] | None = None
    ) -> JobSnapshot:
        """Run a job once now (trigger ``manual``), honouring its concurrency policy.

        Raises :class:`JobNotFound`, :class:`JobAlreadyRunning` when the job may
        not start another run now (Forbid, a replaced run that has not stopped,
        ``threads_per_job``), or :class:`TooManyManualRuns` when manual runs
        use their whole budget. A ``traceparent`` in ``trace_headers`` makes
        the run's span its child.
        """
        job = self._jobs.get(job_id)
        if job is None or self._closing:
            raise JobNotFound(job_id)
        parent = parent_from_headers(trace_headers or {})
        now = _utc(self._clock.wall())
        self._runner.dispatch(job, Trigger.MANUAL, now, parent=parent, manual=True)
        return self._snapshot(job)

    def continue_history(
        self, job_id: str, history: History, base: RunCounts | None = None
    ) -> None:
        """Continue the job's counters and last run from ``history``, what status holds now.

        Without ``base`` (a job registered or gained here), take ``history`` when
        it counts more ticks: another replica ran the job until now, and this
        replica's copy is behind. With ``base``, the counters this replica last
        knew status to hold: what others counted since is added to the job's own,
        which may count runs not written yet, so that no run is counted twice or
        lost and counters never go backwards. The last run is taken when it
        started later, or at the same time while every run here is written.
        """
        job = self._jobs.get(job_id)
        if job is None:
            return
        if base is None:
            if _ticks_counted(history) > job.total + job.skipped:
                job.continue_from(history)
                self._changes.mark(job_id)
            return
        written = _ticks_counted_in(job.counts()) <= _ticks_counted_in(base)
        job.add_counts(history.counts.since(base))
        found = history.last_run_time
        if found is not None:
            started, own = found.timestamp(), job.last_started
            if own is None or started > own or (started == own and written):
                job.take_last_run(history)
        self._changes.mark(job_id)

    def snapshot(self, job_id: str) -> JobSnapshot:
        """The job's current state; raises :class:`JobNotFound`."""
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return self._snapshot(job)

    def runs(self, job_id: str) -> list[PastRun]:
        """The job's last outcomes, newest first; raises :class:`JobNotFound`.

        Runs since the operator started only: status keeps counters and
        recent failures, not the run history.
        """
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return [] if job.past_runs is None else [past_run(kept) for kept in reversed(job.past_runs)]

    def snapshots(self) -> list[JobSnapshot]:
        """Every registered job's state, ordered by job id."""
        return [self._snapshot(self._jobs[job_id]) for job_id in sorted(self._jobs)]

    def watch_changes(self) -> ChangedJobs:
        """The ids of the jobs whose snapshot may change from now on, kept until taken.

        A job removed is among them (:meth:`snapshot` then raises :class:`JobNotFound`).
        """
        return self._changes.reader()

    @property
    def job_count(self) -> int:
        """How many jobs are registered."""
        return len(self._jobs)

    @property
    def running_count(self) -> int:
        """How many runs are active now: queued, running, or waiting for their thread."""
        return sum(len(job.active) for job in self._jobs.values())

    @property
    def abandoned_threads(self) -> int:
        """How many threads outlive the run they belong to."""
        return self._budgets.abandoned

    @property
    def quiet_for(self) -> float | None:
        """Seconds until the engine next starts runs or makes them ready (None: never).

        By the engine's own clock, which with several replicas is the API server's.
        """
        instant = None if self._instant is None else self._instant.at
        timer = None if self._timer_due is None else self._timer_due - self._timer_ahead
        if instant is None and timer is None:
            return None
        nearest = min(t for t in (instant, timer) if t is not None)
        return nearest - self._clock.wall()

    @property
    def next_wakeup(self) -> float | None:
        """The wall-clock time the engine's timer is set for next, or None when none is set."""
        return self._timer_due

    def _snapshot(self, job: JobState) -> JobSnapshot:
        return JobSnapshot(
            spec=job.spec,
            running=bool(job.active),
            next_run_time=None if job.next_due is None else _utc(job.next_due),
            history=job.history(),
        )

    # -- timers -----------------------------------------------------------

    def _arm(self, job: JobState, *, after: float) -> None:
        self._arm_at(job, job.spec.schedule.next_timestamp_after(after))

    def _arm_at(self, job: JobState, due: float | None) -> None:
        self._disarm(job)
        if job.spec.suspended or self._closing:
            return
        if due is None:  # no further run (a date that never comes, or past 9999)
            return
        job.next_due = due
        self._due.push(job.spec.job_id, due)
        if self._timer_due is not None and due < self._timer_due:
            self._cancel_timer()

    def _disarm(self, job: JobState) -> None:
        if job.next_due is not None:
            job.next_due = None
            self._due.discard(job.spec.job_id)
        self._changes.mark(job.spec.job_id)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            # Whatever was due next is not started by the timer that was to come: a burst
            # it went on with is over, and the runs that ended in it are recorded.
            self._runner.burst_over()
        self._timer = None
        self._timer_due = None

    def _set_timer(self) -> None:
        """Set the one loop timer for the earliest due time, unless it is set for it already."""
        due = self._due.earliest()
        if due is None or self._closing:
            self._cancel_timer()
            return
        if self._instant is not None and self._instant.at == due:
            # The rest of an instant being made ready (its last batch too): at once, not
            # paced by what is left, so that the loop's other work between the batches
            # does not push the last ones past the instant.
            ahead = max(due - self._clock.wall(), 0.0)
        elif (count := self._due.count_at(due)) > DISPATCH_BATCH:
            ahead = min(count * READY_AHEAD_PER_RUN_SECONDS, READY_AHEAD_MAX_SECONDS)
        else:
            ahead = 0.0
        # Set again when more jobs came due at it since (registered one by one).
        if self._timer is not None and self._timer_due == due and self._timer_ahead == ahead:
            return
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        delay = min(due - self._clock.wall() - ahead, MAX_SLEEP_SECONDS)
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)
        self._timer_due = due
        self._timer_ahead = ahead

    def clock_moved(self) -> None:
        """The wall clock was set to other time (the API server's): set the timer by it again.

        Due times are wall-clock; the timer waits on the loop's clock for what
        the wall clock said was left, which is now wrong by as much as it moved.
        """
        if self._timer is not None:
            self._cancel_timer()
            self._set_timer()
        if self._instant is not None:
            # Runs made ready wait for a wall-clock instant: let them go by the new clock.
            if self._instant.timer is not None:
                self._instant.timer.cancel()
            self._let_go(self._instant)

    def _on_timer(self) -> None:
        ahead_of = self._timer_due if self._timer_ahead > 0.0 else None
        self._timer = None
        self._timer_due = None
        self._fire(ahead_of)

    def _fire(self, ahead_of: float | None) -> None:
        """Start (or make ready, ``ahead_of`` an instant not come yet) one batch of due runs."""
        now = self._clock.wall()
        upto, ahead = now, None
        if ahead_of is not None and ahead_of > now:
            upto = ahead_of
            ahead = self._ahead_of(ahead_of, now)
        gate = self._gate
        # Keys due at the same instant come together: they share one scheduled time. (NaN
        # equals no due time, so the placeholder is replaced before its first use.)
        scheduled_at, scheduled = math.nan, _EPOCH
        for job_id, due in self._due.pop_due(upto, DISPATCH_BATCH):
            job = self._jobs.get(job_id)
            if job is None:  # removed by a listener of a run dispatched just before
                continue
            job.taken = due
            # Armed before dispatching so that listeners already see the next
            # run time (_arm_at clears the due time just popped first). Ticks
            # missed while the loop was blocked (or the clock jumped) are
            # coalesced into this one, not fired as a burst, and counted as
            # missed. Their count is only looked for when the next tick is past
            # already: the usual tick costs one next-tick sum.
            schedule, coalesced = job.spec.schedule, 0
            following = schedule.next_timestamp_after(due)
            if following is not None and following <= now:
                coalesced = count_ticks(schedule, due, now)
                following = schedule.next_timestamp_after(now)
            self._arm_at(job, following)
            if self._metrics is not None:
                following = job.next_due
                interval = None if following is None else following - due
                self._metrics.job_interval(job.spec.namespace, job.spec.name, interval)
            if gate is not None and not self._gate_allows(
                gate, job, due, Trigger.SCHEDULED, coalesced
            ):
                continue
            self._count_missed(job, coalesced)
            if due != scheduled_at:
                scheduled_at, scheduled = due, _utc(due)
            if ahead is None or due <= now:
                self._start(job, Trigger.SCHEDULED, scheduled)
            elif job.active:
                # Its overlap policy is judged at the instant, by what is active then.
                ahead.busy.append((job, scheduled))
            else:
                self._start(job, Trigger.SCHEDULED, scheduled, ahead.waits)
        if gate is not None:
            self._tell_decided(gate)
        self._set_timer()
        if self._timer_due is not None and self._timer_due <= now:
            self._runner.burst_goes_on()  # the next batch is due already: start it before outcomes
        elif self._instant is not None:
            # Runs made ready ahead wait for their instant: the burst goes on until they
            # have been let go and started (_let_go).
            self._runner.burst_ahead()
        else:
            self._runner.burst_over()

    def _ahead_of(self, instant: float, now: float) -> _Instant:
        """The runs being made ready ahead of ``instant``: let go at it."""
        pending = self._instant
        if pending is None or pending.at != instant:
            pending = self._instant = _Instant(instant, [], [])
            self._let_go_in(pending, instant - now)
        return pending

    def _let_go_in(self, pending: _Instant, delay: float) -> None:
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_at(loop.time() + delay, self._let_go, pending)

    def _let_go(self, pending: _Instant) -> None:
        """The instant has come: the runs made ready for it start."""
        left = pending.at - self._clock.wall()
        if left > 0.0:  # the loop's clock and the wall clock part by a hair: not before it
            self._let_go_in(pending, left)
            return
        if self._instant is pending:
            self._instant = None
        for wait in pending.waits:
            if not wait.done():  # cancelled: its run was (its job removed)
                wait.set_result(None)
        for job, scheduled in pending.busy:
            if job.removed:
                continue
            if self._closing:  # decided, and shut down before it: a queued run never starts
                self._runner.not_started(job, Trigger.SCHEDULED, scheduled, NOT_STARTED)
            else:
                self._start(job, Trigger.SCHEDULED, scheduled)
        # Their tasks step next, in this order: the burst goes on until they have (a flush
        # queued before them, by the bound on batches held, must not end it), and on past
        # them while runs of the instant are left to dispatch (made ready too slowly): the
        # batch that starts the last of them ends it.
        self._runner.burst_goes_on()
        if self._timer_due is None or self._timer_due > pending.at:
            asyncio.get_running_loop().call_soon(self._runner.burst_over)

    def _tell_decided(self, gate: FiringGate) -> None:
        """Tell the gate the earliest tick not decided yet: still armed, or asked and held.

        A held tick was asked about but neither started nor counted: should its job be
        lost, the successor must take it as uncertain, not as started here.
        """
        earliest = self._due.earliest()
        gate.asked_before(min(math.inf if earliest is None else earliest, self._held.earliest()))

    # -- dispatch ---------------------------------------------------------

    def _catch_up(self, job: JobState, history: History, now: float) -> None:
        """The one catch-up run status history allows: its latest tick, if missed and not late."""
        deadline = job.spec.starting_deadline_seconds
        if deadline is None or job.spec.suspended or history.last_run_time is None:
            return
        missed = job.spec.schedule.last_at_or_before(_utc(now))
        if missed is None or missed <= history.last_run_time:
            return
        tick = missed.timestamp()
        if job.next_due is not None and tick >= job.next_due:
            return  # the timer's, due but not yet popped
        if now - tick > deadline:
            return
        gate = self._gate
        if gate is not None and not self._gate_allows(gate, job, tick, Trigger.CATCH_UP):
            return
        log.info("job %s catches up on its tick of %s", job.spec.job_id, missed.isoformat())
        self._runner.dispatch(job, Trigger.CATCH_UP, missed, parent=None, manual=False)

    # -- the firing gate (several replicas) ---------------------------------

    def _gate_allows(
        self, gate: FiringGate, job: JobState, tick: float, trigger: Trigger, coalesced: int = 0
    ) -> bool:
        """Whether ``tick`` may start now; a tick the gate holds is kept to be asked again.

        ``coalesced``: the ticks after it that the loop was too late for, missed here
        when the job is this replica's (counted by the caller when it starts, or once a
        held tick of the job starts: :class:`HeldTicks`).
        """
        verdict = gate.verdict(job.spec.uid, tick)
        if verdict is Verdict.START:
            return True
        if verdict is Verdict.HOLD:
            self._held.hold(job.spec.job_id, tick, trigger, coalesced)
        return False

    def _count_missed(self, job: JobState, count: int) -> None:
        if count and self._metrics is not None:
            self._metrics.ticks_missed(job.spec.namespace, job.spec.name, count)

    def _start(
        self,
        job: JobState,
        trigger: Trigger,
        scheduled: datetime,
        waits: list[asyncio.Future[None]] | None = None,
    ) -> None:
        try:
            self._runner.dispatch(job, trigger, scheduled, parent=None, manual=False, waits=waits)
        except Exception:  # a listener or a schedule bug must not stop the other jobs
            log.exception("dispatching job %s failed", job.spec.job_id)

    def bound_moved(self) -> None:
        """The gate's bounds moved: ask again about every held tick, oldest first.

        A tick older than its job's allowance is missed; one the gate now gives
        to another replica is dropped; the first still held keeps the later ones held.
        The ticks passed over while the job was held (:class:`HeldTicks`) are missed
        once one of its ticks starts, kept while one is still held, and dropped when
        the gate gives the job to another replica: they are its successor's to account
        for then, as are the ticks too late to start.
        """
        gate = self._gate
        if gate is None or not self._held or self._closing:
            return
        now = self._clock.wall()
        for job_id, ticks in self._held.take().items():
            job = self._jobs.get(job_id)
            if job is None or job.spec.suspended:  # suspended since: its ticks are off
                self._held.forget(job_id)
                continue
            oldest_allowed = now - allowance(job.spec)
            due = [(tick, trigger) for tick, trigger in ticks if tick >= oldest_allowed]
            missed = len(ticks) - len(due)
            if not due:
                ours = True  # nothing left to ask about: held here, missed here
            elif runs_side_by_side(job.spec):
                ours = self._start_in_order(job, due)
            else:
                ours, older = self._start_newest(job, due)
                missed += older
            if ours:
                missed += self._held.passed_over(job_id)
            elif job_id not in self._held:
                # The gate gives the job, or these ticks, to another replica: its to account for.
                self._held.forget(job_id)
                missed = 0
            self._count_missed(job, missed)
        self._tell_decided(gate)

    def decide_due(self) -> None:
        """Ask the gate about every tick due by now, in one go rather than a batch a turn.

        The replica is about to release its jobs (SIGTERM): each tick due before it does
        is its to start; handed over part way through an instant, the ticks of that
        instant not yet asked about would be uncertain to the successors, and lost.
        """
        if self._closing:
            return
        now = self._clock.wall()
        # An instant being made ready is decided whole too: its runs already made ready
        # are this replica's to start at it, and so must the rest of them be.
        while (due := self._due.earliest()) is not None and (
            due <= now or (self._instant is not None and due == self._instant.at)
        ):
            self._cancel_timer()
            self._fire(due)

    def _start_in_order(self, job: JobState, due: list[tuple[float, Trigger]]) -> bool:
        """Start held ticks oldest first until the gate holds one; whether any started."""
        gate = self._gate
        assert gate is not None  # only called with a gate
        started = False
        for index, (tick, trigger) in enumerate(due):
            verdict = gate.verdict(job.spec.uid, tick)
            if verdict is Verdict.START:
                self._start(job, trigger, _utc(tick))
                started = True
            elif verdict is Verdict.HOLD:
                for still_held, held_trigger in due[index:]:
                    self._held.hold(job.spec.job_id, still_held, held_trigger)
                break
        return started

    def _start_newest(self, job: JobState, due: list[tuple[float, Trigger]]) -> tuple[bool, int]:
        """Start the newest held tick the gate lets through: whether one did, how many older missed.

        For a job whose ticks may not run side by side: started together, all but
        one would be skipped. Newer ticks the gate still holds stay held.
        """
        gate = self._gate
        assert gate is not None  # only called with a gate
        still_held: list[tuple[float, Trigger]] = []
        started, missed = False, 0
        for index in range(len(due) - 1, -1, -1):
            tick, trigger = due[index]
            verdict = gate.verdict(job.spec.uid, tick)
            if verdict is Verdict.START:
                self._start(job, trigger, _utc(tick))
                started, missed = True, index
                break
            if verdict is Verdict.HOLD:
                still_held.append((tick, trigger))
        for tick, trigger in reversed(still_held):  # held oldest first
            self._held.hold(job.spec.job_id, tick, trigger)
        return started, missed

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        """Forget the held ticks of jobs lost; catch up the jobs gained from their start bounds."""
        if self._gate is None or self._closing:
            return
        for key in lost:
            self._early_gains.pop(key, None)
            job_id = self._job_ids.get(key)
            if job_id is not None:
                self._held.forget(job_id)
        now = self._clock.wall()
        tally = GainTally()
        for gain in gained:
            job_id = self._job_ids.get(gain.key)
            job = None if job_id is None else self._jobs.get(job_id)
            if job is None:
                self._early_gains[gain.key] = gain
            else:
                tally.add(*self._catch_up_gain(job, gain, now))
        _say_lost(tally)

    def _catch_up_gain(self, job: JobState, gain: Gain, now: float) -> tuple[int, int]:
        """docs/ha.md rule 7: start the due ticks above the start bound, count the rest.

        Returns the ticks counted missed and uncertain, for the caller to say once for
        all the jobs gained together: a failover moves thousands of jobs at once.
        """
        spec = job.spec
        # The catch-up covers every tick held so far; they must not start twice.
        self._held.forget(spec.job_id)
        if spec.suspended:
            return 0, 0
        if not math.isfinite(gain.start_bound):
            # No replica ever owned it (the ring's first epoch): what it missed is known from
            # its status history only, and caught up as a single replica would.
            self._catch_up(job, job.history(), now)
            return 0, 0
        if job.next_due is not None and job.next_due <= gain.start_bound:
            # The armed tick is the previous owner's. Left armed, its timer, late, would ask
            # about it alone and pass over the ticks after it, which are this replica's now.
            self._arm(job, after=gain.start_bound)
            self._set_timer()
        plan = plan_catch_up(
            spec.schedule,
            start_bound=gain.start_bound,
            uncertain_from=gain.uncertain_from,
            now=now,
            before=job.next_due,
            allowance_seconds=allowance(spec),
        )
        ticks, missed = plan.ticks, plan.missed
        if not runs_side_by_side(spec):
            missed += max(len(ticks) - 1, 0)
            ticks = ticks[-1:]
        if (missed or plan.uncertain) and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "job %s gained: %d ticks missed, %d ticks uncertain (maybe started by a fenced "
                "replica, not run again); start bound %s, uncertain from %s",
                spec.job_id,
                missed,
                plan.uncertain,
                _utc(gain.start_bound).isoformat(timespec="milliseconds"),
                "-"
                if gain.uncertain_from is None
                else _utc(gain.uncertain_from).isoformat(timespec="milliseconds"),
                extra={"job_id": spec.job_id},
            )
        self._count_missed(job, missed)
        if plan.uncertain and self._metrics is not None:
            self._metrics.ticks_uncertain(spec.namespace, spec.name, plan.uncertain)
        gate = self._gate
        for tick in ticks:
            if gate is not None and self._gate_allows(gate, job, tick, Trigger.CATCH_UP):
                self._start(job, Trigger.CATCH_UP, _utc(tick))
        return missed, plan.uncertain

    # -- shutdown ---------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop arming timers, signal cancellation, wait up to the shutdown timeout.

        Queued runs never start. Runs still active after
        ``shutdown_timeout_seconds`` are cancelled and recorded as failures
        (Interrupted). Runs whose outcome is recorded already (a thread that
        outlived its run) are not waited for. Returns at once when nothing runs.
        """
        self._closing = True
        self._cancel_timer()
        # Runs put off are over, not active: recorded as they ended, not as interrupted.
        self._runner.record_put_off()
        self._due.clear()
        if self._watchdog is not None:
            self._watchdog.stop()
        await self._runner.shutdown(list(self._jobs.values()), self._shutdown_timeout)
