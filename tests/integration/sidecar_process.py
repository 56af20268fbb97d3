"""``podcron sidecar`` as a real child process, and HTTP clients bound to a source address."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ..ports import free_ports
from ..waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "operator" / "podcron" / "sidecar" / "openapi.yaml"


class _SourceAddressAdapter(HTTPAdapter):
    """Connects from ``source`` (any 127.x address routes over the loopback device)."""

    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


def client(source: str = "127.0.0.1") -> requests.Session:
    """A session whose connections come from ``source``; proxies from the environment ignored."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", _SourceAddressAdapter(source))
    return session


def raw_exchange(url: str, data: bytes, *, source: str = "127.0.0.1", timeout: float = 10) -> bytes:
    """Send ``data`` as it is to the server of ``url`` from ``source``; everything it answers
    until it closes the connection (b"" when it closed without a word)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout, (source, 0)) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return answer
            if not chunk:
                return answer
            answer += chunk


class _PortTaken(Exception):
    """Another process bound a port between free_ports() and the sidecar."""


class SidecarProcess:
    """``podcron sidecar`` on free ports of 127.0.0.1, with its log in a file.

    ``host`` is what it binds: ``::ffff:127.0.0.1`` makes an IPv6 listener that
    still only accepts connections to 127.0.0.1, and reports their peers as
    IPv4-mapped IPv6 addresses.
    """

    def __init__(self, env: dict[str, str], log_path: Path, *, host: str = "127.0.0.1") -> None:
        self.log_path = log_path
        # free_ports() races with every other process of the machine: another one may take
        # a port before the sidecar binds it. Then, and only then, try other ports.
        for attempt in range(1, 4):
            try:
                self._start(env, host)
                return
            except _PortTaken:
                if attempt == 3:
                    raise

    def _start(self, env: dict[str, str], host: str) -> None:
        # The second is the kubelet's port: open to every address, only /healthz and /readyz.
        self.port, self.probe_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.probe_url = f"http://127.0.0.1:{self.probe_port}"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "podcron", "sidecar"],
            env=env
            | {
                "PODCRON_LOG_FORMAT": "text",
                "PODCRON_SIDECAR_HOST": host,
                "PODCRON_SIDECAR_PORT": str(self.port),
                "PODCRON_SIDECAR_PROBE_PORT": str(self.probe_port),
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,
            # Its own process group: a supervisor killed at the end takes its workers along.
            start_new_session=True,
        )
        health = client()

        def serving() -> bool:
            if self.process.poll() is not None:
                if "Address already in use" in self.log():
                    raise _PortTaken
                raise AssertionError(f"the sidecar exited early:\n{self.log()}")
            try:
                return health.get(f"{self.probe_url}/healthz", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        try:
            wait_for(serving, timeout=30, what="the sidecar to serve /healthz")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        """Everything the sidecar logged so far."""
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL after 15 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind, if any
            self.process.wait()
            self._log.close()
