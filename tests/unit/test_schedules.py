"""Schedule maths: ticks, DST rules, catch-up, validation. No clock: every test passes `now`."""

from __future__ import annotations

import calendar
import functools
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from podcron.errors import InvalidSchedule, UnknownTimeZone
from podcron.schedules import (
    Cron,
    Daily,
    Every,
    Hourly,
    Monthly,
    Schedule,
    Weekly,
    parse_duration,
    parse_schedule,
)
from podcron.schedules.zones import instant, time_zone

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
QUARTER_HOUR = timedelta(minutes=15)
HALF_HOUR = timedelta(minutes=30)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ZERO = timedelta(0)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Europe/Dublin",
    "Pacific/Apia",
    "Asia/Tehran",
)
# Scanning every minute between `now` and the next tick costs a few µs a minute.
SCAN_LIMIT = timedelta(days=1)

# Whether a whole-minute wall time is one of the schedule's ticks, written
# independently of podcron.schedules to check it.
Rule = Callable[[datetime], bool]


def utc(text: str) -> datetime:
    """An aware UTC datetime from ISO text without an offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def zone_of(schedule: Schedule) -> ZoneInfo:
    return time_zone(schedule.time_zone)


def wall_time(tz: ZoneInfo, instant: datetime) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def local_ticks(schedule: Schedule, start: datetime, count: int) -> list[str]:
    """The next `count` ticks after `start`, as ISO text in the schedule's zone."""
    ticks = []
    moment = start
    for _ in range(count):
        following = schedule.next_after(moment)
        assert following is not None
        moment = following
        ticks.append(moment.astimezone(zone_of(schedule)).isoformat())
    return ticks


def is_tick(schedule: Schedule, rule: Rule, instant: datetime) -> bool:
    """Whether `instant` is a tick by the design's rules, checked from first principles."""
    if isinstance(schedule, Every):
        return (instant - EPOCH) % schedule.interval == timedelta(0)
    tz = zone_of(schedule)
    wall = wall_time(tz, instant)
    if wall.second == 0 and wall.microsecond == 0 and rule(wall):
        # Offset changes are multiples of 15 minutes, so any other instant
        # showing this wall time is a few quarter hours away.
        if any(wall_time(tz, instant + k * QUARTER_HOUR) == wall for k in range(1, 13)):
            event("tick at the first of two instants with its wall time")
        # Ambiguous wall times run once, at the first occurrence.
        return all(wall_time(tz, instant - k * QUARTER_HOUR) != wall for k in range(1, 13))
    # Otherwise it must be the first instant after a gap that swallowed a tick.
    before = wall_time(tz, instant - MICROSECOND)
    if wall - before <= MICROSECOND:
        return False
    swallowed = before.replace(second=0, microsecond=0) + MINUTE
    while swallowed < wall:
        if rule(swallowed):
            event("tick at the end of a DST gap")
            return True
        swallowed += MINUTE
    return False


def minutes_between(start: datetime, end: datetime) -> Iterator[datetime]:
    """Every whole minute strictly between `start` and `end`."""
    minute = start.replace(second=0, microsecond=0) + MINUTE
    while minute < end:
        yield minute
        minute += MINUTE


# -- strategies ---------------------------------------------------------------

ANY_INSTANT = st.one_of(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    # Far from the tz database's listed transitions, where each zone's POSIX rule holds.
    st.datetimes(
        min_value=datetime(2100, 1, 1), max_value=datetime(9990, 1, 1), timezones=st.just(UTC)
    ),
)
AT = st.tuples(st.integers(0, 23), st.integers(0, 59))


def at_text(at: tuple[int, int]) -> str:
    return f"{at[0]:02d}:{at[1]:02d}"


def at_rule(at: tuple[int, int]) -> Rule:
    return lambda wall: (wall.hour, wall.minute) == at


def last_day(wall: datetime) -> int:
    return calendar.monthrange(wall.year, wall.month)[1]


# Years whose offset changes the DST cases are drawn from: the tz database lists
# transitions up to 2037; later ones come from each zone's POSIX rule.
TRANSITION_YEARS = ((1970, 2100), (8999, 9001), (9997, 9999))


@functools.cache
def transitions(zone: str) -> tuple[datetime, ...]:
    """The zone's UTC offset changes in TRANSITION_YEARS: the instants worth testing around."""
    tz = time_zone(zone)
    found = []
    for first, last in TRANSITION_YEARS:
        moment = datetime(first, 1, 1, tzinfo=UTC)
        while moment.year < last:
            following = moment + DAY  # no zone changes its offset twice in a day
            if moment.astimezone(tz).utcoffset() != following.astimezone(tz).utcoffset():
                low, high = moment, following
                while high - low > SECOND:  # transitions fall on whole seconds
                    middle = low + (high - low) // 2 // SECOND * SECOND
                    same = middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset()
                    low, high = (middle, high) if same else (low, middle)
                found.append(high)
            moment = following
    return tuple(found)


def cron_field(
    low: int, high: int, *, steps: bool
) -> st.SearchStrategy[tuple[str, frozenset[int]]]:
    """A cron field's text and the values it selects."""
    values = st.integers(low, high)
    every = frozenset(range(low, high + 1))
    options = [
        st.just(("*", every)),
        values.map(lambda v: (str(v), frozenset({v}))),
        st.lists(values, min_size=2, max_size=2, unique=True)
        .map(sorted)
        .map(lambda ab: (f"{ab[0]}-{ab[1]}", frozenset(range(ab[0], ab[1] + 1)))),
        st.lists(values, min_size=2, max_size=4, unique=True).map(
            lambda vs: (",".join(map(str, vs)), frozenset(vs))
        ),
    ]
    if steps:
        options.append(
            st.integers(1, high - low).map(
                lambda step: (f"*/{step}", frozenset(range(low, high + 1, step)))
            )
        )
    return st.one_of(options)


@st.composite
def cron_specs(draw: st.DrawFn) -> tuple[dict[str, Any], Rule]:
    """A valid cron expression built from fields, and its meaning.

    Day-of-month and day-of-week carry no steps, so the classic rule is
    unambiguous: when both are restricted a day matches either.
    """
    minute_text, minutes = draw(cron_field(0, 59, steps=True))
    hour_text, hours = draw(cron_field(0, 23, steps=True))
    day_text, days = draw(cron_field(1, 31, steps=False))
    month_text, months = draw(cron_field(1, 12, steps=True))
    weekday_text, weekdays = draw(cron_field(0, 6, steps=False))

    def rule(wall: datetime) -> bool:
        day_matches = wall.day in days
        # cron counts weekdays from Sunday = 0.
        weekday_matches = (wall.weekday() + 1) % 7 in weekdays
        if day_text == "*" or weekday_text == "*":
            day_ok = day_matches and weekday_matches
        else:
            day_ok = day_matches or weekday_matches
        return wall.minute in minutes and wall.hour in hours and wall.month in months and day_ok

    expression = f"{minute_text} {hour_text} {day_text} {month_text} {weekday_text}"
    return {"cron": expression}, rule


