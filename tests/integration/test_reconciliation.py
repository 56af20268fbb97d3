"""Reconciliation against the real control plane: one operator serves the whole module.

The operator watches two namespaces (``watched`` and ``second``) out of three,
and allows ``module:function`` entry points from ``podcron_examples`` and from
``podcron_testjobs.allowed`` (in ``tests/jobs``, on its ``PYTHONPATH``) only.
A valid job, ``steady`` (every second), runs from the start of the module to
its end, next to everything the tests do.

Absence (no run, no status) can only be shown by watching for a while; where
a test does so it says why, and watches for about two ticks.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import ROOT, TEARDOWN_STOP_SECONDS, OperatorProcess, get_job
from .scheduledjobs import (
    annotate,
    apply,
    event_counts,
    events,
    hello_runs,
    manifest,
    namespace_for_module,
    parse_time,
    patch_spec,
    ready,
    status,
    wait_event,
    wait_ready,
)

RUN_NOW = "podcron.dev/run-now"
TEST_JOBS = ROOT / "tests" / "jobs"
EVERY_SECOND = {"entryPoint": "hello", "schedule": {"every": "1s"}}
# Once a year: a job that runs only when triggered (or at New Year).
YEARLY = {"cron": "0 0 1 1 *"}


@dataclass(frozen=True)
class Cluster:
    """The module's namespaces and operator."""

    plane: ControlPlane
    watched: str
    second: str
    unwatched: str
    operator: OperatorProcess
    canaries: Path  # where podcron_testjobs.outside leaves a file per job that called it

    def runs(self, name: str, namespace: str | None = None) -> list[tuple[str, datetime]]:
        """(trigger, due time) of every run of hello-job ``name`` so far."""
        return hello_runs(self.operator.log(), f"{namespace or self.watched}/{name}")

    def two_ticks_pass(self) -> None:
        """Wait until the operator has run ``steady`` (every second) on three more ticks.

        Absence of runs is shown by the operator's own progress, not by a sleep: a
        one-second job still armed would have been due with two of them, and its run
        logged by the time the third is.
        """
        seen = len(self.runs("steady"))
        wait_for(
            lambda: len(self.runs("steady")) >= seen + 3,
            timeout=60,
            what="three more runs of the steady job",
        )


@pytest.fixture(scope="module")
def cluster(crd: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with (
        namespace_for_module(crd, "watched") as watched,
        namespace_for_module(crd, "second") as second,
        namespace_for_module(crd, "unwatched") as unwatched,
    ):
        # Applied before the operator starts: it must pick up existing objects.
        apply(crd, unwatched, manifest("ignored", EVERY_SECOND))
        apply(crd, watched, manifest("steady", EVERY_SECOND))
        canaries = tmp_path_factory.mktemp("canaries")
        operator = OperatorProcess(
            crd,
            tmp_path_factory.mktemp("operator"),
            {
                "PODCRON_NAMESPACES": f"{watched},{second}",
                "PODCRON_ALLOWED_MODULES": "podcron_examples.*,podcron_testjobs.allowed",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(TEST_JOBS), os.environ.get("PYTHONPATH")])
                ),
                "PODCRON_TEST_CANARY_DIR": str(canaries),
            },
        )
        try:
            wait_ready(crd, watched, "steady", reason="Scheduled", timeout=30)
            yield Cluster(crd, watched, second, unwatched, operator, canaries)
        finally:
            operator.stop(timeout=TEARDOWN_STOP_SECONDS)


