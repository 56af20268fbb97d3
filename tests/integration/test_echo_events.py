"""The operator's own status patches come back to it as watch events: they call no handler.

Nearly every event an operator sees is the echo of one of its status patches.
kopf logs each handler it calls at DEBUG (``Handler '…' is invoked.``), so the
operator's log says whether an echo reached a handler. Deletion, a spec change
and the run-now annotation must still reach theirs.

kopf's bookkeeping stays in the process: nothing is written onto the object (each
write would be one more echo, for every replica), and the run-now annotation's
last value acted on is kept in status instead, across restarts.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import TEARDOWN_STOP_SECONDS, OperatorProcess, get_job
from .scheduledjobs import (
    annotate,
    apply,
    hello_runs,
    manifest,
    patch_spec,
    status,
    wait_ready,
)

EVERY_SECOND = {"entryPoint": "hello", "schedule": {"every": "1s"}}
# Once a year: a job that runs only when triggered (or at New Year).
YEARLY = {"cron": "0 0 1 1 *"}
RUN_NOW = "podcron.dev/run-now"
KOPF_PREFIX = "kopf.podcron.dev/"


def _invocations(operator: OperatorProcess, handler: str) -> int:
    return len(re.findall(rf"Handler '[^']*{handler}[^']*' is invoked", operator.log()))


def test_status_echoes_call_no_handler_and_changes_still_do(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator(PODCRON_NAMESPACES=namespace, PODCRON_LOG_LEVEL="DEBUG")
    apply(crd, namespace, manifest("echoing", EVERY_SECOND))
    wait_ready(crd, namespace, "echoing", reason="Scheduled", timeout=30)
    # Each of these runs reached status by a patch, whose watch event came back.
    wait_for(
        lambda: (status(crd, namespace, "echoing").get("runs") or {}).get("total", 0) >= 4,
        timeout=30,
        what="four runs in status",
    )
    assert _invocations(operator, "on_create") == 1
    assert _invocations(operator, "on_event") == 0
    assert _invocations(operator, "on_update") == 0

    patch_spec(crd, namespace, "echoing", {"schedule": {"every": "2s"}})
    wait_for(
        lambda: status(crd, namespace, "echoing").get("humanReadable") == "every 2s",
        timeout=15,
        what="the changed schedule in status",
    )
    assert status(crd, namespace, "echoing")["observedGeneration"] == 2
    assert _invocations(operator, "on_update") == 1

    crd.kubectl("delete", "sj", "echoing", "-n", namespace, "--timeout=10s")
    wait_for(
        lambda: f"job {namespace}/echoing removed" in operator.log(),
        timeout=15,
        what="the operator to forget the job",
    )
    assert _invocations(operator, "on_event") == 1


def _kopf_writes(crd: ControlPlane, namespace: str, name: str) -> list[str]:
    """What kopf wrote onto the object: its annotations, and the object fields it manages."""
    meta = get_job(crd, namespace, name)["metadata"]
    written = [key for key in meta.get("annotations") or {} if key.startswith(KOPF_PREFIX)]
    managers = [f["manager"] for f in meta.get("managedFields") or () if f["manager"] == "kopf"]
    return written + managers


def test_kopf_writes_nothing_on_the_object_and_a_run_now_made_while_down_runs_when_back(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    job_id = f"{namespace}/on-demand"
    first = start_operator(PODCRON_NAMESPACES=namespace)
    apply(crd, namespace, manifest("on-demand", {"entryPoint": "hello", "schedule": YEARLY}))
    wait_ready(crd, namespace, "on-demand", reason="Scheduled", timeout=30)
    patch_spec(crd, namespace, "on-demand", {"timeoutSeconds": 60})
    wait_for(
        lambda: status(crd, namespace, "on-demand").get("observedGeneration") == 2,
        timeout=15,
        what="the spec change handled",
    )
    annotate(crd, namespace, "on-demand", RUN_NOW, "first")
    wait_for(
        lambda: status(crd, namespace, "on-demand").get("lastRunNow") == "first",
        timeout=15,
        what="the run-now value kept in status",
    )
    assert [t for t, _ in hello_runs(first.log(), job_id)] == ["manual"]
    # Creation, a spec change and an annotation handled: kopf patched none of them.
    assert _kopf_writes(crd, namespace, "on-demand") == []

    first.stop(timeout=TEARDOWN_STOP_SECONDS)
    annotate(crd, namespace, "on-demand", RUN_NOW, "second")
    second = start_operator(PODCRON_NAMESPACES=namespace)
    wait_for(
        lambda: hello_runs(second.log(), job_id), timeout=30, what="the run-now made while down"
    )
    wait_for(
        lambda: status(crd, namespace, "on-demand").get("lastRunNow") == "second",
        timeout=15,
        what="the new value kept",
    )
    assert [t for t, _ in hello_runs(second.log(), job_id)] == ["manual"]

    second.stop(timeout=TEARDOWN_STOP_SECONDS)
    third = start_operator(PODCRON_NAMESPACES=namespace, PODCRON_LOG_LEVEL="DEBUG")
    # Unchanged since it was run: seeing it again runs nothing. A run it started would
    # start before the one of the next change, which is then the only one in the log.
    wait_for(
        lambda: _invocations(third, "on_run_now") == 1,
        timeout=30,
        what="the annotation seen after the restart",
    )
    annotate(crd, namespace, "on-demand", RUN_NOW, "third")
    wait_for(lambda: hello_runs(third.log(), job_id), timeout=30, what="the third run-now")
    assert [t for t, _ in hello_runs(third.log(), job_id)] == ["manual"]
    assert _invocations(third, "on_run_now") == 2
    assert _kopf_writes(crd, namespace, "on-demand") == []
