"""The replica's protocol loop: renew, observe the ring, coordinate, and answer the engine's gate.

Every ``R`` the agent renews its member Lease by compare-and-swap, lists the
ring's Leases in one call, lets its :class:`~podcron.ha.protocol.Member`
draw the consequences, and, when it holds the coordinator Lease (or may take
it over), writes what :func:`~podcron.ha.protocol.coordinate` decides. The
engine asks :meth:`Agent.verdict` before each tick; the agent tells it on the
loop when owners or bounds change. docs/ha.md is the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from podcron.engine.gate import Gain, GateListener, Verdict
from podcron.errors import LeaseConflict, LeaseGone, StoreUnavailable
from podcron.ha.lead import FireLead
from podcron.ha.protocol import (
    MEMBER_PREFIX,
    RING_LABEL,
    Action,
    Bound,
    Changes,
    Delete,
    EpochView,
    Fence,
    Member,
    MemberState,
    MemberView,
    Params,
    Snapshot,
    Staleness,
    WriteEpoch,
    coordinate,
    coordinator_lease_name,
    fenced,
    hand_back,
)
from podcron.ha.ring import bucket
from podcron.ha.store import CasStore, LeaseRecord

log = logging.getLogger("podcron.ha")

#: What a write to the store may fail with; none of them is an error of this replica.
_REFUSED = (LeaseConflict, LeaseGone, StoreUnavailable)


class AgentObserver(Protocol):
    """Where the agent reports what metrics count."""

    def renew_failed(self, reason: str) -> None:
        """A renewal (or the list after it) did not go through: ``unavailable`` or ``conflict``."""
        ...

    def epoch_adopted(self, epoch: int, gained: int, lost: int) -> None:
        """This replica adopted ``epoch``; ``gained``/``lost`` count jobs."""
        ...

    def fenced(self) -> None:
        """This replica's identity was fenced; it rejoins under a new one."""
        ...

    def ticks_held(self, seconds: float) -> None:
        """Ticks the gate held may go again, ``seconds`` after the first of them was held."""
        ...


class _NoListener:
    def bound_moved(self) -> None:
        pass

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        pass

    def decide_due(self) -> None:
        pass


