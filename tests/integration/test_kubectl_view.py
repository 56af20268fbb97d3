"""What ``kubectl get sj``, ``kubectl wait`` and conditions show, read from a real API server.

One operator serves the module, watching only its namespace and allowing the test jobs of
``tests/jobs`` (on its ``PYTHONPATH``); the restart test starts two of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from podcron.runrecord import error_summary

from ..waiting import wait_for
from .conftest import ROOT, TEARDOWN_STOP_SECONDS, OperatorProcess
from .scheduledjobs import (
    apply,
    manifest,
    namespace_for_module,
    ready,
    started_operator,
    status,
    table,
    wait_ready,
)

TEST_JOBS = ROOT / "tests" / "jobs"
ALWAYS_FAILS = {
    "entryPoint": "cleanup",
    "schedule": {"every": "1s"},
    "args": {"retentionDays": "x"},
}


def operator_env(namespace: str) -> dict[str, str]:
    """An operator for ``namespace`` alone that may run the test jobs."""
    return {
        "PODCRON_NAMESPACES": namespace,
        "PODCRON_ALLOWED_MODULES": "podcron_testjobs.allowed",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TEST_JOBS), os.environ.get("PYTHONPATH")])),
    }


@dataclass(frozen=True)
class View:
    plane: ControlPlane
    namespace: str
    operator: OperatorProcess

    def row(self, name: str, *, wide: bool = False) -> dict[str, str]:
        (found,) = table(self.plane, self.namespace, name, wide=wide)
        return found

    def status(self, name: str) -> dict[str, Any]:
        return status(self.plane, self.namespace, name)


@pytest.fixture(scope="module")
def view(crd: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[View]:
    with namespace_for_module(crd, "view") as namespace:
        operator = started_operator(
            crd, tmp_path_factory.mktemp("operator"), **operator_env(namespace)
        )
        try:
            yield View(crd, namespace, operator)
        finally:
            operator.stop(timeout=TEARDOWN_STOP_SECONDS)


def condition(found: dict[str, Any], kind: str) -> dict[str, Any]:
    """Condition ``kind`` in a status, {} when absent."""
    for each in found.get("conditions") or ():
        if each.get("type") == kind:
            result: dict[str, Any] = each
            return result
    return {}


def test_an_invalid_job_shows_why_in_the_default_columns(view: View) -> None:
    apply(
        view.plane,
        view.namespace,
        manifest("unknown-entry", {"entryPoint": "no-such-job", "schedule": {"every": "1s"}}),
        manifest("shell", {"entryPoint": "os:system", "schedule": {"every": "1s"}}),
    )
    for name, reason in (
        ("unknown-entry", "EntryPointNotFound"),
        ("shell", "EntryPointNotAllowed"),
    ):
        found = wait_ready(view.plane, view.namespace, name, reason=reason)
        row = view.row(name)
        assert (row["READY"], row["REASON"], row["SCHEDULE"]) == ("False", reason, "")
        wide = view.row(name, wide=True)
        assert wide["MESSAGE"] == ready(found)["message"]
        assert wide["MESSAGE"].startswith("spec.entryPoint: ")


def test_a_failing_job_shows_its_streak_and_last_run_condition(view: View) -> None:
    plane, namespace = view.plane, view.namespace
    apply(plane, namespace, manifest("always-fails", ALWAYS_FAILS))
    # What a user (or a script) waits on.
    plane.kubectl(
        "wait", "sj/always-fails", "-n", namespace,
        "--for=condition=LastRunSucceeded=False", "--timeout=30s",
    )  # fmt: skip
    wait_for(
        lambda: view.status("always-fails").get("consecutiveFailures", 0) >= 3,
        timeout=20,
        what="three failed runs in a row",
    )
    row = view.row("always-fails")
    assert (row["LAST STATUS"], row["READY"], row["REASON"]) == ("failure", "True", "Scheduled")
    assert int(row["FAILURES"]) >= 3
    found = view.status("always-fails")
    # Never succeeded: every failed run is one of the streak.
    assert found["consecutiveFailures"] == found["runs"]["failed"]
    last = condition(found, "LastRunSucceeded")
    assert (last["status"], last["reason"]) == ("False", "RunFailed")
    assert last["message"] == found["lastError"]
    assert ready(found)["status"] == "True", "a failing run does not make the spec unready"
    # Why it failed, without logs: the last three failures, newest first.
    failures = found["recentFailures"]
    assert len(failures) == 3
    times = [failure["time"] for failure in failures]
    assert times == sorted(times, reverse=True)
    assert times[0] == found["lastRunTime"]
    for failure in failures:
        assert failure["trigger"] == "scheduled"
        assert failure["error"] == error_summary(found["lastError"])
    described = plane.kubectl("describe", "sj", "always-fails", "-n", namespace).stdout
    assert "Recent Failures:" in described
    assert failures[0]["error"] in described


def test_a_recovered_job_shows_no_streak(view: View) -> None:
    plane, namespace = view.plane, view.namespace
    recovers = {
        "entryPoint": "podcron_testjobs.allowed:fails_then_succeeds",
        "schedule": {"every": "1s"},
        "args": {"failures": 2},
    }
    apply(plane, namespace, manifest("recovers", recovers))

    def recovered() -> dict[str, Any] | None:
        found = view.status("recovers")
        succeeded = found.get("runs", {}).get("succeeded", 0) >= 1
        return found if succeeded and found["runs"]["failed"] == 2 else None

    found = wait_for(recovered, timeout=20, what="two failures, then a success")
    assert found["consecutiveFailures"] == 0
    last = condition(found, "LastRunSucceeded")
    assert (last["status"], last["reason"]) == ("True", "RunSucceeded")
    row = view.row("recovers")
    assert (row["LAST STATUS"], row["FAILURES"]) == ("success", "0")


def test_a_skipped_tick_does_not_hide_the_last_runs_status(view: View) -> None:
    plane, namespace = view.plane, view.namespace
    # Succeeds once, then runs until deleted: every later tick is skipped (Forbid).
    hangs = {
        "entryPoint": "podcron_testjobs.allowed:succeeds_then_hangs",
        "schedule": {"every": "1s"},
    }
    apply(plane, namespace, manifest("hangs", hangs))

    def skipping() -> dict[str, Any] | None:
        found = view.status("hangs")
        runs = found.get("runs", {})
        return found if runs.get("skipped", 0) >= 2 and found.get("running") else None

    found = wait_for(skipping, timeout=20, what="two skipped ticks while the second run lasts")
    assert found["runs"]["succeeded"] == 1
    assert found["lastRunStatus"] == "success"
    row = view.row("hangs")
    assert (row["LAST STATUS"], row["FAILURES"]) == ("success", "0")
    last = condition(found, "LastRunSucceeded")
    assert last["status"] == "True"
    plane.kubectl("delete", "sj", "hangs", "-n", namespace)


def test_the_streak_and_conditions_survive_an_operator_restart(
    crd: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    first = started_operator(crd, tmp_path / "first", **operator_env(namespace))
    apply(crd, namespace, manifest("always-fails", ALWAYS_FAILS))
    try:
        wait_for(
            lambda: status(crd, namespace, "always-fails").get("consecutiveFailures", 0) >= 2,
            timeout=20,
            what="two failed runs in a row",
        )
    finally:
        assert first.stop() == 0
    before = status(crd, namespace, "always-fails")

    second = started_operator(crd, tmp_path / "second", **operator_env(namespace))
    try:
        after = wait_for(
            lambda: (
                found
                if (found := status(crd, namespace, "always-fails"))["runs"]["failed"]
                > before["runs"]["failed"]
                else None
            ),
            timeout=20,
            what="a failed run under the second operator",
        )
    finally:
        second.stop()
    # The streak went on from where it was; it did not start again at 1.
    assert after["consecutiveFailures"] == after["runs"]["failed"]
    # So did the recent failures: the new ones first, then those the first operator wrote.
    new = after["runs"]["failed"] - before["runs"]["failed"]
    if new < 3:
        assert after["recentFailures"][new:] == before["recentFailures"][: 3 - new]
    for kind in ("Ready", "LastRunSucceeded"):
        assert (
            condition(after, kind)["lastTransitionTime"]
            == condition(before, kind)["lastTransitionTime"]
        ), kind
