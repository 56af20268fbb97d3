"""Time zones from the ``tzdata`` package, and the instant each wall-clock tick runs at.

Zones are read from the tz database that the ``tzdata`` Python package ships,
never from the system's ``/usr/share/zoneinfo``: every replica, image and test
machine then computes the same ticks, whatever the host has installed. Its TZif
files end with a POSIX TZ rule that ``zoneinfo`` applies after the last listed
transition, so DST is right in 2038 and after, up to year 9999.

A wall time maps to an instant by two rules:

* a wall time that does not exist that day (the clocks spring forward over it)
  runs at the first instant after the gap;
* an ambiguous wall time (the clocks fall back over it) runs once, at its first
  occurrence.

The mapping never goes backwards as wall time goes forwards.

Which release is in use: ``python -c "import tzdata; print(tzdata.IANA_VERSION)"``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from zoneinfo import ZoneInfo

from podcron.errors import UnknownTimeZone

__all__ = ["instant", "time_zone"]

_SECOND = timedelta(seconds=1)

# Every zone the package ships, keyed by its lower-case name: names are matched
# case-insensitively (as before, with pytz) and reported in canonical spelling.
# Only listed names reach the file system, so a name cannot walk out of the
# package ("../../etc/passwd").
_NAMES: dict[str, str] = {
    name.lower(): name for name in resources.files("tzdata").joinpath("zones").read_text().split()
}
_ZONES: dict[str, ZoneInfo] = {}


def time_zone(name: object) -> ZoneInfo:
    """The tzdata package's zone called ``name``, in any case; else :class:`UnknownTimeZone`."""
    canonical = _NAMES.get(name.lower()) if isinstance(name, str) else None
    if canonical is None:
        raise UnknownTimeZone(name)
    zone = _ZONES.get(canonical)
    if zone is None:
        # ZoneInfo(name) would search the system's TZPATH first; from_file pins
        # the package's copy. The dictionary keeps one instance per zone.
        path = resources.files("tzdata.zoneinfo")
        for part in canonical.split("/"):
            path = path.joinpath(part)
        with path.open("rb") as data:
            zone = ZoneInfo.from_file(data, key=canonical)
        _ZONES[canonical] = zone
    return zone


def instant(tz: ZoneInfo, wall: datetime) -> datetime:
    """The aware UTC instant the naive wall time ``wall`` in ``tz`` runs at.

    Raises ``OverflowError`` when that instant is outside datetime's range.
    """
    # A zone whose offset never changes answers utcoffset(None): no gaps, no folds.
    fixed = tz.utcoffset(None)
    if fixed is not None:
        return wall.replace(tzinfo=UTC) - fixed
    # fold=0 reads a repeated wall time as its first occurrence, and a
    # nonexistent one with the offset from before the gap (PEP 495). Asking
    # the zone directly spares a replace(tzinfo=...) on this hot path.
    if wall.fold:
        wall = wall.replace(fold=0)
    offset = tz.utcoffset(wall)
    later = tz.utcoffset(wall.replace(fold=1))
    # A ZoneInfo always has an offset.
    assert offset is not None
    assert later is not None
    if offset >= later:
        return wall.replace(tzinfo=UTC) - offset
    return _end_of_gap(tz, wall, wall - later, wall - offset)


def _end_of_gap(tz: ZoneInfo, wall: datetime, low: datetime, high: datetime) -> datetime:
    """The first instant after the gap that swallows ``wall``.

    ``low`` and ``high`` (naive UTC) read ``wall`` with the offsets after and
    before the gap: the transition lies in ``(low, high]``. Transitions fall on
    whole seconds, so a bisection over seconds finds the first instant whose
    wall time is past ``wall``.
    """
    below, above = 0, (high - low) // _SECOND
    while above - below > 1:
        middle = (below + above) // 2
        moment = (low + middle * _SECOND).replace(tzinfo=UTC)
        if moment.astimezone(tz).replace(tzinfo=None) > wall:
            above = middle
        else:
            below = middle
    return (low + above * _SECOND).replace(tzinfo=UTC)
