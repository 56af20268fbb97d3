"""SIGTERM with runs active: every one of them ends in status as interrupted, nothing else lost.

A real operator runs three jobs whose runs never end by themselves (they
ignore ``ctx.cancelled``, so the engine cancels them once the shutdown budget
allows no more), and ``hello`` every second. After SIGTERM, each job's status
must say what the operator's log says happened: the interrupted run as a
failure, the ticks Forbid skipped meanwhile, every hello run, nothing running.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from typing import Any

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import apply, manifest, status

HOLDING = ["hold-a", "hold-b", "hold-c"]
JOB_MODULE = """
import asyncio


async def hold(ctx):
    ctx.log.info("run of %s started", ctx.job_id)
    await asyncio.sleep(3600)  # deaf to ctx.cancelled: only the engine's cancel ends it
"""


def test_every_run_active_at_sigterm_ends_in_status_as_interrupted(
    crd: ControlPlane, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    operator = start_operator(PODCRON_ALLOWED_MODULES="holding", PODCRON_NAMESPACES=namespace)
    # The operator imports a job's module when it registers the job: after this.
    (operator.log_path.parent / "holding.py").write_text(JOB_MODULE)
    apply(
        crd,
        namespace,
        *(
            manifest(name, {"entryPoint": "holding:hold", "schedule": {"every": "1s"}})
            for name in HOLDING
        ),
        manifest("hello", {"entryPoint": "hello", "schedule": {"every": "1s"}}),
    )

    def all_running() -> bool:
        return all(status(crd, namespace, name).get("running") for name in HOLDING)

    wait_for(all_running, timeout=30, interval=0.3, what="every holding job's run in status")
    started = time.monotonic()
    assert operator.stop(signal.SIGTERM) == 0
    print(f"SIGTERM to exit with {len(HOLDING)} runs active: {time.monotonic() - started:.2f}s")

    log = operator.log()
    for name in HOLDING:
        job = f"{namespace}/{name}"
        found: dict[str, Any] = status(crd, namespace, name)
        assert found["running"] is False, f"{job} still shows a run"
        assert found["lastRunStatus"] == "failure"
        assert found["lastError"].startswith("Interrupted: the operator shut down")
        assert log.count(f"run of {job} started") == 1
        assert found["runs"] == {
            "total": 1,
            "succeeded": 0,
            "failed": 1,
            "skipped": len(re.findall(rf"job {re.escape(job)} skipped its", log)),
        }
    hello = status(crd, namespace, "hello")
    assert hello["running"] is False
    assert hello["runs"]["total"] == log.count(f"hello from {namespace}/hello ")
    assert hello["runs"]["succeeded"] == hello["runs"]["total"]
