"""The agent on a fake loop clock over MemoryStore: ownership, split, failover, release.

Each test runs real :class:`~podcron.ha.agent.Agent` loops; the ``looptime``
plugin makes their sleeps free, so the protocol's periods (R = 1 s, L = 6 s)
pass in simulated time and the deadlines below are the protocol's own bounds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from podcron.engine.gate import Gain, Verdict
from podcron.ha.agent import Agent, AgentObserver
from podcron.ha.lead import CYCLES_REMEMBERED
from podcron.ha.protocol import (
    ASKED_BEFORE,
    EPOCH,
    FIRE_BOUND,
    HANDOVER_BOUND,
    MEMBERS,
    RENEWED_AT,
    RING_LABEL,
    TICK_RESOLUTION,
    Params,
    coordinator_lease_name,
    member_lease_name,
)
from podcron.ha.ring import bucket
from podcron.ha.store import Fault, MemoryStore
from podcron.telemetry.replica_metrics import ReplicaMetrics

from .engine_support import LoopClock

pytestmark = pytest.mark.looptime

PARAMS = Params()
R, LAMBDA, L = PARAMS.renew_period, PARAMS.fire_ahead, PARAMS.fence_after
JOBS = [f"ns/job-{i}" for i in range(40)]


class Listener:
    """The engine's side of the gate: what the agent told it."""

    def __init__(self) -> None:
        self.gains: dict[str, Gain] = {}
        self.lost: list[str] = []
        self.moved = 0
        self.decided = 0

    def bound_moved(self) -> None:
        self.moved += 1

    def decide_due(self) -> None:
        self.decided += 1

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        self.gains.update((g.key, g) for g in gained)
        self.lost += lost
        for key in lost:
            self.gains.pop(key, None)


async def until(condition: Callable[[], object], within: float) -> None:
    """Waits for ``condition`` on the loop's (fake) clock, for at most ``within`` seconds.

    It looks every 50 ms of that clock: the agents change state inside their
    steps, which signal nothing a test could wait on more directly.
    """
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


class Ring:
    """Agents over one store, each with its own task; the test decides when they stop."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.clock = LoopClock()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.listeners: dict[str, Listener] = {}
        self._suffixes = itertools.count()

    def start(self, name: str, endpoint: str = "", observer: AgentObserver | None = None) -> Agent:
        agent = Agent(
            self.store,
            ring="t",
            pod_name=name,
            endpoint=endpoint,
            wall=self.clock.wall,
            monotonic=lambda: asyncio.get_running_loop().time(),
            new_suffix=lambda: f"{next(self._suffixes):08x}",
            observer=observer,
        )
        for key in JOBS:
            agent.add_job(key)
        listener = Listener()
        agent.set_listener(listener)
        self.listeners[name] = listener
        self.tasks[name] = asyncio.create_task(agent.run(), name=f"agent {name}")
        return agent

    def crash(self, name: str) -> None:
        self.tasks.pop(name).cancel()

    def annotation(self, lease: str, key: str) -> str:
        return self.store.leases()[lease].annotations[key]

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


@pytest.fixture
async def ring() -> AsyncIterator[Ring]:
    ring = Ring()
    yield ring
    await ring.close()


def settled(*agents: Agent) -> bool:
    """``agents`` are the members of the epoch they all adopted, and every job is owned
    by exactly one of them, with a known start bound."""
    members = {a.identity for a in agents}
    if any(set(a.member.assignment.members) != members for a in agents):
        return False
    return all(
        sum(a.owns(k) and a.verdict(k, -math.inf) is Verdict.NOT_OWNER for a in agents) == 1
        for k in JOBS
    )


async def test_a_single_replica_coordinates_and_owns_every_job(ring: Ring) -> None:
    a = ring.start("a")
    await until(lambda: settled(a), within=2 * R)
    coordinator = ring.store.leases()[coordinator_lease_name("t")]
    assert coordinator.holder == a.identity
    assert coordinator.annotations[MEMBERS] == a.identity
    # The ring's first epoch: nobody started a tick before it.
    assert {g.start_bound for g in ring.listeners["a"].gains.values()} == {-math.inf}
    assert a.owned_jobs() == len(JOBS)
    now = ring.clock.wall()
    assert a.verdict(JOBS[0], math.floor(now)) is Verdict.START
    assert a.verdict(JOBS[0], now + LAMBDA + R) is Verdict.HOLD
    # Steady state: one renewal per R, nothing else written.
    writes, version = ring.store.writes["replace"], coordinator.resource_version
    await asyncio.sleep(10 * R + R / 2)
    assert ring.store.writes["replace"] - writes == 10
    assert ring.store.leases()[coordinator_lease_name("t")].resource_version == version


async def test_two_replicas_split_the_jobs_and_the_newcomer_starts_above_the_handover(
    ring: Ring,
) -> None:
    a = ring.start("a")
    await until(lambda: settled(a), within=2 * R)
    b = ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    moved = [k for k in JOBS if b.owns(k)]
    assert 0 < len(moved) < len(JOBS)
    assert sorted(ring.listeners["a"].lost) == sorted(moved)
    handover = float(ring.annotation(member_lease_name(a.identity), HANDOVER_BOUND))
    gains = ring.listeners["b"].gains
    assert {gains[k].start_bound for k in moved} == {handover}
    assert all(gains[k].uncertain_from is None for k in moved)
    assert all(a.verdict(k, handover + 1) is Verdict.NOT_OWNER for k in moved)


async def _two_settled(ring: Ring) -> tuple[Agent, Agent, list[str]]:
    """Replicas a and b, both settled; and a's jobs, which the test takes from it."""
    a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    return a, b, [k for k in JOBS if a.owns(k)]