# name: (spec, Ready reason, the field the message names)
SEMANTIC_ERRORS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown-zone": (
        {"entryPoint": "hello", "schedule": {"daily": {"at": "02:30"}}, "timeZone": "Mars/Olympus"},
        "UnknownTimeZone",
        "spec.timeZone",
    ),
    "cron-out-of-range": (
        {"entryPoint": "hello", "schedule": {"cron": "61 * * * *"}},
        "InvalidSchedule",
        "spec.schedule.cron",
    ),
    "cron-last-day": (
        {"entryPoint": "hello", "schedule": {"cron": "0 0 L * *"}},
        "InvalidSchedule",
        "spec.schedule.cron",
    ),
    "cron-hashed": (
        {"entryPoint": "hello", "schedule": {"cron": "H * * * *"}},
        "InvalidSchedule",
        "spec.schedule.cron",
    ),
    "entry-point-missing": (
        {"entryPoint": "no-such-job", "schedule": {"every": "1s"}},
        "EntryPointNotFound",
        "spec.entryPoint",
    ),
    "module-missing": (
        {"entryPoint": "podcron_examples.no_such_module:run", "schedule": {"every": "1s"}},
        "EntryPointNotFound",
        "spec.entryPoint",
    ),
    "function-missing": (
        {"entryPoint": "podcron_examples.hello:no_such_function", "schedule": {"every": "1s"}},
        "EntryPointNotFound",
        "spec.entryPoint",
    ),
    "module-not-allowed": (
        {"entryPoint": "os:system", "schedule": {"every": "1s"}, "args": {"command": "true"}},
        "EntryPointNotAllowed",
        "spec.entryPoint",
    ),
}


def _assert_every_tick_ran(dues: list[datetime], start: datetime, end: datetime) -> None:
    """Every one-second tick in [start, end] ran, once: on time for a one-second job."""
    window = sorted(due for due in dues if start <= due <= end)
    expected = int((end - start).total_seconds()) - 1
    assert len(window) >= max(expected, 2), f"{len(window)} runs in a {expected + 1}s window"
    steps = {later - earlier for earlier, later in itertools.pairwise(window)}
    assert steps == {timedelta(seconds=1)}, f"ticks skipped or doubled: {sorted(steps)}"


