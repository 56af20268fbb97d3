"""The replica protocol, model-checked: no (job, tick) ever starts twice, and ticks do start.

Hypothesis drives 2 to 4 replicas (the real :class:`~podcron.ha.agent.Agent`
and :class:`~podcron.ha.protocol.Member`) over one :class:`MemoryStore`, in
simulated time. Each replica has its own wall clock (offset and rate) and its
own monotonic clock (rate), and a model engine that asks the gate for every
tick of a few jobs due every second, exactly as the firing rule says. The
rules interleave renewals (acknowledged, refused, or applied with the reply
lost), pauses, crashes, restarts under a new identity, SIGTERM releases and
joins. Safety is checked at every start; liveness after a quiet period.

The store never suspends (no latency hook), so one ``send(None)`` runs an
agent's step to its end: the steps are atomic, their order is hypothesis's.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from podcron.engine.gate import Gain, Verdict
from podcron.ha.agent import Agent
from podcron.ha.protocol import MemberState, Params
from podcron.ha.store import Fault, MemoryStore

PARAMS = Params(renew_period=1.0, fire_ahead=2.0, fence_after=6.0)
JOBS = [f"ns/job-{i}" for i in range(6)]
MAX_REPLICAS = 4
#: The quiet period ends this long (simulated seconds) after the ring settled.
SETTLED_FOR = 6.0
QUIET_CAP = 90.0

T = TypeVar("T")


def run(call: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine that never suspends (MemoryStore without latency) to its end."""
    try:
        call.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    call.close()
    raise AssertionError("a protocol step suspended; the model needs atomic steps")


@dataclass
class Clock:
    """One replica's clocks as functions of simulated time."""

    offset: float
    rate: float
    monotonic_rate: float
    sim: list[float]

    def wall(self) -> float:
        return 1_000.0 + self.offset + self.rate * self.sim[0]

    def monotonic(self) -> float:
        return self.monotonic_rate * self.sim[0]


#: How late a caught-up tick may be (a job without startingDeadlineSeconds: docs/ha.md, rule 7).
CATCH_UP = 10.0


def _above(bound: float, now: float) -> int:
    """The first tick above ``bound`` that is not more than :data:`CATCH_UP` late."""
    return max(math.ceil(now - CATCH_UP), math.floor(max(bound, now - CATCH_UP - 1)) + 1)


@dataclass
class ModelEngine:
    """Asks the gate for each due tick of each job, in order, as the engine does."""

    replica: Replica
    #: The next tick of each job this engine will ask about.
    pointer: dict[str, int] = field(default_factory=dict)
    #: Ticks counted as uncertain or missed at a gain, as the engine's catch-up counts them.
    uncertain: set[tuple[str, int]] = field(default_factory=set)
    missed: set[tuple[str, int]] = field(default_factory=set)

    def bound_moved(self) -> None:
        pass

    def decide_due(self) -> None:
        pass

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        now = self.replica.clock.wall()
        for gain in gained:
            # Catch-up: every tick above the start bound that is at most CATCH_UP late (the
            # real engine also stops at 10 ticks; with one tick a second that is the same).
            first = _above(gain.start_bound, now)
            above = math.floor(gain.start_bound) + 1 if math.isfinite(gain.start_bound) else first
            self.missed.update((gain.key, t) for t in range(above, first))
            if gain.uncertain_from is not None and math.isfinite(gain.uncertain_from):
                low = math.floor(gain.uncertain_from) + 1
                self.uncertain.update((gain.key, t) for t in range(low, above))
            self.pointer[gain.key] = first

    def fire(self) -> None:
        now = self.replica.clock.wall()
        for job in JOBS:
            tick = self.pointer.setdefault(job, math.ceil(now))
            while tick <= now:
                verdict = self.replica.agent.verdict(job, float(tick))
                if verdict is Verdict.HOLD:
                    break
                if verdict is Verdict.START:
                    self.replica.ring.started(job, tick, self.replica.agent.identity)
                tick += 1
            self.pointer[job] = tick


@dataclass
class Replica:
    ring: Ring
    name: str
    clock: Clock
    agent: Agent
    engine: ModelEngine | None = None
    #: Paused (SIGSTOP) until this simulated time: its steps and its engine stop.
    paused_until: float | None = None
    #: Crashed or shut down: it never steps again (a restart is a new replica process).
    dead: bool = False

    @property
    def running(self) -> bool:
        return self.paused_until is None and not self.dead


