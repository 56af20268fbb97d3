"""Readiness tells the truth: ready only once every ScheduledJob that existed is registered.

Three hundred jobs exist before the operator starts. A real sidecar in front
of it is started first and polled throughout, as is the operator's
``/readyz``: the moment ``/readyz`` first says 200, the sidecar must list all
of them, and until then a job not registered yet answers 503, never 404.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import manifest
from .sidecar_process import SidecarProcess, client

JOBS = 300
METRICS = re.compile(r"serving /metrics, /healthz and /readyz on 127\.0\.0\.1:(\d+)")


def test_ready_only_once_every_existing_job_is_registered(
    crd: ControlPlane,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    jobs = [
        manifest(f"job-{index:03d}", {"entryPoint": "hello", "schedule": {"every": "1h"}})
        for index in range(JOBS)
    ]
    crd.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(jobs))
    socket_path = tmp_path / "operator-0" / "control.sock"  # where start_operator puts it
    sidecar = SidecarProcess(
        dict(os.environ)
        | {"PODCRON_CONTROL_SOCKET": str(socket_path), "PODCRON_ALLOWED_CIDRS": "127.0.0.1/32"},
        tmp_path / "sidecar.log",
    )
    try:
        operator = start_operator(PODCRON_NAMESPACES=namespace)
        port = wait_for(
            lambda: METRICS.search(operator.log()), timeout=60, what="the metrics port"
        )[1]
        session = client()
        last = f"{sidecar.url}/_sys/job/{namespace}/job-{JOBS - 1:03d}"
        answers: Counter[int] = Counter()
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, f"never ready; the job answered {answers}"
            answers[session.get(last, timeout=10).status_code] += 1
            ready = session.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code
            if ready == 200:
                listed = session.get(f"{sidecar.url}/_sys/job", timeout=10).json()
                assert listed["meta"]["total"] == JOBS, "ready before every job was registered"
                break
        assert session.get(last, timeout=10).status_code == 200
        print(f"before ready, the last job answered {dict(answers)}")
        assert 404 not in answers, "a job that exists answered 404 JOB_NOT_FOUND"
    finally:
        sidecar.stop()
