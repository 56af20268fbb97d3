"""The sidecar under hostile and careless callers, on real sockets, under its real server.

One sidecar serves the module: it allows 127.0.0.1 and trusts 127.0.0.4 as a
proxy; 127.0.0.2 is the outside. No operator runs (the job list is empty):
what is tested here happens before a request reaches the operator, or never
gets a request at all.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podcron.sidecar.protocol import HEAD_TIMEOUT_SECONDS, WRITE_TIMEOUT_SECONDS
from podcron.sidecar.server import API_LIMITS, WORKERS

from ..ports import free_ports
from ..waiting import wait_for
from .sidecar_process import SidecarProcess, client, raw_exchange

ALLOWED, OUTSIDE, PROXY = "127.0.0.1", "127.0.0.2", "127.0.0.4"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("hostile")
    sidecar = SidecarProcess(
        dict(os.environ)
        | {
            "PODCRON_ALLOWED_CIDRS": f"{ALLOWED}/32",
            "PODCRON_TRUSTED_PROXIES": f"{PROXY}/32",
            "PODCRON_CONTROL_SOCKET": str(workdir / "absent.sock"),
        },
        workdir / "sidecar.log",
    )
    yield sidecar
    assert sidecar.stop() == 0


class SlowClients:
    """``count`` connections from ``source``, each sending a request head one line every
    ``interval`` seconds and never finishing it (slowloris). Records, per connection, what
    the server answered and whether it closed the connection."""

    def __init__(self, url: str, *, source: str, count: int, interval: float = 2.0) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._interval = interval
        self._selector = selectors.DefaultSelector()
        self.answers: dict[socket.socket, bytes] = {}
        self.closed: set[socket.socket] = set()
        self._lock = threading.Lock()
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), 10, (source, 0))
            sock.setblocking(False)
            self.answers[sock] = b""
            self._send(sock, b"GET /_sys/job HTTP/1.1\r\nHost: podcron\r\n")
            self._selector.register(sock, selectors.EVENT_READ)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except OSError:
            self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            if sock not in self.closed:
                self.closed.add(sock)
                self._selector.unregister(sock)

    def _run(self) -> None:
        line = 0
        next_line = time.monotonic() + self._interval
        while not self._stopping.is_set():
            timeout = max(0.0, next_line - time.monotonic())
            for key, _ in self._selector.select(min(timeout, 0.2)) if self.open else ():
                sock: Any = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                except BlockingIOError:
                    continue
                self.answers[sock] += chunk
                if not chunk:
                    self._close(sock)
            if not self.open:
                self._stopping.wait(0.2)
            if time.monotonic() >= next_line:
                line += 1
                next_line += self._interval
                for sock in list(self.answers):
                    if sock not in self.closed:
                        self._send(sock, b"X-Slow-%d: still sending\r\n" % line)

    @property
    def open(self) -> int:
        """Connections the server has not closed yet."""
        with self._lock:
            return len(self.answers) - len(self.closed)

    def stop(self) -> None:
        """Stop sending and close every connection."""
        self._stopping.set()
        self._thread.join(10)
        for sock in self.answers:
            sock.close()


def _served(sidecar: SidecarProcess) -> None:
    """Allowed callers get their answers (the API and the probes), within a generous deadline."""
    session = client(ALLOWED)
    for url in (f"{sidecar.url}/_sys/job", f"{sidecar.url}/healthz", f"{sidecar.probe_url}/readyz"):
        response = session.get(url, timeout=10)
        assert response.status_code in (200, 503), url  # /readyz: no operator here
        assert response.json()["meta"] == {} or response.json()["meta"] == {"total": 0}


def test_slowloris_from_a_refused_address_costs_nothing(sidecar: SidecarProcess) -> None:
    slow = SlowClients(sidecar.url, source=OUTSIDE, count=200)
    try:
        for _ in range(5):
            _served(sidecar)
        wait_for(lambda: slow.open == 0, timeout=30, what="every refused connection to close")
        # Refused at accept: not a byte of answer, not even an error.
        assert set(slow.answers.values()) == {b""}
    finally:
        slow.stop()


def test_slow_heads_from_an_admitted_peer_are_cut_at_the_deadline(
    sidecar: SidecarProcess,
) -> None:
    # The trusted proxy is admitted at accept, up to API_LIMITS.per_peer connections in each
    # worker (the kernel decides which worker accepts which connection).
    most = WORKERS * API_LIMITS.per_peer
    slow = SlowClients(sidecar.url, source=PROXY, count=most + 36)
    try:
        wait_for(
            lambda: slow.open <= most,
            timeout=30,
            what="the connections over the per-peer limit to be refused",
        )
        for _ in range(5):
            _served(sidecar)
        wait_for(
            lambda: slow.open == 0,
            timeout=HEAD_TIMEOUT_SECONDS + 60,
            what="the head deadline to close the slow connections",
        )
    finally:
        slow.stop()
    answered = [answer for answer in slow.answers.values() if answer]
    assert API_LIMITS.per_peer <= len(answered) <= most
    for answer in answered:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    _served(sidecar)


def _error(answer: bytes, status: int, code: str) -> str:
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n")[0].startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"content-type: application/json" in head.lower()
    document = json.loads(body)
    assert document["data"] is None
    assert document["meta"] == {}
    assert document["error"]["code"] == code
    message: str = document["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
        (b"GET /" + b"a" * 40000, 414, "URI_TOO_LONG"),  # still in the request line
        (
            b"GET /_sys/job HTTP/1.1\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        (b"GET /_sys/job HTTP/1.1\r\nX-Big: " + b"b" * 40000, 431, "HEADERS_TOO_LARGE"),
        (
            b"GET /_sys/job HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(101))
            + b"\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        ("GET /_sys/job/caf\u00e9/x HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400, "BAD_REQUEST"),
        (b"GET /_sys/job/\xff/x HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
        (b"BREW /_sys/job HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
        (b"GET /_sys/job HTTP/1.1\r\nHost x\r\n\r\n", 400, "BAD_REQUEST"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "BAD_REQUEST"),  # TLS hello
    ],
    ids=[
        "long-target",
        "long-target-unfinished",
        "huge-header",
        "huge-header-unfinished",
        "too-many-headers",
        "non-ascii-path",
        "non-utf8-path",
        "unknown-method",
        "malformed-header",
        "tls-on-plain-http",
    ],
)
def test_requests_refused_before_routing_are_answered_in_the_envelope(
    sidecar: SidecarProcess, request_bytes: bytes, status: int, code: str
) -> None:
    answer = raw_exchange(sidecar.url, request_bytes)  # returns once the server closed
    assert _error(answer, status, code)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_encoded_slash_is_refused_before_it_reaches_the_operator(
    sidecar: SidecarProcess, method: str
) -> None:
    # Without the refusal this would ask the (absent) operator for job "ns/name": 503.
    response = client(ALLOWED).request(method, f"{sidecar.url}/_sys/job/ns%2Fname")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BAD_REQUEST"


def _lines(sidecar: SidecarProcess, text: str) -> list[str]:
    return [line for line in sidecar.log().splitlines() if text in line]


def test_refusals_and_denials_are_logged_at_a_bounded_rate(sidecar: SidecarProcess) -> None:
    refused_text = f"refused a connection from {OUTSIDE}"
    before = len(_lines(sidecar, refused_text))
    for _ in range(300):
        assert raw_exchange(sidecar.url, b"GET /_sys/job HTTP/1.1\r\n\r\n", source=OUTSIDE) == b""
    # Every refusal is done (the server closed each); a handful of lines tell of them.
    assert 1 <= len(_lines(sidecar, refused_text)) - before <= 10

    proxy = client(PROXY)
    denied_text = "denied GET /_sys/job from peer 127.0.0.4 (X-Forwarded-For '127.0.0.3')"
    before = len(_lines(sidecar, denied_text))
    for _ in range(300):
        answer = proxy.get(f"{sidecar.url}/_sys/job", headers={"X-Forwarded-For": "127.0.0.3"})
        assert answer.status_code == 403
    assert 1 <= len(_lines(sidecar, denied_text)) - before <= 10

    # Once the rate allows another line, it says how many were dropped.
    def counted() -> bool:
        proxy.get(f"{sidecar.url}/_sys/job", headers={"X-Forwarded-For": "127.0.0.3"})
        return any(
            "similar lines suppressed before this one" in line
            for line in _lines(sidecar, denied_text)
        )

    wait_for(counted, timeout=60, interval=0.5, what="a line counting the suppressed denials")


def test_a_client_that_never_reads_is_dropped_at_the_write_deadline(
    sidecar: SidecarProcess,
) -> None:
    # Pipelined requests whose answers are never read: they pile up in the server until
    # the write deadline drops the connection; other callers are served meanwhile.
    host, port = sidecar.url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as hog:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        hog.bind((ALLOWED, 0))
        hog.connect((host, int(port)))
        hog.setblocking(False)
        request = b"GET /_sys/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n"

        def dropped() -> bool:
            try:
                hog.send(request)
            except BlockingIOError:
                return False  # the server stopped reading: its answers are piling up
            except OSError:
                return True  # reset: the server dropped the connection
            return False

        for _ in range(3):
            _served(sidecar)
        wait_for(
            dropped,
            timeout=WRITE_TIMEOUT_SECONDS + 60,
            interval=0.01,
            what="the write deadline to drop the connection",
        )
    _served(sidecar)


def _workers(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def test_a_worker_that_dies_stops_the_sidecar_with_a_failure(tmp_path: Path) -> None:
    sidecar = SidecarProcess(
        dict(os.environ)
        | {
            "PODCRON_ALLOWED_CIDRS": f"{ALLOWED}/32",
            "PODCRON_CONTROL_SOCKET": str(tmp_path / "absent.sock"),
        },
        tmp_path / "sidecar.log",
    )
    try:
        workers = _workers(sidecar.process.pid)
        assert len(workers) == WORKERS
        os.kill(workers[0], signal.SIGKILL)
        # The kubelet restarts a container that exits: half a sidecar would serve on.
        assert sidecar.process.wait(30) == 1
        assert f"sidecar worker {workers[0]} exited (-9) on its own" in sidecar.log()
        assert not Path(f"/proc/{workers[1]}").exists() or _zombie(workers[1])
    finally:
        sidecar.stop()


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_stop_while_the_workers_start_exits_cleanly(tmp_path: Path) -> None:
    # A pod deleted right after it started: the workers are forked but uvicorn has not yet
    # taken the signals over. Each must still end as a graceful stop does, with 0.
    for attempt in range(1, 4):
        returncode, errors = _stopped_as_its_workers_start(tmp_path)
        # free_ports() races with every other process of the machine (parallel tests'
        # connections take ports from the same range): then, and only then, again.
        if "Address already in use" not in errors or attempt == 3:
            break
    assert returncode == 0, errors


def _stopped_as_its_workers_start(tmp_path: Path) -> tuple[int, str]:
    """Start a sidecar, SIGTERM it once its workers are forked: its exit code and stderr."""
    port, probe_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "podcron", "sidecar"],
        env=dict(os.environ)
        | {
            "PODCRON_ALLOWED_CIDRS": f"{ALLOWED}/32",
            "PODCRON_CONTROL_SOCKET": str(tmp_path / "absent.sock"),
            "PODCRON_SIDECAR_HOST": ALLOWED,
            "PODCRON_SIDECAR_PORT": str(port),
            "PODCRON_SIDECAR_PROBE_PORT": str(probe_port),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: process.poll() is not None or len(_workers(process.pid)) == WORKERS,
            timeout=30,
            what="the sidecar to fork its workers",
        )
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
        return process.returncode, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
