"""Cron expressions exactly as Kubernetes CronJob reads them: pure, no clock, no I/O.

CronJob validates a schedule with ``github.com/robfig/cron/v3``'s
``ParseStandard`` and refuses any schedule containing ``TZ``; it then fires at
the times robfig's ``SpecSchedule.Next`` matches. :func:`parse` follows that
parser rule for rule (``tools/cronref`` runs robfig itself to prove it, see
docs/schedules.md), and :class:`CronSpec` matches wall times as ``Next`` does:

* 5 fields split on whitespace: minute (0-59), hour (0-23), day of month
  (1-31), month (1-12 or ``jan``-``dec``), day of week (0-6 from Sunday, or
  ``sun``-``sat``); names in any case. ``7`` is not Sunday.
* Each field is a comma-separated list (empty items are skipped) of ``*`` or
  ``?`` (the whole field), ``N``, ``A-B``, each optionally ``/STEP``; ``N/STEP``
  means ``N-max/STEP``. Numbers may have leading zeros and a ``+``.
* The day rule: when the day-of-month or the day-of-week field is a star (an
  item ``*`` or ``?`` with no step above 1), a day must match both fields;
  otherwise it may match either.
* The macros ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``,
  ``@midnight`` and ``@hourly``, spelled exactly.

Two things CronJob accepts are refused, each with a message saying what to
use: ``@every`` (robfig counts it from when the CronJob was created; podcron's
``every`` ticks at multiples since the Unix epoch) and, like CronJob itself for
new objects, ``TZ=``/``CRON_TZ=`` prefixes (``spec.timeZone`` says the zone).
Other cron dialects' ``L``, ``W`` and ``#`` are refused with a hint.

An expression that matches no date (``0 0 30 2 *``) is accepted, as CronJob
accepts it, and never fires: :attr:`CronSpec.matches_no_date` says so.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["CronError", "CronSpec", "parse"]

_MINUTE = timedelta(minutes=1)
_LAST_MINUTE_OF_DAY = 23 * 60 + 59
# The most days each month has (February in a leap year), by month number.
_LONGEST_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Go's unicode.IsSpace, which strings.Fields splits on. Python's str.split()
# would also split on \x1c-\x1f, which Go keeps inside a field.
_GO_SPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# strconv.Atoi: an optional sign and ASCII digits, within int64.
_GO_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1
# What other cron dialects write for "last day", "nearest weekday", "nth weekday".
_EXTENSION = re.compile(r"[0-9]*[LW]|LW|.*#.*", re.IGNORECASE)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MACRO_NAMES = "@yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"


class CronError(ValueError):
    """Why an expression is refused, as one line."""


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field(
        "month",
        1,
        12,
        {
            "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
            "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
        },
    ),
    _Field(
        "day-of-week",
        0,
        6,
        {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6},
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class CronSpec:
    """A parsed expression: the values each field selects, and the day rule.

    Construct with :func:`parse`. ``weekdays`` count from Sunday = 0.
    """

    #: The expression with whitespace normalised, or the macro as written.
    text: str
    #: The 5-field form, a macro spelled out (``@daily`` is ``0 0 * * *``).
    five_fields: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    #: A day must match both day fields (one of them is a star), not either.
    both_days: bool
    #: No wall time ever matches (``0 0 30 2 *``, or an empty field such as ``,``).
    matches_no_date: bool

    def _day_matches(self, day: int, weekday: int) -> bool:
        if self.both_days:
            return day in self.days and weekday in self.weekdays
        return day in self.days or weekday in self.weekdays

    def _time_from(self, clock: int) -> tuple[int, int] | None:
        """The first (hour, minute) at or after ``clock`` minutes into the day."""
        hours, minutes = self.hours, self.minutes
        hour, minute = divmod(clock, 60)
        index = bisect_left(hours, hour)
        if index < len(hours) and hours[index] == hour:
            at = bisect_left(minutes, minute)
            if at < len(minutes):
                return hour, minutes[at]
            index += 1
        return (hours[index], minutes[0]) if index < len(hours) else None

    def _time_until(self, clock: int) -> tuple[int, int] | None:
        """The last (hour, minute) at or before ``clock`` minutes into the day."""
        hours, minutes = self.hours, self.minutes
        hour, minute = divmod(clock, 60)
        index = bisect_right(hours, hour) - 1
        if index >= 0 and hours[index] == hour:
            at = bisect_right(minutes, minute) - 1
            if at >= 0:
                return hour, minutes[at]
            index -= 1
        return (hours[index], minutes[-1]) if index >= 0 else None

    def next_wall(self, after: datetime) -> datetime | None:
        """The first matching wall time strictly after the naive ``after``.

        ``None`` if no date ever matches. Raises ``ValueError`` past year 9999.
        """
        if self.matches_no_date:
            return None
        start = after.replace(second=0, microsecond=0) + _MINUTE
        year, month, day = start.year, start.month, start.day
        clock = start.hour * 60 + start.minute
        # Terminates: some date matches, so one comes within 8 years (29 February).
        while True:
            if month in self.months:
                monday_first, length = calendar.monthrange(year, month)
                while day <= length:
                    # (monday_first + day) % 7 is the cron weekday, Sunday = 0.
                    if self._day_matches(day, (monday_first + day) % 7):
                        time = self._time_from(clock)
                        if time is not None:
                            return datetime(year, month, day, *time)
                    day, clock = day + 1, 0
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            day, clock = 1, 0

    def last_wall(self, at: datetime) -> datetime | None:
        """The last matching wall time at or before the naive ``at``.

        ``None`` if no date ever matches. Raises ``ValueError`` before year 1.
        """
        if self.matches_no_date:
            return None
        year, month, day = at.year, at.month, at.day
        clock = at.hour * 60 + at.minute
        while True:
            if month in self.months:
                monday_first, length = calendar.monthrange(year, month)
                day = min(day, length)
                while day >= 1:
                    if self._day_matches(day, (monday_first + day) % 7):
                        time = self._time_until(clock)
                        if time is not None:
                            return datetime(year, month, day, *time)
                    day, clock = day - 1, _LAST_MINUTE_OF_DAY
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
            day, clock = 31, _LAST_MINUTE_OF_DAY
            if year < 1:
                raise ValueError("no matching wall time from year 1 on")


def _go_lower(text: str) -> str:
    # Go's strings.ToLower maps each rune by itself; Python's str.lower() turns
    # U+0130 (İ) into two runes, so "FRİ" would miss Friday, which Go finds.
    return text.replace("\u0130", "i").lower()


def _integer(field: _Field, token: str) -> int:
    """strconv.Atoi as robfig's mustParseInt uses it: non-negative, within int64."""
    if not _GO_INT.fullmatch(token):
        kind = "a number or a name" if field.names else "a number"
        hint = ""
        if _EXTENSION.fullmatch(token):
            hint = (
                "; L, W and # are not in Kubernetes CronJob's cron"
                " (for the last day of the month use monthly: {day: -1})"
            )
        raise CronError(f"the {field.name} field: {token!r} is not {kind}{hint}")
    number = int(token)
    if number > _INT64_MAX or number < -_INT64_MAX - 1:
        raise CronError(f"the {field.name} field: {token} is out of range")
    if number < 0:
        raise CronError(f"the {field.name} field: {token} is negative")
    return number


