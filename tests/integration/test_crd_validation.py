"""The CRD on its own, against the real API server: what it refuses, accepts, prints and stores.

No operator runs in this module: every answer comes from the API server
(OpenAPI schema, CEL rules, strict field validation).

The corpus in ``invalid/`` holds one manifest per file; each starts with
comment lines saying what is wrong (``# Wrong:``), which field the error must
name (``# Field:``) and a fragment of the message (``# Message:``).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane

from .conftest import ROOT, get_job
from .scheduledjobs import apply, manifest, namespace_for_module

CORPUS = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))
HEADER = re.compile(r"^# (Wrong|Field|Message): (.+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def namespace(crd: ControlPlane) -> Iterator[str]:
    with namespace_for_module(crd, "crd") as name:
        yield name


def _header(path: Path) -> dict[str, str]:
    return dict(HEADER.findall(path.read_text()))


def test_the_corpus_covers_at_least_30_invalid_manifests() -> None:
    assert len(CORPUS) >= 30
    for path in CORPUS:
        assert set(_header(path)) == {"Wrong", "Field", "Message"}, path.name


@pytest.fixture(scope="module")
def applied(crd: ControlPlane, namespace: str) -> dict[Path, subprocess.CompletedProcess[str]]:
    """``kubectl apply`` of every corpus file, a few at a time (kubectl is mostly start-up)."""

    def apply_file(path: Path) -> subprocess.CompletedProcess[str]:
        return crd.kubectl("apply", "-n", namespace, "-f", str(path), check=False)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(CORPUS, pool.map(apply_file, CORPUS), strict=True))


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_invalid_manifest_is_rejected_naming_the_field(
    applied: dict[Path, subprocess.CompletedProcess[str]], path: Path
) -> None:
    header = _header(path)
    result = applied[path]
    assert result.returncode != 0, f"accepted: {header['Wrong']}"
    # The field must be named as itself, not as a prefix of a longer path:
    # `spec.schedule: …` or `unknown field "spec.scheduel"`.
    assert re.search(rf'{re.escape(header["Field"])}(:|")', result.stderr), result.stderr
    assert header["Message"] in result.stderr, result.stderr


# Edge cases the CRD must not refuse (the operator accepts them all).
def _hello(**schedule: Any) -> dict[str, Any]:
    return {"entryPoint": "hello", "schedule": schedule}


VALID_SPECS: dict[str, dict[str, Any]] = {
    "every-1s": _hello(every="1s"),
    "every-compound": _hello(every="1m1500ms"),
    "every-longest": _hello(every="999999h999999h9h"),
    "hourly-minute-0": _hello(hourly={"minute": 0}),
    "timeout-a-week": _hello(every="1h") | {"timeoutSeconds": 604800},
    "starting-deadline-int64": _hello(every="1h") | {"startingDeadlineSeconds": 2**63 - 1},
    "daily-last-minute": _hello(daily={"at": "23:59"}),
    "weekly-any-case": _hello(weekly={"day": "sUNDAY", "at": "00:00"}),
    "monthly-last-day": _hello(monthly={"day": -1, "at": "12:00"}),
    "monthly-day-31": _hello(monthly={"day": 31, "at": "12:00"}),
    "cron-spaced": _hello(cron=" */5\t1-3  * jan-jun mon-fri "),
    "cron-macro": _hello(cron="@daily"),
    "cron-no-such-date": _hello(cron="0 0 30 2 *"),
    # Go's unicode.IsSpace, as CronJob splits fields: no-break and ideographic spaces.
    "cron-unicode-spaces": _hello(cron="0\u00a00\u3000*\v* *"),
    "module-function": {"entryPoint": "podcron_examples.hello:hello", "schedule": {"every": "5s"}},
    "everything-set": {
        "entryPoint": "cleanup",
        "schedule": {"daily": {"at": "02:30"}},
        "timeZone": "Europe/Berlin",
        "concurrencyPolicy": "Replace",
        "suspend": True,
        "timeoutSeconds": 1,
        "startingDeadlineSeconds": 0,
        "args": {"retentionDays": 7, "nested": {"list": [1, "two", None]}},
    },
}


def test_valid_edge_cases_are_accepted_with_defaults(crd: ControlPlane, namespace: str) -> None:
    apply(crd, namespace, *(manifest(name, spec) for name, spec in VALID_SPECS.items()))
    for name, spec in VALID_SPECS.items():
        stored = get_job(crd, namespace, name)["spec"]
        assert stored == {"timeZone": "UTC", "concurrencyPolicy": "Forbid", "suspend": False} | spec


def test_the_examples_are_accepted(crd: ControlPlane, namespace: str) -> None:
    result = crd.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(ROOT / "examples"))
    assert result.stdout.count("(server dry run)") == len(list((ROOT / "examples").glob("*.yaml")))


def test_short_name_category_and_printer_columns(crd: ControlPlane, namespace: str) -> None:
    apply(crd, namespace, manifest("columns", {"entryPoint": "hello", "schedule": {"every": "5s"}}))
    header = crd.kubectl("get", "sj", "-n", namespace).stdout.splitlines()[0]
    assert re.split(r"\s{2,}", header.strip()) == [
        "NAME", "SCHEDULE", "SUSPEND", "LAST STATUS", "FAILURES", "LAST RUN", "NEXT RUN",
        "READY", "REASON", "AGE",
    ]  # fmt: skip
    wide = crd.kubectl("get", "sj", "columns", "-n", namespace, "-o", "wide").stdout
    wide_columns = re.split(r"\s{2,}", wide.splitlines()[0].strip())[-3:]
    assert wide_columns == ["ENTRY POINT", "REPLICA", "MESSAGE"]
    by_category = crd.kubectl("get", "podcron", "-n", namespace, "-o", "name").stdout
    assert "scheduledjob.podcron.dev/columns" in by_category.split()


FULL_STATUS: dict[str, Any] = {
    "observedGeneration": 3,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Scheduled",
            "message": "scheduled every day at 02:30 (Europe/Berlin)",
            "lastTransitionTime": "2024-06-03T10:00:00Z",
        },
        {
            "type": "LastRunSucceeded",
            "status": "False",
            "reason": "RunFailed",
            "message": "1 run failed in a row: ValueError: boom",
            "lastTransitionTime": "2024-06-03T00:30:00Z",
        },
    ],
    "scheduleType": "daily",
    "humanReadable": "every day at 02:30 (Europe/Berlin)",
    "cronExpression": "30 2 * * *",
    "nextRunTime": "2024-06-04T00:30:00.000Z",
    "lastRunTime": "2024-06-03T00:30:00.012Z",
    "lastRunStatus": "failure",
    "running": False,
    "lastRunDurationSeconds": 0.42,
    "lastError": "ValueError: boom",
    "consecutiveFailures": 1,
    "runs": {"total": 10, "succeeded": 9, "failed": 1, "skipped": 2},
}


def _patch_status(plane: ControlPlane, namespace: str, name: str, status: Any) -> Any:
    return plane.kubectl(
        "patch", "sj", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=False,
    )  # fmt: skip


def test_status_is_a_typed_subresource(crd: ControlPlane, namespace: str) -> None:
    job = manifest("status", {"entryPoint": "hello", "schedule": {"every": "5s"}})
    apply(crd, namespace, job | {"status": {"lastError": "ignored on the main resource"}})
    assert "status" not in get_job(crd, namespace, "status")

    assert _patch_status(crd, namespace, "status", FULL_STATUS).returncode == 0
    assert get_job(crd, namespace, "status")["status"] == FULL_STATUS
    printed = crd.kubectl("get", "sj", "status", "-n", namespace, "--no-headers").stdout
    assert re.split(r"\s{2,}", printed.strip())[:5] == [
        "status", "every day at 02:30 (Europe/Berlin)", "false", "failure", "1",
    ]  # fmt: skip
    assert re.split(r"\s{2,}", printed.strip())[-3:-1] == ["True", "Scheduled"]

    refused = _patch_status(crd, namespace, "status", {"lastRunStatus": "maybe"})
    assert refused.returncode != 0
    assert "status.lastRunStatus" in refused.stderr
    # Unknown status fields are pruned, not stored.
    assert _patch_status(crd, namespace, "status", {"kopf": {"progress": {}}}).returncode == 0
    assert "kopf" not in get_job(crd, namespace, "status")["status"]
