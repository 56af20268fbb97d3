"""The engine with a firing gate: a tick starts only on START, held ticks, gained jobs caught up.

The gate is scripted: a small model of docs/ha.md's firing rule (owned jobs,
an acknowledged fire bound, per-job start bounds), which a test moves by hand
and then tells the engine about, as the replica agent does.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext, Trigger
from podcron.engine import ConcurrencyPolicy, Engine, History, JobSpec, RunCounts, RunStatus
from podcron.engine.engine import DISPATCH_BATCH
from podcron.engine.gate import Gain, GateListener, Verdict
from podcron.engine.gating import MAX_CATCH_UP_TICKS
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import (
    LoopClock,
    Recorder,
    SpansMade,
    counted,
    engine_on_loop_clock,
    spans_in_memory,
    spec,
)

pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]

UID = "uid-of-ns/job"


class ScriptedGate:
    """The firing rule over state a test sets: what is owned, the fire bound, start bounds."""

    def __init__(self) -> None:
        self.owned: set[str] = set()
        self.fire_bound = float("inf")
        self.start_bounds: dict[str, float] = {}
        self.unknown: set[str] = set()  # owned, start bound not known yet
        self.asked: list[tuple[str, float]] = []
        self.asked_through: list[float] = []  # what each asked_before said
        self._asking = asyncio.Event()
        self.listener: GateListener | None = None

    def verdict(self, key: str, tick: float) -> Verdict:
        self.asked.append((key, tick))
        self._asking.set()
        if key not in self.owned or tick <= self.start_bounds.get(key, float("-inf")):
            return Verdict.NOT_OWNER
        if key in self.unknown or tick > self.fire_bound:
            return Verdict.HOLD
        return Verdict.START

    async def asked_about(self, key: str, count: int, within: float) -> None:
        """Wait until ``key``'s ticks were asked about ``count`` times."""
        async with asyncio.timeout(within):
            while len([asked for asked, _ in self.asked if asked == key]) < count:
                self._asking.clear()
                await self._asking.wait()

    def set_listener(self, listener: GateListener) -> None:
        self.listener = listener

    def asked_before(self, instant: float) -> None:
        self.asked_through.append(instant)


@dataclass
class Setup:
    engine: Engine
    gate: ScriptedGate
    clock: LoopClock
    recorder: Recorder
    registry: CollectorRegistry

    async def align(self) -> None:
        """Wait until a quarter second past a whole one: ticks every second fall mid-sleep.

        In the test, not the fixture: only the test's own steps run on the fake loop clock.
        """
        wall = self.clock.wall()
        await asyncio.sleep(math.ceil(wall) - wall + 0.25)

    async def hold_the_job(self, **fields: Any) -> ScriptedGate:
        """Align, then register the job, owned here with its ticks held: a renewal failed."""
        await self.align()
        self.gate.owned.add(UID)
        self.gate.fire_bound = self.clock.wall()  # frozen
        self.engine.upsert(_the_job(**fields))
        return self.gate

    def counter(self, name: str) -> float:
        return counted(self.registry, name)

    async def dispatched(self, trigger: Trigger | None = None) -> list[float]:
        """The ticks dispatched so far, by their outcomes (each has one), oldest first.

        The jobs here return at once, so an outcome follows its dispatch within a
        few loop steps: on the fake loop clock a sleep returns only when the loop
        has nothing else to do. Under Forbid, ticks dispatched together are the
        first one run and the others skipped.
        """
        await asyncio.sleep(0.01)
        return sorted(
            e.scheduled_time.timestamp()
            for e in self.recorder.finished()
            if trigger is None or e.trigger is trigger
        )


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    gate = ScriptedGate()
    clock = LoopClock()
    registry = CollectorRegistry()
    engine = engine_on_loop_clock(
        clock, gate=gate, telemetry=RunTelemetry(metrics=JobMetrics(registry))
    )
    yield Setup(engine, gate, clock, Recorder(engine), registry)
    await engine.shutdown()


async def _job(ctx: JobContext) -> None:
    pass


def _the_job(**fields: Any) -> JobSpec:
    # Allow, so that several late ticks all start: what the gate lets through is what starts.
    # Under Forbid and Replace only the newest does (the test after the catch-up tests).
    fields.setdefault("concurrency_policy", ConcurrencyPolicy.ALLOW)
    fields.setdefault("uid", UID)
    return spec(_job, **fields)


