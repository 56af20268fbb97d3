"""The replica protocol's decisions (docs/ha.md), pure: no asyncio, no clock reads, no I/O.

A :class:`Member` is one replica's side: what its renewal writes, what it
concludes from a :class:`Snapshot` of the ring's Leases (epochs adopted,
start bounds learnt, jobs lost and gained) and which ticks it may start.
:func:`coordinate` is the coordinator's side: whom to fence, when to publish
the next epoch, which Leases to delete. Both return what to write; the agent
(:mod:`podcron.ha.agent`) writes it. Times are passed in: wall-clock seconds
for fire bounds, a monotonic reading for staleness.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podcron.engine.gate import Verdict
from podcron.ha.ring import BUCKETS, Assignment, assignment, bucket
from podcron.ha.store import LeaseRecord

_P = "podcron.dev/"
#: The label every Lease of a ring carries; its value is the ring's name.
RING_LABEL = _P + "ring"
FIRE_BOUND = _P + "fire-bound"
#: The member's clock (tick time) when it sent the renewal: it had reached every tick due
#: then. Its fire bound leads this by Λ, or by more while its renewals come slowly.
RENEWED_AT = _P + "renewed-at"
#: The fire bound acknowledged when the renewal was sent: the member could start no tick above.
ACKED_BOUND = _P + "acked-bound"
#: The last epoch the member has settled: adopted, and every start bound of its jobs known.
EPOCH = _P + "epoch"
HANDOVER_EPOCH = _P + "handover-epoch"
HANDOVER_BOUND = _P + "handover-bound"
#: The highest tick the member started of the jobs it last handed over (or released).
HANDOVER_FROM = _P + "handover-from"
#: The highest start bound the member has learnt (of the jobs it owns or owned).
OWNED_BOUND = _P + "owned-bound"
#: When the renewal was sent, its engine had decided every tick due before this
#: (started it, or counted it): an engine running behind its ticks had not reached the rest.
ASKED_BEFORE = _P + "asked-before"
FENCED = _P + "fenced"
RELEASED = _P + "released"
ENDPOINT = _P + "endpoint"
MEMBERS = _P + "members"
PREVIOUS_MEMBERS = _P + "previous-members"

#: Ticks fall on whole microseconds (the engine's datetimes). The last instant before
#: another is one microsecond before it, not the next float below: the engine rounds a
#: time to the microsecond, which would put that float back on the instant itself.
TICK_RESOLUTION = 1e-6

MEMBER_PREFIX = "podcron-member-"
COORDINATOR_PREFIX = "podcron-coordinator-"


@dataclass(frozen=True, slots=True)
class Params:
    """The protocol's periods and bounds, in seconds (docs/ha.md, Parameters)."""

    #: R: how often a member renews its Lease.
    renew_period: float = 1.0
    #: Λ: how far ahead of its clock a renewal lets a member start ticks (at least).
    fire_ahead: float = 2.0
    #: L: a member Lease unchanged this long (on the observer's monotonic clock) is fenced.
    fence_after: float = 6.0

    @property
    def fire_ahead_at_most(self) -> float:
        """How far a renewal's fire bound may lead its clock while renewals are slow.

        Twice Λ, and at most halfway from Λ to L: a fire bound as far ahead as L would let
        a member merely slow to renew be fenced before its bound ran out.
        """
        return min(2 * self.fire_ahead, (self.fire_ahead + self.fence_after) / 2)


def member_lease_name(identity: str) -> str:
    return MEMBER_PREFIX + identity


def coordinator_lease_name(ring: str) -> str:
    return COORDINATOR_PREFIX + ring


def _float(annotations: Mapping[str, str], key: str) -> float:
    value = annotations.get(key)
    return -math.inf if value is None else float(value)


def _int(annotations: Mapping[str, str], key: str) -> int:
    return int(annotations.get(key, "0"))


