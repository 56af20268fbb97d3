"""The operator's log cannot flood the node or stall the jobs.

- A job that logs a 10 MB line and raises with a 5 MB message, in an
  operator whose stderr nobody reads (a real pipe, full after the first
  line): the other jobs keep running, and once the pipe is read its lines
  are cut to size.
- The API server unreachable for a while (a real TCP proxy between the
  operator and the API server, cut and restored): the same warning about
  fifty jobs is written a few times, then counted.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from controlplane import ControlPlane

from ..waiting import wait_for
from .scheduledjobs import apply, manifest, status

LOUD_MODULE = """
def flood(ctx):
    ctx.log.info("%s", "m" * 10_000_000)
    raise ValueError("e" * 5_000_000)
"""
#: What container runtimes split a line at; every line must stay under it.
LINE_LIMIT = 16 * 1024


def operator_env(plane: ControlPlane, workdir: Path, **env: str) -> dict[str, str]:
    return (
        plane.env()
        | {
            "PODCRON_LOG_FORMAT": "text",
            "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
            "PODCRON_SHUTDOWN_TIMEOUT_SECONDS": "5",
            "PODCRON_METRICS_HOST": "127.0.0.1",
            "PODCRON_METRICS_PORT": "0",
        }
        | env
    )


@contextlib.contextmanager
def operator_process(env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``podcron operator`` with its stderr on a pipe that the test reads when it wants to."""
    process = subprocess.Popen(
        [sys.executable, "-m", "podcron", "operator"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=workdir,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def drain(pipe: IO[bytes]) -> tuple[threading.Thread, list[bytes]]:
    """Read ``pipe`` to its end from a thread; the chunks collect in the list."""
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(pipe.readline, b"")))
    reader.start()
    return reader, chunks


def test_a_log_nobody_reads_stalls_no_job_and_lines_are_cut(
    crd: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    (tmp_path / "loud.py").write_text(LOUD_MODULE)
    env = operator_env(crd, tmp_path, PODCRON_NAMESPACES=namespace, PODCRON_ALLOWED_MODULES="loud")
    with operator_process(env, tmp_path) as operator:
        apply(
            crd,
            namespace,
            manifest("loud", {"entryPoint": "loud:flood", "schedule": {"every": "1s"}}),
            manifest("hello", {"entryPoint": "hello", "schedule": {"every": "1s"}}),
        )

        def kept_running() -> bool:
            # Each loud run alone writes 15 MB to a pipe that holds 64 KiB.
            loud = status(crd, namespace, "loud").get("runs", {})
            hello = status(crd, namespace, "hello").get("runs", {})
            return bool(loud.get("failed", 0) >= 3 and hello.get("succeeded", 0) >= 5)

        wait_for(kept_running, timeout=60, interval=0.5, what="runs while nobody reads the log")
        assert operator.stderr is not None
        reader, chunks = drain(operator.stderr)
        operator.send_signal(signal.SIGTERM)
        assert operator.wait(30) == 0
        reader.join(30)
    lines = b"".join(chunks).decode().splitlines()
    assert max(len(line) for line in lines) < LINE_LIMIT
    assert any("(truncated: 10,000,000 characters)" in line for line in lines)
    assert any("(truncated: 5,000," in line for line in lines)


class Proxy:
    """A TCP proxy to ``target`` on a port of 127.0.0.1 that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = True
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection, and every new one, until :meth:`restore`."""
        self._open = False
        with self._lock:
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def restore(self) -> None:
        self._open = True

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.fixture
def proxied_kubeconfig(crd: ControlPlane, tmp_path: Path) -> Iterator[tuple[Path, Proxy]]:
    config = yaml.safe_load(crd.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, proxy
    proxy.close()


def test_an_api_server_outage_writes_each_warning_a_few_times_then_counts(
    crd: ControlPlane,
    namespace: str,
    tmp_path: Path,
    proxied_kubeconfig: tuple[Path, Proxy],
) -> None:
    kubeconfig, proxy = proxied_kubeconfig
    jobs = [
        manifest(f"job-{index:02d}", {"entryPoint": "hello", "schedule": {"every": "1s"}})
        for index in range(50)
    ]
    apply(crd, namespace, *jobs)
    env = operator_env(crd, tmp_path, PODCRON_NAMESPACES=namespace, KUBECONFIG=str(kubeconfig))
    with operator_process(env, tmp_path) as operator:
        assert operator.stderr is not None
        reader, chunks = drain(operator.stderr)

        def all_ran() -> bool:
            return all(
                status(crd, namespace, job["metadata"]["name"]).get("runs", {}).get("total")
                for job in jobs[::10]
            )

        wait_for(all_ran, timeout=60, interval=0.5, what="runs in status before the outage")
        proxy.cut()
        time.sleep(20)  # the outage under test: its length is the input, not an assertion
        proxy.restore()
        wait_for(all_ran, timeout=60, interval=0.5, what="status after the outage")
        operator.send_signal(signal.SIGTERM)
        assert operator.wait(30) == 0
        reader.join(30)
    lines = b"".join(chunks).decode().splitlines()
    warnings = [line for line in lines if " WARNING " in line]
    patch_warnings = [line for line in warnings if "status patch of" in line]
    print(f"{len(warnings)} WARNING lines, {len(patch_warnings)} about status patches")
    assert 1 <= len(patch_warnings) <= 6, "\n".join(patch_warnings)
    assert any("similar lines suppressed)" in line for line in patch_warnings)