class Ring:
    """The store, the replicas and the ledger of every tick started; counts the agents report."""

    def __init__(self) -> None:
        self.counts = {"renew_failed": 0, "epoch_adopted": 0, "fenced": 0}
        self.sim = [0.0]
        self.faults: dict[tuple[str, str], Fault] = {}
        self.store = MemoryStore(fault=self._fault)
        self.replicas: list[Replica] = []
        self.ledger: dict[tuple[str, int], str] = {}
        self._suffixes = itertools.count()
        #: Whether a renewal led by more than Λ (its replica's steps had come slowly).
        self.led_further = False

    def _fault(self, operation: str, name: str) -> Fault:
        return self.faults.pop((operation, name), Fault.NONE)

    def renew_failed(self, reason: str) -> None:
        self.counts["renew_failed"] += 1

    def epoch_adopted(self, epoch: int, gained: int, lost: int) -> None:
        self.counts["epoch_adopted"] += 1

    def fenced(self) -> None:
        self.counts["fenced"] += 1

    def ticks_held(self, seconds: float) -> None:
        assert seconds >= 0, "ticks cannot be let go before they were held"

    def started(self, job: str, tick: int, identity: str) -> None:
        # Twice is twice, by two replicas or by one (a replica whose bucket came back).
        first = self.ledger.get((job, tick))
        assert first is None, f"{job} tick {tick} started by {first}, then by {identity}"
        self.ledger[(job, tick)] = identity

    def unaccounted(self, last: int) -> list[tuple[str, int]]:
        """Ticks up to ``last`` that nobody started and no gain counted (uncertain or missed).

        From each job's first start on: the ticks before it were nobody's (no epoch yet).
        """
        counted = set(self.ledger)
        for replica in self.replicas:
            assert replica.engine is not None
            counted |= replica.engine.uncertain | replica.engine.missed
        return [
            (job, tick)
            for job in JOBS
            for tick in range(min((t for j, t in self.ledger if j == job), default=last), last + 1)
            if (job, tick) not in counted
        ]

    def spawn(self, name: str, clock: Clock) -> Replica:
        agent = Agent(
            self.store,
            ring="model",
            pod_name=name,
            params=PARAMS,
            wall=clock.wall,
            monotonic=clock.monotonic,
            new_suffix=lambda: f"{next(self._suffixes):08x}",
            observer=self,
        )
        for key in JOBS:
            agent.add_job(key)
        replica = Replica(self, name, clock, agent)
        replica.engine = ModelEngine(replica)
        agent.set_listener(replica.engine)
        self.replicas.append(replica)
        return replica

    def step(self, replica: Replica) -> None:
        """A renewal, between the engine's firings: the ticks due before it fire first.

        As in the operator, whose tick timers due before the renewal's own timer run
        before it. (The other order, a stalled event loop that reads a renewal's reply
        before the timers due meanwhile, is a limit of docs/ha.md: a tick due in the
        stall whose job moves in that renewal is lost uncounted.)
        """
        assert replica.engine is not None
        replica.engine.fire()
        run(replica.agent.step())
        replica.engine.fire()
        self.led_further |= replica.agent.fire_lead > PARAMS.fire_ahead

    def advance(self, seconds: float) -> None:
        """Time passes; a paused replica whose pause ends resumes where it stopped.

        That is its engine first, asking the gate about every tick due while it
        slept, before any renewal tells it what happened meanwhile.
        """
        self.sim[0] += seconds
        for replica in self.replicas:
            if replica.paused_until is not None and replica.paused_until <= self.sim[0]:
                replica.paused_until = None
                if not replica.dead and replica.engine is not None:
                    replica.engine.fire()


clocks = st.builds(
    Clock,
    offset=st.floats(-3.0, 3.0),
    rate=st.sampled_from([0.9, 1.0, 1.1]),
    monotonic_rate=st.sampled_from([0.5, 1.0, 2.0]),
    sim=st.just([0.0]),
)