def _identities(text: str) -> tuple[str, ...]:
    return tuple(sorted(filter(None, text.split(","))))


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member Lease as read: what its replica has promised."""

    record: LeaseRecord
    identity: str
    fire_bound: float
    #: None: written by a replica that leads by Λ always and does not say when it renewed.
    renewed_at: float | None
    acked_bound: float
    settled_epoch: int
    handover_epoch: int
    handover_bound: float
    handover_from: float
    owned_bound: float
    fenced: bool
    released: bool
    endpoint: str
    asked_before: float = math.inf

    def renewed(self, params: Params) -> float:
        """The member's clock (tick time) at its last renewal."""
        return self.fire_bound - params.fire_ahead if self.renewed_at is None else self.renewed_at

    def stopped(self, params: Params) -> float:
        """A fenced member started every tick due up to this: its last renewal.

        Unless its acknowledged bound was lower then (renewals that failed or came
        late): the ticks above that one waited for an acknowledgement. Or unless its
        engine had not decided every tick due by then (it ran behind its ticks): the
        ticks from the first one it had not are not known to have started.
        """
        return min(
            self.renewed(params),
            self.acked_bound,
            self.asked_before - TICK_RESOLUTION,
        )

    @property
    def certain(self) -> float:
        """Every tick of the jobs it handed over last, up to this, was started (by it or before)."""
        return self.handover_from if math.isfinite(self.handover_from) else self.handover_bound

    @property
    def gone(self) -> bool:
        """Fenced or released: it never starts a tick again."""
        return self.fenced or self.released

    @classmethod
    def parse(cls, record: LeaseRecord) -> MemberView:
        a = record.annotations
        return cls(
            record=record,
            identity=record.name.removeprefix(MEMBER_PREFIX),
            fire_bound=_float(a, FIRE_BOUND),
            renewed_at=None if RENEWED_AT not in a else float(a[RENEWED_AT]),
            acked_bound=float(a.get(ACKED_BOUND, "inf")),
            settled_epoch=_int(a, EPOCH),
            handover_epoch=_int(a, HANDOVER_EPOCH),
            handover_bound=_float(a, HANDOVER_BOUND),
            handover_from=_float(a, HANDOVER_FROM),
            owned_bound=_float(a, OWNED_BOUND),
            fenced=a.get(FENCED) == "true",
            released=a.get(RELEASED) == "true",
            endpoint=a.get(ENDPOINT, ""),
            asked_before=float(a.get(ASKED_BEFORE, "inf")),
        )


