"""JobMetadata shaping: an engine snapshot becomes the System API's camelCase object."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from podcron.controller.jobmetadata import encode, job_metadata
from podcron.engine import ConcurrencyPolicy, History, JobSnapshot, JobSpec, RunCounts, RunStatus
from podcron.schedules import parse_schedule

FIELDS = [
    "jobId",
    "namespace",
    "name",
    "entryPoint",
    "scheduleType",
    "cronExpression",
    "humanReadable",
    "timeZone",
    "suspended",
    "replica",
    "running",
    "nextExecutionTime",
    "lastExecutionTime",
    "lastExecutionStatus",
    "lastDurationSeconds",
    "totalExecutions",
    "successCount",
    "failureCount",
    "skippedCount",
]


def _target(ctx: object) -> None:
    return None


def _snapshot(
    *,
    schedule: dict[str, object],
    time_zone: str = "UTC",
    running: bool = False,
    next_run_time: datetime | None = None,
    history: History | None = None,
    suspended: bool = False,
) -> JobSnapshot:
    spec = JobSpec(
        job_id="shop/nightly-cleanup",
        namespace="shop",
        name="nightly-cleanup",
        entry_point="cleanup",
        target=_target,
        schedule=parse_schedule(schedule, time_zone=time_zone),
        concurrency_policy=ConcurrencyPolicy.FORBID,
        suspended=suspended,
    )
    return JobSnapshot(
        spec=spec, running=running, next_run_time=next_run_time, history=history or History()
    )


def test_a_job_that_ran_has_every_field_in_design_order() -> None:
    now = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)
    history = History(
        last_run_time=now - timedelta(days=1, microseconds=-12_345),
        last_status=RunStatus.FAILURE,
        last_duration_seconds=0.4216,
        last_error="ValueError: boom",
        counts=RunCounts(total=10, succeeded=9, failed=1, skipped=2),
    )
    snapshot = _snapshot(
        schedule={"daily": {"at": "02:30"}},
        time_zone="Europe/Berlin",
        running=True,
        next_run_time=now,
        history=history,
    )

    metadata = job_metadata(snapshot)

    assert list(metadata) == FIELDS
    assert metadata == {
        "jobId": "shop/nightly-cleanup",
        "namespace": "shop",
        "name": "nightly-cleanup",
        "entryPoint": "cleanup",
        "scheduleType": "daily",
        "cronExpression": "30 2 * * *",
        "humanReadable": "every day at 02:30 (Europe/Berlin)",
        "timeZone": "Europe/Berlin",
        "suspended": False,
        "replica": None,
        "running": True,
        "nextExecutionTime": "2026-11-27T01:30:00.000Z",
        "lastExecutionTime": "2026-11-26T01:30:00.012Z",
        "lastExecutionStatus": "failure",
        "lastDurationSeconds": 0.422,
        "totalExecutions": 10,
        "successCount": 9,
        "failureCount": 1,
        "skippedCount": 2,
    }


def test_a_job_that_never_ran_has_nulls_and_zero_counts() -> None:
    metadata = job_metadata(_snapshot(schedule={"every": "30s"}, suspended=True))
    assert metadata["scheduleType"] == "fixed-rate"
    assert metadata["suspended"] is True
    assert metadata["running"] is False
    for field in ("nextExecutionTime", "lastExecutionTime", "lastExecutionStatus"):
        assert metadata[field] is None
    assert metadata["lastDurationSeconds"] is None
    assert [metadata[f] for f in FIELDS[-4:]] == [0, 0, 0, 0]


def test_times_are_utc_whatever_zone_the_snapshot_carries() -> None:
    berlin_winter = timezone(timedelta(hours=1))
    moment = datetime(2026, 1, 5, 3, 30, 0, 250_000, tzinfo=berlin_winter)
    metadata = job_metadata(_snapshot(schedule={"cron": "30 3 * * *"}, next_run_time=moment))
    assert metadata["nextExecutionTime"] == "2026-01-05T02:30:00.250Z"
    assert metadata["cronExpression"] == "30 3 * * *"


def test_encode_is_compact_json_that_round_trips() -> None:
    metadata = job_metadata(_snapshot(schedule={"hourly": {"minute": 15}}))
    data = encode(metadata)
    assert b'": ' not in data
    assert b', "' not in data
    assert json.loads(data) == metadata
