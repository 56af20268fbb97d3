"""A gained job's catch-up plan and the tick counts behind it (pure: no loop, no clock)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from podcron.context import Trigger
from podcron.engine.gating import (
    COUNT_LIMIT,
    MAX_CATCH_UP_TICKS,
    GainTally,
    HeldTicks,
    count_ticks,
    plan_catch_up,
)
from podcron.schedules import parse_schedule

EVERY_SECOND = parse_schedule({"every": "1s"})
T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("after", "upto", "expected"),
    [(T0, T0 + 5, 5), (T0 - 0.5, T0 + 5.5, 6), (T0 + 5, T0, 0), (float("-inf"), T0, 0)],
)
def test_ticks_are_counted_in_the_half_open_window(
    after: float, upto: float, expected: int
) -> None:
    assert count_ticks(EVERY_SECOND, after, upto) == expected


def test_a_wall_clock_schedule_is_counted_tick_by_tick_across_a_dst_change() -> None:
    # 02:30 Berlin does not exist on 2026-03-29: the day has one tick, at 03:00.
    daily = parse_schedule({"daily": {"at": "02:30"}}, time_zone="Europe/Berlin")
    start = datetime(2026, 3, 27, tzinfo=UTC).timestamp()
    assert count_ticks(daily, start, start + 4 * 86_400) == 4


def test_counting_stops_at_the_limit() -> None:
    minutely = parse_schedule({"cron": "* * * * *"})
    assert count_ticks(minutely, T0, T0 + 60.0 * (COUNT_LIMIT + 5)) == COUNT_LIMIT


def test_the_plan_starts_the_ticks_within_the_allowance_and_counts_the_rest() -> None:
    plan = plan_catch_up(
        EVERY_SECOND,
        start_bound=T0,
        uncertain_from=T0 - 2,
        now=T0 + 8.5,
        before=T0 + 9,
        allowance_seconds=3,
    )
    assert plan.ticks == (T0 + 6, T0 + 7, T0 + 8)
    assert plan.missed == 5
    assert plan.uncertain == 2


def test_the_next_armed_tick_and_those_after_it_are_the_timers() -> None:
    # The loop ran late: tick T0+7 is due but not popped yet; the timer will ask about it.
    plan = plan_catch_up(
        EVERY_SECOND,
        start_bound=T0,
        uncertain_from=None,
        now=T0 + 8.5,
        before=T0 + 7,
        allowance_seconds=10,
    )
    assert plan.ticks == tuple(T0 + n for n in range(1, 7))
    assert plan.missed == 0


def test_ticks_the_timer_passed_before_the_clock_stepped_back_are_caught_up() -> None:
    # The timer asked about T0+5 at T0+5.2 (not owned then) and armed T0+6; the clock was
    # then set 0.4 s back. Gained at T0+4.8, the job starts T0+5 now, not never.
    plan = plan_catch_up(
        EVERY_SECOND,
        start_bound=T0 + 3,
        uncertain_from=None,
        now=T0 + 4.8,
        before=T0 + 6,
        allowance_seconds=10,
    )
    assert plan.ticks == (T0 + 4, T0 + 5)
    assert plan.missed == 0


def test_the_plan_takes_the_newest_ten_oldest_first() -> None:
    plan = plan_catch_up(
        EVERY_SECOND,
        start_bound=T0,
        uncertain_from=None,
        now=T0 + 30,
        before=None,
        allowance_seconds=60,
    )
    assert plan.ticks == tuple(T0 + n for n in range(31 - MAX_CATCH_UP_TICKS, 31))
    assert plan.missed == 30 - MAX_CATCH_UP_TICKS


def test_a_start_bound_ahead_of_now_has_nothing_to_catch_up_but_its_uncertain_window() -> None:
    plan = plan_catch_up(
        EVERY_SECOND,
        start_bound=T0 + 2,
        uncertain_from=T0,
        now=T0 + 0.5,
        before=T0 + 1,
        allowance_seconds=10,
    )
    assert plan.ticks == ()
    assert plan.missed == 0
    assert plan.uncertain == 2


def test_held_ticks_keep_the_newest_ten_a_job_and_are_taken_all_at_once() -> None:
    held = HeldTicks()
    for n in range(12):
        held.hold("ns/a", T0 + n, Trigger.SCHEDULED)
    held.hold("ns/b", T0, Trigger.CATCH_UP)
    assert len(held) == 11
    held.forget("ns/b")
    taken = held.take()
    assert [tick for tick, _ in taken["ns/a"]] == [T0 + n for n in range(2, 12)]
    assert not held
    assert held.passed_over("ns/a") == 2, "the two that made room"
    assert held.passed_over("ns/a") == 0, "read once"


def test_ticks_passed_over_stay_undecided_until_read_and_go_with_a_forgotten_job() -> None:
    held = HeldTicks()
    held.hold("ns/a", T0 + 3, Trigger.SCHEDULED, passed_over=2)  # T0+4, T0+5: passed over
    held.hold("ns/b", T0 + 1, Trigger.SCHEDULED)
    for n in range(2, 13):  # eleven ticks of ns/b: T0+1 makes room
        held.hold("ns/b", T0 + n, Trigger.SCHEDULED)
    held.take()
    assert held.earliest() == T0 + 1, "passed over, not counted: not decided either"
    held.forget("ns/b")
    assert held.passed_over("ns/b") == 0
    assert held.earliest() == T0 + 3
    assert held.passed_over("ns/a") == 2
    assert held.earliest() == math.inf


def test_the_earliest_held_tick_follows_holds_forgets_overflows_and_takes() -> None:
    held = HeldTicks()
    assert held.earliest() == math.inf
    held.hold("ns/b", T0 + 5, Trigger.SCHEDULED)
    held.hold("ns/a", T0 + 1, Trigger.SCHEDULED)
    assert held.earliest() == T0 + 1
    held.forget("ns/a")
    assert held.earliest() == T0 + 5
    for n in range(6, 16):  # eleven ticks of ns/b: its oldest makes room, not yet counted
        held.hold("ns/b", T0 + n, Trigger.SCHEDULED)
    assert held.earliest() == T0 + 5
    assert held.passed_over("ns/b") == 1
    assert held.earliest() == T0 + 6
    held.take()
    assert held.earliest() == math.inf


def test_a_gain_that_lost_nothing_says_nothing_and_one_that_did_counts_its_jobs() -> None:
    tally = GainTally()
    tally.add(0, 0)
    tally.add(0, 0)
    assert tally.describe() is None
    tally.add(3, 0)
    tally.add(1, 2)
    line = tally.describe()
    assert line is not None
    assert line.startswith(
        "4 jobs gained: 4 ticks missed (of 2 jobs), 2 ticks uncertain (of 1 jobs;"
    )
