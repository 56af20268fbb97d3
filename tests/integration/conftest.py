"""Fixtures for tests against the real control plane: the CRD, namespaces, the operator."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "scheduledjobs.podcron.dev.yaml"
_namespaces = itertools.count()


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with the ScheduledJob CRD installed and established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/scheduledjobs.podcron.dev",
    )
    return control_plane


@pytest.fixture
def namespace(crd: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's jobs."""
    name = f"t{os.getpid()}-{next(_namespaces)}"
    crd.kubectl("create", "namespace", name)
    yield name
    # The test control plane runs no namespace controller, so a deleted
    # namespace keeps its objects: delete the jobs first, or a later
    # all-namespaces operator would find and run them.
    crd.kubectl("delete", "scheduledjobs", "--all", "-n", name, "--wait=false", check=False)
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


class OperatorProcess:
    """``podcron operator`` as a real child process, with its log in a file."""

    def __init__(self, control_plane: ControlPlane, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / "operator.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "podcron", "operator"],
            env=control_plane.env()
            | {
                "PODCRON_LOG_FORMAT": "text",
                "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
                "PODCRON_SHUTDOWN_TIMEOUT_SECONDS": "5",
                # Loopback only, and a port of the system's choosing: operators of
                # concurrent tests must not meet on 9090.
                "PODCRON_METRICS_HOST": "127.0.0.1",
                "PODCRON_METRICS_PORT": "0",
            }
            | env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def log(self) -> str:
        """Everything the operator logged so far."""
        return self.log_path.read_text()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()


@pytest.fixture
def start_operator(crd: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators (``start_operator(PODCRON_X="…")``); all are stopped afterwards."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        workdir = tmp_path / f"operator-{len(started)}"
        workdir.mkdir()
        operator = OperatorProcess(crd, workdir, env)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop(signal.SIGKILL if operator.process.poll() is None else signal.SIGTERM)


def get_job(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The ScheduledJob as the API server has it, or {} when it does not exist."""
    result = control_plane.kubectl(
        "get", "scheduledjob", name, "-n", namespace, "-o", "yaml", check=False
    )
    if result.returncode != 0:
        return {}
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded
