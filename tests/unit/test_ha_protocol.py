"""The protocol's decisions one by one (docs/ha.md): start bounds, firing, the coordinator."""

from __future__ import annotations

import math

import pytest

from podcron.engine.gate import Verdict
from podcron.engine.gating import count_ticks
from podcron.ha.protocol import (
    ACKED_BOUND,
    EPOCH,
    FENCED,
    FIRE_BOUND,
    HANDOVER_BOUND,
    HANDOVER_EPOCH,
    HANDOVER_FROM,
    MEMBERS,
    OWNED_BOUND,
    PREVIOUS_MEMBERS,
    RELEASED,
    RENEWED_AT,
    Bound,
    Delete,
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
    hand_back,
    member_lease_name,
    start_bound,
)
from podcron.ha.ring import bucket
from podcron.ha.store import LeaseRecord
from podcron.schedules import parse_schedule

PARAMS = Params()
_versions = iter(range(1, 1_000_000))


def member(identity: str, **fields: object) -> LeaseRecord:
    names = {
        "fire_bound": FIRE_BOUND,
        "acked_bound": ACKED_BOUND,
        "settled": EPOCH,
        "handover_epoch": HANDOVER_EPOCH,
        "handover_bound": HANDOVER_BOUND,
        "handover_from": HANDOVER_FROM,
        "owned_bound": OWNED_BOUND,
        "renewed_at": RENEWED_AT,
    }
    annotations = {names[k]: str(v) for k, v in fields.items() if k in names}
    if fields.get("fenced"):
        annotations[FENCED] = "true"
    if fields.get("released"):
        annotations[RELEASED] = "true"
    return LeaseRecord(member_lease_name(identity), identity, annotations, {}, str(next(_versions)))


def epoch(number: int, members: str, previous: str = "", holder: str = "a") -> LeaseRecord:
    annotations = {EPOCH: str(number), MEMBERS: members, PREVIOUS_MEMBERS: previous}
    return LeaseRecord(coordinator_lease_name("r"), holder, annotations, {}, str(next(_versions)))


def snapshot(*records: LeaseRecord) -> Snapshot:
    return Snapshot.parse(records, "r")


class TestStartBound:
    def bound(self, predecessor: LeaseRecord, *others: LeaseRecord) -> Bound | None:
        view = MemberView.parse(predecessor)
        return start_bound(view, 5, snapshot(predecessor, *others), PARAMS)

    def test_a_predecessor_that_handed_over_gives_its_handover_bound(self) -> None:
        p = member("p", fire_bound=130, handover_epoch=5, handover_bound=110, settled=4)
        assert self.bound(p) == Bound(110.0)

    def test_ticks_between_the_last_started_and_a_handover_bound_above_it_are_uncertain(
        self,
    ) -> None:
        # One job it handed over had a start bound (110) above the last tick it started (104).
        p = member("p", handover_epoch=5, handover_bound=110, handover_from=104, settled=4)
        assert self.bound(p) == Bound(110.0, 104.0)
        even = member("p", handover_epoch=5, handover_bound=110, handover_from=110, settled=4)
        assert self.bound(even) == Bound(110.0)

    def test_a_predecessor_that_has_not_handed_over_yet_leaves_it_unknown(self) -> None:
        assert self.bound(member("p", fire_bound=130, handover_epoch=4, settled=4)) is None
        assert start_bound(None, 5, snapshot(), PARAMS) is None

    def test_a_fenced_predecessor_gives_its_frozen_fire_bound_and_the_uncertain_window(
        self,
    ) -> None:
        p = member("p", fire_bound=130, handover_bound=90, owned_bound=80, settled=4, fenced=True)
        assert self.bound(p) == Bound(130.0, 128.0)
        # Its last renewal came 5 s after the one before: ticks above 127 waited for it.
        late = member("p", fire_bound=130, acked_bound=125, settled=4, fenced=True)
        assert self.bound(late) == Bound(130.0, 125.0)

    def test_a_fenced_predecessor_whose_last_renewal_led_by_more_than_lambda_stopped_then(
        self,
    ) -> None:
        # Renewals came slowly, so its last one led its clock by 3.5 s: the ticks since it was
        # sent are uncertain. A Lease that does not say when it was renewed (written by an
        # older replica) led by Λ.
        slow = member("p", fire_bound=130, renewed_at=126.5, settled=4, fenced=True)
        assert self.bound(slow) == Bound(130.0, 126.5)
        assert MemberView.parse(member("p", fire_bound=130)).renewed(PARAMS) == 128.0

    def test_a_fenced_predecessor_that_had_not_settled_falls_back_on_the_floor(self) -> None:
        p = member("p", fire_bound=130, settled=3, fenced=True)
        # q handed over a bucket p gained but had not learnt the bound of: q's bound counts.
        q = member("q", fire_bound=170, handover_epoch=4, handover_bound=140, settled=4)
        assert self.bound(p, q) == Bound(140.0, 128.0)
        # r was fenced before p: p may have waited for r's bound, started nothing, and r
        # stopped Λ below its own fire bound.
        r = member("r", fire_bound=120, settled=3, fenced=True)
        assert self.bound(p, q, r) == Bound(140.0, 118.0)

    def test_a_released_predecessor_gives_its_handover_bound_with_nothing_uncertain(self) -> None:
        p = member(
            "p", fire_bound=130, handover_bound=121, owned_bound=80, settled=4, released=True
        )
        assert self.bound(p) == Bound(121.0)
        unsettled = member("p", fire_bound=130, handover_bound=121, settled=3, released=True)
        q = member("q", handover_bound=125, handover_epoch=4)
        assert self.bound(unsettled, q) == Bound(125.0, 121.0)


