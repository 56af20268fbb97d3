"""The operator's own status patches come back to it as watch events: they call no handler.

Nearly every event an operator sees is the echo of one of its status patches.
kopf logs each handler it calls at DEBUG (``Handler '…' is invoked.``), so the
operator's log says whether an echo reached a handler. Deletion, a spec change
and the run-now annotation must still reach theirs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import apply, manifest, patch_spec, status, wait_ready

EVERY_SECOND = {"entryPoint": "hello", "schedule": {"every": "1s"}}


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