def test_semantic_errors_reach_ready_false_with_reason_and_event(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    started = datetime.now(UTC)
    apply(
        plane, namespace, *(manifest(name, spec) for name, (spec, _, _) in SEMANTIC_ERRORS.items())
    )
    for name, (_, reason, field) in SEMANTIC_ERRORS.items():
        found = wait_ready(plane, namespace, name, reason=reason)
        condition = ready(found)
        assert condition["status"] == "False"
        assert condition["message"].startswith(f"{field}:"), condition["message"]
        assert found["observedGeneration"] == 1
        assert "nextRunTime" not in found
        event = wait_event(plane, namespace, name, reason=reason)
        assert event["type"] == "Warning"
        assert event["message"] == condition["message"]
    assert cluster.operator.process.poll() is None, "the operator must survive bad objects"
    assert not any(cluster.runs(name) for name in SEMANTIC_ERRORS)

    # The valid job alongside never missed a tick while the bad ones were handled.
    def steady_since_start() -> list[datetime]:
        runs = cluster.runs("steady")
        dues = [due for trigger, due in runs if trigger == "scheduled" and due >= started]
        return dues if len(dues) >= 3 else []

    steady = wait_for(steady_since_start, timeout=60, what="three runs of steady")
    _assert_every_tick_ran(steady, started, steady[-1])
    assert ready(status(plane, namespace, "steady"))["status"] == "True"


# Paths out of the allowed module podcron_testjobs.allowed; each would call
# podcron_testjobs.outside, which leaves a canary file when called.
PATHS_OUT = {
    "re-export": "touch",  # from .outside import touch
    "module-attribute": "outside.touch",  # a module outside the allowlist
    "foreign-call": "toucher",  # an instance whose __call__ is defined outside
    "inherited-call": "inherited_call",  # a class defined here, __call__ inherited from outside
    "partial": "partial_touch",
    "replacing-decorator": "replaced",
    "os-system": "os.system",
    "builtin-re-export": "system",  # from os import system
}


def test_paths_out_of_an_allowed_module_never_run(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    every_second = {"every": "1s"}
    apply(
        plane,
        namespace,
        *(
            manifest(
                name, {"entryPoint": f"podcron_testjobs.allowed:{attr}", "schedule": every_second}
            )
            for name, attr in PATHS_OUT.items()
        ),
        # Written in the allowed module, so it runs, and it calls the same canary.
        manifest(
            "calls-outside",
            {"entryPoint": "podcron_testjobs.allowed:calls_outside", "schedule": every_second},
        ),
    )
    for name, attr in PATHS_OUT.items():
        found = wait_ready(plane, namespace, name, reason="EntryPointNotAllowed")
        condition = ready(found)
        assert condition["status"] == "False"
        assert condition["message"].startswith("spec.entryPoint: "), condition["message"]
        assert f"podcron_testjobs.allowed:{attr}" in condition["message"]
        event = wait_event(plane, namespace, name, reason="EntryPointNotAllowed")
        assert (event["type"], event["message"]) == ("Warning", condition["message"])
    wait_ready(plane, namespace, "calls-outside", reason="Scheduled")
    # Absence of calls: the allowed job calls the canary on every tick; by its third run
    # the refused jobs, applied with it, had two ticks to run in, had they been scheduled.
    wait_for(
        lambda: status(plane, namespace, "calls-outside").get("runs", {}).get("succeeded", 0) >= 3,
        timeout=60,
        what="three runs of calls-outside",
    )
    assert sorted(path.name for path in cluster.canaries.iterdir()) == ["calls-outside"]
    plane.kubectl("delete", "sj", "calls-outside", *PATHS_OUT, "-n", namespace)


def test_failed_runs_aggregate_into_one_event_and_successes_post_none(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    # cleanup reads int(args.retentionDays): a ValueError on every run.
    failing = {"entryPoint": "cleanup", "schedule": {"every": "1s"}, "args": {"retentionDays": "x"}}
    apply(plane, namespace, manifest("failing", failing))
    event = wait_event(plane, namespace, "failing", reason="RunFailed")
    assert event["type"] == "Warning"
    assert event["message"].startswith("ValueError: invalid literal for int()")

    def failed_three_times() -> dict[str, Any] | None:
        found = status(plane, namespace, "failing")
        return found if found.get("runs", {}).get("failed", 0) >= 3 else None

    found = wait_for(failed_three_times, timeout=60, what="three failed runs in status")
    assert found["lastRunStatus"] == "failure"
    assert found["lastError"].startswith("ValueError: invalid literal for int()")
    # The same Event again, counted: one object, not one per failed run.
    counted = wait_for(
        lambda: [e for e in events(plane, namespace, "failing") if e.get("count", 1) >= 3],
        timeout=60,
        what="the RunFailed Event counted three times",
    )
    failures = [e for e in events(plane, namespace, "failing") if e["reason"] == "RunFailed"]
    assert [e["metadata"]["name"] for e in failures] == [counted[0]["metadata"]["name"]]
    assert parse_time(counted[0]["lastTimestamp"]) > parse_time(counted[0]["firstTimestamp"])
    described = plane.kubectl("describe", "sj", "failing", "-n", namespace).stdout
    assert re.search(
        r"RunFailed +\S+ \(x\d+ over \S+\) +podcron-operator +ValueError", described
    ), described
    # A job that only ever succeeds has said one thing: that it was scheduled.
    assert [e["reason"] for e in events(plane, namespace, "steady")] == ["Scheduled"]
    plane.kubectl("delete", "sj", "failing", "-n", namespace)


def test_spec_update_rearms_only_that_job(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    apply(
        plane,
        namespace,
        manifest("rearmed", {"entryPoint": "hello", "schedule": {"daily": {"at": "03:00"}}}),
        manifest("neighbour", {"entryPoint": "hello", "schedule": {"daily": {"at": "04:00"}}}),
    )
    before = wait_ready(plane, namespace, "rearmed", reason="Scheduled")
    assert before["humanReadable"] == "every day at 03:00 (UTC)"
    assert before["cronExpression"] == "0 3 * * *"
    neighbour = wait_ready(plane, namespace, "neighbour", reason="Scheduled")

    changed = datetime.now(UTC)
    patch_spec(plane, namespace, "rearmed", {"schedule": {"daily": None, "every": "2s"}})

    def rearmed() -> dict[str, Any] | None:
        found = status(plane, namespace, "rearmed")
        return found if found.get("observedGeneration") == 2 else None

    after = wait_for(rearmed, timeout=60, what="status of generation 2")
    assert after["scheduleType"] == "fixed-rate"
    assert after["humanReadable"] == "every 2s"
    assert changed < parse_time(after["nextRunTime"]) <= changed + timedelta(seconds=3)
    # A changed schedule is news: one Event per schedule the job has had.
    wait_for(
        lambda: (
            sorted(e["message"] for e in events(plane, namespace, "rearmed"))
            == ["scheduled every 2s", "scheduled every day at 03:00 (UTC)"]
        ),
        timeout=60,
        what="an Event for each schedule",
    )
    # The new schedule takes effect...
    wait_for(lambda: cluster.runs("rearmed"), timeout=60, what="a run on the new schedule")
    # ...and nothing else was touched.
    assert status(plane, namespace, "neighbour") == neighbour


def test_suspend_stops_runs_and_resume_restarts_them(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    apply(plane, namespace, manifest("pausable", EVERY_SECOND))
    wait_for(lambda: cluster.runs("pausable"), timeout=60, what="a first run")

    patch_spec(plane, namespace, "pausable", {"suspend": True})
    suspended = wait_ready(plane, namespace, "pausable", reason="Suspended")
    assert ready(suspended)["status"] == "True"
    assert "nextRunTime" not in suspended
    row = plane.kubectl("get", "sj", "pausable", "-n", namespace, "--no-headers").stdout
    assert re.split(r"\s{2,}", row.strip())[2] == "true"
    wait_event(plane, namespace, "pausable", reason="Suspended")
    runs_when_suspended = len(cluster.runs("pausable"))
    cluster.two_ticks_pass()
    assert len(cluster.runs("pausable")) == runs_when_suspended

    patch_spec(plane, namespace, "pausable", {"suspend": False})
    resumed = wait_ready(plane, namespace, "pausable", reason="Scheduled")
    assert "nextRunTime" in resumed
    wait_for(
        lambda: len(cluster.runs("pausable")) > runs_when_suspended,
        timeout=60,
        what="a run after resume",
    )
    # Scheduled again: the first Scheduled Event, counted twice.
    wait_for(
        lambda: event_counts(plane, namespace, "pausable") == {"Scheduled": 2, "Suspended": 1},
        timeout=60,
        what="Scheduled counted twice, Suspended once",
    )
    reasons = [e["reason"] for e in events(plane, namespace, "pausable")]
    assert sorted(reasons) == ["Scheduled", "Suspended"]


def test_run_now_annotation_runs_once_per_change(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    job = manifest(
        "manual",
        {"entryPoint": "hello", "schedule": YEARLY},
        annotations={RUN_NOW: "set-at-creation"},
    )
    apply(plane, namespace, job)
    wait_ready(plane, namespace, "manual", reason="Scheduled")
    # Absence of a run for the annotation present at creation: the handler acts on it
    # at once, and its run would be logged within the ticks that pass.
    cluster.two_ticks_pass()
    assert cluster.runs("manual") == []

    annotate(plane, namespace, "manual", RUN_NOW, "first")
    wait_for(lambda: cluster.runs("manual"), timeout=60, what="the manual run")
    annotate(plane, namespace, "manual", RUN_NOW, "second")
    wait_for(lambda: len(cluster.runs("manual")) == 2, timeout=60, what="the second manual run")
    assert {trigger for trigger, _ in cluster.runs("manual")} == {"manual"}
    wait_for(
        lambda: status(plane, namespace, "manual").get("runs", {}).get("total") == 2,
        timeout=60,
        what="both runs counted in status",
    )
    assert [e["reason"] for e in events(plane, namespace, "manual")].count("RunNow") == 2


def test_run_now_honours_forbid(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    # cleanup sleeps 50 ms per batch: 80 batches keep it running for 4 s.
    busy = {"entryPoint": "cleanup", "schedule": YEARLY, "args": {"batches": 80}}
    apply(plane, namespace, manifest("busy", busy))
    wait_ready(plane, namespace, "busy", reason="Scheduled")

    annotate(plane, namespace, "busy", RUN_NOW, "first")
    wait_for(
        lambda: status(plane, namespace, "busy").get("running") is True,
        timeout=60,
        what="the run to show as running",
    )
    annotate(plane, namespace, "busy", RUN_NOW, "second")
    refused = wait_event(plane, namespace, "busy", reason="RunNowRefused")
    assert "already running" in refused["message"]

    def finished() -> dict[str, Any] | None:
        found = status(plane, namespace, "busy")
        return found if found.get("running") is False and found.get("runs") else None

    found = wait_for(finished, timeout=60, what="the run to finish")
    assert found["runs"] == {"total": 1, "succeeded": 1, "failed": 0, "skipped": 0}


def test_delete_is_immediate_and_stops_the_job(cluster: Cluster) -> None:
    plane, namespace = cluster.plane, cluster.watched
    apply(plane, namespace, manifest("doomed", EVERY_SECOND))
    wait_for(lambda: cluster.runs("doomed"), timeout=60, what="a first run")

    assert not get_job(plane, namespace, "doomed")["metadata"].get("finalizers")
    plane.kubectl("delete", "sj", "doomed", "-n", namespace, "--wait=false")
    # Without a finalizer the object is gone as soon as the API server has deleted it.
    wait_for(lambda: get_job(plane, namespace, "doomed") == {}, timeout=60, what="the delete")
    wait_for(
        lambda: f"job {namespace}/doomed removed" in cluster.operator.log(),
        timeout=60,
        what="the operator to forget the job",
    )
    runs_at_delete = len(cluster.runs("doomed"))
    cluster.two_ticks_pass()
    assert len(cluster.runs("doomed")) == runs_at_delete


def test_only_the_configured_namespaces_are_watched(cluster: Cluster) -> None:
    plane = cluster.plane
    apply(plane, cluster.second, manifest("elsewhere", EVERY_SECOND))
    wait_ready(plane, cluster.second, "elsewhere", reason="Scheduled")
    wait_for(
        lambda: cluster.runs("elsewhere", cluster.second), timeout=60, what="a run in `second`"
    )
    # `ignored` was applied before the operator started, like `steady`: once `steady`
    # has run twice, `ignored` would have status and runs if it were watched.
    wait_for(lambda: len(cluster.runs("steady")) >= 2, timeout=60, what="two runs of steady")
    assert status(plane, cluster.unwatched, "ignored") == {}
    assert cluster.runs("ignored", cluster.unwatched) == []
    assert events(plane, cluster.unwatched) == []


def test_the_valid_job_ran_every_tick_throughout(cluster: Cluster) -> None:
    # Whatever the other tests did next to `steady`, it ran on every tick since its first.
    # Ten runs at least, however few tests ran before this one.
    def scheduled_runs() -> list[datetime]:
        dues = [due for trigger, due in cluster.runs("steady") if trigger == "scheduled"]
        return dues if len(dues) >= 10 else []

    steady = wait_for(scheduled_runs, timeout=120, what="ten scheduled runs of steady")
    _assert_every_tick_ran(steady, steady[0], steady[-1])
    assert cluster.operator.process.poll() is None