async def test_the_engine_listens_to_its_gate_and_asks_by_uid_at_the_tick(setup: Setup) -> None:
    await setup.align()
    assert setup.gate.listener is setup.engine
    setup.gate.owned.add(UID)
    setup.engine.upsert(_the_job())
    await setup.recorder.until(lambda: len(setup.recorder.finished()) >= 3)
    asked = [tick for key, tick in setup.gate.asked if key == UID]
    assert (await setup.dispatched(Trigger.SCHEDULED))[:3] == asked[:3]
    assert all(tick == int(tick) for tick in asked), "asked about the tick, not the wake-up"


async def test_a_tick_of_a_job_owned_elsewhere_is_not_started_nor_recorded(setup: Setup) -> None:
    await setup.align()
    snapshot = setup.engine.upsert(_the_job())
    assert snapshot.next_run_time is not None
    await asyncio.sleep(5)
    assert len(setup.gate.asked) >= 4, "every tick was asked about"
    assert setup.recorder.events == []
    later = setup.engine.snapshot("ns/job")
    assert later.history.counts == RunCounts()
    assert later.next_run_time is not None
    assert later.next_run_time > snapshot.next_run_time, "the next tick is armed as usual"
    assert setup.counter("podcron_ticks_missed_total") == 0


async def test_before_a_release_every_tick_due_is_asked_about_at_once(setup: Setup) -> None:
    await setup.align()
    gate, count = setup.gate, DISPATCH_BATCH * 3
    for index in range(count):
        gate.owned.add(f"uid-{index}")
        setup.engine.upsert(_the_job(name=f"job-{index}", uid=f"uid-{index}"))
    # The loop stands still while the next whole second passes: every job is due on it,
    # and the timer would ask about them a batch a loop turn.
    setup.clock.step(1.0)
    instant = math.floor(setup.clock.wall())
    before = len(gate.asked)
    setup.engine.decide_due()
    assert sorted(key for key, tick in gate.asked[before:] if tick == instant) == sorted(gate.owned)
    assert gate.asked_through[-1] > instant, "the gate is told the instant is decided"
    assert len([t for t in await setup.dispatched() if t == instant]) == count


async def test_held_ticks_start_oldest_first_when_the_bound_moves(setup: Setup) -> None:
    gate = await setup.hold_the_job()
    await asyncio.sleep(3.5)
    held = [tick for _, tick in gate.asked]
    assert len(held) == 3
    assert setup.recorder.events == [], "held, not started, not recorded"
    gate.fire_bound = setup.clock.wall() + 2
    setup.engine.bound_moved()
    assert await setup.dispatched() == held
    await setup.recorder.until(lambda: len(setup.recorder.finished()) == 3)
    finished = setup.recorder.finished()
    # Forbid: the first held tick runs, the two behind it are skipped; one outcome each.
    assert [e.status for e in finished].count(RunStatus.SUCCESS) == 1
    assert {e.trigger for e in finished} == {Trigger.SCHEDULED}
    assert setup.counter("podcron_ticks_missed_total") == 0


async def test_a_bound_that_moves_part_way_starts_the_ticks_below_it_only(setup: Setup) -> None:
    gate = await setup.hold_the_job()
    await asyncio.sleep(3.5)
    first, second, third = (tick for _, tick in gate.asked)
    gate.fire_bound = second
    setup.engine.bound_moved()
    assert await setup.dispatched() == [first, second]
    gate.fire_bound = third
    setup.engine.bound_moved()
    assert await setup.dispatched() == [first, second, third]


async def test_under_replace_the_newest_held_tick_the_bound_allows_starts_the_older_missed(
    setup: Setup,
) -> None:
    gate = await setup.hold_the_job(concurrency_policy=ConcurrencyPolicy.REPLACE)
    await asyncio.sleep(3.5)
    _first, second, third = (tick for _, tick in gate.asked)
    gate.fire_bound = second
    setup.engine.bound_moved()
    assert await setup.dispatched() == [second]
    assert setup.counter("podcron_ticks_missed_total") == 1  # the first: replaced at once
    gate.fire_bound = third
    setup.engine.bound_moved()
    assert await setup.dispatched() == [second, third]


async def test_held_ticks_older_than_the_allowance_are_missed(setup: Setup) -> None:
    gate = await setup.hold_the_job(starting_deadline_seconds=2.5)
    await asyncio.sleep(5.5)
    held = [tick for _, tick in gate.asked]
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    now = setup.clock.wall()
    assert await setup.dispatched() == [tick for tick in held if now - tick <= 2.5]
    assert len(await setup.dispatched()) == 2
    assert setup.counter("podcron_ticks_missed_total") == 3


