"""The operator's status patches build on what another writer left: counters never fall.

Another writer of a job's status: with several replicas, its previous owner
writing the outcomes of the runs it drains; or a person with ``kubectl patch``.
The operator patches on the version it last saw, so the API server refuses a
patch that would land on a status it did not see; it reads it again and
continues from there. A watch sees every write, so a counter that fell for a
single write would show.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import apply, manifest, status
from .statuswatch import StatusWatch, went_back

EVERY_SECOND = {"entryPoint": "hello", "schedule": {"every": "1s"}}
RAISED = 1000


def test_counters_another_writer_raised_are_continued_not_written_over(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    start_operator(PODCRON_NAMESPACES=namespace)
    apply(crd, namespace, manifest("counted", EVERY_SECOND))
    wait_for(
        lambda: (status(crd, namespace, "counted").get("runs") or {}).get("total", 0) >= 2,
        timeout=30,
        what="two runs in status",
    )
    watch = StatusWatch(crd, namespace)
    try:
        raised = {"runs": {"total": RAISED, "succeeded": RAISED, "failed": 0, "skipped": 0}}
        crd.kubectl(
            "patch", "sj", "counted", "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": raised}),
        )  # fmt: skip
        wait_for(
            lambda: watch.latest("counted")[0].get("succeeded", 0) >= RAISED + 2,
            timeout=30,
            what="the operator's runs counted on top of the raised counters",
        )
    finally:
        seen = watch.stop()
    assert went_back(seen["counted"]) == []