class ReplicaProtocol(RuleBasedStateMachine):
    """The rules; each replica is chosen by its index among those ever started."""

    def __init__(self) -> None:
        super().__init__()
        self.ring = Ring()

    def _clock(self, clock: Clock) -> Clock:
        clock.sim = self.ring.sim
        return clock

    @initialize(first=clocks, second=clocks)
    def start_two(self, first: Clock, second: Clock) -> None:
        """Two replicas that formed the ring: the faults start from a working one."""
        self.ring.spawn("a", self._clock(first))
        self.ring.spawn("b", self._clock(second))
        for _ in range(6):
            self.ring.advance(0.5)
            for replica in self.ring.replicas:
                self.ring.step(replica)

    def _pick(self, index: int) -> Replica:
        return self.ring.replicas[index % len(self.ring.replicas)]

    @rule(seconds=st.floats(0.05, 2.5))
    def advance_time(self, seconds: float) -> None:
        self.ring.advance(seconds)

    @rule(rounds=st.integers(1, 16), order=st.randoms(use_true_random=False))
    def run_normally(self, rounds: int, order: Any) -> None:
        """Every running replica renews each half second, in an order that varies."""
        for _ in range(rounds):
            self.ring.advance(0.5)
            replicas = [r for r in self.ring.replicas if r.running]
            order.shuffle(replicas)
            for replica in replicas:
                self.ring.step(replica)

    @rule(
        index=st.integers(0, 15),
        seconds=st.floats(0.5, 20.0),
        order=st.randoms(use_true_random=False),
    )
    def pause_while_the_others_run(self, index: int, seconds: float, order: Any) -> None:
        """SIGSTOP, the others carry on, SIGCONT: the paused engine asks first, then it renews."""
        replica = self._pick(index)
        if not replica.running:
            return
        self.pause(index, seconds)
        self.run_normally(math.ceil(seconds / 0.5), order)
        if replica.running:
            self.ring.step(replica)

    @rule(index=st.integers(0, 15))
    def renew(self, index: int) -> None:
        replica = self._pick(index)
        if replica.running:
            self.ring.step(replica)

    @rule(index=st.integers(0, 15), fault=st.sampled_from([Fault.UNAVAILABLE, Fault.LOST_REPLY]))
    def renew_faulty(self, index: int, fault: Fault) -> None:
        replica = self._pick(index)
        if not replica.running:
            return
        member = replica.agent.member
        operation = "create" if member.record is None else "replace"
        self.ring.faults[(operation, member.lease_name)] = fault
        self.ring.step(replica)
        self.ring.faults.clear()

    @rule(index=st.integers(0, 15))
    def list_fails(self, index: int) -> None:
        replica = self._pick(index)
        if replica.running:
            self.ring.faults[("list", "podcron.dev/ring=model")] = Fault.UNAVAILABLE
            self.ring.step(replica)
            self.ring.faults.clear()

    @rule(index=st.integers(0, 15))
    def fire_only(self, index: int) -> None:
        replica = self._pick(index)
        if replica.running and replica.engine is not None:
            replica.engine.fire()

    @rule(index=st.integers(0, 15), seconds=st.floats(0.5, 20.0))
    def pause(self, index: int, seconds: float) -> None:
        replica = self._pick(index)
        if replica.running:
            replica.paused_until = self.ring.sim[0] + seconds

    @rule(index=st.integers(0, 15))
    def crash(self, index: int) -> None:
        self._pick(index).dead = True

    @precondition(lambda self: len(self.ring.replicas) < 12)
    @rule(index=st.integers(0, 15), clock=clocks)
    def restart(self, index: int, clock: Clock) -> None:
        replica = self._pick(index)
        if replica.dead and sum(not r.dead for r in self.ring.replicas) < MAX_REPLICAS:
            self.ring.spawn(replica.name, self._clock(clock))

    @rule(index=st.integers(0, 15), attempts=st.integers(0, 3), lost=st.booleans())
    def sigterm(self, index: int, attempts: int, lost: bool) -> None:
        replica = self._pick(index)
        if not replica.running:
            return
        agent = replica.agent
        agent.begin_release()
        for attempt in range(attempts):
            if lost and attempt == 0:
                self.ring.faults[("replace", agent.member.lease_name)] = Fault.LOST_REPLY
            done = run(agent.release_once())
            self.ring.faults.clear()
            if done:
                break
        replica.dead = True

    @precondition(lambda self: len(self.ring.replicas) < 12)
    @rule(clock=clocks)
    def join(self, clock: Clock) -> None:
        if sum(not r.dead for r in self.ring.replicas) < MAX_REPLICAS:
            self.ring.spawn(f"j{len(self.ring.replicas)}", self._clock(clock))

    def teardown(self) -> None:
        # What the example went through (pytest --hypothesis-show-statistics): the
        # check is worth what its examples reach.
        counts = self.ring.counts
        coordinator = self.ring.store.leases().get("podcron-coordinator-model")
        epochs = 0 if coordinator is None else int(coordinator.annotations["podcron.dev/epoch"])
        event(f"epochs published: {'5+' if epochs >= 5 else epochs}")
        event(f"replicas fenced: {'2+' if counts['fenced'] >= 2 else counts['fenced']}")
        uncertain = any(r.engine is not None and r.engine.uncertain for r in self.ring.replicas)
        event(f"gains with uncertain ticks: {uncertain}")
        event(f"renewals failed: {counts['renew_failed'] > 0}")
        event(f"renewals led by more than Λ: {self.ring.led_further}")
        event(f"replicas started: {len(self.ring.replicas)}")

    @invariant()
    def a_member_never_starts_above_its_acknowledged_bound(self) -> None:
        for replica in self.ring.replicas:
            member = replica.agent.member
            assert member.w_acked <= self._stored_fire_bound(member.lease_name, member.w_acked)

    def _stored_fire_bound(self, name: str, default: float) -> float:
        record = self.ring.store.leases().get(name)
        if record is None:
            return default
        return float(record.annotations.get("podcron.dev/fire-bound", "-inf"))

    @precondition(lambda self: any(r.running for r in self.ring.replicas))
    @rule()
    def quiet_period_then_every_tick_starts(self) -> None:
        """No faults, every running replica steps each 0.5 s: the ring settles, ticks start."""
        ring = self.ring
        running: list[Replica] = []
        settled_since: float | None = None
        last_change = ring.sim[0]
        epoch = None
        began = ring.sim[0]
        while ring.sim[0] - began < QUIET_CAP:
            ring.advance(0.5)
            running = [r for r in ring.replicas if r.running]
            for replica in running:
                ring.step(replica)
            coordinator = ring.store.leases().get("podcron-coordinator-model")
            now_epoch = None if coordinator is None else coordinator.resource_version
            if now_epoch != epoch:
                epoch, last_change, settled_since = now_epoch, ring.sim[0], None
            if self._settled(running):
                settled_since = ring.sim[0] if settled_since is None else settled_since
                if ring.sim[0] - settled_since >= SETTLED_FOR:
                    break
            else:
                settled_since = None
        else:
            raise AssertionError(f"the ring did not settle in {QUIET_CAP} s with {running}")
        self._every_tick_started_since(last_change, running)

    def _settled(self, running: list[Replica]) -> bool:
        coordinator = self.ring.store.leases().get("podcron-coordinator-model")
        if coordinator is None:
            return False
        epoch = int(coordinator.annotations["podcron.dev/epoch"])
        members = set(filter(None, coordinator.annotations["podcron.dev/members"].split(",")))
        return members == {r.agent.identity for r in running} and all(
            r.agent.member.state is MemberState.ACTIVE and r.agent.member.settled_epoch == epoch
            for r in running
        )

    def _every_tick_started_since(self, last_change: float, running: list[Replica]) -> None:
        # The last change happened at simulated time `last_change`; no clock read more then.
        saved = self.ring.sim[0]
        self.ring.sim[0] = last_change
        highest = max(r.clock.wall() for r in self.ring.replicas)
        self.ring.sim[0] = saved
        lowest_now = min(r.clock.wall() for r in running)
        # A renewal leads by up to twice Λ when steps came slowly before the quiet period.
        first = math.floor(highest + PARAMS.fire_ahead_at_most) + 1
        last = math.floor(lowest_now) - 1
        missing = [
            (job, tick)
            for job in JOBS
            for tick in range(first, last + 1)
            if (job, tick) not in self.ring.ledger
        ]
        assert missing == [], f"ticks not started after the ring settled: {missing[:5]}"
        unaccounted = self.ring.unaccounted(last)
        assert unaccounted == [], f"ticks neither started nor counted: {unaccounted[:5]}"