def hourly_case(minute: int) -> tuple[dict[str, Any], Rule]:
    return {"hourly": {"minute": minute}}, lambda wall: wall.minute == minute


def daily_case(at: tuple[int, int]) -> tuple[dict[str, Any], Rule]:
    return {"daily": {"at": at_text(at)}}, at_rule(at)


def weekly_case(weekday: int, at: tuple[int, int], spelling: str) -> tuple[dict[str, Any], Rule]:
    day = {"lower": str.lower, "upper": str.upper}.get(spelling, str.capitalize)(DAYS[weekday])
    at_matches = at_rule(at)
    return (
        {"weekly": {"day": day, "at": at_text(at)}},
        lambda wall: wall.weekday() == weekday and at_matches(wall),
    )


def monthly_case(day: int, at: tuple[int, int]) -> tuple[dict[str, Any], Rule]:
    at_matches = at_rule(at)
    return (
        {"monthly": {"day": day, "at": at_text(at)}},
        lambda wall: wall.day == (last_day(wall) if day == -1 else day) and at_matches(wall),
    )


CALENDAR_SPECS = st.one_of(
    st.builds(hourly_case, st.integers(0, 59)),
    st.builds(daily_case, AT),
    st.builds(weekly_case, st.integers(0, 6), AT, st.sampled_from(["lower", "upper", "title"])),
    st.builds(monthly_case, st.one_of(st.integers(1, 31), st.just(-1)), AT),
)


