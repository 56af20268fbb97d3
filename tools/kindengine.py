"""The Docker engine kind runs on: the one already running, else one started here.

``docker_engine()`` yields a ``docker`` CLI that reaches a running engine. When none runs, it
installs Debian's ``docker.io`` if ``dockerd`` is missing (as root, through apt-get), starts
``dockerd`` with its data under ``~/.cache/podcron/docker`` (so built images survive), and
stops that daemon, and only that one, when the ``with`` block ends.

Machines that run tests inside a sandbox often withhold ``CAP_SYS_RESOURCE`` from the
capability bounding set. runc then fails every ``--privileged`` container (kind's nodes are
privileged) because it cannot grant a capability the bounding set lacks. Only there, the
daemon started here gets a runc wrapper as its default runtime that drops that capability
from each container's spec (``runc_without_sys_resource.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gobuild

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
CAP_SYS_RESOURCE = 24  # from <linux/capability.h>
RUNTIME_NAME = "podcron-runc"
WRAPPER = Path(__file__).resolve().parent / "runc_without_sys_resource.py"


class EngineUnavailable(RuntimeError):
    """No container engine runs here, and none can be installed or started."""


def data_dir() -> Path:
    """Where the daemon started here keeps its images, containers and log."""
    return gobuild.cache_root() / "docker"


def _docker() -> str | None:
    return shutil.which("docker")


def engine_answers(docker: str) -> bool:
    """Whether ``docker info`` reaches a running engine."""
    result = subprocess.run(
        [docker, "info"], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode == 0


def bounding_set_lacks_sys_resource() -> bool:
    """Whether this process's capability bounding set lacks CAP_SYS_RESOURCE."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return not int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1
    return False


def _install_docker() -> None:
    """Debian's docker.io (dockerd, containerd, runc), when apt-get can install it."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable(
            "no container engine: `dockerd` is not installed, and installing Debian's "
            "docker.io needs root and apt-get"
        )
    print("installing docker.io with apt-get (first run only)…", file=sys.stderr, flush=True)
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
    ):
        result = subprocess.run(
            command,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EngineUnavailable(
                f"no container engine: `{' '.join(command)}` failed:\n"
                f"{gobuild.tail(result.stdout + result.stderr, 10)}"
            )


def _runtime_wrapper(directory: Path) -> Path:
    """An executable that runs the wrapper with this Python (dockerd passes no PATH we know)."""
    runc = shutil.which("runc") or "/usr/sbin/runc"
    wrapper = directory / "runc-without-sys-resource"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {WRAPPER} {runc} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _start_dockerd(docker: str) -> subprocess.Popen[bytes]:
    directory = data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        "dockerd",
        f"--data-root={directory / 'data'}",
        f"--pidfile={directory / 'dockerd.pid'}",
    ]
    if bounding_set_lacks_sys_resource():
        wrapper = _runtime_wrapper(directory)
        command += [f"--add-runtime={RUNTIME_NAME}={wrapper}", f"--default-runtime={RUNTIME_NAME}"]
    print("starting dockerd…", file=sys.stderr, flush=True)
    with (directory / "dockerd.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches Python, which stops it in order
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not engine_answers(docker):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            log_tail = gobuild.tail((directory / "dockerd.log").read_text(errors="replace"), 15)
            raise EngineUnavailable(f"no container engine: dockerd did not start:\n{log_tail}")
        time.sleep(0.5)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def docker_engine() -> Iterator[str]:
    """The docker CLI, reaching an engine; one started here is stopped on leaving."""
    if shutil.which("dockerd") is None and not (_docker() and engine_answers(str(_docker()))):
        _install_docker()
    docker = _docker()
    if docker is None:
        raise EngineUnavailable("no container engine: the `docker` CLI is not installed")
    if engine_answers(docker):
        yield docker
        return
    if shutil.which("dockerd") is None:
        raise EngineUnavailable("no container engine: `docker info` fails and no dockerd here")
    process = _start_dockerd(docker)
    try:
        yield docker
    finally:
        print("stopping the dockerd started here…", file=sys.stderr, flush=True)
        _stop(process)