@dataclass(frozen=True, slots=True)
class EpochView:
    """The coordinator Lease as read: the current epoch and who holds the Lease."""

    record: LeaseRecord
    holder: str
    epoch: int
    members: tuple[str, ...]
    previous: tuple[str, ...]

    @classmethod
    def parse(cls, record: LeaseRecord) -> EpochView:
        a = record.annotations
        return cls(
            record=record,
            holder=record.holder,
            epoch=_int(a, EPOCH),
            members=_identities(a.get(MEMBERS, "")),
            previous=_identities(a.get(PREVIOUS_MEMBERS, "")),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The ring's Leases from one list: a consistent view, which the protocol relies on."""

    epoch: EpochView | None
    members: Mapping[str, MemberView]

    @classmethod
    def parse(cls, records: Iterable[LeaseRecord], ring: str) -> Snapshot:
        epoch: EpochView | None = None
        members: dict[str, MemberView] = {}
        for record in records:
            if record.name == coordinator_lease_name(ring):
                epoch = EpochView.parse(record)
            elif record.name.startswith(MEMBER_PREFIX):
                view = MemberView.parse(record)
                members[view.identity] = view
        return cls(epoch, members)

    def floor(self) -> float:
        """A tick above this was started by nobody before (docs/ha.md, rule 4).

        The highest handover and owned bound of every member, and the fire bound
        of every fenced one. What a start bound falls back on when a fenced or
        released predecessor had not learnt all its own start bounds: the ticks
        its predecessors started are below one of these.
        """
        return max(
            (
                max(v.handover_bound, v.owned_bound, v.fire_bound if v.fenced else -math.inf)
                for v in self.members.values()
            ),
            default=-math.inf,
        )

    def settled_since(self, predecessor: MemberView) -> int:
        """The epoch from which a floor's uncertain window must look at the Leases.

        The predecessor's last settled epoch, or an earlier one: that of any fenced
        or released Lease still there. A member that died before it even read the
        epoch giving it jobs (published by another's release, say) still shows the
        epoch it settled before, yet it owned those jobs later, and so may be a link
        in the predecessor's chain; its own predecessors' points count too.
        """
        gone = (v.settled_epoch for v in self.members.values() if v.gone)
        return min([predecessor.settled_epoch, *gone])

    def certain_below(self, since: int, handed_over_in: int, params: Params) -> float | None:
        """Every tick at or below this was started, of whichever job a floor covers; None: -inf.

        A start bound that falls back on the floor does not say which member last
        started the job's ticks: a predecessor that had not settled may have waited
        on a member that died before handing over, and started none itself. So the
        ticks from the lowest point any of them certainly reached are uncertain:
        a fenced member's last renewal (its frozen fire bound leads it), and the
        :attr:`MemberView.certain` point of a released member and of one which
        handed over in epoch ``handed_over_in`` or later. Only members still there
        after epoch ``since`` (the last the predecessor settled) count: one gone
        before it was not anybody's predecessor since.
        """
        recent = [
            v for v in self.members.values() if v.settled_epoch >= since or v.handover_epoch > since
        ]
        lows = [v.stopped(params) for v in recent if v.fenced]
        lows += [v.certain for v in recent if v.released or v.handover_epoch >= handed_over_in]
        return min((x for x in lows if math.isfinite(x)), default=None)


@dataclass(frozen=True, slots=True)
class Bound:
    """A gained bucket's start bound, and from where its ticks may have started elsewhere."""

    start: float
    uncertain_from: float | None = None

    @classmethod
    def handed_over(cls, start: float, certain: float) -> Bound:
        """Above ``certain`` up to ``start``: ticks the predecessor left to nobody.

        Its handover bound is the highest of every job it handed over: when one of
        them had a start bound above its last tick (gained from a fenced replica
        whose clock ran ahead), the other jobs' ticks in between started nowhere.
        """
        return cls(start, certain if math.isfinite(certain) and certain < start else None)


def start_bound(
    predecessor: MemberView | None, gained_in: int, snapshot: Snapshot, params: Params
) -> Bound | None:
    """The start bound of a bucket gained in epoch ``gained_in`` from ``predecessor``.

    None while it is not known yet (the predecessor has neither handed over
    ``gained_in`` nor left). docs/ha.md, rule 4.
    """
    if predecessor is None:
        # Only a fenced or released Lease is ever deleted, and only once nobody needs it.
        return None
    p = predecessor
    if p.handover_epoch >= gained_in:
        return Bound.handed_over(p.handover_bound, p.certain)
    if not p.gone:
        return None
    if p.settled_epoch >= gained_in - 1:
        if p.released:
            return Bound.handed_over(max(p.handover_bound, p.owned_bound), p.certain)
        return Bound(max(p.fire_bound, p.owned_bound, p.handover_bound), p.stopped(params))
    # Not settled: the floor, and the ticks under it since the lowest certain point.
    start = max(p.handover_bound, p.owned_bound, snapshot.floor())
    if p.fenced:
        start = max(start, p.fire_bound)
    return Bound(start, snapshot.certain_below(snapshot.settled_since(p), gained_in - 1, params))


class MemberState(enum.Enum):
    #: Renewing; owns jobs once an epoch names it.
    ACTIVE = "active"
    #: Its Lease was fenced or deleted: it never starts a tick again under this identity.
    FENCED = "fenced"
    #: Shutting down (SIGTERM): it never starts a tick again.
    RELEASED = "released"


@dataclass(slots=True)
class Changes:
    """What one observation changed for the engine."""

    #: Buckets gained whose start bound is known now.
    gained: dict[int, Bound] = field(default_factory=dict)
    #: Buckets no longer owned.
    lost: list[int] = field(default_factory=list)
    #: The epoch adopted, when one was.
    adopted: int | None = None


class Member:
    """One replica's side of the protocol, for one identity."""

    def __init__(self, identity: str, params: Params | None = None, endpoint: str = "") -> None:
        self.identity = identity
        self.lease_name = member_lease_name(identity)
        self.params = params or Params()
        self.endpoint = endpoint
        self.state = MemberState.ACTIVE
        #: The member Lease as last acknowledged; None until created.
        self.record: LeaseRecord | None = None
        #: The highest fire bound whose write the store acknowledged (rule 1).
        self.w_acked = -math.inf
        self._w_sent = -math.inf
        #: How far ahead of its clock the next renewal's fire bound goes: Λ, or more (up to
        #: :attr:`Params.fire_ahead_at_most`) while the agent sees its renewals come slowly.
        self.lead = self.params.fire_ahead
        self.epoch = 0
        self.assignment = Assignment(())
        self.handover_epoch = 0
        self.handover_bound = -math.inf
        self.handover_from = -math.inf
        self.settled_epoch = 0
        #: The last epoch whose every other member settled it, as this member saw: all of
        #: them have read its handover of that epoch.
        self._handover_read = 0
        self.owned_bound = -math.inf
        self._owned = bytearray(BUCKETS)
        #: Every tick due before this was asked about, as the engine last said (inf: it
        #: says nothing, and every tick up to the highest started counts as asked).
        self.asked_before = math.inf
        #: Per bucket: its start bound (inf while unknown) and the highest tick started.
        self._bound = [math.inf] * BUCKETS
        self._started = [-math.inf] * BUCKETS
        #: Buckets gained in :attr:`epoch` whose bound is unknown, by predecessor.
        self._pending: dict[str, list[int]] = {}

    # -- the engine's question -------------------------------------------------------

    def verdict_for_bucket(self, bucket_: int, tick: float) -> Verdict:
        """Whether ``tick`` of a job in ``bucket_`` may start here now (rule 2); a START counts."""
        if self.state is not MemberState.ACTIVE or not self._owned[bucket_]:
            return Verdict.NOT_OWNER
        bound = self._bound[bucket_]
        if bound == math.inf:
            return Verdict.HOLD
        if tick <= bound:
            return Verdict.NOT_OWNER
        if tick > self.w_acked:
            return Verdict.HOLD
        if tick > self._started[bucket_]:
            self._started[bucket_] = tick
        return Verdict.START

    def verdict(self, key: str, tick: float) -> Verdict:
        return self.verdict_for_bucket(bucket(key), tick)

    def owns(self, bucket_: int) -> bool:
        return bool(self._owned[bucket_]) and self.state is MemberState.ACTIVE

    def owned_buckets(self) -> list[int]:
        return [b for b in range(BUCKETS) if self._owned[b]]

    # -- the renewal ---------------------------------------------------------------

    def annotations(self, now: float) -> dict[str, str]:
        """What the next write of the member Lease says; its fire bound never goes down."""
        if self.state is MemberState.ACTIVE:
            self._w_sent = max(self._w_sent, now + self.lead, self.w_acked)
        written = {
            FIRE_BOUND: repr(max(self._w_sent, self.w_acked)),
            RENEWED_AT: repr(now),
            ACKED_BOUND: repr(self.w_acked),
            EPOCH: str(self.settled_epoch),
            HANDOVER_EPOCH: str(self.handover_epoch),
            HANDOVER_BOUND: repr(self.handover_bound),
            HANDOVER_FROM: repr(self.handover_from),
            OWNED_BOUND: repr(self.owned_bound),
            ASKED_BEFORE: repr(self.asked_before),
        }
        if self.endpoint:
            written[ENDPOINT] = self.endpoint
        if self.state is MemberState.RELEASED:
            written[RELEASED] = "true"
            # Once released the fire bound is the acknowledged one: no tick above it started.
            written[FIRE_BOUND] = repr(self.w_acked)
        return written

    def acknowledged(self, record: LeaseRecord) -> bool:
        """The store holds ``record``, written by this member; True if the fire bound moved."""
        view = MemberView.parse(record)
        self.record = record
        if view.gone:
            self._fence()
            return False
        moved = view.fire_bound > self.w_acked
        self.w_acked = max(self.w_acked, view.fire_bound)
        return moved

    def conflicted(self, current: LeaseRecord | None) -> bool:
        """A renewal found the Lease moved or gone: ``current`` is what the store holds now.

        Only this member and a fencing coordinator write the Lease, so a Lease
        that moved but is not fenced holds this member's own write, whose reply
        was lost: that write counts as acknowledged now. Returns whether the
        fire bound moved; the member is fenced when the Lease is gone or fenced.
        """
        if current is None:
            self._fence()
            return False
        return self.acknowledged(current)

    def _fence(self) -> None:
        if self.state is MemberState.ACTIVE:
            self.state = MemberState.FENCED

    def release(self) -> list[int]:
        """SIGTERM (rule 8): no tick starts from now on; returns the buckets given up.

        The next write says ``released`` with a handover bound that covers every
        tick started here and every start bound learnt, so nothing is uncertain.
        """
        lost = self.owned_buckets() if self.state is MemberState.ACTIVE else []
        if self.state is MemberState.ACTIVE:
            self.state = MemberState.RELEASED
        for b in lost:
            # A bucket whose bound is unknown never started here; the successor falls back
            # on the floor for it, as this member's Lease will not say it settled.
            known = self._bound[b] if self._bound[b] != math.inf else -math.inf
            self.handover_bound = max(self.handover_bound, self._started[b], known)
        self.handover_bound = max(self.handover_bound, self.owned_bound)
        released_from = self._handed_over_from(lost)
        if self._handover_read < self.handover_epoch:
            # The jobs handed over in the last epoch, not yet settled by every member, read
            # the same bound, now raised by the jobs released: their ticks between their last
            # start and the raised bound were started nowhere, so they stay uncertain.
            released_from = _lowest(self.handover_from, released_from)
        self.handover_from = released_from
        return lost

    def _handed_over_from(self, lost: list[int]) -> float:
        """Where the ticks of the jobs in ``lost`` stop being certainly started.

        The highest tick started of them, below the instant the engine is still
        asking about: each started every tick due up to then. When none started
        here, the lowest of their start bounds.
        """
        started = max((self._started[b] for b in lost), default=-math.inf)
        if math.isfinite(started):
            # Of the instant the engine is still asking about, some jobs may have started
            # their tick and others not been asked yet: that instant is not certain.
            return min(started, self.asked_before - TICK_RESOLUTION)
        bounds = (self._bound[b] for b in lost if math.isfinite(self._bound[b]))
        return min(bounds, default=-math.inf)

    # -- observing the ring ----------------------------------------------------------

    def observe(self, snapshot: Snapshot) -> Changes:
        """What the Leases in ``snapshot`` change here: fence, start bounds, a new epoch."""
        changes = Changes()
        if self.state is not MemberState.ACTIVE:
            return changes
        mine = snapshot.members.get(self.identity)
        if (mine is None and self.record is not None) or (mine is not None and mine.gone):
            return self._fenced_now(changes)
        self._resolve(snapshot, changes)
        self._note_handover_read(snapshot)
        published = snapshot.epoch
        if published is None or published.epoch == self.epoch:
            return changes
        if published.epoch < self.epoch:
            # The coordinator Lease went back (deleted and created anew): nothing is known.
            return self._fenced_now(changes)
        skipped = published.epoch > self.epoch + 1
        if (skipped and self.identity in self.assignment.members) or (
            self.identity in published.previous and published.epoch != self.epoch + 1
        ):
            # A member of an epoch sees the next only after settling it: this one was fenced.
            return self._fenced_now(changes)
        if self._pending:
            # Rule 5 makes this impossible on a consistent snapshot; adopting later is safe.
            return changes
        self._adopt(published, snapshot, changes)
        return changes

    def _fenced_now(self, changes: Changes) -> Changes:
        self._fence()
        changes.lost = self.owned_buckets()
        return changes

    def _adopt(self, published: EpochView, snapshot: Snapshot, changes: Changes) -> None:
        new = assignment(published.members)
        previous = assignment(published.previous)
        me = self.identity
        lost = [b for b in range(BUCKETS) if self._owned[b] and new.owner_of_bucket(b) != me]
        self.handover_from = self._handed_over_from(lost)
        for b in range(BUCKETS):
            owned = self._owned[b]
            owner = new.owner_of_bucket(b) == me
            if owned and not owner:
                self._owned[b] = 0
                changes.lost.append(b)
                self.handover_bound = max(self.handover_bound, self._started[b], self._bound[b])
                self._bound[b] = math.inf
            elif owner and not owned:
                self._owned[b] = 1
                self._bound[b] = math.inf
                predecessor = previous.owner_of_bucket(b)
                if predecessor is None:
                    # The ring's first epoch: nobody started a tick before it.
                    self._learn(b, Bound(-math.inf), changes)
                else:
                    self._pending.setdefault(predecessor, []).append(b)
        self.epoch = published.epoch
        self.assignment = new
        self.handover_epoch = published.epoch
        changes.adopted = published.epoch
        self._resolve(snapshot, changes)

    def _note_handover_read(self, snapshot: Snapshot) -> None:
        if self._handover_read >= self.epoch:
            return
        for identity in self.assignment.members:
            view = snapshot.members.get(identity)
            if identity != self.identity and (view is None or view.settled_epoch < self.epoch):
                return
        self._handover_read = self.epoch

    def _learn(self, b: int, bound: Bound, changes: Changes) -> None:
        self._bound[b] = bound.start
        self.owned_bound = max(self.owned_bound, bound.start)
        changes.gained[b] = bound

    def _resolve(self, snapshot: Snapshot, changes: Changes) -> None:
        for predecessor in list(self._pending):
            view = snapshot.members.get(predecessor)
            bound = start_bound(view, self.epoch, snapshot, self.params)
            if bound is not None:
                for b in self._pending.pop(predecessor):
                    self._learn(b, bound, changes)
        if not self._pending:
            self.settled_epoch = self.epoch


def _lowest(a: float, b: float) -> float:
    """The lower of two points where ticks stop being certainly started; -inf is none."""
    points = [x for x in (a, b) if math.isfinite(x)]
    return min(points, default=-math.inf)


# -- the coordinator ---------------------------------------------------------------------


class Staleness:
    """When each member Lease last moved, on this replica's monotonic clock (rules 6 and 9)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}

    def observe(self, snapshot: Snapshot, monotonic: float, wall: float, params: Params) -> None:
        """Note the Leases that moved; those not in ``snapshot`` are forgotten."""
        before, self._seen = self._seen, {}
        for view in snapshot.members.values():
            self._note(view, before.get(view.identity), monotonic, wall, params)

    def saw(self, view: MemberView, monotonic: float, wall: float, params: Params) -> None:
        """One member Lease as a watch showed it, between two observations.

        The watch shows a renewal when it is written, where the next list may come
        up to a period later: so a Lease that stopped moving is judged from when it
        last moved, not from when a list first showed it still.
        """
        self._note(view, self._seen.get(view.identity), monotonic, wall, params)

    def _note(
        self,
        view: MemberView,
        before: tuple[str, float] | None,
        monotonic: float,
        wall: float,
        params: Params,
    ) -> None:
        """A Lease seen for the first time may be counted as older.

        A replica that starts after a member died would otherwise wait the whole
        L from its first read (up to twice L for a dead coordinator). The Lease's
        renewal says when it was sent, on its writer's clock: that age counts, up
        to L/2. So it still has to stay unchanged for L/2 on this replica's own
        clock, which a live member renewing every R never does, however wrong
        either clock is.
        """
        version = view.record.resource_version
        if before is not None and before[0] == version:
            self._seen[view.identity] = before
        elif before is None and math.isfinite(view.fire_bound):
            age = wall - view.renewed(params)
            credit = min(max(age, 0.0), params.fence_after / 2)
            self._seen[view.identity] = (version, monotonic - credit)
        else:
            self._seen[view.identity] = (version, monotonic)

    def regained(self, monotonic: float, grace: float) -> None:
        """This replica reads the store again after it could not: give each Lease ``grace``.

        A Lease it could not see move may not have moved because nobody could write
        (the store itself was out), so each counts as unchanged since ``grace`` ago at
        most: a member renewing every R shows it long before ``after - grace``, and
        one that died is still fenced, that much later. Only when to fence changes,
        which no start depends on.
        """
        floor = monotonic - grace
        self._seen = {i: (v, max(at, floor)) for i, (v, at) in self._seen.items()}

    def next_stale(self, identities: Iterable[str], monotonic: float, after: float) -> float:
        """In how many seconds the next of ``identities`` not yet stale will be (inf: none)."""
        deadlines = (self._seen[i][1] + after - monotonic for i in identities if i in self._seen)
        return min((d for d in deadlines if d > 0), default=math.inf)

    def stale(self, identity: str, monotonic: float, after: float) -> bool:
        """Unchanged for ``after`` seconds since this replica first saw its current version."""
        seen = self._seen.get(identity)
        return seen is not None and monotonic - seen[1] >= after


@dataclass(frozen=True, slots=True)
class Fence:
    """Write ``fenced`` on this member Lease (if it has not moved since it was read)."""

    record: LeaseRecord


@dataclass(frozen=True, slots=True)
class WriteEpoch:
    """Create (``record`` None) or replace the coordinator Lease."""

    record: LeaseRecord | None
    holder: str
    epoch: int
    members: tuple[str, ...]
    previous: tuple[str, ...]

    def annotations(self) -> dict[str, str]:
        return {
            EPOCH: str(self.epoch),
            MEMBERS: ",".join(self.members),
            PREVIOUS_MEMBERS: ",".join(self.previous),
        }


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete this fenced or released member Lease (rule 10)."""

    record: LeaseRecord


Action = Fence | WriteEpoch | Delete


def fenced(record: LeaseRecord) -> LeaseRecord:
    """The member Lease ``record`` with ``fenced`` set, for the fencing CAS."""
    return record.changed(annotations={FENCED: "true"})


def _ready(published: EpochView, snapshot: Snapshot, leaving: Iterable[str]) -> bool:
    """Rule 5: every member of the epoch has settled it, or is fenced or released."""
    out = set(leaving)
    for identity in published.members:
        view = snapshot.members.get(identity)
        if view is None:
            return False
        if not (view.gone or identity in out or view.settled_epoch >= published.epoch):
            return False
    return True


def coordinate(
    me: str, snapshot: Snapshot, staleness: Staleness, monotonic: float, params: Params
) -> list[Action]:
    """What this member writes as coordinator, or to become it; apply in order, stop at a failure.

    Fences come first: the epoch write that follows counts them as done.
    """
    mine = snapshot.members.get(me)
    if mine is None or mine.gone:
        return []

    def stale(identity: str) -> bool:
        return staleness.stale(identity, monotonic, params.fence_after)

    published = snapshot.epoch
    if published is not None and published.holder != me:
        holder = snapshot.members.get(published.holder)
        if (
            published.holder
            and holder is not None
            and not holder.gone
            and not stale(holder.identity)
        ):
            return []
    actions: list[Action] = [
        Fence(view.record)
        for identity, view in sorted(snapshot.members.items())
        if identity != me and not view.gone and stale(identity)
    ]
    out = {a.record.name.removeprefix(MEMBER_PREFIX) for a in actions if isinstance(a, Fence)}
    live = tuple(sorted(i for i, v in snapshot.members.items() if not v.gone and i not in out))
    if published is None:
        actions.append(WriteEpoch(None, me, 1, live, ()))
        return actions
    changed = live != published.members
    if changed and _ready(published, snapshot, out):
        actions.append(
            WriteEpoch(published.record, me, published.epoch + 1, live, published.members)
        )
    elif published.holder != me:
        actions.append(
            WriteEpoch(published.record, me, published.epoch, published.members, published.previous)
        )
    elif not changed and all(
        snapshot.members[i].settled_epoch >= published.epoch for i in published.members
    ):
        # Every member settled the epoch: no start bound depends on a Lease outside it.
        actions += [
            Delete(v.record)
            for i, v in sorted(snapshot.members.items())
            if v.gone and i not in published.members
        ]
    return actions


def hand_back(me: str, snapshot: Snapshot) -> WriteEpoch | None:
    """A released member's last write (rule 8): the next epoch, without it, if rule 5 allows.

    Any released member publishes that epoch itself rather than leave it to the
    coordinator's next renewal: the successors adopt it at theirs, one renewal
    period sooner. The coordinator Lease keeps its holder, unless that is this
    member, which hands it back (no holder) in the same write, epoch or not.
    None: nothing to write.
    """
    published = snapshot.epoch
    if published is None:
        return None
    holder = "" if published.holder == me else published.holder
    live = tuple(sorted(i for i, v in snapshot.members.items() if not v.gone and i != me))
    if live and live != published.members and _ready(published, snapshot, (me,)):
        return WriteEpoch(published.record, holder, published.epoch + 1, live, published.members)
    if published.holder != me:
        return None
    return WriteEpoch(published.record, "", published.epoch, published.members, published.previous)
