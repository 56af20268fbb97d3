"""The chaos run's other parts: counters across restarts, the seeded plan, the fault proxy."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos import nemesis
from tests.chaos.counters import ResettingSum, exported, mutating, samples
from tests.chaos.proxy import FaultProxy, Mode, ProxyLoop

PAGE = """\
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",resource="leases",verb="PUT"} 10
apiserver_request_total{code="201",resource="scheduledjobs",verb="POST"} 5
apiserver_request_total{code="200",resource="scheduledjobs",verb="LIST"} 99
apiserver_request_total_other 3
"""


def test_counters_sum_increases_across_a_restart() -> None:
    leases, every = ResettingSum(mutating("leases")), ResettingSum(mutating())
    for page in (PAGE, PAGE.replace("} 10", "} 14"), PAGE.replace("} 10", "} 2")):
        found = samples(page, "apiserver_request_total")
        assert len(found) == 3
        leases.read(found)
        every.read(found)
    # 10 -> 14 is 4; then a reset: the 2 since the restart count in full.
    assert leases.total == 6
    assert every.total == 6
    leases.restarted()
    leases.read(samples(PAGE.replace("} 10", "} 1"), "apiserver_request_total"))
    assert leases.total == 7


def test_operator_counters_count_per_job_when_declared_and_are_absent_otherwise() -> None:
    page = """\
# TYPE podcron_ticks_uncertain_total counter
podcron_ticks_uncertain_total{namespace="a",name="x"} 2.0
podcron_ticks_uncertain_total{namespace="b",name="x"} 1.0
podcron_ticks_uncertain_total{namespace="a",name="y"} 0.0
# TYPE podcron_ticks_missed counter
"""
    names = ("podcron_ticks_uncertain_total", "podcron_ticks_missed_total", "podcron_x_total")
    assert exported(page, names) == {
        "podcron_ticks_uncertain_total": {"a/x": 2.0, "b/x": 1.0, "a/y": 0.0},
        "podcron_ticks_missed_total": {},
    }


def test_operator_counters_can_be_read_for_one_label_value() -> None:
    page = """\
# TYPE podcron_job_runs_total counter
podcron_job_runs_total{name="x",namespace="a",status="success",trigger="scheduled"} 5.0
podcron_job_runs_total{name="x",namespace="a",status="skipped",trigger="scheduled"} 2.0
podcron_job_runs_total{name="x",namespace="a",status="skipped",trigger="catch-up"} 1.0
podcron_job_runs_total{name="y",namespace="a",status="failure",trigger="scheduled"} 1.0
"""
    names = ("podcron_job_runs_total",)
    assert exported(page, names, status="skipped") == {"podcron_job_runs_total": {"a/x": 3.0}}
    assert exported(page, names)["podcron_job_runs_total"] == {"a/x": 8.0, "a/y": 1.0}


def test_a_seed_names_one_plan_and_every_fault_ends_before_the_window_closes() -> None:
    kinds = tuple(nemesis.KINDS)
    first = nemesis.plan(5, kinds, ["r0", "r1"], 600, lease_stale=6)
    assert first == nemesis.plan(5, kinds, ["r0", "r1"], 600, lease_stale=6)
    assert first != nemesis.plan(6, kinds, ["r0", "r1"], 600, lease_stale=6)
    assert {step.kind for step in first} == set(kinds)
    for earlier, later in itertools.pairwise(first):
        assert later.at >= earlier.at + earlier.seconds  # one at a time
    assert first[-1].at + first[-1].seconds <= 600 - nemesis.QUIET_END_SECONDS
    pauses = [step.seconds for step in first if step.kind == "pause"]
    assert all(3 <= seconds <= 18 for seconds in pauses)  # 0.5-3 x L with L = 6
    assert nemesis.plan(5, (), ["r0"], 600, lease_stale=6) == []


def test_a_replica_gets_clock_steps_or_rate_changes_never_both() -> None:
    for seed in range(20):
        steps = nemesis.plan(seed, ("clock", "rate", "kill"), ["r0", "r1"], 600, lease_stale=6)
        stepped = {step.target for step in steps if step.kind == "clock"}
        assert not stepped & nemesis.rate_changed(steps)


class _Recorder:
    """Targets that note each call, in order, with the monotonic time it ended."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def _note(self, what: str) -> None:
        self.calls.append((what, time.monotonic()))

    def pid(self, replica: str) -> int:
        return 42

    def read_counters(self, replica: str) -> None:
        time.sleep(0.05)  # a slow read: the process goes on meanwhile
        self._note("read")

    def signal(self, replica: str, signum: int) -> None:
        self._note(f"signal {signum}")

    def wait_exit(self, replica: str, timeout: float) -> None:
        self._note("exited")

    def restart(self, replica: str) -> None:
        self._note("restart")

    def proxy(self, replica: str) -> FaultProxy:
        raise AssertionError("a kill needs no proxy")

    def set_clock(self, replica: str, spec: str) -> None:
        raise AssertionError("a kill sets no clock")

    def kill_control_plane(self, name: str) -> None:
        raise AssertionError("a kill leaves the control plane alone")

    restart_control_plane = kill_control_plane

    def signal_control_plane(self, name: str, signum: int) -> None:
        raise AssertionError("a kill leaves the control plane alone")


def test_a_kill_is_noted_as_its_signal_goes_out_after_the_counters_are_read() -> None:
    targets = _Recorder()
    chaos = nemesis.Nemesis([nemesis.Step(0.0, "kill", "r1", 0.0)], targets, log=lambda _: None)
    chaos.start()
    chaos.join()
    assert [what for what, _ in targets.calls] == ["read", "signal 9", "exited", "restart"]
    [fault] = chaos.faults
    read_at, signalled_at = targets.calls[0][1], targets.calls[1][1]
    assert (fault.kind, fault.target, fault.pid) == ("kill", "r1", 42)
    assert read_at <= fault.monotonic <= signalled_at


@pytest.fixture
def echo() -> Iterator[int]:
    """A loopback server that answers every chunk with the same bytes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    def answer(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(1024):
                connection.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _exchange(port: int, data: bytes, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(data)
        try:
            return client.recv(1024)
        except TimeoutError:
            return b""


def _closed(client: socket.socket) -> bool:
    """Whether the proxy closed or reset the connection (nothing echoes any more)."""
    try:
        client.sendall(b"again")
        return client.recv(1024) == b""
    except ConnectionError:
        return True


def test_the_proxy_passes_delays_drops_and_black_holes_as_switched(echo: int) -> None:
    proxies = ProxyLoop()
    try:
        proxy = proxies.proxy(echo)
        assert _exchange(proxy.port, b"hello", 5) == b"hello"

        proxy.set_mode(Mode.LATENCY, 0.3)
        started = time.monotonic()
        assert _exchange(proxy.port, b"slow", 5) == b"slow"
        assert time.monotonic() - started >= 0.6  # each way

        proxy.set_mode(Mode.DROP_REPLIES)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as client:
            client.sendall(b"lost")
            with pytest.raises(TimeoutError):
                client.recv(1024)
            proxy.set_mode(Mode.PASS)  # the damaged connection is reset, not repaired
            client.settimeout(5)
            assert _closed(client)

        proxy.set_mode(Mode.BLACK_HOLE)
        assert _exchange(proxy.port, b"void", 0.5) == b""
        proxy.set_mode(Mode.PASS)
        assert _exchange(proxy.port, b"back", 5) == b"back"
    finally:
        proxies.close()
