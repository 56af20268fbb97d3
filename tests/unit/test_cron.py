"""The cron dialect, named case by case: Kubernetes CronJob's reading, its macros, its refusals.

tests/unit/test_cron_reference.py compares thousands of expressions with
robfig/cron itself; these cases say in words what that comparison pins down.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from podcron.errors import InvalidSchedule
from podcron.schedules import Cron, parse_schedule
from podcron.schedules.cron import parse as cron_parse


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ticks(cron: Cron, start: str, count: int) -> list[str]:
    moment = utc(start)
    found = []
    for _ in range(count):
        following = cron.next_after(moment)
        assert following is not None
        found.append(following.strftime("%Y-%m-%d %H:%M %a"))
        moment = following
    return found


# 2024-06-10 is a Monday.
TICK_CASES = [
    # One value spelled two ways is that one value, never the whole field.
    ("0 9 * * mon-1", ["2024-06-10 09:00 Mon", "2024-06-17 09:00 Mon", "2024-06-24 09:00 Mon"]),
    ("0 0 1 jan-1 *", ["2025-01-01 00:00 Wed", "2026-01-01 00:00 Thu"]),
    ("0 0 * * 0-sun", ["2024-06-16 00:00 Sun", "2024-06-23 00:00 Sun"]),
    ("0 0 1 12-DEC *", ["2024-12-01 00:00 Sun", "2025-12-01 00:00 Mon"]),
    ("0 0 1 JAN-jan/2 *", ["2025-01-01 00:00 Wed"]),
    # Neither day field a star: a day matching either runs.
    ("0 0 13 * 5", ["2024-06-13 00:00 Thu", "2024-06-14 00:00 Fri", "2024-06-21 00:00 Fri"]),
    ("0 0 */2 * fri", ["2024-06-11 00:00 Tue", "2024-06-13 00:00 Thu", "2024-06-14 00:00 Fri",
                       "2024-06-15 00:00 Sat"]),
    # A star (*, ?, or either with step 1) in one day field: a day must match both.
    ("0 0 13 * */1", ["2024-06-13 00:00 Thu", "2024-07-13 00:00 Sat"]),
    ("0 0 13 * ?", ["2024-06-13 00:00 Thu", "2024-07-13 00:00 Sat"]),
    ("0 0 ? * fri", ["2024-06-14 00:00 Fri", "2024-06-21 00:00 Fri"]),
    # Steps: "N/step" runs from N to the end of the field; a step past it keeps the start.
    ("5/15 * * * *", ["2024-06-10 00:05 Mon", "2024-06-10 00:20 Mon", "2024-06-10 00:35 Mon",
                      "2024-06-10 00:50 Mon", "2024-06-10 01:05 Mon"]),
    ("*/100 * * * *", ["2024-06-10 01:00 Mon", "2024-06-10 02:00 Mon"]),
    # "?" is "*" in any field; empty list items are skipped; names in any case.
    ("? ? ? ? ?", ["2024-06-10 00:01 Mon", "2024-06-10 00:02 Mon"]),
    ("1,,2 0 * * *", ["2024-06-10 00:01 Mon", "2024-06-10 00:02 Mon", "2024-06-11 00:01 Tue"]),
    ("0 0 1 feb,AuG *", ["2024-08-01 00:00 Thu", "2025-02-01 00:00 Sat"]),
    # Macros, as robfig spells them out.
    ("@yearly", ["2025-01-01 00:00 Wed", "2026-01-01 00:00 Thu"]),
    ("@annually", ["2025-01-01 00:00 Wed"]),
    ("@monthly", ["2024-07-01 00:00 Mon", "2024-08-01 00:00 Thu"]),
    ("@weekly", ["2024-06-16 00:00 Sun", "2024-06-23 00:00 Sun"]),
    ("@daily", ["2024-06-11 00:00 Tue", "2024-06-12 00:00 Wed"]),
    ("@midnight", ["2024-06-11 00:00 Tue"]),
    ("@hourly", ["2024-06-10 01:00 Mon", "2024-06-10 02:00 Mon"]),
    # 29 February after the non-leap 2100: eight years on (robfig gives up after five).
    ("0 0 29 2 *", ["2024-02-29 00:00 Thu", "2028-02-29 00:00 Tue"]),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "expected"), TICK_CASES, ids=[c[0] for c in TICK_CASES])
def test_cronjob_semantics(expression: str, expected: list[str]) -> None:
    start = "2024-01-01T00:00" if expression == "0 0 29 2 *" else "2024-06-10T00:00"
    assert ticks(Cron(expression=expression), start, len(expected)) == expected


def test_29_february_across_2100() -> None:
    cron = Cron(expression="0 0 29 2 *")
    assert cron.next_after(utc("2097-03-01T00:00")) == utc("2104-02-29T00:00")
    assert cron.last_at_or_before(utc("2104-02-28T00:00")) == utc("2096-02-29T00:00")


@pytest.mark.parametrize(
    ("expression", "five_fields"),
    [("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"),
     ("@weekly", "0 0 * * 0"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
     ("@hourly", "0 * * * *")],
)  # fmt: skip
def test_macros_describe_themselves_and_their_five_fields(
    expression: str, five_fields: str
) -> None:
    schedule = parse_schedule({"cron": expression}, time_zone="Europe/Berlin")
    assert schedule.human_readable == f"cron {expression} (Europe/Berlin)"
    assert schedule.cron_expression == five_fields
    assert schedule == Cron(expression=expression, time_zone="Europe/Berlin")


@pytest.mark.parametrize(
    "expression", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 ?", ", * * * *"]
)
def test_a_date_that_never_comes_is_valid_and_never_fires(expression: str) -> None:
    schedule = parse_schedule({"cron": expression}, time_zone="America/New_York")
    assert schedule.next_after(utc("2024-06-10T00:00")) is None
    assert schedule.last_at_or_before(utc("2024-06-10T00:00")) is None
    assert schedule.human_readable.endswith("(America/New_York), which matches no date")


def test_a_day_of_week_still_fires_when_the_day_of_month_never_comes() -> None:
    # Neither field is a star, so any Monday in February is enough.
    cron = Cron(expression="0 0 30 2 mon")
    assert cron.next_after(utc("2024-06-10T00:00")) == utc("2025-02-03T00:00")


REFUSALS = [
    ("0 0 * * 7", "the day-of-week field: 7 is above the maximum 6 (Sunday is 0)"),
    ("0 0 * * 7-0", "the day-of-week field: 7 is above the maximum 6 (Sunday is 0)"),
    ("0 0 L * *", "L, W and # are not in Kubernetes CronJob's cron"),
    ("0 0 15W * *", "L, W and # are not in Kubernetes CronJob's cron"),
    ("0 0 13 * 5#2", "L, W and # are not in Kubernetes CronJob's cron"),
    ("0 0 * * 5L", "L, W and # are not in Kubernetes CronJob's cron"),
    ("@every 5m", "@every is not supported: use schedule.every"),
    ("@every 1h30m", "@every is not supported: use schedule.every"),
    ("TZ=UTC 0 0 * * *", "must not contain TZ= or CRON_TZ=; set spec.timeZone instead"),
    ("CRON_TZ=Europe/Berlin 0 2 * * *", "must not contain TZ= or CRON_TZ="),
    ("@reboot", "unknown macro: use @yearly, @annually, @monthly, @weekly, @daily, @midnight"),
    ("@DAILY", "unknown macro"),
    ("@daily ", "unknown macro"),
    ("", "must have 5 fields (minute hour day-of-month month day-of-week), found 0"),
    ("* * * *", "must have 5 fields"),
    ("0 0 * * * *", "must have 5 fields (minute hour day-of-month month day-of-week), found 6"),
    ("61 * * * *", "the minute field: 61 is above the maximum 59"),
    ("0 24 * * *", "the hour field: 24 is above the maximum 23"),
    ("0 0 0 * *", "the day-of-month field: 0 is below the minimum 1"),
    ("0 0 * 13 *", "the month field: 13 is above the maximum 12"),
    ("30-10 * * * *", "the minute field: range '30-10' runs backwards"),
    ("*/0 * * * *", "the minute field: the step in '*/0' must be above 0"),
    ("*/-1 * * * *", "the minute field: -1 is negative"),
    ("0 0 * January *", "the month field: 'January' is not a number or a name"),
    ("jan * * * *", "the minute field: 'jan' is not a number"),
    ("H * * * *", "the minute field: 'H' is not a number"),
    ("1-2-3 * * * *", "the minute field: too many hyphens in '1-2-3'"),
    ("*/5/5 * * * *", "the minute field: too many slashes in '*/5/5'"),
    ("\u0663 * * * *", "the minute field: '\u0663' is not a number"),
]


@pytest.mark.parametrize(("expression", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusals_say_why_in_one_line(expression: str, message: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_schedule({"cron": expression})
    text = str(caught.value)
    assert text.startswith("spec.schedule.cron: ")
    assert message in text
    assert "\n" not in text.removesuffix(f"(got {expression!r})")


def test_the_last_wall_time_is_found_in_year_1() -> None:
    # From March of year 2 back to June of year 1: the search may cross into year 1.
    assert cron_parse("0 0 1 6 *").last_wall(datetime(2, 3, 1)) == datetime(1, 6, 1)