async def test_a_crashed_replica_is_fenced_after_l_and_its_jobs_start_above_its_frozen_bound(
    ring: Ring, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, lost = await _two_settled(ring)
    writes: list[str] = []

    def note_writes(operation: str, name: str) -> Fault:
        # Noted as they come: once b settles the epoch without a, a's Lease is deleted.
        if name == member_lease_name(a.identity):
            writes.append(operation)
        return Fault.NONE

    ring.crash("a")
    ring.store.fault = note_writes
    crashed_at = asyncio.get_running_loop().time()
    frozen = float(ring.annotation(member_lease_name(a.identity), FIRE_BOUND))
    await until(lambda: all(k in ring.listeners["b"].gains for k in lost), within=L + 3 * R)
    # Not before its Lease stood still for L on b's monotonic clock.
    assert asyncio.get_running_loop().time() - crashed_at >= L
    # a wrote nothing since: the first write of its Lease is b's fence, the last its delete.
    assert writes[0] == "replace"
    assert "fenced replica a-" in caplog.text
    gains = ring.listeners["b"].gains
    assert {(gains[k].start_bound, gains[k].uncertain_from) for k in lost} == {
        (frozen, frozen - LAMBDA)
    }
    assert settled(b)


async def test_a_replica_crashed_while_renewing_slowly_leaves_its_whole_lead_uncertain(
    ring: Ring,
) -> None:
    a, _, lost = await _two_settled(ring)
    lease = member_lease_name(a.identity)

    async def slow_for_a(operation: str, name: str) -> None:
        if name == lease:  # a's renewals take 0.9 s: its cycles come within R/2 of Λ
            await asyncio.sleep(0.9)

    ring.store.latency = slow_for_a
    await until(lambda: a.fire_lead == PARAMS.fire_ahead_at_most, within=10 * R)
    # Until its renewal with that lead is acknowledged.
    await until(
        lambda: (
            float(ring.annotation(lease, FIRE_BOUND))
            == float(ring.annotation(lease, RENEWED_AT)) + PARAMS.fire_ahead_at_most
        ),
        within=3 * R,
    )
    ring.crash("a")
    ring.store.latency = None
    frozen = float(ring.annotation(lease, FIRE_BOUND))
    renewed = float(ring.annotation(lease, RENEWED_AT))
    await until(lambda: all(k in ring.listeners["b"].gains for k in lost), within=L + 3 * R)
    gains = ring.listeners["b"].gains
    # Every tick from its last renewal up to its bound, 4 s later, may have started: none
    # is run again. Λ below the bound (the window before the lead could widen) would take
    # the first 2 s of them as started, and lose those that had not, uncounted.
    assert {(gains[k].start_bound, gains[k].uncertain_from) for k in lost} == {(frozen, renewed)}
    assert renewed == frozen - PARAMS.fire_ahead_at_most


async def test_a_crashed_replica_running_behind_leaves_the_ticks_it_had_not_reached_uncertain(
    ring: Ring,
) -> None:
    a, _, lost = await _two_settled(ring)
    # Its engine runs 0.7 s behind: every tick due before then is started or counted, the
    # rest not reached yet. Its next renewal says so.
    behind = ring.clock.wall() - 0.7
    a.asked_before(behind)
    lease = member_lease_name(a.identity)
    await until(lambda: ring.annotation(lease, ASKED_BEFORE) == repr(behind), within=2 * R)
    ring.crash("a")
    frozen = float(ring.annotation(lease, FIRE_BOUND))
    assert behind < frozen - LAMBDA  # renewed after it, so Λ below W would be too high
    await until(lambda: all(k in ring.listeners["b"].gains for k in lost), within=L + 3 * R)
    gains = ring.listeners["b"].gains
    # From the first tick it had not reached, its ticks may or may not have started: not
    # taken as started (a chaos run lost such ticks uncounted), not run again.
    assert {(gains[k].start_bound, gains[k].uncertain_from) for k in lost} == {
        (frozen, behind - TICK_RESOLUTION)
    }


def _key_in(buckets: set[int], name: str) -> str:
    """A job key of one of ``buckets``."""
    return next(k for k in (f"ns/{name}-{i}" for i in itertools.count()) if bucket(k) in buckets)


async def test_a_job_registered_after_its_bucket_was_gained_is_gained_then_unless_it_is_newer(
    ring: Ring,
) -> None:
    a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    taken = {bucket(k) for k in JOBS if a.owns(k)}
    ring.crash("a")
    frozen = float(ring.annotation(member_lease_name(a.identity), FIRE_BOUND))
    await until(lambda: settled(b), within=L + 3 * R)
    gains = ring.listeners["b"].gains
    now = ring.clock.wall()
    # Existed all along, registered only now (b was still starting, say): gained with the
    # bucket's bound, so its ticks since the gain are caught up or counted.
    old = _key_in(taken, "old")
    b.add_job(old, created=now - 3600)
    assert gains[old] == Gain(old, frozen, frozen - LAMBDA)
    # Created after the bound, before the gain: no tick of it is older than it.
    between = _key_in(taken, "between")
    b.add_job(between, created=frozen + 0.5)
    assert gains[between] == Gain(between, frozen + 0.5, None)
    # Created after the gain: a new job, whose ticks start from now on.
    new = _key_in(taken, "new")
    b.add_job(new, created=now)
    assert new not in gains
    assert b.owns(new)
    # Not owned here, or no creation time: nothing to gain.
    unknown = _key_in(taken, "unknown")
    b.add_job(unknown)
    assert unknown not in gains


async def test_a_job_registered_late_in_the_rings_first_epoch_is_caught_up_from_its_history(
    ring: Ring,
) -> None:
    a = ring.start("a")
    await until(lambda: settled(a), within=2 * R)
    late = "ns/late"
    a.add_job(late, created=ring.clock.wall() - 3600)
    assert ring.listeners["a"].gains[late] == Gain(late, -math.inf)


async def test_a_paused_replica_is_fenced_and_rejoins_under_a_new_identity(ring: Ring) -> None:
    a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    first = a.identity
    ring.crash("a")  # its loop stops, its state stays: a pause
    await until(lambda: settled(b), within=L + 3 * R)
    await a.step()
    assert a.identity == first
    assert not any(a.owns(k) for k in JOBS)
    assert a.verdict(JOBS[0], ring.clock.wall() - 1) is Verdict.NOT_OWNER
    ring.tasks["a"] = asyncio.create_task(a.run())
    await until(lambda: settled(a, b), within=4 * R)
    assert a.identity != first


async def test_a_released_replica_hands_its_jobs_over_within_2r_with_nothing_uncertain(
    ring: Ring,
) -> None:
    a, b, lost = await _two_settled(ring)
    await a.release()
    assert ring.listeners["a"].decided == 1, "its engine decided every tick due, first"
    assert not any(a.owns(k) for k in JOBS)
    # Read before b settles: then its released Lease is no longer needed, and deleted.
    handover = float(ring.annotation(member_lease_name(a.identity), HANDOVER_BOUND))
    await until(lambda: settled(b), within=2 * R)
    gains = ring.listeners["b"].gains
    assert {(gains[k].start_bound, gains[k].uncertain_from) for k in lost} == {(handover, None)}


async def test_failed_renewals_hold_ticks_until_a_renewal_goes_through(ring: Ring) -> None:
    down = False
    ring.store.fault = lambda operation, name: Fault.UNAVAILABLE if down else Fault.NONE
    a = ring.start("a")
    await until(lambda: settled(a), within=2 * R)
    down = True
    await asyncio.sleep(LAMBDA + 2 * R)
    late = math.floor(ring.clock.wall())
    assert a.verdict(JOBS[0], late) is Verdict.HOLD
    moved = ring.listeners["a"].moved
    down = False
    await until(lambda: ring.listeners["a"].moved > moved, within=2 * R)
    assert a.verdict(JOBS[0], late) is Verdict.START


async def test_how_long_ticks_were_held_is_counted_when_a_renewal_lets_them_go(
    ring: Ring,
) -> None:
    registry = CollectorRegistry()
    down = False
    ring.store.fault = lambda operation, name: Fault.UNAVAILABLE if down else Fault.NONE
    a = ring.start("a", observer=ReplicaMetrics(registry))
    await until(lambda: settled(a), within=2 * R)
    down = True
    await asyncio.sleep(LAMBDA + 2 * R)
    loop = asyncio.get_running_loop()
    late = math.floor(ring.clock.wall())
    held_at = loop.time()
    # Two ticks held while the bound stands still are one hold, from the first of them.
    assert a.verdict(JOBS[0], late) is Verdict.HOLD
    await asyncio.sleep(R)
    assert a.verdict(JOBS[1], late) is Verdict.HOLD
    assert registry.get_sample_value("podcron_replica_holds_total") == 0
    moved = ring.listeners["a"].moved
    down = False
    await until(lambda: ring.listeners["a"].moved > moved, within=2 * R)
    let_go = loop.time()
    assert registry.get_sample_value("podcron_replica_holds_total") == 1
    held = registry.get_sample_value("podcron_replica_held_seconds_total")
    assert held is not None
    assert R <= held <= let_go - held_at


async def test_slow_renewals_lead_further_so_that_no_tick_waits_then_lambda_again(
    ring: Ring,
) -> None:
    registry = CollectorRegistry()
    a = ring.start("a", observer=(metrics := ReplicaMetrics(registry)))
    metrics.fire_lead = lambda: a.fire_lead
    await until(lambda: settled(a), within=2 * R)
    lease = member_lease_name(a.identity)

    def lead() -> float:
        written = ring.store.leases()[lease].annotations
        return float(written[FIRE_BOUND]) - float(written[RENEWED_AT])

    assert lead() == LAMBDA
    slow = 0.9

    async def loaded(operation: str, name: str) -> None:
        # Every call of a loaded API server takes 0.9 s: a renewal, then the list, then the
        # next renewal. A fire bound Λ = 2 s ahead ran out before the next one was
        # acknowledged, and the ticks due meanwhile waited (the tail at 20,000 jobs).
        await asyncio.sleep(slow)

    ring.store.latency = loaded
    # Once a renewal with the wider lead is acknowledged, any hold before it has been let go.
    await until(lambda: lead() == PARAMS.fire_ahead_at_most, within=10 * R)
    holds = registry.get_sample_value("podcron_replica_holds_total")
    for _ in range(100):  # every tick due in the next 10 s, as its timer asks
        await asyncio.sleep(0.1)
        assert a.verdict(JOBS[0], ring.clock.wall()) is Verdict.START
    assert registry.get_sample_value("podcron_replica_holds_total") == holds
    assert registry.get_sample_value("podcron_replica_fire_lead_seconds") == pytest.approx(lead())
    # Quick again: once the slow cycles are out of those it remembers, the lead (and a
    # crash's uncertain window) is Λ again.
    ring.store.latency = None
    await until(lambda: lead() == LAMBDA, within=(CYCLES_REMEMBERED + 5) * R)


async def test_jobs_come_and_go_one_at_a_time(ring: Ring) -> None:
    a = ring.start("a")
    await until(lambda: settled(a), within=2 * R)
    a.remove_job(JOBS[0])
    a.add_job("ns/new")
    assert a.owned_jobs() == len(JOBS)
    assert a.owns("ns/new")
    for key in [*JOBS[3:], "ns/new"]:
        a.remove_job(key)
    assert a.owned_jobs() == 2  # JOBS[1] and JOBS[2]


async def test_each_replica_knows_where_the_others_listen(ring: Ring) -> None:
    a, b = ring.start("a", "10.0.0.1:8081"), ring.start("b", "10.0.0.2:8081")
    await until(lambda: settled(a, b), within=4 * R)
    assert a.endpoint_of(b.identity) == "10.0.0.2:8081"
    assert b.endpoint_of(a.owner_of(JOBS[0]) or "") in {"10.0.0.1:8081", "10.0.0.2:8081"}
    assert a.endpoint_of("nobody") is None


async def test_a_step_that_fails_unexpectedly_is_logged_and_the_loop_goes_on(
    ring: Ring, caplog: pytest.LogCaptureFixture
) -> None:
    failures = iter([RuntimeError("a bug in a store")])

    def fault(operation: str, name: str) -> Fault:
        if operation == "list":
            failure = next(failures, None)
            if failure is not None:
                raise failure
        return Fault.NONE

    ring.store.fault = fault
    a = ring.start("a")
    await until(lambda: settled(a), within=3 * R)
    assert "a protocol step failed" in caplog.text


async def test_a_released_replica_never_rejoins(ring: Ring) -> None:
    a = ring.start("a")
    await until(lambda: settled(a), within=2 * R)
    await a.release()
    await a.step()
    await asyncio.sleep(3 * R)
    assert a.verdict(JOBS[0], ring.clock.wall() - 1) is Verdict.NOT_OWNER
    assert ring.tasks["a"].done()
    # The only replica handed the coordinator Lease back: the next one takes it at once.
    assert ring.store.leases()[coordinator_lease_name("t")].holder == ""


async def test_a_release_whose_reply_is_lost_is_retried_and_goes_through(ring: Ring) -> None:
    a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    faults = iter([Fault.LOST_REPLY])
    lease = member_lease_name(a.identity)
    ring.store.fault = lambda operation, name: (
        next(faults, Fault.NONE) if (operation, name) == ("replace", lease) else Fault.NONE
    )
    await a.release()
    assert ring.annotation(lease, "podcron.dev/released") == "true"
    await until(lambda: settled(b), within=2 * R)


async def test_a_release_the_store_never_takes_is_left_to_fencing(
    ring: Ring, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    ring.crash("a")
    lease = member_lease_name(a.identity)
    down = True  # for a's release only: b's fence goes through later
    ring.store.fault = lambda operation, name: (
        Fault.UNAVAILABLE if down and name == lease else Fault.NONE
    )
    began = asyncio.get_running_loop().time()
    await a.release()
    assert asyncio.get_running_loop().time() - began == pytest.approx(2 * R, abs=R / 4)
    assert "could not write its release" in caplog.text
    assert not any(a.owns(k) for k in JOBS)
    down = False
    await until(lambda: settled(b), within=L + 3 * R)


async def test_a_release_during_a_renewal_waits_for_it_instead_of_conflicting(ring: Ring) -> None:
    a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(a, b), within=4 * R)
    lease = member_lease_name(a.identity)
    renewing = asyncio.Event()
    calls: list[str] = []

    async def slow_renewal(operation: str, name: str) -> None:
        if name == lease:
            calls.append(operation)
            if operation == "replace" and not renewing.is_set():
                renewing.set()
                await asyncio.sleep(R / 2)

    ring.store.latency = slow_renewal
    await renewing.wait()
    await a.release()
    await asyncio.wait_for(ring.tasks["a"], R)  # its loop, the renewal included, has ended
    # The renewal, then the release: no conflict, so no read back and no second attempt
    # (b may have deleted the released Lease since: no longer needed once it settled).
    assert calls[:2] == ["replace", "replace"]
    assert set(calls[2:]) <= {"delete"}


async def test_a_release_while_the_lease_is_being_created_releases_the_lease_created(
    ring: Ring,
) -> None:
    # A SIGTERM right after start-up: without the wait, the Lease created a moment later
    # would stay unreleased until the coordinator fenced it, L later.
    creating = asyncio.Event()

    async def slow_creation(operation: str, name: str) -> None:
        if operation == "create" and not creating.is_set():
            creating.set()
            await asyncio.sleep(R / 2)

    ring.store.latency = slow_creation
    a = ring.start("a")
    await creating.wait()
    await a.release()
    assert ring.annotation(member_lease_name(a.identity), "podcron.dev/released") == "true"


async def test_a_released_member_publishes_the_epoch_without_it(ring: Ring) -> None:
    agents = [ring.start(name) for name in "abc"]
    coordinator = coordinator_lease_name("t")

    def written_settled() -> bool:
        # Rule 5 goes by the Leases: each member's renewal says it settled the epoch.
        if not settled(*agents):
            return False
        epoch = ring.annotation(coordinator, EPOCH)
        return all(ring.annotation(member_lease_name(a.identity), EPOCH) == epoch for a in agents)

    await until(written_settled, within=6 * R)
    before = ring.store.leases()[coordinator]
    leaving = next(a for a in agents if a.identity != before.holder)
    await leaving.release()
    published = ring.store.leases()[coordinator]
    # Published by the release itself, not at the coordinator's next renewal; its holder kept.
    assert int(published.annotations[EPOCH]) == int(before.annotations[EPOCH]) + 1
    assert leaving.identity not in published.annotations[MEMBERS]
    assert published.holder == before.holder


async def test_a_noticed_epoch_is_adopted_before_the_next_renewal(ring: Ring) -> None:
    agents = a, b = ring.start("a"), ring.start("b")
    coordinator = coordinator_lease_name("t")

    def written_settled() -> bool:
        if not settled(*agents):
            return False
        epoch = ring.annotation(coordinator, EPOCH)
        return all(ring.annotation(member_lease_name(x.identity), EPOCH) == epoch for x in agents)

    await until(written_settled, within=6 * R)
    renewed = asyncio.Event()
    lease = member_lease_name(b.identity)

    def mark(operation: str, name: str) -> Fault:
        if (operation, name) == ("replace", lease):
            renewed.set()
        return Fault.NONE

    ring.store.fault = mark
    await renewed.wait()  # b has just renewed: its next renewal is R away
    began = asyncio.get_running_loop().time()
    await a.release()
    published = ring.store.leases()[coordinator]
    b.noticed(published)
    await until(lambda: b.member.epoch == int(published.annotations[EPOCH]), within=R / 4)
    assert asyncio.get_running_loop().time() - began < R / 4


async def test_a_member_writes_that_it_settled_an_epoch_at_once(ring: Ring) -> None:
    # The next epoch may wait for it (one without a fenced member): not a period more.
    a = ring.start("a")
    await until(lambda: settled(a), within=4 * R)
    b = ring.start("b")
    loop = asyncio.get_running_loop()
    await until(
        lambda: (
            b.identity in b.member.assignment.members and b.member.settled_epoch == b.member.epoch
        ),
        within=6 * R,
    )
    settled_at = loop.time()
    lease = member_lease_name(b.identity)
    await until(lambda: int(ring.annotation(lease, EPOCH)) == b.member.epoch, within=2 * R)
    assert loop.time() - settled_at < R / 4


async def test_the_coordinator_steps_when_a_member_settles_and_not_at_its_every_renewal(
    ring: Ring,
) -> None:
    agents = a, b = ring.start("a"), ring.start("b")
    await until(lambda: settled(*agents), within=6 * R)
    coordinator = a if ring.store.leases()[coordinator_lease_name("t")].holder == a.identity else b
    member = b if coordinator is a else a
    own = member_lease_name(coordinator.identity)
    await until(
        lambda: (
            ring.annotation(member_lease_name(member.identity), EPOCH)
            == str(coordinator.member.epoch)
        ),
        within=2 * R,
    )
    renewals = 0
    renewed = asyncio.Event()

    def count(operation: str, name: str) -> Fault:
        nonlocal renewals
        if (operation, name) == ("replace", own):
            renewals += 1
            renewed.set()
        return Fault.NONE

    ring.store.fault = count
    await renewed.wait()  # the coordinator has just renewed: its next renewal is R away
    record = ring.store.leases()[member_lease_name(member.identity)]
    coordinator.noticed(record)  # the watch shows the member settled the epoch
    await until(lambda: renewals == 2, within=R / 4)
    coordinator.noticed(record)  # the same renewal again, or the next one: nothing new
    await asyncio.sleep(R / 2)
    assert renewals == 2


async def test_a_member_the_watch_saw_stop_is_fenced_l_after_its_last_renewal_not_a_list_later(
    ring: Ring,
) -> None:
    # The coordinator lists the ring once a renewal period; a member that died just after
    # a list, but whose last renewal the watch showed, is stale L after that renewal.
    b = ring.start("b")
    await until(lambda: settled(b), within=2 * R)
    loop = asyncio.get_running_loop()
    renewed = asyncio.Event()
    dead = member_lease_name("x-00000000")
    fenced_at: list[float] = []

    def note(operation: str, name: str) -> Fault:
        if (operation, name) == ("replace", member_lease_name(b.identity)):
            renewed.set()
        elif (operation, name) == ("replace", dead):
            fenced_at.append(loop.time())
        return Fault.NONE

    ring.store.fault = note
    await renewed.wait()  # b has just listed the ring: its next list is R away
    await asyncio.sleep(R / 2)
    # A member's last renewal (no fire bound: no credit for its age), shown by the watch.
    record = await ring.store.create(dead, "x-00000000", {}, {RING_LABEL: "t"})
    last_renewal = loop.time()
    b.noticed(record)
    await until(lambda: fenced_at, within=L + 2 * R)
    assert L <= fenced_at[0] - last_renewal < L + R / 4


async def test_an_outage_of_the_store_longer_than_l_fences_no_replica_that_renews_after_it(
    ring: Ring,
) -> None:
    agents = [ring.start(name) for name in "abc"]
    await until(lambda: settled(*agents), within=6 * R)
    identities = [a.identity for a in agents]
    epoch = agents[0].member.epoch
    ring.store.fault = lambda operation, name: Fault.UNAVAILABLE
    await asyncio.sleep(L + 3 * R)  # etcd stopped, or the API server down: nobody renews
    ring.store.fault = lambda operation, name: Fault.NONE
    await asyncio.sleep(L)
    # Each renews within a period of the store's return: all alive, none fenced, no move.
    assert [a.identity for a in agents] == identities
    assert settled(*agents)
    assert agents[0].member.epoch == epoch


async def test_a_replica_that_died_during_an_outage_of_the_store_is_fenced_soon_after_it(
    ring: Ring, caplog: pytest.LogCaptureFixture
) -> None:
    agents = [ring.start(name) for name in "abc"]
    await until(lambda: settled(*agents), within=6 * R)
    a, b, c = agents
    dead = c.identity
    ring.crash("c")
    await asyncio.sleep(R + R / 2)  # the coordinator's list has seen c's last renewal
    ring.store.fault = lambda operation, name: Fault.UNAVAILABLE
    await asyncio.sleep(L + 2 * R)
    ring.store.fault = lambda operation, name: Fault.NONE
    back = asyncio.get_running_loop().time()
    # Given L/2 from when the coordinator reads the store again (not L, and not at once).
    await until(lambda: settled(a, b), within=L / 2 + 2 * R)
    assert asyncio.get_running_loop().time() - back >= L / 2
    assert f"fenced replica {dead}" in caplog.text
    assert f"fenced replica {a.identity}" not in caplog.text
    assert f"fenced replica {b.identity}" not in caplog.text


async def test_calls_the_store_fails_now_and_then_do_not_put_a_dead_members_fence_off(
    ring: Ring, caplog: pytest.LogCaptureFixture
) -> None:
    agents = [ring.start(name) for name in "ab"]
    await until(lambda: settled(*agents), within=4 * R)
    a, b = agents
    coordinator = ring.store.leases()[coordinator_lease_name("t")].holder
    dead = b if coordinator == a.identity else a
    ring.crash("a" if dead is a else "b")
    killed = asyncio.get_running_loop().time()
    loop = asyncio.get_running_loop()
    # The store fails one second in three: short outages, none of them L/2 long.
    ring.store.fault = lambda operation, name: (
        Fault.UNAVAILABLE if int(loop.time()) % 3 == 0 else Fault.NONE
    )
    await until(lambda: f"fenced replica {dead.identity}" in caplog.text, within=L + 3 * R)
    assert asyncio.get_running_loop().time() - killed >= L