@st.composite
def dst_cases(draw: st.DrawFn, *, cron: bool) -> tuple[str, datetime, dict[str, Any], Rule]:
    """A zone, a `now` near one of its offset changes, and a schedule ticking there.

    Random schedules and instants rarely meet a DST change; these always do.
    The tick's wall time is drawn at the edges and middle of the gap or the
    repeated stretch, and `now` before, inside and after it.
    """
    zone = draw(st.sampled_from([zone for zone in ZONES if transitions(zone)]))
    change = draw(st.sampled_from(transitions(zone)))
    tz = time_zone(zone)
    wall_before = wall_time(tz, change - MICROSECOND) + MICROSECOND
    wall_after = wall_time(tz, change)
    # The skipped (gap) or repeated (fall-back) stretch of wall time.
    stretch_start = min(wall_before, wall_after)
    stretch = abs(wall_after - wall_before)
    minutes = stretch // MINUTE
    wall = (
        stretch_start + draw(st.sampled_from([-1, 0, minutes // 2, minutes - 1, minutes])) * MINUTE
    )
    at = (wall.hour, wall.minute)
    cases = [
        hourly_case(wall.minute),
        daily_case(at),
        weekly_case(wall.weekday(), at, "title"),
        monthly_case(wall.day, at),
    ]
    if cron:
        step = draw(st.sampled_from([1, 5, 10, 15, 20, 30]))
        cases.append(
            ({"cron": f"*/{step} {wall.hour} * * *"},
             lambda moment: moment.minute % step == 0 and moment.hour == wall.hour)
        )  # fmt: skip
    spec, rule = draw(st.sampled_from(cases))
    offset = draw(
        st.sampled_from([-stretch - 2 * HOUR, -stretch - MINUTE, -stretch / 2, ZERO, HALF_HOUR])
    )
    jitter = draw(st.integers(0, 30_000_000)) * MICROSECOND
    return zone, change + offset - jitter, spec, rule


def never(wall: datetime) -> bool:
    """The rule of a fixed-rate schedule, which is_tick never consults."""
    raise AssertionError(f"fixed-rate schedules have no wall-clock rule ({wall})")


EVERY_SPECS = st.one_of(
    st.integers(1, 3 * 86_400).map(lambda seconds: f"{seconds}s"),
    st.integers(1_000, 100_000_000).map(lambda ms: f"{ms}ms"),
    st.tuples(st.integers(0, 30), st.integers(0, 59), st.integers(1, 59)).map(
        lambda hms: f"{hms[0]}h{hms[1]}m{hms[2]}s"
    ),
).map(lambda text: ({"every": text}, never))


@st.composite
def scenarios(
    draw: st.DrawFn, specs: st.SearchStrategy[tuple[dict[str, Any], Rule]], *, cron: bool = True
) -> tuple[Schedule, Rule, datetime]:
    """A schedule in a tricky zone, its rule, and a `now`; often all near a DST change."""
    if draw(st.booleans()):
        zone, now, spec, rule = draw(dst_cases(cron=cron))
    else:
        spec, rule = draw(specs)
        zone = draw(st.sampled_from(ZONES))
        now = draw(ANY_INSTANT)
    schedule = parse_schedule(spec, time_zone=zone)
    if schedule.next_after(now) is None:
        # A cron expression on dates that never come (30 February): see the named cases.
        reject()
    return schedule, rule, now


ALL_SPECS = st.one_of(EVERY_SPECS, CALENDAR_SPECS, cron_specs())
#: `make mutation` runs the properties for every mutant of the schedules: a tenth of their
#: examples there (tools/mutation.py), so that all 1,100 mutants fit in an hour.
EXAMPLES_SCALE = float(os.environ.get("PODCRON_EXAMPLES_SCALE", "1"))
PROPERTY_SETTINGS = settings(
    max_examples=round(300 * EXAMPLES_SCALE),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- properties ---------------------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios(ALL_SPECS))
def test_next_after_is_the_first_tick_after_now(scenario: tuple[Schedule, Rule, datetime]) -> None:
    schedule, rule, now = scenario

    tick = schedule.next_after(now)
    event(schedule.schedule_type)

    assert tick is not None
    assert tick > now
    assert tick.tzinfo is UTC
    assert is_tick(schedule, rule, tick)
    assert schedule.next_after(now.astimezone(zone_of(schedule))) == tick
    if isinstance(schedule, Every):
        assert tick - now <= schedule.interval
    elif tick - now <= SCAN_LIMIT:
        skipped = [m for m in minutes_between(now, tick) if is_tick(schedule, rule, m)]
        assert skipped == []


@PROPERTY_SETTINGS
@given(scenarios(ALL_SPECS))
def test_repeated_next_after_strictly_increases(scenario: tuple[Schedule, Rule, datetime]) -> None:
    schedule, rule, now = scenario
    moment = now
    for _ in range(6):
        tick = schedule.next_after(moment)
        assert tick is not None
        assert tick > moment
        assert is_tick(schedule, rule, tick)
        moment = tick


@PROPERTY_SETTINGS
@given(scenarios(ALL_SPECS))
def test_last_at_or_before_agrees_with_next_after(
    scenario: tuple[Schedule, Rule, datetime],
) -> None:
    schedule, rule, now = scenario

    last = schedule.last_at_or_before(now)

    assert last is not None
    assert last <= now
    assert last.tzinfo is UTC
    assert is_tick(schedule, rule, last)
    following = schedule.next_after(now)
    assert following is not None
    assert schedule.next_after(last) == following
    assert schedule.last_at_or_before(following) == following
    assert schedule.last_at_or_before(last) == last


@PROPERTY_SETTINGS
@given(scenarios(CALENDAR_SPECS, cron=False))
def test_calendar_kinds_tick_like_their_cron_form(
    scenario: tuple[Schedule, Rule, datetime],
) -> None:
    schedule, _, now = scenario
    assert isinstance(schedule, Hourly | Daily | Weekly | Monthly)
    if schedule.cron_expression is None:
        # The last day of the month, which CronJob's cron cannot say.
        assert isinstance(schedule, Monthly)
        reject()
    cron = Cron(expression=schedule.cron_expression, time_zone=schedule.time_zone)

    assert schedule.next_after(now) == cron.next_after(now)
    assert schedule.last_at_or_before(now) == cron.last_at_or_before(now)


# -- named cases: DST -----------------------------------------------------------

DST_CASES = [
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2024-03-30T12:00",
     ["2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"]),
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2024-10-26T12:00",
     ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]),
    ({"hourly": {"minute": 30}}, "Europe/Berlin", "2024-03-31T00:00",
     ["2024-03-31T01:30:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T03:30:00+02:00"]),
    ({"hourly": {"minute": 30}}, "Europe/Berlin", "2024-10-27T00:00",
     ["2024-10-27T02:30:00+02:00", "2024-10-27T03:30:00+01:00"]),
    ({"cron": "*/20 * * * *"}, "Europe/Berlin", "2024-03-31T00:30",
     ["2024-03-31T01:40:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T03:20:00+02:00"]),
    ({"cron": "*/20 * * * *"}, "Europe/Berlin", "2024-10-27T00:30",
     ["2024-10-27T02:40:00+02:00", "2024-10-27T03:00:00+01:00"]),
    ({"daily": {"at": "02:30"}}, "America/New_York", "2024-03-09T12:00",
     ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]),
    ({"daily": {"at": "01:30"}}, "America/New_York", "2024-11-02T12:00",
     ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]),
    ({"hourly": {"minute": 15}}, "America/New_York", "2024-03-10T06:00",
     ["2024-03-10T01:15:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:15:00-04:00"]),
    ({"hourly": {"minute": 15}}, "America/New_York", "2024-11-03T04:00",
     ["2024-11-03T00:15:00-04:00", "2024-11-03T01:15:00-04:00", "2024-11-03T02:15:00-05:00"]),
    ({"cron": "30 2 * * *"}, "America/New_York", "2024-03-09T12:00",
     ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]),
    ({"cron": "*/30 1 * * *"}, "America/New_York", "2024-11-03T04:00",
     ["2024-11-03T01:00:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-04T01:00:00-05:00"]),
    ({"daily": {"at": "02:15"}}, "Australia/Lord_Howe", "2024-10-05T00:00",
     ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"]),
    ({"daily": {"at": "01:45"}}, "Australia/Lord_Howe", "2024-04-06T00:00",
     ["2024-04-07T01:45:00+11:00", "2024-04-08T01:45:00+10:30"]),
    ({"hourly": {"minute": 45}}, "Australia/Lord_Howe", "2024-04-06T13:00",
     ["2024-04-07T00:45:00+11:00", "2024-04-07T01:45:00+11:00", "2024-04-07T02:45:00+10:30"]),
    ({"daily": {"at": "00:00"}}, "Asia/Kathmandu", "2024-01-01T00:00",
     ["2024-01-02T00:00:00+05:45", "2024-01-03T00:00:00+05:45"]),
    ({"hourly": {"minute": 0}}, "Asia/Kathmandu", "2024-01-01T00:00",
     ["2024-01-01T06:00:00+05:45", "2024-01-01T07:00:00+05:45"]),
    ({"daily": {"at": "00:10"}}, "Asia/Kathmandu", "1985-12-30T00:00",
     ["1985-12-31T00:10:00+05:30", "1986-01-01T00:15:00+05:45", "1986-01-02T00:10:00+05:45"]),
    ({"daily": {"at": "12:00"}}, "Pacific/Apia", "2011-12-28T00:00",
     ["2011-12-28T12:00:00-10:00", "2011-12-29T12:00:00-10:00",
      "2011-12-31T00:00:00+14:00", "2011-12-31T12:00:00+14:00"]),
    # From 2038 on, past the transitions the tz database lists, each zone's POSIX rule.
    ({"daily": {"at": "12:00"}}, "Europe/Berlin", "2038-07-01T00:00",
     ["2038-07-01T12:00:00+02:00", "2038-07-02T12:00:00+02:00"]),
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2038-03-27T12:00",
     ["2038-03-28T03:00:00+02:00", "2038-03-29T02:30:00+02:00"]),
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2038-10-30T12:00",
     ["2038-10-31T02:30:00+02:00", "2038-11-01T02:30:00+01:00"]),
    ({"hourly": {"minute": 30}}, "Europe/Berlin", "2100-03-28T00:00",
     ["2100-03-28T01:30:00+01:00", "2100-03-28T03:00:00+02:00", "2100-03-28T03:30:00+02:00"]),
    ({"cron": "*/20 * * * *"}, "Europe/Berlin", "9000-10-26T00:30",
     ["9000-10-26T02:40:00+02:00", "9000-10-26T03:00:00+01:00"]),
    ({"daily": {"at": "12:00"}}, "Europe/Berlin", "9000-07-01T00:00",
     ["9000-07-01T12:00:00+02:00"]),
    ({"daily": {"at": "02:30"}}, "America/New_York", "2038-03-13T12:00",
     ["2038-03-14T03:00:00-04:00", "2038-03-15T02:30:00-04:00"]),
    ({"daily": {"at": "01:30"}}, "America/New_York", "2038-11-06T12:00",
     ["2038-11-07T01:30:00-04:00", "2038-11-08T01:30:00-05:00"]),
    ({"hourly": {"minute": 15}}, "America/New_York", "2100-03-14T06:00",
     ["2100-03-14T01:15:00-05:00", "2100-03-14T03:00:00-04:00", "2100-03-14T03:15:00-04:00"]),
    ({"hourly": {"minute": 15}}, "America/New_York", "9000-11-02T04:00",
     ["9000-11-02T00:15:00-04:00", "9000-11-02T01:15:00-04:00", "9000-11-02T02:15:00-05:00"]),
    ({"daily": {"at": "02:15"}}, "Australia/Lord_Howe", "2038-10-02T00:00",
     ["2038-10-03T02:30:00+11:00", "2038-10-04T02:15:00+11:00"]),
    ({"daily": {"at": "01:45"}}, "Australia/Lord_Howe", "2100-04-03T00:00",
     ["2100-04-04T01:45:00+11:00", "2100-04-05T01:45:00+10:30"]),
    ({"hourly": {"minute": 45}}, "Australia/Lord_Howe", "9000-04-05T13:00",
     ["9000-04-06T00:45:00+11:00", "9000-04-06T01:45:00+11:00", "9000-04-06T02:45:00+10:30"]),
    ({"daily": {"at": "00:30"}}, "America/Santiago", "2038-09-04T12:00",
     ["2038-09-05T01:00:00-03:00", "2038-09-06T00:30:00-03:00"]),
    ({"daily": {"at": "23:30"}}, "America/Santiago", "2100-04-03T12:00",
     ["2100-04-03T23:30:00-03:00", "2100-04-04T23:30:00-04:00"]),
    ({"hourly": {"minute": 30}}, "America/Santiago", "9000-09-07T03:00",
     ["9000-09-06T23:30:00-04:00", "9000-09-07T01:00:00-03:00", "9000-09-07T01:30:00-03:00"]),
    ({"daily": {"at": "12:00"}}, "America/Santiago", "9000-01-15T00:00",
     ["9000-01-15T12:00:00-03:00"]),
]  # fmt: skip
DST_IDS = [
    "berlin-daily-spring-forward",
    "berlin-daily-fall-back",
    "berlin-hourly-spring-forward",
    "berlin-hourly-fall-back",
    "berlin-cron-spring-forward",
    "berlin-cron-fall-back",
    "new-york-daily-spring-forward",
    "new-york-daily-fall-back",
    "new-york-hourly-spring-forward",
    "new-york-hourly-fall-back",
    "new-york-cron-spring-forward",
    "new-york-cron-fall-back",
    "lord-howe-30-minute-spring-forward",
    "lord-howe-30-minute-fall-back",
    "lord-howe-hourly-fall-back",
    "kathmandu-daily-plus-0545",
    "kathmandu-hourly-plus-0545",
    "kathmandu-1986-offset-change",
    "apia-2011-skipped-day",
    "berlin-2038-summer",
    "berlin-2038-spring-forward",
    "berlin-2038-fall-back",
    "berlin-2100-hourly-spring-forward",
    "berlin-9000-cron-fall-back",
    "berlin-9000-summer",
    "new-york-2038-spring-forward",
    "new-york-2038-fall-back",
    "new-york-2100-hourly-spring-forward",
    "new-york-9000-hourly-fall-back",
    "lord-howe-2038-30-minute-spring-forward",
    "lord-howe-2100-30-minute-fall-back",
    "lord-howe-9000-hourly-fall-back",
    "santiago-2038-spring-forward-at-midnight",
    "santiago-2100-fall-back-before-midnight",
    "santiago-9000-hourly-spring-forward",
    "santiago-9000-southern-summer",
]