ReplicaProtocol.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestReplicaProtocol = ReplicaProtocol.TestCase


def test_a_replica_fenced_before_it_learnt_its_start_bounds_leaves_no_tick_twice() -> None:
    """The case of docs/ha.md's floor, which random interleavings reach rarely.

    p joins and adopts the epoch that gives it jobs of q, and stops before q
    hands them over: it never learns their start bound. q, whose clock runs
    ahead, starts them until it hands over, fences p after L and gets them
    back. p's own bounds say nothing of what q started: the floor (q's
    handover bound) does.
    """
    ring = Ring()
    q = ring.spawn("q", Clock(offset=3.0, rate=1.0, monotonic_rate=1.0, sim=ring.sim))
    for _ in range(4):
        ring.advance(0.5)
        ring.step(q)
    p = ring.spawn("p", Clock(offset=-3.0, rate=1.0, monotonic_rate=1.0, sim=ring.sim))
    ring.advance(0.5)
    ring.step(p)  # p's Lease exists
    ring.step(q)  # q publishes the epoch with p, and hands over at its next renewal
    ring.step(p)  # p adopts it: the bound of what it gained waits for q's handover
    assert p.agent.member.settled_epoch < p.agent.member.epoch
    p.paused_until = math.inf
    for _ in range(40):
        ring.advance(0.5)
        ring.step(q)  # the ledger refuses a tick started twice
    assert all(q.agent.owns(job) for job in JOBS)
    assert q.engine is not None
    assert q.engine.uncertain