class TestMember:
    def adopted(self, identity: str = "a", members: str = "a") -> Member:
        m = Member(identity, PARAMS)
        m.acknowledged(member(identity, fire_bound=102))
        changes = m.observe(snapshot(member(identity, fire_bound=102), epoch(1, members)))
        assert changes.adopted == 1
        return m

    def test_the_fire_bound_written_never_goes_back_with_the_clock(self) -> None:
        m = Member("a", PARAMS)
        assert m.annotations(100.0)[FIRE_BOUND] == "102.0"
        assert m.annotations(50.0)[FIRE_BOUND] == "102.0"
        assert m.annotations(101.0)[FIRE_BOUND] == "103.0"

    def test_a_renewal_leads_by_the_lead_set_and_says_when_it_was_sent(self) -> None:
        m = Member("a", PARAMS)
        m.lead = 3.5
        written = m.annotations(100.0)
        assert (written[FIRE_BOUND], written[RENEWED_AT]) == ("103.5", "100.0")
        # A shorter lead again: the bound stands, and it was renewed at 101, not 101.5.
        m.lead = PARAMS.fire_ahead
        written = m.annotations(101.0)
        assert (written[FIRE_BOUND], written[RENEWED_AT]) == ("103.5", "101.0")

    def test_a_lead_goes_up_to_twice_lambda_and_halfway_to_l(self) -> None:
        assert PARAMS.fire_ahead_at_most == 4.0
        assert Params(renew_period=0.5, fire_ahead=1.5, fence_after=4.0).fire_ahead_at_most == 2.75

    def test_a_renewal_says_which_fire_bound_was_acknowledged_when_it_was_sent(self) -> None:
        m = Member("a", PARAMS)
        assert m.annotations(100.0)[ACKED_BOUND] == "-inf"
        m.acknowledged(member("a", fire_bound=102))
        assert m.annotations(105.0)[ACKED_BOUND] == "102.0"

    def test_the_firing_rule(self) -> None:
        m = self.adopted()
        key = "ns/job"
        assert m.verdict(key, 102.0) is Verdict.START
        assert m.verdict(key, 102.5) is Verdict.HOLD  # above the acknowledged fire bound
        other = Member("b", PARAMS)
        assert other.verdict(key, 50.0) is Verdict.NOT_OWNER

    def test_a_gained_bucket_holds_until_its_start_bound_is_known(self) -> None:
        m = Member("b", PARAMS)
        m.acknowledged(member("b", fire_bound=102))
        a = member("a", fire_bound=103, settled=1, handover_epoch=1)
        b = member("b", fire_bound=102)
        changes = m.observe(snapshot(a, b, epoch(2, "a,b", "a")))
        gained = [k for k in (f"ns/j{i}" for i in range(50)) if m.owns(bucket(k))]
        assert gained
        assert changes.gained == {}
        assert m.verdict(gained[0], 101.0) is Verdict.HOLD
        a = member("a", fire_bound=104, settled=2, handover_epoch=2, handover_bound=99.5)
        changes = m.observe(snapshot(a, b, epoch(2, "a,b", "a")))
        assert set(changes.gained.values()) == {Bound(99.5)}
        assert m.settled_epoch == 2
        assert m.verdict(gained[0], 99.0) is Verdict.NOT_OWNER
        assert m.verdict(gained[0], 100.0) is Verdict.START

    def test_losing_a_bucket_hands_over_above_every_tick_started(self) -> None:
        m = self.adopted()
        keys = [f"ns/j{i}" for i in range(50)]
        for k in keys:
            assert m.verdict(k, 101.0) is Verdict.START
        mine = member("a", fire_bound=102, settled=1, handover_epoch=1)
        changes = m.observe(snapshot(mine, member("b"), epoch(2, "a,b", "a")))
        assert changes.lost
        assert m.handover_bound == 101.0
        assert m.annotations(101.0)[HANDOVER_EPOCH] == "2"
        assert m.annotations(101.0)[HANDOVER_FROM] == "101.0"

    @pytest.mark.parametrize(("asked_before", "uncertain"), [(101.0, True), (102.0, False)])
    def test_a_handover_while_the_engine_asks_about_an_instant_leaves_that_instant_uncertain(
        self, asked_before: float, uncertain: bool
    ) -> None:
        # The engine asks about the ticks of one instant a batch at a time: some jobs
        # started 101.0, the others were not asked yet when the epoch moved them.
        m = self.adopted()
        keys = [f"ns/j{i}" for i in range(50)]
        for k in keys[:10]:
            assert m.verdict(k, 101.0) is Verdict.START
        m.asked_before = asked_before
        mine = member("a", fire_bound=102, settled=1, handover_epoch=1)
        m.observe(snapshot(mine, member("b"), epoch(2, "a,b", "a")))
        written = m.annotations(101.5)
        assert float(written[HANDOVER_BOUND]) == 101.0
        handover_from = float(written[HANDOVER_FROM])
        assert 100.0 < handover_from <= 101.0
        assert (handover_from < 101.0) is uncertain
        # What the successor counts from it: the instant itself, by the engine's arithmetic
        # (a float just below 101.0 was rounded back onto it and counted nothing).
        every_second = parse_schedule({"every": "1s"})
        assert count_ticks(every_second, handover_from, 101.0) == (1 if uncertain else 0)

    def test_a_fenced_lease_fences_the_member_for_good(self) -> None:
        m = self.adopted()
        changes = m.observe(snapshot(member("a", fenced=True), epoch(1, "a")))
        assert m.state is MemberState.FENCED
        assert len(changes.lost) == 4096
        assert m.verdict("ns/job", 100.0) is Verdict.NOT_OWNER

    @pytest.mark.parametrize(
        "published",
        [epoch(0, ""), epoch(3, "a", "a")],
        ids=["epoch went back", "an epoch skipped by a member"],
    )
    def test_what_only_a_fenced_member_can_see_fences_it(self, published: LeaseRecord) -> None:
        m = self.adopted()
        m.observe(snapshot(member("a", fire_bound=102), published))
        assert m.state is MemberState.FENCED

    def test_a_lost_reply_is_acknowledged_by_the_next_read(self) -> None:
        m = Member("a", PARAMS)
        assert not m.conflicted(None)
        assert m.state is MemberState.FENCED
        m = Member("a", PARAMS)
        assert m.conflicted(member("a", fire_bound=102.0))
        assert m.w_acked == 102.0

    def test_release_covers_every_tick_started_and_stops_starting(self) -> None:
        m = self.adopted()
        assert m.verdict("ns/job", 101.0) is Verdict.START
        lost = m.release()
        assert len(lost) == 4096
        written = m.annotations(150.0)
        assert written[RELEASED] == "true"
        assert float(written[HANDOVER_BOUND]) == 101.0
        assert written[FIRE_BOUND] == "102.0"
        assert m.verdict("ns/job", 101.5) is Verdict.NOT_OWNER

    @pytest.mark.parametrize(("b_settled", "certain"), [(1, 101.0), (2, 101.5)])
    def test_a_release_before_a_handover_was_read_keeps_the_handed_over_jobs_last_start(
        self, b_settled: int, certain: float
    ) -> None:
        # Adopting epoch 2 hands some jobs over to b; then SIGTERM releases the rest, one of
        # which started a tick since. Until b settled epoch 2 it may not have read the
        # handover: it reads the release's bound, that tick's, and what lies between the
        # jobs' last start and it is uncertain. Once b settled, the release's own point holds.
        m = self.adopted()
        keys = [f"ns/j{i}" for i in range(50)]
        for k in keys:
            assert m.verdict(k, 101.0) is Verdict.START
        mine = member("a", fire_bound=102, settled=1, handover_epoch=1)
        m.observe(snapshot(mine, member("b"), epoch(2, "a,b", "a")))
        m.observe(snapshot(mine, member("b", settled=b_settled), epoch(2, "a,b", "a")))
        kept = next(k for k in keys if m.owns(bucket(k)))
        assert m.verdict(kept, 101.5) is Verdict.START
        m.release()
        written = LeaseRecord(member_lease_name("a"), "a", m.annotations(150.0), {}, "9")
        view = MemberView.parse(written)
        assert (view.handover_bound, view.certain) == (101.5, certain)