@pytest.mark.parametrize(("spec", "zone", "start", "expected"), DST_CASES, ids=DST_IDS)
def test_dst_ticks(spec: dict[str, Any], zone: str, start: str, expected: list[str]) -> None:
    schedule = parse_schedule(spec, time_zone=zone)
    assert local_ticks(schedule, utc(start), len(expected)) == expected


CATCH_UP_CASES = [
    # In the repeated hour the tick at the first 02:30 is already past.
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2024-10-27T01:15",
     "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"),
    ({"cron": "*/20 * * * *"}, "Europe/Berlin", "2024-10-27T01:10",
     "2024-10-27T02:40:00+02:00", "2024-10-27T03:00:00+01:00"),
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2024-03-31T01:00",
     "2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"),
    ({"daily": {"at": "02:30"}}, "Europe/Berlin", "2024-03-31T00:59:59.999999",
     "2024-03-30T02:30:00+01:00", "2024-03-31T03:00:00+02:00"),
    ({"hourly": {"minute": 15}}, "America/New_York", "2024-11-03T06:20",
     "2024-11-03T01:15:00-04:00", "2024-11-03T02:15:00-05:00"),
]  # fmt: skip
CATCH_UP_IDS = [
    "daily-inside-repeated-hour",
    "cron-inside-repeated-hour",
    "daily-exactly-at-gap-end",
    "daily-just-before-gap-end",
    "hourly-inside-repeated-hour",
]


@pytest.mark.parametrize(
    ("spec", "zone", "now", "last", "following"), CATCH_UP_CASES, ids=CATCH_UP_IDS
)
def test_last_and_next_around_dst(
    spec: dict[str, Any], zone: str, now: str, last: str, following: str
) -> None:
    schedule = parse_schedule(spec, time_zone=zone)
    moment = utc(now)
    assert schedule.last_at_or_before(moment) == datetime.fromisoformat(last)
    assert schedule.next_after(moment) == datetime.fromisoformat(following)


# -- named cases: calendar --------------------------------------------------------

CALENDAR_CASES = [
    ({"monthly": {"day": 29, "at": "00:00"}}, "2023-01-15T00:00",
     ["2023-01-29T00:00:00+00:00", "2023-03-29T00:00:00+00:00"]),
    ({"monthly": {"day": 29, "at": "00:00"}}, "2024-01-15T00:00",
     ["2024-01-29T00:00:00+00:00", "2024-02-29T00:00:00+00:00", "2024-03-29T00:00:00+00:00"]),
    ({"monthly": {"day": 29, "at": "00:00"}}, "2100-01-30T00:00",
     ["2100-03-29T00:00:00+00:00"]),
    ({"monthly": {"day": 31, "at": "00:00"}}, "2024-03-31T12:00",
     ["2024-05-31T00:00:00+00:00", "2024-07-31T00:00:00+00:00", "2024-08-31T00:00:00+00:00",
      "2024-10-31T00:00:00+00:00"]),
    ({"monthly": {"day": 31, "at": "00:00"}}, "2024-12-31T12:00",
     ["2025-01-31T00:00:00+00:00"]),
    ({"monthly": {"day": -1, "at": "23:00"}}, "2023-01-15T00:00",
     ["2023-01-31T23:00:00+00:00", "2023-02-28T23:00:00+00:00", "2023-03-31T23:00:00+00:00",
      "2023-04-30T23:00:00+00:00"]),
    ({"monthly": {"day": -1, "at": "23:00"}}, "2024-02-01T00:00",
     ["2024-02-29T23:00:00+00:00", "2024-03-31T23:00:00+00:00"]),
    ({"weekly": {"day": "Sunday", "at": "23:30"}}, "2024-06-09T23:29",
     ["2024-06-09T23:30:00+00:00", "2024-06-16T23:30:00+00:00"]),
    ({"weekly": {"day": "Monday", "at": "00:00"}}, "2024-06-09T23:59:59.999999",
     ["2024-06-10T00:00:00+00:00", "2024-06-17T00:00:00+00:00"]),
    ({"weekly": {"day": "monday", "at": "00:00"}}, "2024-06-10T00:00",
     ["2024-06-17T00:00:00+00:00"]),
    ({"weekly": {"day": "Monday", "at": "09:00"}}, "2024-12-31T00:00",
     ["2025-01-06T09:00:00+00:00"]),
    ({"weekly": {"day": "SUNDAY", "at": "10:00"}}, "2024-12-29T10:00",
     ["2025-01-05T10:00:00+00:00"]),
    ({"daily": {"at": "23:59"}}, "2024-12-31T23:59",
     ["2025-01-01T23:59:00+00:00"]),
    ({"hourly": {"minute": 0}}, "2024-12-31T23:00:00.000001",
     ["2025-01-01T00:00:00+00:00"]),
]  # fmt: skip
CALENDAR_IDS = [
    "monthly-29-common-year-skips-february",
    "monthly-29-leap-year-february",
    "monthly-29-2100-is-not-leap",
    "monthly-31-skips-30-day-months",
    "monthly-31-across-year-end",
    "monthly-last-day-common-year",
    "monthly-last-day-leap-february",
    "weekly-sunday-late-evening",
    "weekly-sunday-to-monday-midnight",
    "weekly-exactly-on-tick",
    "weekly-monday-across-year-end",
    "weekly-sunday-across-year-end",
    "daily-exactly-on-tick-across-year-end",
    "hourly-across-year-end",
]


