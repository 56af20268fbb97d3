"""One run record, four shapes: status as written, the CRD's status schema, JobMetadata, OpenAPI.

The key sets must agree, and a field shows the same value under both of its names. So must
a recent failure's (status and the CRD) and a past run's (the System API's ``/runs`` and OpenAPI).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from podcron.controller import jobspecs
from podcron.controller.conditions import JobConditions
from podcron.controller.handlers import LAST_RUN_NOW
from podcron.controller.jobmetadata import job_metadata
from podcron.engine import FailedRun, History, JobSnapshot, JobSpec, PastRun, RunCounts, RunStatus
from podcron.runrecord import (
    ERROR_SUMMARY_LIMIT,
    FAILURE_FIELDS,
    PAST_RUN_FIELDS,
    RUN_FIELDS,
    RunRecord,
    error_summary,
    history_from_status,
    past_run,
    run_status,
)
from podcron.schedules import parse_schedule

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "scheduledjobs.podcron.dev.yaml"
OPENAPI = ROOT / "operator" / "podcron" / "sidecar" / "openapi.yaml"
# Written by the handlers themselves: the generation seen, (several replicas) the owner, and
# the run-now annotation's value last acted on.
HANDLER_KEYS = {"observedGeneration", "replica", LAST_RUN_NOW}

RAN = History(
    last_run_time=datetime(2026, 11, 27, 1, 30, 0, 123000, tzinfo=UTC),
    last_status=RunStatus.FAILURE,
    last_duration_seconds=0.421,
    last_error="ValueError: boom",
    counts=RunCounts(total=10, succeeded=9, failed=1, skipped=2),
    recent_failures=(
        FailedRun(
            time=datetime(2026, 11, 27, 1, 30, 0, 123000, tzinfo=UTC),
            trigger="scheduled",
            error="ValueError: boom",
            trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        ),
        FailedRun(time=datetime(2026, 11, 26, 1, 30, tzinfo=UTC), trigger="manual", error=None),
    ),
)
RECORDS = {
    "never ran": RunRecord(History(), None, False),
    "ran": RunRecord(RAN, datetime(2026, 11, 28, 1, 30, tzinfo=UTC), True),
}


def _snapshot(record: RunRecord) -> JobSnapshot:
    spec = JobSpec(
        job_id="shop/nightly",
        namespace="shop",
        name="nightly",
        entry_point="cleanup",
        target=lambda ctx: None,
        schedule=parse_schedule({"daily": {"at": "02:30"}}),
    )
    return JobSnapshot(
        spec=spec,
        running=record.running,
        next_run_time=record.next_run_time,
        history=record.history,
    )


def _keys(document: dict[str, Any], prefix: str = "") -> set[str]:
    """Every path in ``document``: ``runs`` and ``runs.total`` alike."""
    keys: set[str] = set()
    for key, value in document.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, prefix + key + ".")
    return keys


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in (schema.get("properties") or {}).items():
        keys.add(prefix + key)
        keys |= _schema_keys(value, prefix + key + ".")
    return keys


def _crd_status_schema() -> dict[str, Any]:
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    status: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return status


def _openapi_job_metadata() -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"][
        "JobMetadata"
    ]
    return schema


@pytest.mark.parametrize("record", RECORDS.values(), ids=RECORDS.keys())
def test_status_as_written_has_exactly_the_crds_status_fields(record: RunRecord) -> None:
    snapshot = _snapshot(record)
    written = (
        run_status(record)
        | jobspecs.schedule_status(snapshot.spec.schedule)
        | JobConditions().status(snapshot.spec.job_id)
        | dict.fromkeys(HANDLER_KEYS)
    )
    assert _keys(written) == _schema_keys(_crd_status_schema())


@pytest.mark.parametrize("record", RECORDS.values(), ids=RECORDS.keys())
def test_job_metadata_has_exactly_the_openapi_fields_in_their_order(record: RunRecord) -> None:
    schema = _openapi_job_metadata()
    metadata = job_metadata(_snapshot(record))
    assert list(metadata) == schema["required"]
    assert set(metadata) == set(schema["properties"])


@pytest.mark.parametrize("record", RECORDS.values(), ids=RECORDS.keys())
def test_a_run_field_reads_the_same_in_status_and_in_the_system_api(record: RunRecord) -> None:
    status = run_status(record)
    metadata = job_metadata(_snapshot(record))
    for field in RUN_FIELDS:
        value: Any = status
        for part in field.status_key.split("."):
            value = value[part]
        if field.api_key is not None:
            assert metadata[field.api_key] == value, field


@pytest.mark.parametrize("record", RECORDS.values(), ids=RECORDS.keys())
def test_history_survives_a_round_trip_through_status(record: RunRecord) -> None:
    assert history_from_status(run_status(record)) == record.history


def _failure_items_schema() -> dict[str, Any]:
    items: dict[str, Any] = _crd_status_schema()["properties"]["recentFailures"]["items"]
    return items


def test_a_recent_failure_has_exactly_the_crds_item_fields() -> None:
    written = run_status(RECORDS["ran"])["recentFailures"]
    schema = _failure_items_schema()
    assert len(written) == len(RAN.recent_failures)
    for item in written:
        assert set(item) == set(schema["properties"]) == {f.status_key for f in FAILURE_FIELDS}
        assert set(schema["required"]) <= {key for key, value in item.items() if value is not None}


def test_recent_failures_are_bounded_by_the_crd_as_by_the_engine() -> None:
    from podcron.runrecord import RECENT_FAILURES

    recent = _crd_status_schema()["properties"]["recentFailures"]
    assert recent["maxItems"] == RECENT_FAILURES
    assert recent["items"]["properties"]["error"]["maxLength"] == ERROR_SUMMARY_LIMIT


def test_recent_failures_that_are_not_ones_are_skipped_when_restored() -> None:
    status = run_status(RECORDS["ran"])
    status["recentFailures"] = [
        "not an object",
        {"time": "yesterday", "trigger": "manual"},
        {"time": "2026-11-27T01:30:00.000Z", "trigger": "manual", "traceId": "zz"},
    ]
    (failure,) = history_from_status(status).recent_failures
    assert failure == FailedRun(
        time=datetime(2026, 11, 27, 1, 30, tzinfo=UTC), trigger="manual", error=None
    )


PAST_RUNS = {
    "success": PastRun(
        "manual",
        datetime(2026, 11, 27, 1, 30, tzinfo=UTC),
        1.8e9,
        1.8e9 + 0.25,
        RunStatus.SUCCESS,
        None,
        0,
    ),
    "failure": PastRun(
        "scheduled",
        datetime(2026, 11, 27, 1, 30, tzinfo=UTC),
        1.8e9,
        1.8e9 + 2,
        RunStatus.FAILURE,
        "ValueError: boom",
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
    ),
    "skipped": PastRun(
        "scheduled",
        datetime(2026, 11, 27, 1, 30, tzinfo=UTC),
        None,
        1.8e9,
        RunStatus.SKIPPED,
        "concurrencyPolicy Forbid",
        0,
    ),
}


def _openapi_past_run() -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]["PastRun"]
    return schema


@pytest.mark.parametrize("run", PAST_RUNS.values(), ids=PAST_RUNS.keys())
def test_a_past_run_has_exactly_the_openapi_fields_in_their_order(run: PastRun) -> None:
    schema = _openapi_past_run()
    shown = past_run(run)
    assert list(shown) == schema["required"] == [field.api_key for field in PAST_RUN_FIELDS]
    assert set(shown) == set(schema["properties"])


def test_a_past_run_shows_its_times_duration_and_trace() -> None:
    shown = past_run(PAST_RUNS["failure"])
    assert shown == {
        "trigger": "scheduled",
        "status": "failure",
        "scheduledTime": "2026-11-27T01:30:00.000Z",
        "startTime": "2027-01-15T08:00:00.000Z",
        "endTime": "2027-01-15T08:00:02.000Z",
        "durationSeconds": 2.0,
        "error": "ValueError: boom",
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    skipped = past_run(PAST_RUNS["skipped"])
    assert (skipped["startTime"], skipped["durationSeconds"]) == (None, None)


def test_an_error_summary_is_cut_and_says_so() -> None:
    assert error_summary("short") == "short"
    cut = error_summary("x" * 1000)
    assert len(cut) == ERROR_SUMMARY_LIMIT
    assert cut.endswith("\u2026")
