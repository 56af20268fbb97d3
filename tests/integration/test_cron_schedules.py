"""Cron schedules end to end: the API server's rules, the operator's status, ``kubectl get``.

A macro is accepted and described with its five fields; a date that never
comes (30 February, which CronJob accepts) is Ready with NEXT RUN empty, and
still runs when asked to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from zoneinfo import ZoneInfo

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import (
    annotate,
    apply,
    hello_runs,
    manifest,
    parse_time,
    ready,
    status,
    wait_ready,
)


def _column(plane: ControlPlane, namespace: str, name: str, column: str) -> str:
    """The text under ``column`` in ``kubectl get sj name``: kubectl aligns columns."""
    header, row = plane.kubectl("get", "sj", name, "-n", namespace).stdout.splitlines()
    start = header.index(column)
    following = re.search(r"\s{2}\S", header[start + len(column) :])
    end = len(header) if following is None else start + len(column) + following.start() + 2
    return row[start:end].strip()


def test_macros_and_dates_that_never_come(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator(PODCRON_NAMESPACES=namespace)
    apply(
        crd,
        namespace,
        manifest(
            "nightly",
            {"entryPoint": "hello", "schedule": {"cron": "@daily"}, "timeZone": "Europe/Berlin"},
        ),
        manifest("on-demand", {"entryPoint": "hello", "schedule": {"cron": "0 0 30 2 *"}}),
    )

    nightly = wait_ready(crd, namespace, "nightly", reason="Scheduled", timeout=30)
    assert nightly["humanReadable"] == "cron @daily (Europe/Berlin)"
    assert nightly["cronExpression"] == "0 0 * * *"
    berlin = parse_time(nightly["nextRunTime"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute, berlin.second) == (0, 0, 0)

    on_demand = wait_ready(crd, namespace, "on-demand", reason="Scheduled")
    assert ready(on_demand)["status"] == "True"
    assert on_demand["humanReadable"] == "cron 0 0 30 2 * (UTC), which matches no date"
    assert "nextRunTime" not in on_demand
    assert _column(crd, namespace, "on-demand", "NEXT RUN") in ("", "<none>")
    assert _column(crd, namespace, "nightly", "NEXT RUN").endswith("Z")

    annotate(crd, namespace, "on-demand", "podcron.dev/run-now", "1")
    job_id = f"{namespace}/on-demand"
    runs = wait_for(lambda: hello_runs(operator.log(), job_id), timeout=20, what="a manual run")
    assert [trigger for trigger, _ in runs] == ["manual"]

    def counted() -> dict[str, object] | None:
        found = status(crd, namespace, "on-demand")
        return found if found.get("runs", {}).get("succeeded") == 1 else None

    after = wait_for(counted, timeout=20, what="the manual run in status")
    assert "nextRunTime" not in after