@pytest.mark.parametrize(("spec", "start", "expected"), CALENDAR_CASES, ids=CALENDAR_IDS)
def test_calendar_ticks(spec: dict[str, Any], start: str, expected: list[str]) -> None:
    schedule = parse_schedule(spec)
    assert local_ticks(schedule, utc(start), len(expected)) == expected


def test_weekly_day_is_the_local_weekday() -> None:
    # Sunday 22:00 in New York is already Monday in UTC.
    schedule = parse_schedule(
        {"weekly": {"day": "Monday", "at": "00:00"}}, time_zone="America/New_York"
    )
    assert schedule.next_after(utc("2024-06-10T02:00")) == utc("2024-06-10T04:00")


# -- named cases: every -------------------------------------------------------------


def test_every_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    schedule = parse_schedule({"every": "7s"})
    # 2024-01-01T00:00:00Z is 1_704_067_200 s; the next multiple of 7 is 1_704_067_204.
    tick = schedule.next_after(utc("2024-01-01T00:00"))
    assert tick == utc("2024-01-01T00:00:04")
    assert tick.timestamp() % 7 == 0


@pytest.mark.parametrize(
    ("now", "last", "following"),
    [
        ("1970-01-01T00:00:01.2", "1970-01-01T00:00:00", "1970-01-01T00:00:01.5"),
        ("1970-01-01T00:00:01.5", "1970-01-01T00:00:01.5", "1970-01-01T00:00:03"),
        ("1970-01-01T00:00:01.499999", "1970-01-01T00:00:00", "1970-01-01T00:00:01.5"),
        ("2099-12-31T23:59:59.999999", "2099-12-31T23:59:58.5", "2100-01-01T00:00:00"),
        ("1969-12-31T23:59:59", "1969-12-31T23:59:58.5", "1970-01-01T00:00:00"),
    ],
    ids=["sub-second-now", "exactly-on-tick", "a-microsecond-early", "year-2100", "before-epoch"],
)
def test_every_with_sub_second_ticks(now: str, last: str, following: str) -> None:
    schedule = parse_schedule({"every": "1500ms"})
    assert schedule.last_at_or_before(utc(now)) == utc(last)
    assert schedule.next_after(utc(now)) == utc(following)


@settings(max_examples=round(2000 * EXAMPLES_SCALE))
@given(
    interval_ms=st.integers(min_value=1_000, max_value=10 * 86_400_000),
    seconds=st.one_of(
        st.floats(min_value=-1e10, max_value=2.5e11, allow_nan=False),
        # On a tick, and a microsecond or a float step either side of one.
        st.tuples(st.integers(min_value=-(10**7), max_value=10**8), st.integers(-1, 1)).map(
            lambda tick: tick[0] / 1000 + tick[1] * 1e-6
        ),
    ),
    nudge=st.sampled_from([-1, 0, 1]),
)
def test_every_next_timestamp_after_is_next_after_in_seconds(
    interval_ms: int, seconds: float, nudge: int
) -> None:
    # The engine arms Every's ticks with it: it must never differ from next_after, by a
    # microsecond either way (a tick fired twice, or skipped).
    now = math.nextafter(seconds, math.copysign(math.inf, nudge)) if nudge else seconds
    schedule = Every(interval=timedelta(milliseconds=interval_ms))
    following = schedule.next_after(datetime.fromtimestamp(now, UTC))
    assert schedule.next_timestamp_after(now) == (
        None if following is None else following.timestamp()
    )


def test_every_next_timestamp_after_says_no_run_after_9999() -> None:
    schedule = parse_schedule({"every": "30s"})
    last = utc("9999-12-31T23:59:30").timestamp()
    assert schedule.next_timestamp_after(last - 1) == last
    assert schedule.next_timestamp_after(last) is None
    # The other kinds answer through next_after.
    daily = parse_schedule({"daily": {"at": "12:00"}})
    assert daily.next_timestamp_after(utc("2024-01-01T13:00").timestamp()) == (
        utc("2024-01-02T12:00").timestamp()
    )


def test_every_ignores_the_zone_of_now_and_of_the_schedule() -> None:
    # The second 02:30 of the fall-back night: 01:30Z.
    now = datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=time_zone("Europe/Berlin"))
    schedule = parse_schedule({"every": "1h"}, time_zone="Asia/Kathmandu")
    tick = schedule.next_after(now)
    assert tick == utc("2024-10-27T02:00")
    assert tick.tzinfo is UTC