class TestCoordinate:
    def decide(self, *records: LeaseRecord, now: float = 0.0, seen: float = 0.0) -> list[object]:
        view = snapshot(*records)
        staleness = Staleness()
        staleness.observe(view, seen, 0.0, PARAMS)
        return list(coordinate("a", view, staleness, now, PARAMS))

    def test_the_first_member_creates_the_first_epoch(self) -> None:
        assert self.decide(member("a"), member("b")) == [WriteEpoch(None, "a", 1, ("a", "b"), ())]

    def test_a_live_coordinator_is_left_alone(self) -> None:
        assert self.decide(member("a"), member("b"), epoch(1, "a,b", holder="b")) == []

    def test_a_released_coordinator_is_taken_over_with_the_next_epoch(self) -> None:
        coordinator = epoch(1, "a,b", holder="b")
        b = member("b", released=True)
        actions = self.decide(member("a", settled=1), b, coordinator)
        assert actions == [WriteEpoch(coordinator, "a", 2, ("a",), ("a", "b"))]

    def test_a_member_still_for_l_is_fenced_and_left_out(self) -> None:
        coordinator = epoch(1, "a,b")
        b = member("b", settled=1)
        assert self.decide(member("a", settled=1), b, coordinator, now=5.9) == []
        actions = self.decide(member("a", settled=1), b, coordinator, now=6.0)
        assert actions == [Fence(b), WriteEpoch(coordinator, "a", 2, ("a",), ("a", "b"))]

    def test_a_lease_first_seen_long_after_its_renewal_is_fenced_after_half_of_l(self) -> None:
        # b renewed at 100 (fire bound 102) and died; this replica first reads it at 130.
        dead = snapshot(member("b", fire_bound=102, settled=1), member("a", settled=1))
        staleness = Staleness()
        staleness.observe(dead, 0.0, 130.0, PARAMS)
        assert not staleness.stale("b", 2.9, PARAMS.fence_after)
        assert staleness.stale("b", 3.0, PARAMS.fence_after)
        # A renewal 0.4 s ago counts as 0.4 s; a fire bound from a clock ahead counts as none.
        fresh = snapshot(member("b", fire_bound=102, settled=1))
        staleness = Staleness()
        staleness.observe(fresh, 0.0, 100.4, PARAMS)
        assert not staleness.stale("b", 5.5, PARAMS.fence_after)
        assert staleness.stale("b", 5.6, PARAMS.fence_after)
        staleness = Staleness()
        staleness.observe(fresh, 0.0, 90.0, PARAMS)
        assert not staleness.stale("b", 5.9, PARAMS.fence_after)
        # A Lease that moved is fresh again, however old its fire bound looks.
        staleness.observe(snapshot(member("b", fire_bound=102, settled=1)), 1.0, 130.0, PARAMS)
        assert not staleness.stale("b", 6.9, PARAMS.fence_after)

    def test_no_epoch_before_every_member_settled_the_last(self) -> None:
        coordinator = epoch(2, "a,b", "a")
        records = (member("a", settled=2), member("b", settled=1), member("c"), coordinator)
        assert self.decide(*records) == []

    def test_left_leases_are_deleted_once_every_member_settled(self) -> None:
        coordinator = epoch(3, "a", "a,b")
        gone = member("b", fenced=True)
        assert self.decide(member("a", settled=2), gone, coordinator) == []
        assert self.decide(member("a", settled=3), gone, coordinator) == [Delete(gone)]

    def test_a_released_coordinator_hands_back_with_the_epoch_without_it(self) -> None:
        coordinator = epoch(1, "a,b")
        view = snapshot(member("a", released=True), member("b", settled=1), coordinator)
        assert hand_back("a", view) == WriteEpoch(coordinator, "", 2, ("b",), ("a", "b"))
        unsettled = snapshot(member("a", released=True), member("b"), coordinator)
        assert hand_back("a", unsettled) == WriteEpoch(coordinator, "", 1, ("a", "b"), ())
        assert hand_back("b", view) is None

    def test_a_released_member_publishes_the_epoch_without_it_the_holder_kept(self) -> None:
        coordinator = epoch(1, "a,b,c")
        view = snapshot(
            member("a", settled=1), member("b", settled=1), member("c", released=True), coordinator
        )
        assert hand_back("c", view) == WriteEpoch(coordinator, "a", 2, ("a", "b"), ("a", "b", "c"))
        unsettled = snapshot(
            member("a", settled=1), member("b"), member("c", released=True), coordinator
        )
        # Rule 5 does not allow it yet: the coordinator publishes it once b has settled.
        assert hand_back("c", unsettled) is None


def test_an_absent_annotation_reads_as_nothing_promised() -> None:
    view = MemberView.parse(member("x"))
    assert (view.fire_bound, view.settled_epoch, view.fenced) == (-math.inf, 0, False)
