"""The control plane the integration tests run against: real, RBAC on, gone when stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane import KUBERNETES_VERSION, ControlPlane
from gobuild import TOOLS


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has exited: only its status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_until_dead(pids: dict[str, int], timeout: float) -> dict[str, int]:
    """The processes of ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := {n: p for n, p in pids.items() if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_server_and_kubectl_are_the_pinned_release(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_rbac_forbids_an_unprivileged_user_until_a_role_allows(
    control_plane: ControlPlane,
) -> None:
    user, name = "someone", f"pod-reader-{os.getpid()}"
    as_user = ("--as", user, "get", "pods", "-n", "default")
    denied = control_plane.kubectl(*as_user, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f'User "{user}" cannot list resource "pods"' in denied.stderr

    control_plane.kubectl("create", "role", name, "--verb=list", "--resource=pods")
    control_plane.kubectl("create", "rolebinding", name, f"--role={name}", f"--user={user}")
    try:
        # The authorizer reads roles from an informer cache: a binding applies moments later.
        deadline = time.monotonic() + 10
        while (allowed := control_plane.kubectl(*as_user, check=False)).returncode != 0:
            assert time.monotonic() < deadline, allowed.stderr
            time.sleep(0.2)
    finally:
        control_plane.kubectl("delete", "rolebinding,role", name, check=False)


def test_leaving_the_context_stops_every_process_and_removes_the_workdir(
    control_plane: ControlPlane,
) -> None:
    with ControlPlane.start(control_plane.binaries) as plane:
        pids, workdir = plane.pids, plane.workdir
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert all(_alive(pid) for pid in pids.values())
        assert workdir.is_dir()
    assert not {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not workdir.exists()


def test_processes_die_with_the_python_process_that_started_them(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # A parent killed with SIGKILL runs no cleanup: only PR_SET_PDEATHSIG can stop them.
    starter = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from controlplane import Binaries, ControlPlane\n"
        "binaries = Binaries(*map(Path, sys.argv[2:]))\n"
        "plane = ControlPlane.start(binaries, workdir=Path(sys.argv[1]))\n"
        "print(json.dumps(plane.pids), flush=True)\n"
        "time.sleep(300)\n"
    )
    binaries = control_plane.binaries
    paths = map(str, (binaries.kube_apiserver, binaries.kubectl, binaries.etcd))
    parent = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path / "plane"), *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(TOOLS)},
    )
    assert parent.stdout is not None
    assert parent.stderr is not None
    line = parent.stdout.readline()
    if not line:
        pytest.fail(f"the starter failed:\n{parent.stderr.read()}")
    pids: dict[str, int] = json.loads(line)
    assert all(_alive(pid) for pid in pids.values())
    parent.kill()
    parent.wait()
    assert _wait_until_dead(pids, timeout=5) == {}
