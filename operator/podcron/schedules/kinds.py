"""The schedule kinds of a ScheduledJob and when their ticks fall: no I/O and no clock.

Every question takes ``now`` (any aware datetime) and answers in aware UTC, or
``None`` where there is no such tick: none left before the end of year 9999
(or before the start of year 1), or a cron expression that matches no date.

``every`` is a fixed rate whose ticks are the multiples of the interval since
the Unix epoch, so every replica and every restart computes the same ticks.

The other kinds are wall-clock schedules in ``time_zone``. Their ticks are wall
times (naive local datetimes) that the schedule enumerates in order; each one
is mapped to an instant by the DST rules of :mod:`podcron.schedules.zones`:

* a wall time that does not exist that day (the clocks spring forward over it)
  runs at the first instant after the gap, so several ticks inside one gap
  collapse into a single run;
* an ambiguous wall time (the clocks fall back over it) runs once, at its first
  occurrence; the repeated stretch of wall time runs nothing the second time.

This mapping never goes backwards as wall time goes forwards, which is what
lets :meth:`Schedule.next_after` walk wall ticks from ``now``'s own wall time
and stop at the first instant after ``now``.
"""

from __future__ import annotations

import abc
import calendar
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, TypeGuard
from zoneinfo import ZoneInfo

from podcron.errors import InvalidSchedule
from podcron.schedules import cron
from podcron.schedules.zones import instant, time_zone