@pytest.mark.parametrize(
    "schedule",
    [
        Every(interval=timedelta(seconds=30)),
        Hourly(minute=15),
        Daily(at="02:30", time_zone="Europe/Berlin"),
        Weekly(day="Monday", at="09:00"),
        Monthly(day=-1, at="23:00"),
        Cron(expression="*/5 * * * *"),
    ],
    ids=["every", "hourly", "daily", "weekly", "monthly", "cron"],
)
def test_naive_now_is_refused(schedule: Schedule) -> None:
    with pytest.raises(ValueError, match="aware"):
        schedule.next_after(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        schedule.last_at_or_before(datetime(2024, 1, 1))


@pytest.mark.parametrize(
    "schedule",
    [Every(interval=timedelta(seconds=7)), Hourly(minute=30), Monthly(day=5, at="00:00")],
    ids=["every", "hourly", "monthly"],
)
def test_no_tick_before_the_start_of_time(schedule: Schedule) -> None:
    assert schedule.last_at_or_before(datetime.min.replace(tzinfo=UTC)) is None


# -- the ends of datetime's range ---------------------------------------------------

RANGE_END_CASES = [
    ({"every": "1h"}, "UTC", "9999-12-31T23:00", "9999-12-31T23:00", None),
    ({"every": "30s"}, "UTC", "9999-12-31T23:59:59.999999", "9999-12-31T23:59:30", None),
    ({"daily": {"at": "12:00"}}, "UTC", "9999-12-31T13:00", "9999-12-31T12:00", None),
    # Wall time is already in year 10000 at +14:00, but the tick is still in 9999 UTC.
    ({"daily": {"at": "12:00"}}, "Pacific/Kiritimati", "9999-12-31T10:00",
     "9999-12-30T22:00", "9999-12-31T22:00"),
    ({"daily": {"at": "12:00"}}, "Pacific/Kiritimati", "9999-12-31T23:59:59.999999",
     "9999-12-31T22:00", None),
    ({"hourly": {"minute": 0}}, "Pacific/Kiritimati", "9999-12-31T09:30",
     "9999-12-31T09:00", "9999-12-31T10:00"),
    ({"weekly": {"day": "Friday", "at": "00:00"}}, "Pacific/Kiritimati", "9999-12-31T11:00",
     "9999-12-30T10:00", None),
    ({"cron": "0 0 * * *"}, "Pacific/Honolulu", "9999-12-31T10:00", "9999-12-31T10:00", None),
    ({"cron": "59 23 31 12 *"}, "Etc/GMT+12", "9999-06-01T00:00", "9999-01-01T11:59", None),
    ({"monthly": {"day": -1, "at": "23:00"}}, "UTC", "9999-12-31T23:30", "9999-12-31T23:00",
     None),
    # Wall time is still in year 0 at New York's local mean time (-04:56:02).
    ({"daily": {"at": "23:00"}}, "America/New_York", "0001-01-01T04:00",
     "0001-01-01T03:56:02", "0001-01-02T03:56:02"),
    ({"daily": {"at": "23:00"}}, "America/New_York", "0001-01-01T00:00",
     None, "0001-01-01T03:56:02"),
    ({"cron": "@hourly"}, "Asia/Tokyo", "0001-01-01T00:00", None, "0001-01-01T00:41:01"),
]  # fmt: skip
RANGE_END_IDS = [
    "every-no-run-after-9999",
    "every-sub-minute-no-run-after-9999",
    "daily-no-run-after-9999",
    "daily-plus-14-wall-time-in-10000",
    "daily-plus-14-last-tick-of-9999",
    "hourly-plus-14-wall-time-in-10000",
    "weekly-plus-14-no-run-after-9999",
    "cron-minus-10-no-run-after-9999",
    "cron-minus-12-last-minute-of-the-year",
    "monthly-last-day-no-run-after-9999",
    "daily-new-york-wall-time-in-year-0",
    "daily-new-york-no-run-before-year-1",
    "cron-tokyo-no-run-before-year-1",
]


@pytest.mark.parametrize(
    ("spec", "zone", "now", "last", "following"), RANGE_END_CASES, ids=RANGE_END_IDS
)
def test_the_ends_of_time_answer_or_say_no_run(
    spec: dict[str, Any], zone: str, now: str, last: str | None, following: str | None
) -> None:
    schedule = parse_schedule(spec, time_zone=zone)
    moment = utc(now)
    assert schedule.last_at_or_before(moment) == (None if last is None else utc(last))
    assert schedule.next_after(moment) == (None if following is None else utc(following))


def test_zones_come_from_the_tzdata_package_not_the_system(tmp_path: Path) -> None:
    # A system zoneinfo whose Europe/Berlin is really UTC must change nothing.
    (tmp_path / "Europe").mkdir()
    utc_file = resources.files("tzdata.zoneinfo").joinpath("UTC").read_bytes()
    (tmp_path / "Europe" / "Berlin").write_bytes(utc_file)
    program = (
        "from datetime import datetime, timezone; from podcron.schedules import Daily; "
        "print(Daily(at='12:00', time_zone='Europe/Berlin')"
        ".next_after(datetime(2040, 7, 1, tzinfo=timezone.utc)).isoformat())"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=os.environ | {"PYTHONTZPATH": str(tmp_path), "TZ": "UTC"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "2040-07-01T10:00:00+00:00"
    # The same fake is what zoneinfo itself would read.
    fake = subprocess.run(
        [sys.executable, "-c", "import zoneinfo; print(zoneinfo.ZoneInfo('Europe/Berlin')"
         ".utcoffset(__import__('datetime').datetime(2040, 7, 1)))"],
        env=os.environ | {"PYTHONTZPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert fake.stdout.strip() == "0:00:00"


# -- descriptions --------------------------------------------------------------------

DESCRIPTION_CASES = [
    ({"every": "30s"}, "UTC", "fixed-rate", "every 30s", None),
    ({"every": "90s"}, "UTC", "fixed-rate", "every 1m30s", None),
    ({"every": "1s500ms"}, "UTC", "fixed-rate", "every 1s500ms", None),
    ({"every": "1m"}, "UTC", "fixed-rate", "every 1m", "* * * * *"),
    ({"every": "5m"}, "UTC", "fixed-rate", "every 5m", "*/5 * * * *"),
    ({"every": "7m"}, "UTC", "fixed-rate", "every 7m", None),
    ({"every": "60m"}, "UTC", "fixed-rate", "every 1h", "0 * * * *"),
    ({"every": "2h"}, "UTC", "fixed-rate", "every 2h", "0 */2 * * *"),
    ({"every": "90m"}, "UTC", "fixed-rate", "every 1h30m", None),
    ({"every": "24h"}, "UTC", "fixed-rate", "every 24h", "0 0 * * *"),
    ({"every": "5m"}, "Europe/Berlin", "fixed-rate", "every 5m", None),
    ({"every": "30m"}, "Etc/GMT+5", "fixed-rate", "every 30m", "*/30 * * * *"),
    ({"every": "2h"}, "Etc/GMT+5", "fixed-rate", "every 2h", None),
    ({"hourly": {"minute": 15}}, "UTC", "hourly", "every hour at minute 15 (UTC)",
     "15 * * * *"),
    ({"daily": {"at": "02:30"}}, "europe/berlin", "daily",
     "every day at 02:30 (Europe/Berlin)", "30 2 * * *"),
    ({"weekly": {"day": "monday", "at": "09:00"}}, "UTC", "weekly",
     "every Monday at 09:00 (UTC)", "0 9 * * 1"),
    ({"weekly": {"day": "Sunday", "at": "18:05"}}, "UTC", "weekly",
     "every Sunday at 18:05 (UTC)", "5 18 * * 0"),
    ({"monthly": {"day": 1, "at": "00:00"}}, "UTC", "monthly",
     "on day 1 of every month at 00:00 (UTC)", "0 0 1 * *"),
    ({"monthly": {"day": -1, "at": "23:00"}}, "UTC", "monthly",
     "on the last day of every month at 23:00 (UTC)", None),
    ({"cron": "*/5 * * * *"}, "UTC", "cron", "cron */5 * * * * (UTC)", "*/5 * * * *"),
    ({"cron": " 0  9 * *\tmon-fri "}, "America/New_York", "cron",
     "cron 0 9 * * mon-fri (America/New_York)", "0 9 * * mon-fri"),
]  # fmt: skip
DESCRIPTION_IDS = [
    "every-30s",
    "every-90s-canonical",
    "every-sub-second-part",
    "every-1m",
    "every-5m",
    "every-7m-no-cron",
    "every-60m",
    "every-2h",
    "every-90m-no-cron",
    "every-24h",
    "every-in-dst-zone-no-cron",
    "every-in-fixed-offset-zone",
    "every-2h-misaligned-offset-no-cron",
    "hourly",
    "daily-zone-name-normalised",
    "weekly-monday",
    "weekly-sunday-is-cron-0",
    "monthly",
    "monthly-last-day-no-cron",
    "cron",
    "cron-whitespace-normalised",
]


@pytest.mark.parametrize(
    ("spec", "zone", "schedule_type", "human", "cron"), DESCRIPTION_CASES, ids=DESCRIPTION_IDS
)
def test_descriptions(
    spec: dict[str, Any], zone: str, schedule_type: str, human: str, cron: str | None
) -> None:
    schedule = parse_schedule(spec, time_zone=zone)
    assert schedule.schedule_type == schedule_type
    assert schedule.human_readable == human
    assert schedule.cron_expression == cron


def test_no_time_zone_means_utc() -> None:
    schedule = parse_schedule({"daily": {"at": "02:30"}}, time_zone=None)
    assert schedule == Daily(at="02:30", time_zone="UTC")
    assert schedule.time_zone == "UTC"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("1m30s", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("1h1m1s1ms", timedelta(hours=1, minutes=1, seconds=1, milliseconds=1)),
        ("90m", timedelta(minutes=90)),
        ("0s", timedelta(0)),
    ],
    ids=["ms", "s", "m-s", "h", "all-units", "m-over-60", "zero"],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "10", "1d", "1.5s", "-1s", " 1s", "1s ", "1 s", "1S", "ms", "99999999h"],
    ids=["empty", "no-unit", "days", "fraction", "negative", "leading-space", "trailing-space",
         "inner-space", "upper-case", "no-number", "too-long"],
)  # fmt: skip
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_duration(text)
    assert caught.value.field == "spec.schedule.every"


# -- invalid input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"), [("0ms", "0s"), ("0h", "0s"), ("0s", "0s"), ("500ms", "500ms")]
)
def test_an_interval_under_a_second_is_shown_in_its_canonical_spelling(
    text: str, shown: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule({"every": text})
    assert str(caught.value) == f"spec.schedule.every: must be at least 1s (got {shown!r})"


INVALID_CASES: list[tuple[Any, str | None, type[Exception], str]] = [
    ({"every": "0s"}, "UTC", InvalidSchedule, "spec.schedule.every"),
    ({"every": "500ms"}, "UTC", InvalidSchedule, "spec.schedule.every"),
    ({"every": "10"}, "UTC", InvalidSchedule, "spec.schedule.every"),
    ({"every": "1d"}, "UTC", InvalidSchedule, "spec.schedule.every"),
    ({"every": 30}, "UTC", InvalidSchedule, "spec.schedule.every"),
    ({"hourly": {"minute": 60}}, "UTC", InvalidSchedule, "spec.schedule.hourly.minute"),
    ({"hourly": {"minute": -1}}, "UTC", InvalidSchedule, "spec.schedule.hourly.minute"),
    ({"hourly": {"minute": True}}, "UTC", InvalidSchedule, "spec.schedule.hourly.minute"),
    ({"hourly": {"minute": "15"}}, "UTC", InvalidSchedule, "spec.schedule.hourly.minute"),
    ({"hourly": {}}, "UTC", InvalidSchedule, "spec.schedule.hourly.minute"),
    ({"hourly": 15}, "UTC", InvalidSchedule, "spec.schedule.hourly"),
    ({"daily": {"at": "24:00"}}, "UTC", InvalidSchedule, "spec.schedule.daily.at"),
    ({"daily": {"at": "2:30"}}, "UTC", InvalidSchedule, "spec.schedule.daily.at"),
    ({"daily": {"at": "02:60"}}, "UTC", InvalidSchedule, "spec.schedule.daily.at"),
    ({"daily": {"at": "02:30:00"}}, "UTC", InvalidSchedule, "spec.schedule.daily.at"),
    ({"daily": {"at": "02:30", "minute": 5}}, "UTC", InvalidSchedule,
     "spec.schedule.daily.minute"),
    ({"weekly": {"day": "Funday", "at": "09:00"}}, "UTC", InvalidSchedule,
     "spec.schedule.weekly.day"),
    ({"weekly": {"day": "Mon", "at": "09:00"}}, "UTC", InvalidSchedule,
     "spec.schedule.weekly.day"),
    ({"weekly": {"day": "Monday", "at": "9:00"}}, "UTC", InvalidSchedule,
     "spec.schedule.weekly.at"),
    ({"monthly": {"day": 0, "at": "00:00"}}, "UTC", InvalidSchedule, "spec.schedule.monthly.day"),
    ({"monthly": {"day": 32, "at": "00:00"}}, "UTC", InvalidSchedule,
     "spec.schedule.monthly.day"),
    ({"monthly": {"day": -2, "at": "00:00"}}, "UTC", InvalidSchedule,
     "spec.schedule.monthly.day"),
    ({"monthly": {"day": "1", "at": "00:00"}}, "UTC", InvalidSchedule,
     "spec.schedule.monthly.day"),
    ({"monthly": {"day": 1}}, "UTC", InvalidSchedule, "spec.schedule.monthly.at"),
    ({"cron": "* * * *"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": "* * * * * *"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": "0 0 * * * * 2030"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": "61 * * * *"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": "*/0 * * * *"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": "H * * * *"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": "R * * * *"}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"cron": 5}, "UTC", InvalidSchedule, "spec.schedule.cron"),
    ({"daily": {"at": "02:30"}}, "Mars/Olympus", UnknownTimeZone, "spec.timeZone"),
    ({"every": "30s"}, "", UnknownTimeZone, "spec.timeZone"),
    ({"every": "30s", "daily": {"at": "02:30"}}, "UTC", InvalidSchedule, "spec.schedule"),
    ({}, "UTC", InvalidSchedule, "spec.schedule"),
    ({"yearly": {"at": "02:30"}}, "UTC", InvalidSchedule, "spec.schedule.yearly"),
    ("daily", "UTC", InvalidSchedule, "spec.schedule"),
]  # fmt: skip
INVALID_IDS = [
    "every-0s",
    "every-below-1s",
    "every-no-unit",
    "every-days",
    "every-number",
    "minute-60",
    "minute-negative",
    "minute-bool",
    "minute-text",
    "minute-missing",
    "hourly-not-an-object",
    "at-24-00",
    "at-one-digit-hour",
    "at-minute-60",
    "at-with-seconds",
    "daily-unknown-field",
    "weekly-funday",
    "weekly-abbreviation",
    "weekly-at",
    "monthly-day-0",
    "monthly-day-32",
    "monthly-day-minus-2",
    "monthly-day-text",
    "monthly-at-missing",
    "cron-4-fields",
    "cron-6-fields",
    "cron-7-fields",
    "cron-minute-61",
    "cron-step-0",
    "cron-hashed",
    "cron-random",
    "cron-not-text",
    "unknown-zone",
    "empty-zone",
    "two-kinds",
    "no-kind",
    "unknown-kind",
    "schedule-not-an-object",
]


@pytest.mark.parametrize(("spec", "zone", "error", "field"), INVALID_CASES, ids=INVALID_IDS)
def test_invalid_schedules_name_the_field(
    spec: Any, zone: str | None, error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as caught:
        parse_schedule(spec, time_zone=zone)
    assert isinstance(caught.value, InvalidSchedule | UnknownTimeZone)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Every(interval=timedelta(seconds=1, microseconds=1)), "spec.schedule.every"),
        (lambda: Hourly(minute=99), "spec.schedule.hourly.minute"),
        (lambda: Daily(at="7am"), "spec.schedule.daily.at"),
        (lambda: Weekly(day="Caturday", at="09:00"), "spec.schedule.weekly.day"),
        (lambda: Monthly(day=31, at="25:00"), "spec.schedule.monthly.at"),
        (lambda: Cron(expression="* * * * * *"), "spec.schedule.cron"),
        (lambda: Daily(at="02:30", time_zone="Mars/Olympus"), "spec.timeZone"),
    ],
    ids=["every-microseconds", "hourly", "daily", "weekly", "monthly", "cron", "zone"],
)
def test_constructors_validate(build: Callable[[], Schedule], field: str) -> None:
    with pytest.raises((InvalidSchedule, UnknownTimeZone)) as caught:
        build()
    assert isinstance(caught.value, InvalidSchedule | UnknownTimeZone)
    assert caught.value.field == field