def _value(field: _Field, token: str) -> int:
    if field.names is not None:
        named = field.names.get(_go_lower(token))
        if named is not None:
            return named
    return _integer(field, token)


def _range(field: _Field, item: str) -> tuple[set[int], bool]:
    """The values of one list item, and whether it is a star (robfig's getRange)."""
    range_and_step = item.split("/")
    low_and_high = range_and_step[0].split("-")
    star = False
    if low_and_high[0] in ("*", "?"):
        # robfig reads "*-anything" as "*": it never looks past the star.
        start, end, star = field.low, field.high, True
    else:
        start = _value(field, low_and_high[0])
        if len(low_and_high) == 1:
            end = start
        elif len(low_and_high) == 2:
            end = _value(field, low_and_high[1])
        else:
            raise CronError(f"the {field.name} field: too many hyphens in {item!r}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _integer(field, range_and_step[1])
        if len(low_and_high) == 1:
            end = field.high  # "N/step" means "N-max/step"
        if step > 1:
            star = False
    else:
        raise CronError(f"the {field.name} field: too many slashes in {item!r}")
    for value in (start, end):
        if value < field.low:
            raise CronError(f"the {field.name} field: {value} is below the minimum {field.low}")
        if value > field.high:
            hint = " (Sunday is 0)" if field.high == 6 and value == 7 else ""
            raise CronError(
                f"the {field.name} field: {value} is above the maximum {field.high}{hint}"
            )
    if start > end:
        raise CronError(f"the {field.name} field: range {item!r} runs backwards")
    if step == 0:
        raise CronError(f"the {field.name} field: the step in {item!r} must be above 0")
    return set(range(start, end + 1, step)), star


def _field(field: _Field, text: str) -> tuple[set[int], bool]:
    values: set[int] = set()
    star = False
    # strings.FieldsFunc on ",": empty items ("1,,2", ",") are skipped, not refused.
    for item in text.split(","):
        if item:
            selected, item_star = _range(field, item)
            values |= selected
            star = star or item_star
    return values, star


def _never(days: set[int], months: set[int], weekdays: set[int], both_days: bool) -> bool:
    """Whether no date ever matches the day and month fields."""
    # Every weekday occurs in every month, and each month has its longest
    # length in some year, so only the day-of-month can rule out a date.
    some_day = any(day <= _LONGEST_MONTH[month] for month in months for day in days)
    if both_days:  # one of the two fields is a star, so selects every value
        return not (some_day and weekdays)
    return not (some_day or (weekdays and months))


def parse(expression: str) -> CronSpec:
    """The expression as CronJob reads it; raises :class:`CronError` saying what is wrong."""
    if "TZ" in expression:
        raise CronError("must not contain TZ= or CRON_TZ=; set spec.timeZone instead")
    text = expression
    if expression.startswith("@"):
        if expression.startswith("@every"):
            raise CronError(
                "@every is not supported: use schedule.every, which ticks at multiples"
                " of the interval since the Unix epoch"
            )
        if expression not in _MACROS:
            raise CronError(f"unknown macro: use {_MACRO_NAMES}")
        expression = _MACROS[expression]
    fields = [part for part in _GO_SPACE.split(expression) if part]
    if len(fields) != 5:
        raise CronError(
            f"must have 5 fields (minute hour day-of-month month day-of-week), found {len(fields)}"
        )
    five_fields = " ".join(fields)
    (minutes, _), (hours, _), (days, day_star), (months, _), (weekdays, weekday_star) = (
        _field(field, part) for field, part in zip(_FIELDS, fields, strict=True)
    )
    both_days = day_star or weekday_star
    return CronSpec(
        text=text if text.startswith("@") else five_fields,
        five_fields=five_fields,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        both_days=both_days,
        matches_no_date=(not minutes or not hours or _never(days, months, weekdays, both_days)),
    )
