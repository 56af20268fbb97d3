"""One run record, four shapes: status as written, the CRD's status schema, JobMetadata, OpenAPI.

The key sets must agree, and a field shows the same value under both of its names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from podcron.controller import jobspecs
from podcron.controller.conditions import JobConditions
from podcron.controller.jobmetadata import job_metadata
from podcron.engine import History, JobSnapshot, JobSpec, RunCounts, RunStatus
from podcron.runrecord import RUN_FIELDS, RunRecord, history_from_status, run_status
from podcron.schedules import parse_schedule

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "scheduledjobs.podcron.dev.yaml"
OPENAPI = ROOT / "operator" / "podcron" / "sidecar" / "openapi.yaml"
# Written by the handlers beside the run record: the generation they reconciled.
# Written by the handlers themselves: the generation seen, and (several replicas) the owner.
HANDLER_KEYS = {"observedGeneration", "replica"}

RAN = History(
    last_run_time=datetime(2026, 11, 27, 1, 30, 0, 123000, tzinfo=UTC),
    last_status=RunStatus.FAILURE,
    last_duration_seconds=0.421,
    last_error="ValueError: boom",
    counts=RunCounts(total=10, succeeded=9, failed=1, skipped=2),
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