def test_jobs_whose_new_owner_died_waiting_for_a_dead_predecessor_lose_no_tick_uncounted() -> None:
    """Two SIGKILLs: the floor's uncertain window reaches back to the first.

    a is killed; f joins before a is fenced and adopts the epoch that gives it
    a job of a's, whose start bound waits for a's handover; f is killed too. b
    fences both and gains the job from f, which had not settled: the start
    bound falls back on the floor (a's frozen fire bound), and the ticks a
    never started below it are counted uncertain from where a stopped, not
    from where f did.
    """
    ring = Ring()

    def clock() -> Clock:
        return Clock(offset=0.0, rate=1.0, monotonic_rate=1.0, sim=ring.sim)

    b = ring.spawn("b", clock())
    for _ in range(3):
        ring.advance(0.5)
        ring.step(b)
    a = ring.spawn("a", clock())
    for _ in range(6):
        ring.advance(0.5)
        ring.step(b)
        ring.step(a)
    a.dead = True
    f = ring.spawn("f", clock())
    ring.advance(0.5)
    ring.step(f)  # f's Lease exists
    ring.step(b)  # b publishes the epoch with f: a's Lease has not gone stale yet
    ring.step(f)  # f adopts it and waits for a's handover of job-1
    assert f.agent.owner_of("ns/job-1") == f.agent.identity
    assert f.agent.member.settled_epoch < f.agent.member.epoch
    for _ in range(2):
        ring.advance(0.5)
        ring.step(b)
        ring.step(f)
    f.dead = True
    for _ in range(40):
        ring.advance(0.5)
        ring.step(b)
    assert all(b.agent.owns(job) for job in JOBS)
    assert ring.unaccounted(math.floor(b.clock.wall()) - 1) == []


def test_a_job_whose_owner_died_before_reading_the_epoch_giving_it_loses_no_tick_uncounted() -> (
    None
):
    """A crash, a release, then a SIGTERM whose release never reached the store.

    a crashes; b's release publishes the epoch that gives b's jobs to a, which
    never reads it, so a's Lease still shows the epoch it settled before. j2
    joins, and once a is fenced it gains those jobs but is stopped before it
    learns their start bound. j3, gaining them from j2, falls back on the floor:
    its uncertain window must reach back through a to b's handover, although a's
    Lease says nothing of the epoch in which it owned them. (Found by the model.)
    """
    machine = ReplicaProtocol()

    def clock() -> Clock:
        return Clock(offset=0.0, rate=0.9, monotonic_rate=0.5, sim=[0.0])

    machine.start_two(first=clock(), second=clock())
    machine.crash(index=0)
    machine.join(clock=clock())
    machine.sigterm(index=1, attempts=1, lost=False)
    machine.pause_while_the_others_run(index=2, seconds=1.0, order=random.Random(0))
    machine.join(clock=clock())
    machine.sigterm(index=2, attempts=0, lost=False)
    machine.quiet_period_then_every_tick_starts()