# Each refusal as the user reads it (status condition, Event, `podcron validate`): the field,
# what is wrong, and the value given, in one line.
REFUSALS: list[tuple[Callable[[], object], str]] = [
    (lambda: parse_duration("10"),
     'spec.schedule.every: must be a duration such as "30s", "1m30s" or "500ms" (units ms s m h)'
     " (got '10')"),
    (lambda: parse_duration("99999999h"),
     "spec.schedule.every: is too long (at most about 292 years) (got '99999999h')"),
    (lambda: parse_schedule({"daily": {"at": "2:30"}}),
     "spec.schedule.daily.at: must be a time \"HH:MM\" from 00:00 to 23:59 (got '2:30')"),
    (lambda: parse_schedule({"daily": {"at": 930}}),
     'spec.schedule.daily.at: must be a time "HH:MM" from 00:00 to 23:59 (got 930)'),
    (lambda: parse_schedule({"hourly": {"minute": 60}}),
     "spec.schedule.hourly.minute: must be a whole number from 0 to 59 (got 60)"),
    (lambda: parse_schedule({"weekly": {"day": "Funday", "at": "09:00"}}),
     "spec.schedule.weekly.day: must be a day name, Monday to Sunday (got 'Funday')"),
    (lambda: parse_schedule({"weekly": {"day": 5, "at": "09:00"}}),
     "spec.schedule.weekly.day: must be a day name, Monday to Sunday (got 5)"),
    (lambda: parse_schedule({"monthly": {"day": 32, "at": "00:00"}}),
     "spec.schedule.monthly.day: must be a day of the month from 1 to 31, or -1 for the last"
     " day (got 32)"),
    (lambda: parse_schedule({"hourly": 15}),
     "spec.schedule.hourly: must be an object with minute (got 15)"),
    (lambda: parse_schedule({"weekly": 15}),
     "spec.schedule.weekly: must be an object with day, at (got 15)"),
    (lambda: parse_schedule({"daily": {"at": "02:30", "minute": 5}}),
     "spec.schedule.daily.minute: unknown field (got 5)"),
    (lambda: parse_schedule({"monthly": {"day": 1}}),
     "spec.schedule.monthly.at: is required (got None)"),
    (lambda: Every(interval="30s", time_zone="UTC"),  # type: ignore[arg-type]
     "spec.schedule.every: must be a duration (got '30s')"),
    (lambda: Every(interval=timedelta(microseconds=1_500_500), time_zone="UTC"),
     "spec.schedule.every: must be whole milliseconds"
     " (got datetime.timedelta(seconds=1, microseconds=500500))"),
    (lambda: Every(interval=timedelta(milliseconds=9_223_372_036_855), time_zone="UTC"),
     "spec.schedule.every: is too long (at most about 292 years) (got '2562047h47m16s855ms')"),
]  # fmt: skip