async def test_at_most_ten_ticks_of_a_job_are_held_the_older_ones_missed(setup: Setup) -> None:
    gate = await setup.hold_the_job(starting_deadline_seconds=60)
    await asyncio.sleep(MAX_CATCH_UP_TICKS + 3.5)
    assert setup.counter("podcron_ticks_missed_total") == 0, "not known yet to be this replica's"
    held = [tick for _, tick in gate.asked]
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched() == held[3:]
    assert setup.counter("podcron_ticks_missed_total") == 3


async def test_ticks_passed_over_while_held_are_not_missed_here_when_the_job_moves(
    setup: Setup,
) -> None:
    gate = await setup.hold_the_job(starting_deadline_seconds=60)
    await asyncio.sleep(MAX_CATCH_UP_TICKS + 3.5)
    gate.owned.clear()  # the next epoch gives it to another replica, which accounts for them
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched() == []
    assert setup.counter("podcron_ticks_missed_total") == 0


async def test_held_ticks_of_a_lost_or_removed_job_never_start(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned |= {UID, "other"}
    gate.fire_bound = setup.clock.wall()
    setup.engine.upsert(_the_job())
    setup.engine.upsert(spec(_job, name="other", uid="other"))
    await asyncio.sleep(2.5)
    gate.owned.clear()
    setup.engine.owners_changed([], [UID])
    setup.engine.remove("ns/other")
    gate.owned |= {UID, "other"}
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert setup.recorder.events == []


async def test_a_held_tick_the_gate_then_gives_away_is_dropped(setup: Setup) -> None:
    gate = await setup.hold_the_job()
    await asyncio.sleep(2.5)
    first, second = (tick for _, tick in gate.asked)
    # The next epoch's start bound is above the first: that tick is the predecessor's.
    gate.start_bounds[UID] = first
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched() == [second]
    setup.engine.bound_moved()
    assert await setup.dispatched() == [second], "asked once: dropped, not held again"


async def test_after_shutdown_the_gates_reports_change_nothing(setup: Setup) -> None:
    await setup.align()
    setup.gate.owned.add(UID)
    setup.gate.fire_bound = setup.clock.wall()
    setup.engine.upsert(_the_job())
    await asyncio.sleep(1.5)
    await setup.engine.shutdown()
    setup.gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    setup.engine.owners_changed([Gain(UID, start_bound=setup.clock.wall() - 5)], [UID])
    assert await setup.dispatched() == []


async def test_held_ticks_of_a_job_suspended_meanwhile_never_start(setup: Setup) -> None:
    gate = await setup.hold_the_job()
    await asyncio.sleep(2.5)
    setup.engine.upsert(_the_job(suspended=True))
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched() == []


async def test_a_gained_job_catches_up_above_its_start_bound(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    setup.engine.upsert(_the_job(starting_deadline_seconds=3.5))
    await asyncio.sleep(8.5)
    ticks = [tick for _, tick in gate.asked]  # all owned elsewhere so far
    assert len(ticks) == 8
    # A fenced predecessor: its frozen fire bound is the start bound, Λ = 2 below it uncertain.
    bound = ticks[3]
    gate.owned.add(UID)
    gate.start_bounds[UID] = bound
    setup.engine.owners_changed([Gain(UID, start_bound=bound, uncertain_from=bound - 2)], [])
    now = setup.clock.wall()
    due = [tick for tick in ticks if tick > bound and now - tick <= 3.5]
    assert await setup.dispatched(Trigger.CATCH_UP) == due
    assert len(due) == 3
    assert setup.counter("podcron_ticks_missed_total") == 1  # ticks[4]: too late
    assert setup.counter("podcron_ticks_uncertain_total") == 2  # ticks[2], ticks[3]
    job = _the_job()
    labels = {"namespace": job.namespace, "name": job.name}
    assert setup.registry.get_sample_value("podcron_ticks_uncertain_total", labels) == 2
    await setup.recorder.until(lambda: len(setup.recorder.finished()) == 3)
    await asyncio.sleep(1)
    assert await setup.dispatched(Trigger.SCHEDULED) == [ticks[-1] + 1], "then on schedule"


async def test_under_forbid_a_gain_starts_only_the_newest_due_tick_the_older_are_missed(
    setup: Setup,
) -> None:
    await setup.align()
    gate = setup.gate
    setup.engine.upsert(_the_job(concurrency_policy=ConcurrencyPolicy.FORBID))
    await asyncio.sleep(5.5)
    ticks = [tick for _, tick in gate.asked]  # all owned elsewhere so far
    assert len(ticks) == 5
    bound = ticks[0]  # handed over: nothing uncertain
    gate.owned.add(UID)
    gate.start_bounds[UID] = bound
    setup.engine.owners_changed([Gain(UID, start_bound=bound)], [])
    # Started together, three of the four would be skipped by Forbid: one starts, three missed.
    assert await setup.dispatched(Trigger.CATCH_UP) == [ticks[-1]]
    assert setup.counter("podcron_ticks_missed_total") == 3
    assert setup.counter("podcron_ticks_uncertain_total") == 0
    await setup.recorder.until(lambda: len(setup.recorder.finished()) == 1)
    assert [run.status for run in setup.recorder.finished()] == [RunStatus.SUCCESS]


async def test_the_rings_first_gain_catches_up_from_history_as_one_replica_does(
    setup: Setup,
) -> None:
    await setup.align()
    setup.gate.owned |= {UID, "other"}
    history = History(
        last_run_time=datetime.fromtimestamp(setup.clock.wall() - 3600, UTC),
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=5, succeeded=5),
    )
    setup.engine.upsert(_the_job(every="1h", starting_deadline_seconds=3600), history=history)
    setup.engine.upsert(spec(_job, name="other", uid="other"), history=history)
    assert await setup.dispatched() == [], "with a gate, nothing at registration"
    # Nobody owned them before (the ring's first epoch): no start bound.
    first = [Gain(UID, start_bound=-math.inf), Gain("other", start_bound=-math.inf)]
    setup.engine.owners_changed(first, [])
    (tick,) = await setup.dispatched(Trigger.CATCH_UP)
    assert tick == math.floor(setup.clock.wall() / 3600) * 3600, "the latest hourly tick"
    # "other" sets no startingDeadlineSeconds: as with one replica, nothing is caught up.
    assert [e.job_id for e in setup.recorder.finished()] == ["ns/job"]
    assert setup.counter("podcron_ticks_missed_total") == 0


async def test_a_catch_up_starts_at_most_ten_ticks_the_newest(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    setup.engine.upsert(_the_job(starting_deadline_seconds=60))
    await asyncio.sleep(14.5)
    ticks = [tick for _, tick in gate.asked]
    gate.owned.add(UID)
    setup.engine.owners_changed([Gain(UID, start_bound=ticks[0] - 0.5)], [])
    assert await setup.dispatched(Trigger.CATCH_UP) == ticks[-MAX_CATCH_UP_TICKS:]
    assert setup.counter("podcron_ticks_missed_total") == len(ticks) - MAX_CATCH_UP_TICKS
    assert setup.counter("podcron_ticks_uncertain_total") == 0


async def test_a_catch_up_tick_above_the_fire_bound_is_held(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    setup.engine.upsert(_the_job())
    await asyncio.sleep(3.5)
    first, second, third = (tick for _, tick in gate.asked)
    gate.owned.add(UID)
    gate.fire_bound = second
    setup.engine.owners_changed([Gain(UID, start_bound=first - 0.5)], [])
    assert await setup.dispatched(Trigger.CATCH_UP) == [first, second]
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched(Trigger.CATCH_UP) == [first, second, third]


async def test_a_gain_supersedes_the_ticks_held_for_an_unknown_start_bound(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned.add(UID)
    gate.unknown.add(UID)
    setup.engine.upsert(_the_job())
    await asyncio.sleep(3.5)
    first, second, third = (tick for _, tick in gate.asked)
    gate.unknown.clear()
    gate.start_bounds[UID] = first
    setup.engine.owners_changed([Gain(UID, start_bound=first)], [])
    setup.engine.bound_moved()
    # Each tick once: the held ones are the catch-up's.
    assert await setup.dispatched() == [second, third]


async def test_a_gain_before_the_job_is_registered_applies_when_it_is(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned.add(UID)
    now = setup.clock.wall()
    setup.engine.owners_changed([Gain(UID, start_bound=now - 3)], [])
    setup.engine.upsert(_the_job())
    starts = await setup.dispatched(Trigger.CATCH_UP)
    assert len(starts) == 3
    assert all(now - 3 < tick <= now for tick in starts)


async def test_with_a_gate_status_history_does_not_catch_up(setup: Setup) -> None:
    await setup.align()
    setup.gate.owned.add(UID)
    history = History(
        last_run_time=datetime.now(UTC) - timedelta(hours=3),
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=5, succeeded=5),
    )
    snapshot = setup.engine.upsert(
        _the_job(every="1h", starting_deadline_seconds=3600),
        history=history,
    )
    assert not snapshot.running
    assert snapshot.history.counts.total == 5, "the counters still continue"


async def test_a_suspended_job_gained_catches_nothing_up(setup: Setup) -> None:
    await setup.align()
    setup.gate.owned.add(UID)
    setup.engine.upsert(_the_job(suspended=True))
    setup.engine.owners_changed([Gain(UID, start_bound=setup.clock.wall() - 5)], [])
    assert setup.recorder.events == []
    assert setup.counter("podcron_ticks_missed_total") == 0


@pytest.mark.parametrize(
    ("verdict", "missed"), [(Verdict.START, 3), (Verdict.HOLD, 0), (Verdict.NOT_OWNER, 0)]
)
async def test_ticks_a_late_timer_passes_over_are_missed_only_on_the_jobs_owner(
    setup: Setup, verdict: Verdict, missed: int
) -> None:
    await setup.align()
    setup.gate.owned.add(UID)
    setup.engine.upsert(_the_job(every="10s"))
    await setup.recorder.until(lambda: len(setup.recorder.started()) == 1, within=30)
    if verdict is Verdict.HOLD:
        setup.gate.fire_bound = setup.clock.wall()
    elif verdict is Verdict.NOT_OWNER:
        setup.gate.owned.discard(UID)
    # The timer set for the next tick fires 35 s late by the wall clock: three more passed.
    setup.clock.step(35)
    # Until the late tick was asked about: what it passed over is counted in that same step
    # when the tick starts, not counted when the job is another's, and kept when it is held.
    await setup.gate.asked_about(UID, 2, within=30)
    assert setup.counter("podcron_ticks_missed_total") == missed
    if verdict is Verdict.HOLD:
        # Held: missed here only once the job is known to stay here, with the held tick
        # itself, now too late.
        setup.gate.fire_bound = float("inf")
        setup.engine.bound_moved()
        assert setup.counter("podcron_ticks_missed_total") == 4


async def test_a_bound_moving_over_several_jobs_starts_and_counts_each_ones_held_ticks(
    setup: Setup,
) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned |= {"paused", "forbid", "allow"}
    gate.fire_bound = setup.clock.wall()
    # Held in this order: one job's held ticks must not decide what becomes of the next one's.
    setup.engine.upsert(spec(_job, name="paused", uid="paused"))
    for name, policy in (("forbid", ConcurrencyPolicy.FORBID), ("allow", ConcurrencyPolicy.ALLOW)):
        setup.engine.upsert(
            spec(
                _job, name=name, uid=name, concurrency_policy=policy, starting_deadline_seconds=2.5
            )
        )
    await asyncio.sleep(5)
    _t1, _t2, t3, t4, t5 = (tick for key, tick in gate.asked if key == "allow")
    setup.engine.upsert(spec(_job, name="paused", uid="paused", suspended=True))

    async def dispatched() -> dict[str, list[float]]:
        await setup.dispatched()
        return {
            job: sorted(e.scheduled_time.timestamp() for e in setup.recorder.finished(f"ns/{job}"))
            for job in ("paused", "forbid", "allow")
        }

    # 0.25 s after t5, t1 and t2 are older than the 2.5 s allowed; t5 is still held.
    gate.fire_bound = t4
    setup.engine.bound_moved()
    assert await dispatched() == {"paused": [], "forbid": [t4], "allow": [t3, t4]}
    # Forbid: t1 and t2 too late, t3 passed over for the newer t4; Allow: t1 and t2.
    assert setup.counter("podcron_ticks_missed_total") == 5
    setup.engine.bound_moved()
    assert await dispatched() == {"paused": [], "forbid": [t4], "allow": [t3, t4]}
    assert setup.counter("podcron_ticks_missed_total") == 5, "held, not missed"
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await dispatched() == {"paused": [], "forbid": [t4, t5], "allow": [t3, t4, t5]}
    assert setup.counter("podcron_ticks_missed_total") == 5


async def test_a_job_deleted_and_created_again_gets_nothing_of_its_predecessor(
    setup: Setup,
) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned |= {UID, "uid-of-the-new-one"}
    gate.fire_bound = setup.clock.wall()
    setup.engine.upsert(_the_job())
    await asyncio.sleep(2.5)
    assert len(gate.asked) == 2
    setup.engine.remove("ns/job")
    setup.engine.upsert(_the_job(uid="uid-of-the-new-one"))  # the same name, a new object
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    setup.engine.owners_changed([Gain(UID, start_bound=setup.clock.wall() - 5)], [])
    assert await setup.dispatched() == [], "neither its held ticks nor its gain"


async def test_a_gain_lost_before_the_job_is_registered_is_not_applied(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    setup.engine.owners_changed([Gain(UID, start_bound=setup.clock.wall() - 30)], [])
    setup.engine.owners_changed([], [UID])
    setup.engine.upsert(_the_job())
    assert await setup.dispatched() == []
    assert setup.counter("podcron_ticks_missed_total") == 0, "not this replica's to miss"
    assert gate.asked == []


async def test_the_rings_first_gain_holds_a_catch_up_above_the_fire_bound(setup: Setup) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned.add(UID)
    history = History(
        last_run_time=datetime.fromtimestamp(setup.clock.wall() - 3600, UTC),
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=5, succeeded=5),
    )
    setup.engine.upsert(_the_job(every="1h", starting_deadline_seconds=3600), history=history)
    tick = math.floor(setup.clock.wall() / 3600) * 3600
    gate.fire_bound = tick - 1
    setup.engine.owners_changed([Gain(UID, start_bound=-math.inf)], [])
    assert gate.asked == [(UID, tick)]
    assert await setup.dispatched() == [], "held"
    assert setup.counter("podcron_ticks_missed_total") == 0
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched(Trigger.CATCH_UP) == [tick]


@pytest.mark.parametrize("start_bound", [-math.inf, 0.5], ids=["rings-first", "handed-over"])
async def test_a_gain_leaves_a_tick_due_but_not_yet_fired_to_the_timer(
    setup: Setup, start_bound: float
) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned.add(UID)
    wall = setup.clock.wall()
    history = History(
        last_run_time=datetime.fromtimestamp(wall - 3600, UTC),
        last_status=RunStatus.SUCCESS,
        counts=RunCounts(total=5, succeeded=5),
    )
    setup.engine.upsert(_the_job(starting_deadline_seconds=60), history=history)
    tick = math.ceil(wall)
    # The wall clock passes the next tick before the loop's timer for it fires.
    setup.clock.step(1)
    setup.engine.owners_changed([Gain(UID, start_bound=start_bound + math.floor(wall))], [])
    await setup.recorder.until(lambda: bool(setup.recorder.finished()))
    assert await setup.dispatched() == [tick], "started once, by the timer"
    assert [e.trigger for e in setup.recorder.finished()] == [Trigger.SCHEDULED]


async def test_a_gain_whose_armed_tick_is_the_previous_owners_starts_the_ticks_after_it(
    setup: Setup,
) -> None:
    """The loop's timer for a tick at or below the start bound has not fired when the job is
    gained: asked about that tick only, the engine would drop the gained ticks it passed over."""
    await setup.align()
    setup.engine.upsert(_the_job())  # another replica's
    armed = math.ceil(setup.clock.wall())
    # The wall clock passes five ticks before the loop's timer for the first fires (a clock
    # set ahead, a loop behind); the job is gained meanwhile, the first two its old owner's.
    setup.clock.step(5)
    setup.gate.owned.add(UID)
    setup.gate.start_bounds[UID] = armed + 1
    setup.engine.owners_changed([Gain(UID, start_bound=armed + 1)], [])
    await setup.recorder.until(lambda: bool(setup.recorder.finished()), within=30)
    assert await setup.dispatched() == [armed + 2], "the first tick above the start bound"
    assert (UID, armed) not in setup.gate.asked, "the old owner's tick is not asked about"
    # Re-armed by the wall clock, the timer fired at once, 4.25 s past the armed tick: the
    # two ticks after the one it started were passed over here, and counted missed here.
    assert setup.counter("podcron_ticks_missed_total") == 2


async def test_a_gain_under_forbid_counts_the_late_ticks_and_the_older_due_ones_and_says_so(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    await setup.align()
    gate = setup.gate
    setup.engine.upsert(
        _the_job(concurrency_policy=ConcurrencyPolicy.FORBID, starting_deadline_seconds=2.5)
    )
    await asyncio.sleep(5)
    ticks = [tick for _, tick in gate.asked]  # all owned elsewhere so far
    gate.owned.add(UID)
    with caplog.at_level(logging.WARNING, logger="podcron.engine"):
        setup.engine.owners_changed([Gain(UID, start_bound=ticks[0] - 0.5)], [])
        # 0.25 s after the fifth tick: the first two are too late, the third and fourth are
        # passed over for the newest (Forbid would skip them beside it).
        assert await setup.dispatched(Trigger.CATCH_UP) == [ticks[-1]]
        assert setup.counter("podcron_ticks_missed_total") == 4
        (warning,) = caplog.records
        assert warning.getMessage() == (
            "1 jobs gained: 4 ticks missed (of 1 jobs), 0 ticks uncertain (of 0 jobs; maybe "
            "started by a fenced replica, not run again); podcron_ticks_missed_total and "
            "podcron_ticks_uncertain_total name the jobs"
        )
        caplog.clear()
        # Gained again at once: nothing above the new start bound, nothing missed or said.
        setup.engine.owners_changed([Gain(UID, start_bound=setup.clock.wall())], [])
        assert await setup.dispatched(Trigger.CATCH_UP) == [ticks[-1]]
        assert setup.counter("podcron_ticks_missed_total") == 4
        assert caplog.records == []


async def test_jobs_gained_together_are_said_in_one_line_and_counted_each(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    await setup.align()
    names = [f"job-{i}" for i in range(5)]
    for name in names:
        setup.engine.upsert(_the_job(name=name, uid=f"uid-{name}", starting_deadline_seconds=2.5))
    await asyncio.sleep(5.5)
    bound = min(tick for _, tick in setup.gate.asked) - 0.5
    setup.gate.owned.update(f"uid-{name}" for name in names)
    with caplog.at_level(logging.WARNING, logger="podcron.engine"):
        setup.engine.owners_changed(
            [Gain(f"uid-{name}", start_bound=bound, uncertain_from=bound - 2) for name in names],
            [],
        )
    # Each: six ticks above the bound, three of them too late; two below it, uncertain.
    (warning,) = caplog.records
    assert warning.getMessage().startswith(
        "5 jobs gained: 15 ticks missed (of 5 jobs), 10 ticks uncertain (of 5 jobs; "
    )
    assert setup.counter("podcron_ticks_missed_total") == 15
    assert setup.counter("podcron_ticks_uncertain_total") == 10


async def test_a_gain_with_missed_and_uncertain_ticks_catches_up_without_metrics() -> None:
    gate = ScriptedGate()
    clock = LoopClock()
    engine = engine_on_loop_clock(clock, gate=gate)  # no metrics to count them in
    recorder = Recorder(engine)
    try:
        await Setup(engine, gate, clock, recorder, CollectorRegistry()).align()
        engine.upsert(_the_job(starting_deadline_seconds=2.5))
        await asyncio.sleep(5.5)
        ticks = [tick for _, tick in gate.asked]
        bound = ticks[1]
        gate.owned.add(UID)
        engine.owners_changed([Gain(UID, start_bound=bound, uncertain_from=bound - 2)], [])
        # Two uncertain ticks below the bound, one above it too late, the last two started.
        await recorder.until(lambda: len(recorder.finished()) == 2)
        assert sorted(e.scheduled_time.timestamp() for e in recorder.finished()) == ticks[3:]
        assert [e.trigger for e in recorder.finished()] == [Trigger.CATCH_UP] * 2
    finally:
        await engine.shutdown()


class ExactClock:
    """A wall clock at a whole second when the test begins, moving with the loop's clock.

    The fake loop clock starts at 0 and moves by the sleeps' exact amounts, so sums with
    this clock's time are exact: a tick can be exactly as late as its starting deadline.
    """

    def __init__(self) -> None:
        self._offset = 1_800_000_000.0 - asyncio.get_running_loop().time()

    def wall(self) -> float:
        return asyncio.get_running_loop().time() + self._offset


async def test_a_held_tick_exactly_as_late_as_its_starting_deadline_still_starts() -> None:
    gate = ScriptedGate()
    clock = ExactClock()
    engine = Engine(clock=clock, gate=gate, loop_watchdog=False)
    recorder = Recorder(engine)
    try:
        gate.owned.add(UID)
        gate.fire_bound = clock.wall()
        engine.upsert(_the_job(starting_deadline_seconds=2.5))
        await asyncio.sleep(3.5)
        held = [tick for _, tick in gate.asked]
        assert clock.wall() - held[0] == 2.5
        gate.fire_bound = float("inf")
        engine.bound_moved()
        await recorder.until(lambda: len(recorder.finished()) == 3)
        assert sorted(e.scheduled_time.timestamp() for e in recorder.finished()) == held
    finally:
        await engine.shutdown()


async def test_a_job_registered_again_under_a_new_uid_gets_no_gain_of_its_old_one(
    setup: Setup,
) -> None:
    await setup.align()
    gate = setup.gate
    gate.owned |= {UID, "uid-of-the-new-one"}
    setup.engine.upsert(_the_job())
    # Deleted and created again under the same name while the operator was not watching.
    setup.engine.upsert(_the_job(uid="uid-of-the-new-one"))
    setup.engine.owners_changed([Gain(UID, start_bound=setup.clock.wall() - 5)], [])
    assert await setup.dispatched() == []
    assert [key for key, _ in gate.asked] == []


async def test_a_held_tick_is_not_told_to_the_gate_as_decided(setup: Setup) -> None:
    # A held tick of a job lost now is dropped here: the handover must not count it started.
    gate = await setup.hold_the_job()
    await gate.asked_about(UID, 2, within=3)
    held = [tick for _, tick in gate.asked]
    assert setup.recorder.events == []
    assert gate.asked_through[-1] == held[0]
    gate.fire_bound = float("inf")
    setup.engine.bound_moved()
    assert await setup.dispatched() == held
    assert gate.asked_through[-1] > held[-1]


async def test_the_engine_tells_the_gate_when_an_instant_is_asked_about_in_full(
    setup: Setup,
) -> None:
    # More jobs due at one instant than one batch: the first batch leaves the instant open.
    await setup.align()
    jobs = DISPATCH_BATCH + 8
    for index in range(jobs):
        setup.gate.owned.add(f"uid-{index}")
        setup.engine.upsert(spec(_job, f"job-{index}", uid=f"uid-{index}"))
    await setup.gate.asked_about("uid-0", 1, within=2)
    await setup.recorder.until(lambda: len(setup.recorder.finished()) == jobs)
    instant = setup.gate.asked[0][1]
    assert setup.gate.asked_through[:2] == [instant, instant + 1]


async def test_a_held_tick_runs_in_the_span_made_for_it_and_one_given_away_leaves_none() -> None:
    # docs/engine.md: a burst's jobs get their next tick's span made once it is over. The
    # gate decides at the tick still: held, the tick starts later in that span; given to
    # another replica, it never starts here and its span is never exported.
    gate, clock = ScriptedGate(), LoopClock()
    exported, pipeline = spans_in_memory()
    made = SpansMade(clock, pipeline)
    engine = engine_on_loop_clock(clock, gate=gate, telemetry=made, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    count = 2 * DISPATCH_BATCH  # more than one batch: a burst
    for index in range(count):
        gate.owned.add(f"uid-{index}")
        engine.upsert(_the_job(name=f"job-{index}", uid=f"uid-{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= count)
    await asyncio.sleep(0)  # the burst is over: the next ticks' spans are made
    second = recorder.finished()[0].scheduled_time + timedelta(seconds=1)
    assert len(made.ahead(second)) == count
    gate.fire_bound = second.timestamp() - 0.5  # a renewal failed: the second tick is held
    for index in range(0, count, 2):
        gate.owned.discard(f"uid-{index}")  # and half the jobs went to another replica
    await asyncio.sleep(second.timestamp() + 0.5 - clock.wall())
    assert [e for e in recorder.finished() if e.scheduled_time == second] == []
    gate.fire_bound = math.inf
    engine.bound_moved()

    def second_ran() -> int:
        return len([e for e in recorder.finished() if e.scheduled_time == second])

    await recorder.until(lambda: second_ran() >= count // 2)
    await engine.shutdown()
    assert second_ran() == count // 2, "the ticks given away did not start here"
    exported_ids = {s.context.span_id for s in exported.get_finished_spans()}
    used = made.ahead(second).keys() & exported_ids
    assert len(used) == count // 2, "the held ticks ran in their spans; the others left none"
    made.shutdown()