__all__ = [
    "Cron",
    "Daily",
    "Every",
    "Hourly",
    "Monthly",
    "Schedule",
    "Weekly",
    "parse_duration",
    "parse_schedule",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_WEEK = timedelta(weeks=1)
# 400 Gregorian years: the calendar and its weekdays repeat after exactly this long.
_ERA = timedelta(days=146_097)

_KINDS_TEXT = "every, hourly, daily, weekly, monthly, cron"

# A fixed English list: calendar.day_name follows the process locale.
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_AT = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
# Go's time.ParseDuration refuses anything past int64 nanoseconds (about 292
# years); the same bound keeps every epoch-aligned tick inside datetime's range.
_MAX_DURATION_MS = (2**63 - 1) // 1_000_000
# The last instant a datetime holds, 9999-12-31T23:59:59.999999Z, in microseconds since the epoch.
_LAST_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


def parse_duration(text: str, *, field_path: str = "spec.schedule.every") -> timedelta:
    """A Go-like compound duration: ``"500ms"``, ``"30s"``, ``"1m30s"``, ``"2h"``.

    Whole numbers with units ``ms``, ``s``, ``m``, ``h`` only; no sign, no
    fractions, no spaces. Raises :class:`InvalidSchedule` naming ``field_path``.
    """
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise InvalidSchedule(
            field_path,
            text,
            'must be a duration such as "30s", "1m30s" or "500ms" (units ms s m h)',
        )
    total_ms = sum(int(number) * _UNIT_MS[unit] for number, unit in _DURATION_PART.findall(text))
    if total_ms > _MAX_DURATION_MS:
        raise InvalidSchedule(field_path, text, "is too long (at most about 292 years)")
    return timedelta(milliseconds=total_ms)


def _format_duration(duration: timedelta) -> str:
    """The canonical spelling of a whole-millisecond duration: ``1h30m``, ``1s500ms``."""
    remaining_ms = duration // timedelta(milliseconds=1)
    parts = []
    for unit in ("h", "m", "s", "ms"):
        count, remaining_ms = divmod(remaining_ms, _UNIT_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got naive {now!r}")


def _parse_at(field_path: str, at: object) -> tuple[int, int]:
    match = _AT.fullmatch(at) if isinstance(at, str) else None
    if match is None:
        raise InvalidSchedule(field_path, at, 'must be a time "HH:MM" from 00:00 to 23:59')
    return int(match[1]), int(match[2])


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass, but `minute: true` is a mistake, not minute 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule(abc.ABC):
    """A validated schedule: construct one and it is valid, or construction raises.

    Raises :class:`InvalidSchedule` naming the offending field (such as
    ``spec.schedule.daily.at``) or :class:`UnknownTimeZone`.
    """

    schedule_type: ClassVar[str]
    # The key of spec.schedule this kind comes from, for the field paths in errors.
    spec_key: ClassVar[str]

    time_zone: str = "UTC"
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tz = time_zone(self.time_zone)
        object.__setattr__(self, "_tz", tz)
        # Names match in any case; report the canonical spelling.
        object.__setattr__(self, "time_zone", tz.key)
        self._validate()

    @abc.abstractmethod
    def _validate(self) -> None:
        """Check and normalise the kind's own fields."""

    @abc.abstractmethod
    def next_after(self, now: datetime) -> datetime | None:
        """The first tick strictly after ``now``, as an aware UTC datetime.

        ``None`` when there is no further run: the next tick would fall after
        9999-12-31T23:59:59.999999Z, or the schedule matches no date at all.
        ``now`` may be in any time zone; a naive ``now`` raises ``ValueError``.
        """

    def next_timestamp_after(self, now: float) -> float | None:
        """:meth:`next_after` in seconds since the epoch, as the engine keeps due times."""
        following = self.next_after(datetime.fromtimestamp(now, UTC))
        return None if following is None else following.timestamp()

    @abc.abstractmethod
    def last_at_or_before(self, now: datetime) -> datetime | None:
        """The most recent tick at or before ``now`` (for catch-up after downtime).

        ``None`` when there is none: it would fall before 0001-01-01T00:00Z, or
        the schedule matches no date at all.
        """

    @property
    @abc.abstractmethod
    def human_readable(self) -> str:
        """The schedule in words, such as ``every day at 02:30 (Europe/Berlin)``."""

    @property
    @abc.abstractmethod
    def cron_expression(self) -> str | None:
        """An equivalent 5-field cron expression read in ``time_zone``, where one exists."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Every(Schedule):
    """A fixed rate: ticks at every multiple of ``interval`` since the Unix epoch.

    ``interval`` is whole milliseconds and at least one second. The ticks do not
    depend on ``time_zone``; it is kept only because the job declared it.

    ``cron_expression`` is given only where the cron form ticks at exactly the
    same instants: a whole number of minutes dividing an hour (``*/N * * * *``,
    ``* * * * *`` for 1m) or of hours dividing a day (``0 */N * * *``), in a zone
    with one fixed UTC offset that is a multiple of the interval (UTC, for
    instance). In a zone with DST, cron would run the repeated hour at fall-back
    only once (the rule for ambiguous wall times), so no cron form is given.
    """

    schedule_type: ClassVar[str] = "fixed-rate"
    spec_key: ClassVar[str] = "every"

    interval: timedelta
    _step_us: int = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        field_path = f"spec.schedule.{self.spec_key}"
        if not isinstance(self.interval, timedelta):
            raise InvalidSchedule(field_path, self.interval, "must be a duration")
        if self.interval % timedelta(milliseconds=1):
            raise InvalidSchedule(field_path, self.interval, "must be whole milliseconds")
        if self.interval < _SECOND:
            raise InvalidSchedule(
                field_path, _format_duration(self.interval), "must be at least 1s"
            )
        if self.interval > timedelta(milliseconds=_MAX_DURATION_MS):
            raise InvalidSchedule(
                field_path, _format_duration(self.interval), "is too long (at most about 292 years)"
            )
        object.__setattr__(self, "_step_us", self.interval // _MICROSECOND)

    def next_after(self, now: datetime) -> datetime | None:
        _require_aware(now)
        step = self._step_us
        # Integer microseconds throughout: floats would drift and could put a
        # tick one step late when `now` sits a microsecond before it.
        elapsed = (now - _EPOCH) // _MICROSECOND
        try:
            return _EPOCH + timedelta(microseconds=(elapsed // step + 1) * step)
        except OverflowError:  # past 9999-12-31
            return None

    def next_timestamp_after(self, now: float) -> float | None:
        # The engine arms every tick with this. The same answer as next_after's, in integer
        # microseconds without a datetime (three fewer objects a tick): fromtimestamp rounds
        # the fraction to microseconds half to even, as round() does, and timestamp() divides
        # whole microseconds by 10**6.
        fraction, whole = math.modf(now)
        elapsed = int(whole) * 1_000_000 + round(fraction * 1e6)
        step = self._step_us
        tick = (elapsed // step + 1) * step
        return None if tick > _LAST_US else tick / 1_000_000

    def last_at_or_before(self, now: datetime) -> datetime | None:
        _require_aware(now)
        step = self._step_us
        elapsed = (now - _EPOCH) // _MICROSECOND
        try:
            return _EPOCH + timedelta(microseconds=(elapsed // step) * step)
        except OverflowError:
            return None

    @property
    def human_readable(self) -> str:
        return f"every {_format_duration(self.interval)}"

    @property
    def cron_expression(self) -> str | None:
        # A tzinfo answers utcoffset(None) only if its offset never changes.
        offset = self._tz.utcoffset(None)
        if offset is None or offset % self.interval:
            return None
        if self.interval % _MINUTE or _DAY % self.interval:
            return None
        if self.interval < _HOUR:
            minutes = self.interval // _MINUTE
            return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
        if self.interval % _HOUR:
            return None
        hours = self.interval // _HOUR
        return {1: "0 * * * *", 24: "0 0 * * *"}.get(hours, f"0 */{hours} * * *")


@dataclass(frozen=True, slots=True, kw_only=True)
class _WallClock(Schedule):
    """A schedule whose ticks are wall times in ``time_zone``."""

    @abc.abstractmethod
    def _wall_after(self, wall: datetime) -> datetime | None:
        """The first wall tick strictly after the naive local ``wall``; None if none ever is."""

    @abc.abstractmethod
    def _wall_at_or_before(self, wall: datetime) -> datetime | None:
        """The last wall tick at or before the naive local ``wall``; None if none ever is."""

    def _bracket(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """The first tick after ``now``, and the last one at or before it if seen on the way.

        Ticks at or before now's own wall time all run at or before ``now``
        (the mapping to instants never goes backwards), so the search starts
        there. Ticks after it can still run at or before ``now`` when ``now``
        is in the repeated hour after a fall-back: those are skipped, and the
        last of them is the most recent tick.
        """
        wall: datetime | None = now.astimezone(self._tz).replace(tzinfo=None)
        latest = None
        while wall is not None:
            wall = self._wall_after(wall)
            if wall is None:
                break
            moment = instant(self._tz, wall)
            if moment > now:
                return moment, latest
            latest = moment
        return None, latest

    def _last(self, now: datetime) -> datetime | None:
        latest = self._bracket(now)[1]
        if latest is not None:
            return latest
        wall = self._wall_at_or_before(now.astimezone(self._tz).replace(tzinfo=None))
        return None if wall is None else instant(self._tz, wall)

    def _in_range(
        self, now: datetime, answer: Callable[[datetime], datetime | None]
    ) -> datetime | None:
        """``answer(now)``, also where wall time runs past year 9999 or before year 1.

        datetime cannot hold such wall times (it raises ``OverflowError`` or
        ``ValueError``), so the question is asked 400 years nearer the middle
        and the answer moved back. That is exact: the calendar and its weekdays
        repeat every 400 years, and so does the zone there, which follows its
        POSIX rule at the end (the tz database lists transitions only up to
        2037) and its first offset at the start (local mean time).
        """
        try:
            return answer(now)
        except (OverflowError, ValueError):
            shift = -_ERA if now.year > 5000 else _ERA
            shifted = answer(now + shift)
            try:
                return None if shifted is None else shifted - shift
            except OverflowError:  # that tick is outside datetime's range
                return None

    def next_after(self, now: datetime) -> datetime | None:
        _require_aware(now)
        return self._in_range(now, lambda moment: self._bracket(moment)[0])

    def last_at_or_before(self, now: datetime) -> datetime | None:
        _require_aware(now)
        return self._in_range(now, self._last)


def _check_minute(field_path: str, minute: object) -> None:
    if not (_is_int(minute) and 0 <= minute <= 59):
        raise InvalidSchedule(field_path, minute, "must be a whole number from 0 to 59")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hourly(_WallClock):
    """Every hour at ``minute`` past the hour, in ``time_zone``."""

    schedule_type: ClassVar[str] = "hourly"
    spec_key: ClassVar[str] = "hourly"

    minute: int

    def _validate(self) -> None:
        _check_minute(f"spec.schedule.{self.spec_key}.minute", self.minute)

    def _wall_after(self, wall: datetime) -> datetime:
        tick = wall.replace(minute=self.minute, second=0, microsecond=0)
        return tick if tick > wall else tick + _HOUR

    def _wall_at_or_before(self, wall: datetime) -> datetime:
        tick = wall.replace(minute=self.minute, second=0, microsecond=0)
        return tick if tick <= wall else tick - _HOUR

    @property
    def human_readable(self) -> str:
        return f"every hour at minute {self.minute} ({self.time_zone})"

    @property
    def cron_expression(self) -> str | None:
        return f"{self.minute} * * * *"


@dataclass(frozen=True, slots=True, kw_only=True)
class Daily(_WallClock):
    """Every day at ``at`` (``"HH:MM"``), in ``time_zone``."""

    schedule_type: ClassVar[str] = "daily"
    spec_key: ClassVar[str] = "daily"

    at: str
    _time: time = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        hour, minute = _parse_at(f"spec.schedule.{self.spec_key}.at", self.at)
        object.__setattr__(self, "_time", time(hour, minute))

    def _wall_after(self, wall: datetime) -> datetime:
        tick = datetime.combine(wall.date(), self._time)
        return tick if tick > wall else tick + _DAY

    def _wall_at_or_before(self, wall: datetime) -> datetime:
        tick = datetime.combine(wall.date(), self._time)
        return tick if tick <= wall else tick - _DAY

    @property
    def human_readable(self) -> str:
        return f"every day at {self.at} ({self.time_zone})"

    @property
    def cron_expression(self) -> str | None:
        return f"{self._time.minute} {self._time.hour} * * *"


@dataclass(frozen=True, slots=True, kw_only=True)
class Weekly(_WallClock):
    """Every week on ``day`` (an English day name, any case) at ``at``, in ``time_zone``."""

    schedule_type: ClassVar[str] = "weekly"
    spec_key: ClassVar[str] = "weekly"

    day: str
    at: str
    _weekday: int = field(init=False, repr=False, compare=False)
    _time: time = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        name = self.day.capitalize() if isinstance(self.day, str) else None
        if name not in _DAY_NAMES:
            raise InvalidSchedule(
                f"spec.schedule.{self.spec_key}.day",
                self.day,
                "must be a day name, Monday to Sunday",
            )
        hour, minute = _parse_at(f"spec.schedule.{self.spec_key}.at", self.at)
        object.__setattr__(self, "day", name)
        object.__setattr__(self, "_weekday", _DAY_NAMES.index(name))
        object.__setattr__(self, "_time", time(hour, minute))

    def _wall_after(self, wall: datetime) -> datetime:
        days_ahead = (self._weekday - wall.weekday()) % 7
        tick = datetime.combine(wall.date() + timedelta(days=days_ahead), self._time)
        return tick if tick > wall else tick + _WEEK

    def _wall_at_or_before(self, wall: datetime) -> datetime:
        days_back = (wall.weekday() - self._weekday) % 7
        tick = datetime.combine(wall.date() - timedelta(days=days_back), self._time)
        return tick if tick <= wall else tick - _WEEK

    @property
    def human_readable(self) -> str:
        return f"every {self.day} at {self.at} ({self.time_zone})"

    @property
    def cron_expression(self) -> str | None:
        # cron counts days of the week from Sunday = 0.
        cron_day = (self._weekday + 1) % 7
        return f"{self._time.minute} {self._time.hour} * * {cron_day}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Monthly(_WallClock):
    """Every month on ``day`` (1 to 31, or -1 for the last day) at ``at``, in ``time_zone``.

    A month without that day (day 31 in April, day 29 in February of a common
    year) has no tick.
    """

    schedule_type: ClassVar[str] = "monthly"
    spec_key: ClassVar[str] = "monthly"

    day: int
    at: str
    _time: time = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        if not (_is_int(self.day) and (1 <= self.day <= 31 or self.day == -1)):
            raise InvalidSchedule(
                f"spec.schedule.{self.spec_key}.day",
                self.day,
                "must be a day of the month from 1 to 31, or -1 for the last day",
            )
        hour, minute = _parse_at(f"spec.schedule.{self.spec_key}.at", self.at)
        object.__setattr__(self, "_time", time(hour, minute))

    def _tick_in(self, year: int, month: int) -> datetime | None:
        length = calendar.monthrange(year, month)[1]
        day = length if self.day == -1 else self.day
        if day > length:
            return None
        return datetime.combine(date(year, month, day), self._time)

    def _wall_after(self, wall: datetime) -> datetime:
        year, month = wall.year, wall.month
        while True:
            tick = self._tick_in(year, month)
            if tick is not None and tick > wall:
                return tick
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)

    def _wall_at_or_before(self, wall: datetime) -> datetime:
        year, month = wall.year, wall.month
        while True:
            tick = self._tick_in(year, month)
            if tick is not None and tick <= wall:
                return tick
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)

    @property
    def human_readable(self) -> str:
        which = "the last day" if self.day == -1 else f"day {self.day}"
        return f"on {which} of every month at {self.at} ({self.time_zone})"

    @property
    def cron_expression(self) -> str | None:
        # Kubernetes CronJob's cron has no way to say "the last day of the month".
        if self.day == -1:
            return None
        return f"{self._time.minute} {self._time.hour} {self.day} * *"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cron(_WallClock):
    """A cron ``expression`` as Kubernetes CronJob reads it, in ``time_zone``.

    The dialect is :mod:`podcron.schedules.cron`'s: 5 fields or a macro such
    as ``@daily``. Whitespace between fields is normalised. An expression that
    matches no date (``0 0 30 2 *``) is valid and never fires, as in CronJob.
    """

    schedule_type: ClassVar[str] = "cron"
    spec_key: ClassVar[str] = "cron"

    expression: str
    _spec: cron.CronSpec = field(init=False, repr=False, compare=False)

    def _validate(self) -> None:
        field_path = f"spec.schedule.{self.spec_key}"
        if not isinstance(self.expression, str):
            raise InvalidSchedule(field_path, self.expression, "must be a string")
        try:
            spec = cron.parse(self.expression)
        except cron.CronError as error:
            raise InvalidSchedule(field_path, self.expression, str(error)) from None
        object.__setattr__(self, "expression", spec.text)
        object.__setattr__(self, "_spec", spec)

    def _wall_after(self, wall: datetime) -> datetime | None:
        return self._spec.next_wall(wall)

    def _wall_at_or_before(self, wall: datetime) -> datetime | None:
        return self._spec.last_wall(wall)

    @property
    def human_readable(self) -> str:
        never = ", which matches no date" if self._spec.matches_no_date else ""
        return f"cron {self.expression} ({self.time_zone}){never}"

    @property
    def cron_expression(self) -> str | None:
        return self._spec.five_fields


def _fields(kind: str, value: object, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of a mapping-valued kind, each present and none unknown."""
    if not isinstance(value, Mapping):
        raise InvalidSchedule(
            f"spec.schedule.{kind}", value, f"must be an object with {', '.join(names)}"
        )
    for key in value:
        if key not in names:
            raise InvalidSchedule(f"spec.schedule.{kind}.{key}", value[key], "unknown field")
    for name in names:
        if name not in value:
            raise InvalidSchedule(f"spec.schedule.{kind}.{name}", None, "is required")
    return dict(value)


def _parse_every(value: Any, time_zone: str) -> Schedule:
    return Every(interval=parse_duration(value), time_zone=time_zone)


def _parse_hourly(value: Any, time_zone: str) -> Schedule:
    return Hourly(**_fields("hourly", value, ("minute",)), time_zone=time_zone)


def _parse_daily(value: Any, time_zone: str) -> Schedule:
    return Daily(**_fields("daily", value, ("at",)), time_zone=time_zone)


def _parse_weekly(value: Any, time_zone: str) -> Schedule:
    return Weekly(**_fields("weekly", value, ("day", "at")), time_zone=time_zone)


def _parse_monthly(value: Any, time_zone: str) -> Schedule:
    return Monthly(**_fields("monthly", value, ("day", "at")), time_zone=time_zone)


def _parse_cron(value: Any, time_zone: str) -> Schedule:
    return Cron(expression=value, time_zone=time_zone)


_PARSERS: dict[str, Callable[[Any, str], Schedule]] = {
    "every": _parse_every,
    "hourly": _parse_hourly,
    "daily": _parse_daily,
    "weekly": _parse_weekly,
    "monthly": _parse_monthly,
    "cron": _parse_cron,
}


def parse_schedule(schedule: Mapping[str, Any], *, time_zone: str | None = "UTC") -> Schedule:
    """The :class:`Schedule` for a ScheduledJob's ``spec.schedule`` and ``spec.timeZone``.

    ``schedule`` must set exactly one of every, hourly, daily, weekly, monthly,
    cron; ``time_zone`` ``None`` means UTC. Raises :class:`InvalidSchedule`
    naming the field at fault, or :class:`UnknownTimeZone`.
    """
    if not isinstance(schedule, Mapping):
        raise InvalidSchedule(
            "spec.schedule", schedule, f"must be an object with one of {_KINDS_TEXT}"
        )
    for kind in schedule:
        if kind not in _PARSERS:
            raise InvalidSchedule(
                f"spec.schedule.{kind}",
                schedule[kind],
                f"unknown schedule kind; use one of {_KINDS_TEXT}",
            )
    if len(schedule) != 1:
        raise InvalidSchedule(
            "spec.schedule", dict(schedule), f"must set exactly one of {_KINDS_TEXT}"
        )
    ((kind, value),) = schedule.items()
    return _PARSERS[kind](value, "UTC" if time_zone is None else time_zone)
