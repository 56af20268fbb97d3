"""The whole path: kubectl apply a ScheduledJob, the operator runs it, status shows it."""

from __future__ import annotations

import time
from collections.abc import Callable

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import ROOT, OperatorProcess, get_job

HELLO = ROOT / "examples" / "hello.yaml"
SUSPENDED = """
apiVersion: podcron.dev/v1alpha1
kind: ScheduledJob
metadata: {name: idle}
spec: {entryPoint: hello, suspend: true, schedule: {every: 1h}}
"""


def test_hello_runs_every_two_seconds_and_stops_when_deleted(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator()
    # Start-up (imports, kopf's first listing) takes seconds on a loaded machine: not the test.
    wait_for(lambda: "podcron operator started" in operator.log(), timeout=60, what="start-up")
    crd.kubectl("apply", "-n", namespace, "-f", str(HELLO))
    marker = f"hello from {namespace}/hello"

    def two_successes() -> bool:
        status = get_job(crd, namespace, "hello").get("status", {})
        runs = status.get("runs", {})
        return bool(runs.get("succeeded", 0) >= 2 and status.get("lastRunStatus") == "success")

    # Generous: the 2 s schedule needs 4 s, a loaded machine may take many times that.
    wait_for(two_successes, timeout=60, what="two successful runs in status")
    job = get_job(crd, namespace, "hello")
    assert job["status"]["runs"]["failed"] == 0
    assert job["status"]["lastRunTime"].endswith("Z")
    assert not job["metadata"].get("finalizers"), "delete must not wait on a finalizer"

    crd.kubectl("delete", "-n", namespace, "-f", str(HELLO), "--wait=false")
    # Without a finalizer the object is gone as soon as the API server has deleted it.
    wait_for(lambda: get_job(crd, namespace, "hello") == {}, timeout=60, what="the delete")

    removed = f"job {namespace}/hello removed"
    wait_for(lambda: removed in operator.log(), timeout=60, what="the operator's delete handler")
    runs_at_delete = operator.log().count(marker)
    # Absence can only be shown by watching: two whole intervals of the 2 s schedule.
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        assert operator.log().count(marker) == runs_at_delete, "a run happened after delete"
        time.sleep(0.25)
    assert operator.process.poll() is None, "the operator must keep running"


def test_operator_exits_cleanly_on_sigterm_when_idle(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator()
    # A suspended job that reaches Ready proves the watchers are up, and runs nothing.
    crd.kubectl("apply", "-n", namespace, "-f", "-", input=SUSPENDED)
    wait_for(
        lambda: get_job(crd, namespace, "idle").get("status", {}).get("conditions"),
        timeout=60,
        what="the operator to handle a suspended job",
    )
    started = time.monotonic()
    # Exit code 0: not the hard exit (1) that ends a shutdown still running 10 s past its
    # budget, nor a kill by stop()'s generous deadline. How long it took is a benchmark's
    # business (bench-shutdown); printed here for the record.
    assert operator.stop(timeout=120) == 0
    print(f"exit after SIGTERM took {time.monotonic() - started:.2f}s")
    log = operator.log()
    steps = ["SIGTERM received: shutting down", "runs ended", "wrote the last status of"]
    positions = [log.find(step) for step in steps]
    assert -1 not in positions, f"missing shutdown steps in the log: {positions}"
    assert positions == sorted(positions), "the shutdown steps ran out of order"