class Agent:
    """One replica in a ring: a :class:`~podcron.engine.gate.FiringGate` and its protocol loop.

    ``wall`` is the clock fire bounds are taken from (the engine's, so ticks and
    bounds agree); ``monotonic`` judges staleness. Both are injectable for tests.
    """

    def __init__(
        self,
        store: CasStore,
        *,
        ring: str,
        pod_name: str,
        endpoint: str = "",
        params: Params | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        new_suffix: Callable[[], str] = lambda: secrets.token_hex(4),
        observer: AgentObserver | None = None,
    ) -> None:
        self._store = store
        self.ring = ring
        self.params = params or Params()
        self._pod_name = pod_name
        self._endpoint = endpoint
        self._wall = wall
        self._monotonic = monotonic
        self._new_suffix = new_suffix
        self._observer = observer
        self._labels = {RING_LABEL: ring}
        self._selector = f"{RING_LABEL}={ring}"
        self._listener: GateListener = _NoListener()
        self._bucket_of: dict[str, int] = {}
        self._keys_in: dict[int, set[str]] = {}
        self._held = False
        #: When the gate first held a tick since the bounds last let held ticks go (monotonic).
        self._held_since = 0.0
        self._releasing = False
        self._released_written = False
        self._staleness = Staleness()
        self._lead = FireLead(self.params)
        #: Since when the store has not answered, if it failed since the last list that read it.
        self._blind_since: float | None = None
        #: One write of the member Lease at a time: a release that raced a renewal would
        #: conflict with it and cost a read and another write, at SIGTERM, under load.
        self._member_write = asyncio.Lock()
        #: Set when a Lease changed in a way that may hand this replica jobs: step now.
        self._wake = asyncio.Event()
        #: The epoch each member's Lease last said it settled, as the watch showed it.
        self._settled_seen: dict[str, int] = {}
        #: The last snapshot of the ring this replica read (for the System API's owners).
        self.snapshot: Snapshot | None = None
        #: Per bucket gained by this member: its bound, and when it was learnt (wall clock).
        self._gains: dict[int, tuple[Bound, float]] = {}
        self.member = self._new_member()

    def _new_member(self) -> Member:
        return Member(f"{self._pod_name}-{self._new_suffix()}", self.params, self._endpoint)

    @property
    def identity(self) -> str:
        return self.member.identity

    @property
    def fire_lead(self) -> float:
        """How far ahead of its clock the last renewal set the fire bound (a gauge)."""
        return self.member.lead

    # -- FiringGate --------------------------------------------------------------------

    def verdict(self, key: str, tick: float) -> Verdict:
        b = self._bucket_of.get(key)
        answer = self.member.verdict_for_bucket(bucket(key) if b is None else b, tick)
        if answer is Verdict.HOLD and not self._held:
            self._held = True
            self._held_since = self._monotonic()
        return answer

    def set_listener(self, listener: GateListener) -> None:
        self._listener = listener

    def asked_before(self, instant: float) -> None:
        self.member.asked_before = instant

    # -- the jobs this replica may own ---------------------------------------------------

    def add_job(self, key: str, created: float | None = None) -> None:
        """A job of the ring, created at ``created`` (wall clock; None: not known).

        A job known when its bucket is gained is gained with the bucket. One added
        later is new if it was created after that gain: its ticks get START from now
        on. One created before it existed all along and was registered late (a
        replica that joined before it had registered every job, or gained a bucket
        in the middle of its start-up): it is gained now with the bucket's bound,
        so that its ticks since the gain are caught up or counted, not lost unseen.
        """
        if key in self._bucket_of:
            return
        b = bucket(key)
        self._bucket_of[key] = b
        self._keys_in.setdefault(b, set()).add(key)
        gained = self._gains.get(b)
        if gained is None or created is None or not self.member.owns(b):
            return
        bound, learnt = gained
        if created >= learnt:
            return
        self._listener.owners_changed([_late_gain(key, bound, created)], [])

    def remove_job(self, key: str) -> None:
        b = self._bucket_of.pop(key, None)
        if b is not None:
            keys = self._keys_in[b]
            keys.discard(key)
            if not keys:
                del self._keys_in[b]

    def owned_jobs(self) -> int:
        """How many of the known jobs this replica owns now (a gauge; O(jobs), read rarely)."""
        return sum(len(keys) for b, keys in self._keys_in.items() if self.member.owns(b))

    def owns(self, key: str) -> bool:
        """Whether this replica owns ``key`` in its epoch (its start bound may be unknown yet)."""
        b = self._bucket_of.get(key)
        return self.member.owns(bucket(key) if b is None else b)

    def owner_of(self, key: str) -> str | None:
        """The identity owning ``key`` in the epoch this replica adopted."""
        return self.member.assignment.owner_of(key)

    def endpoint_of(self, identity: str) -> str | None:
        """Where ``identity``'s control port listens, as its Lease last said (None: unknown)."""
        view = None if self.snapshot is None else self.snapshot.members.get(identity)
        return None if view is None or not view.endpoint else view.endpoint

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Renews every ``R`` until :meth:`release`; nothing the store does ends it.

        A step that fails unexpectedly is logged and the next one tries again:
        the member's state changes only on what the store acknowledged, so a
        step cut short leaves it as careful as before.
        """
        loop = asyncio.get_running_loop()
        while not self._releasing:
            began = loop.time()
            member, settled = self.member, self.member.settled_epoch
            try:
                await self.step()
            except Exception:
                log.exception("replica %s: a protocol step failed", self.identity)
            if self.member is member and member.settled_epoch > settled:
                # Settled an epoch: write so now, not a period later. The next epoch (one
                # without a fenced member, say) waits for every member to say it settled.
                continue
            left = max(0.0, self.params.renew_period - (loop.time() - began))
            # A member this replica would fence (or a coordinator it would replace) may go
            # stale before the next renewal: step then, not up to a period later.
            left = min(
                left,
                self._staleness.next_stale(
                    self._watched(), self._monotonic(), self.params.fence_after
                ),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
            self._wake.clear()

    def noticed(self, record: LeaseRecord) -> None:
        """A Lease of the ring changed (a watch's hint, on the loop): step now if it may matter.

        A new epoch to adopt, a member of this replica's epoch released or fenced, or,
        when this replica coordinates, one settling the epoch (either may let it publish
        the next). Renewals, one per member per ``R``, wait for the next period:
        stepping on each would multiply the writes.
        """
        if record.name == coordinator_lease_name(self.ring):
            if EpochView.parse(record).epoch != self.member.epoch:
                self._wake.set()
        elif record.name.startswith(MEMBER_PREFIX):
            view = MemberView.parse(record)
            self._staleness.saw(view, self._monotonic(), self._wall(), self.params)
            if view.identity not in self.member.assignment.members:
                return
            if view.gone or (
                self._coordinating()
                and view.settled_epoch == self.member.epoch
                and self._settled_seen.get(view.identity, 0) < view.settled_epoch
            ):
                self._wake.set()
            self._settled_seen[view.identity] = view.settled_epoch

    def _coordinating(self) -> bool:
        published = None if self.snapshot is None else self.snapshot.epoch
        return published is not None and published.holder == self.identity

    def _watched(self) -> list[str]:
        """The members whose staleness this replica acts on: all, as coordinator; else the
        coordinator itself."""
        snapshot = self.snapshot
        if snapshot is None or snapshot.epoch is None:
            return []
        views = snapshot.members
        if not self._coordinating():
            holder = snapshot.epoch.holder
            views = {holder: views[holder]} if holder in views else {}
        return [i for i, view in views.items() if i != self.identity and not view.gone]

    async def step(self) -> None:
        """One renewal and what follows it: the ring observed, coordination done."""
        if self._releasing:
            return
        if self.member.state is MemberState.FENCED:
            self.member = self._new_member()
            self._gains.clear()
            log.info("rejoining the ring %s as %s", self.ring, self.identity)
        if not await self._renew():
            return
        try:
            records = await self._store.list(self._selector)
        except StoreUnavailable:
            self._lost_sight()
            return
        snapshot = Snapshot.parse(records, self.ring)
        self.snapshot = snapshot
        self._settled_seen = {
            identity: epoch
            for identity, epoch in self._settled_seen.items()
            if identity in snapshot.members
        }
        self._staleness.observe(snapshot, self._monotonic(), self._wall(), self.params)
        now, blind_since, self._blind_since = self._monotonic(), self._blind_since, None
        if blind_since is not None and now - blind_since >= self.params.fence_after / 2:
            # The store was out of this replica's reach: the other members may have been
            # cut off with it (etcd stopped, the API server restarted), and they renew
            # within a period of its return. Without this, the coordinator fenced every
            # other member after each outage longer than L. Only after an outage of L/2 or
            # more: a failed call now and then must not put a dead member's fence off.
            self._staleness.regained(now, self.params.fence_after / 2)
        changes = self.member.observe(snapshot)
        if self.member.state is MemberState.FENCED:
            self._fenced(changes.lost)
            return
        self._apply(changes)
        await self._coordinate(snapshot)

    async def _renew(self) -> bool:
        member = self.member
        async with self._member_write:
            sent = self._monotonic()
            member.lead = self._lead.seconds
            annotations = member.annotations(self._wall())
            try:
                if member.record is None:
                    record = await self._store.create(
                        member.lease_name, member.identity, annotations, self._labels
                    )
                else:
                    changed = member.record.changed(annotations=annotations)
                    record = await self._store.replace(changed)
                moved = member.acknowledged(record)
                self._lead.acknowledged(sent, self._monotonic())
            except (LeaseConflict, LeaseGone):
                self._lead.failed()
                self._report_failure("conflict")
                try:
                    current = await self._store.get(member.lease_name)
                except StoreUnavailable:
                    self._lost_sight()
                    return False
                moved = member.conflicted(current)
            except StoreUnavailable:
                self._lead.failed()
                self._lost_sight()
                return False
        if member.state is MemberState.FENCED:
            self._fenced(member.owned_buckets())
            return False
        if moved and self._held:
            self._let_held_go()
        return True

    def _let_held_go(self) -> None:
        """The bounds moved: held ticks may start now. How long they waited is what a fire
        bound fallen behind the clock costs (renewals slower than Λ allows) in lateness."""
        self._held = False
        if self._observer is not None:
            self._observer.ticks_held(self._monotonic() - self._held_since)
        self._listener.bound_moved()

    def _lost_sight(self) -> None:
        """The store did not answer: what it holds is unknown here until a list reads it."""
        if self._blind_since is None:
            self._blind_since = self._monotonic()
        self._report_failure("unavailable")

    def _report_failure(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.renew_failed(reason)

    def _fenced(self, lost: list[int]) -> None:
        log.warning("replica %s was fenced; it starts no tick under this identity", self.identity)
        self._apply(Changes(lost=lost))
        if self._observer is not None:
            self._observer.fenced()

    def _apply(self, changes: Changes) -> None:
        for b in changes.lost:
            self._gains.pop(b, None)
        learnt = self._wall()
        for b, bound in changes.gained.items():
            self._gains[b] = (bound, learnt)
        lost = [k for b in changes.lost for k in self._keys_in.get(b, ())]
        gained = [
            Gain(key, bound.start, bound.uncertain_from)
            for b, bound in changes.gained.items()
            for key in self._keys_in.get(b, ())
        ]
        if changes.adopted is not None:
            log.info(
                "replica %s adopted epoch %d: %d jobs lost (handover bound %s, certain up to %s),"
                " %d gained with a known start bound",
                self.identity,
                changes.adopted,
                len(lost),
                _timestamp(self.member.handover_bound),
                _timestamp(self.member.handover_from),
                len(gained),
            )
            if self._observer is not None:
                self._observer.epoch_adopted(changes.adopted, len(gained), len(lost))
        if gained:
            # Each start bound once: they tell what a gain's catch-up took as started before.
            bounds = Counter((g.start_bound, g.uncertain_from) for g in gained)
            for (start, uncertain), jobs in sorted(bounds.items(), key=lambda item: item[0][0]):
                log.info(
                    "replica %s gained %d jobs of epoch %d: start bound %s, uncertain from %s",
                    self.identity,
                    jobs,
                    self.member.epoch,
                    _timestamp(start),
                    "none" if uncertain is None else _timestamp(uncertain),
                )
        if gained or lost:
            self._listener.owners_changed(gained, lost)
        if changes.gained and self._held:
            self._let_held_go()

    async def _coordinate(self, snapshot: Snapshot) -> None:
        actions = coordinate(
            self.identity, snapshot, self._staleness, self._monotonic(), self.params
        )
        if not actions:
            return
        members = dict(snapshot.members)
        epoch = snapshot.epoch
        for action in actions:
            try:
                written = await self._write(action)
            except _REFUSED:
                break
            if isinstance(action, Fence) and written is not None:
                log.warning("fenced replica %s (its Lease did not move)", written.holder)
                view = MemberView.parse(written)
                members[view.identity] = view
            elif isinstance(action, WriteEpoch) and written is not None:
                epoch = EpochView.parse(written)
        if epoch is not snapshot.epoch:
            # What this replica just published (or took over) applies to it at once.
            self.snapshot = Snapshot(epoch, members)
            self._apply(self.member.observe(self.snapshot))

    async def _write(self, action: Action) -> LeaseRecord | None:
        store = self._store
        if isinstance(action, Fence):
            return await store.replace(fenced(action.record))
        if isinstance(action, Delete):
            await store.delete(action.record)
            return None
        if action.record is None:
            return await store.create(
                coordinator_lease_name(self.ring),
                action.holder,
                action.annotations(),
                self._labels,
            )
        return await store.replace(
            action.record.changed(holder=action.holder, annotations=action.annotations())
        )

    # -- shutdown --------------------------------------------------------------------------

    async def release(self, within: float | None = None) -> None:
        """SIGTERM (rule 8): start no tick from now on, say so, hand the coordinator Lease back.

        Retries for ``within`` seconds (2R by default); whatever is not written
        by then is left to fencing, which is as safe, only slower.
        """
        self.begin_release()
        try:
            async with asyncio.timeout(2 * self.params.renew_period if within is None else within):
                # A retry waits a little: the store refused or did not answer.
                while True:
                    if await self.release_once():
                        return
                    await asyncio.sleep(self.params.renew_period / 4)
        except TimeoutError:
            log.warning("replica %s could not write its release in time", self.identity)

    def begin_release(self) -> None:
        """From now on no tick starts here, under any identity; the engine is told so.

        First the engine decides every tick due by now, so that the instant it may be part
        way through is handed over whole (a SIGTERM 155 ms into an instant of a chaos run
        left 280 of its ticks uncertain, started by nobody).
        """
        if not self._releasing:
            self._listener.decide_due()
        self._releasing = True
        lost = self.member.release()
        log.info(
            "replica %s releases %d buckets; handover bound %s",
            self.identity,
            len(lost),
            _timestamp(self.member.handover_bound),
        )
        self._apply(Changes(lost=lost))

    async def release_once(self) -> bool:
        """One attempt at what :meth:`release` writes; True once nothing is left to write."""
        member = self.member
        if member.state is not MemberState.RELEASED:
            return True
        if not self._released_written:
            async with self._member_write:
                # Read under the lock: a SIGTERM right after start-up may come while the
                # Lease's creation is in flight, and the Lease it makes must say released.
                if member.record is None:
                    return True
                # After a renewal whose reply was lost the Lease moved: read, write again at once.
                for _ in range(2):
                    try:
                        record = await self._store.replace(
                            member.record.changed(annotations=member.annotations(self._wall()))
                        )
                    except (LeaseConflict, LeaseGone):
                        try:
                            current = await self._store.get(member.lease_name)
                        except StoreUnavailable:
                            return False
                        if current is None or MemberView.parse(current).fenced:
                            # Fenced meanwhile: the successors go by the fence, nothing is left.
                            return True
                        member.conflicted(current)
                        continue
                    except StoreUnavailable:
                        return False
                    member.acknowledged(record)
                    self._released_written = True
                    break
                else:
                    return False
        try:
            snapshot = Snapshot.parse(await self._store.list(self._selector), self.ring)
            # Published here, the epoch without this replica is one renewal sooner (rule 8).
            handed = hand_back(self.identity, snapshot)
            if handed is not None:
                await self._write(handed)
        except _REFUSED:
            return False
        return True


def _late_gain(key: str, bound: Bound, created: float) -> Gain:
    """A job of a bucket gained before the job was registered here, created at ``created``.

    No tick of it is older than the job: a start bound below its creation is raised to it,
    and so is the start of the uncertain window. A bucket no replica owned before (start
    bound minus infinity) stays so: the job is caught up from its history.
    """
    if not math.isfinite(bound.start):
        return Gain(key, bound.start)
    uncertain = bound.uncertain_from
    if uncertain is not None:
        uncertain = max(uncertain, created)
        if uncertain >= bound.start:
            uncertain = None
    return Gain(key, max(bound.start, created), uncertain)


def _timestamp(seconds: float) -> str:
    """A bound for a log line: UTC to the millisecond, or "none" when unbounded."""
    if not math.isfinite(seconds):
        return "none"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
