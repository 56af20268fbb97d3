"""A configuration that cannot work ends ``podcron`` with one line and exit code 2.

Each case runs the real command (``python -m podcron operator|sidecar``) as a
subprocess, with no cluster: every one of them fails before any is needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from . import cli_support

KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    # Never contacted: every case ends before the operator talks to the API server.
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "x",
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory with a kubeconfig that parses, and no config.yaml."""
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(KUBECONFIG))
    return tmp_path


def podcron(command: str, workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m podcron <command>`` in ``workdir``, with ``env`` over a clean environment."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PODCRON_", "KUBE", "OTEL_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "podcron", command],
        env=clean
        | {
            "HOME": str(workdir),
            "KUBECONFIG": str(workdir / "kubeconfig"),
            "PODCRON_CONFIG_DIR": str(workdir),
            "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
            "PODCRON_METRICS_HOST": "127.0.0.1",
            "PODCRON_METRICS_PORT": "0",
        }
        | env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["operator", "sidecar"])
def test_a_malformed_config_file_is_named_with_its_line(workdir: Path, command: str) -> None:
    (workdir / "config.yaml").write_text("logLevel: INFO\nallowedModules: [myjobs.*\n")
    line = one_line(podcron(command, workdir))
    assert f"{workdir / 'config.yaml'}: not valid YAML" in line
    assert "line 3" in line


@pytest.mark.parametrize("command", ["operator", "sidecar"])
def test_a_bad_log_level_is_named_with_the_levels_it_may_be(workdir: Path, command: str) -> None:
    line = one_line(podcron(command, workdir, PODCRON_LOG_LEVEL="verbose"))
    assert "PODCRON_LOG_LEVEL: logLevel must be one of DEBUG, INFO, WARNING, ERROR" in line


def test_a_metrics_port_out_of_range(workdir: Path) -> None:
    line = one_line(podcron("operator", workdir, PODCRON_METRICS_PORT="70000"))
    assert "PODCRON_METRICS_PORT: metricsPort must be a port from 1 to 65535" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_metrics_port_in_use(workdir: Path, taken_port: int) -> None:
    line = one_line(podcron("operator", workdir, PODCRON_METRICS_PORT=str(taken_port)))
    assert f"cannot serve /metrics on 127.0.0.1:{taken_port} (the port is in use)" in line
    assert "PODCRON_METRICS_PORT" in line


def test_no_kubeconfig(workdir: Path) -> None:
    line = one_line(podcron("operator", workdir, KUBECONFIG=str(workdir / "missing")))
    assert "no Kubernetes credentials" in line
    assert "KUBECONFIG" in line


def test_a_control_socket_served_by_a_live_operator(workdir: Path) -> None:
    path = workdir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        line = one_line(podcron("operator", workdir))
    assert f"another process is serving the control socket {path}" in line
    assert "PODCRON_CONTROL_SOCKET" in line


def test_an_environment_without_its_config_file_is_warned_about(workdir: Path) -> None:
    # The warning comes first, in the log; then this case fails on purpose.
    result = podcron("operator", workdir, PODCRON_ENV="prod", KUBECONFIG=str(workdir / "missing"))
    assert result.returncode == 2
    warning, error = result.stderr.strip().splitlines()
    assert '"level": "WARNING"' in warning
    assert "PODCRON_ENV is 'prod'" in warning
    assert "config.prod.yaml does not exist" in warning
    assert error.startswith("podcron: no Kubernetes credentials")


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line this command writes for bad input."""
    return cli_support.one_line(result, "podcron: ")