@pytest.mark.parametrize(("refused", "message"), REFUSALS, ids=[m for _, m in REFUSALS])
def test_a_refusal_names_the_field_the_problem_and_the_value(
    refused: Callable[[], object], message: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        refused()
    assert str(caught.value) == message


def test_the_longest_duration_is_accepted() -> None:
    longest = timedelta(milliseconds=9_223_372_036_854)
    assert parse_duration("2562047h47m16s854ms") == longest
    assert Every(interval=longest, time_zone="UTC").interval == longest


def test_a_monthly_schedule_keeps_its_zone() -> None:
    schedule = parse_schedule({"monthly": {"day": 1, "at": "00:00"}}, time_zone="Europe/Berlin")
    assert schedule.time_zone == "Europe/Berlin"


def test_a_now_whose_zone_gives_no_offset_is_refused() -> None:
    class NoOffset(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

        def dst(self, dt: datetime | None) -> timedelta | None:
            return None

        def tzname(self, dt: datetime | None) -> str | None:
            return None

    with pytest.raises(ValueError, match="aware"):
        parse_schedule({"every": "30s"}).next_after(datetime(2026, 1, 1, tzinfo=NoOffset()))


def test_a_schedule_without_a_next_tick_has_no_next_timestamp() -> None:
    assert parse_schedule({"cron": "0 0 30 2 *"}).next_timestamp_after(0.0) is None


def test_a_dotted_capital_i_in_a_day_name_reads_as_go_reads_it() -> None:
    # Go lower-cases U+0130 to "i" (one rune); Python's lower() would give two.
    now = datetime(2026, 1, 1, tzinfo=UTC)
    friday = parse_schedule({"cron": "0 0 * * FR\u0130"}).next_after(now)
    assert friday == parse_schedule({"cron": "0 0 * * FRI"}).next_after(now) == utc("2026-01-02")


def test_a_monthly_schedule_asked_in_january_before_its_day_goes_back_to_december() -> None:
    schedule = parse_schedule({"monthly": {"day": 15, "at": "00:00"}})
    assert schedule.last_at_or_before(utc("2026-01-10")) == utc("2025-12-15")


def test_a_wall_time_in_a_gap_does_not_depend_on_the_machine_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 02:30 does not exist in Berlin on 29 March 2026: it runs when the gap ends, 01:00 UTC,
    # whatever zone the machine itself is set to.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert instant(time_zone("Europe/Berlin"), datetime(2026, 3, 29, 2, 30)) == utc(
            "2026-03-29T01:00:00"
        )
    finally:
        monkeypatch.undo()
        time.tzset()
