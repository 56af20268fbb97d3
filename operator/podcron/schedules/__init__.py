"""When a ScheduledJob's ticks fall: pure schedule maths, no I/O and no clock.

The kinds (:mod:`.kinds`), the cron dialect of Kubernetes CronJob (:mod:`.cron`)
and the time zones with their DST rules (:mod:`.zones`). docs/schedules.md
explains the rules and how they are tested.
"""

from podcron.schedules.kinds import (
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
