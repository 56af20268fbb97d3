"""Readiness at start-up: the gate, the listing loop, and "not ready" over the real socket."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import falcon.testing
import pytest

from podcron.context import JobContext
from podcron.controller.control_socket import ControlServer
from podcron.controller.readiness import Key, StartupGate, watch_startup
from podcron.engine import Engine, JobSpec
from podcron.errors import OperatorRefused, OperatorStarting
from podcron.schedules import parse_schedule
from podcron.sidecar.app import create_app
from podcron.sidecar.cidr import Allowlist, parse_networks
from podcron.sidecar.operator_client import OperatorClient


def test_the_gate_opens_once_every_listed_object_was_reconciled() -> None:
    gate = StartupGate()
    gate.reconciled("ns", "early")  # kopf may be faster than the listing
    gate.listed({("ns", "early"), ("ns", "a"), ("ns", "b")})
    assert not gate.complete
    gate.reconciled("ns", "a")
    assert gate.waiting == {("ns", "b")}
    gate.reconciled("ns", "b")
    assert gate.complete


def test_an_object_deleted_after_the_listing_no_longer_counts() -> None:
    gate = StartupGate()
    gate.listed({("ns", "a"), ("ns", "gone")})
    gate.reconciled("ns", "a")
    assert not gate.complete
    gate.listed({("ns", "a"), ("ns", "new")})  # a later listing: only drops what went
    assert gate.complete


def test_no_objects_means_ready_at_once() -> None:
    gate = StartupGate()
    gate.listed(set())
    assert gate.complete


async def test_a_failed_listing_is_retried() -> None:
    gate = StartupGate()
    answers: list[set[Key] | Exception] = [ConnectionRefusedError("no API server yet"), set()]

    def list_jobs() -> set[Key]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    await asyncio.wait_for(watch_startup(gate, list_jobs, relist_seconds=0.01), 10)
    assert gate.complete
    assert answers == []


async def test_an_object_never_reconciled_holds_readiness_only_so_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = StartupGate()
    await asyncio.wait_for(
        watch_startup(gate, lambda: {("ns", "stuck")}, relist_seconds=0.01, give_up_seconds=0.1),
        10,
    )
    assert gate.complete
    assert "ns/stuck" in caplog.text


async def test_the_objects_are_listed_again_only_while_none_of_them_comes() -> None:
    gate = StartupGate()
    listings = 0
    third = threading.Event()

    def list_jobs() -> set[Key]:
        nonlocal listings
        listings += 1
        if listings == 3:
            third.set()
        return {("ns", "a"), ("ns", "b"), ("ns", "gone")}

    watching = asyncio.create_task(watch_startup(gate, list_jobs, relist_seconds=0.2))
    await asyncio.sleep(0.1)
    gate.reconciled("ns", "a")  # progress: the next 0.2 s pass without a listing
    await asyncio.sleep(0.2)
    assert listings == 1
    gate.reconciled("ns", "b")
    # Then nothing comes: listed again (every 0.2 s), and the one that went still holds it,
    # as listed; deleted, the next listing drops it.
    assert await asyncio.to_thread(third.wait, 10)
    assert not gate.complete
    assert gate.left == 1
    watching.cancel()


# -- "not ready" through the control socket and the sidecar --------------------


async def _noop(ctx: JobContext) -> None:
    return None


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="podcron-") as directory:
        yield Path(directory) / "control.sock"


@pytest.fixture
async def starting(socket_path: Path) -> AsyncIterator[tuple[Engine, StartupGate]]:
    """An engine holding ns/known, behind a control socket whose gate waits for ns/other."""
    engine = Engine(shutdown_timeout_seconds=1.0)
    engine.upsert(
        JobSpec(
            job_id="ns/known",
            namespace="ns",
            name="known",
            entry_point="tests:noop",
            target=_noop,
            schedule=parse_schedule({"daily": {"at": "02:30"}}),
        )
    )
    gate = StartupGate()
    gate.listed({("ns", "known"), ("ns", "other")})
    gate.reconciled("ns", "known")
    server = ControlServer(engine, socket_path, ready=lambda: gate.complete)
    await server.start()
    yield engine, gate
    await server.stop()
    await engine.shutdown()


async def test_before_ready_an_unknown_job_is_not_ready_rather_than_not_found(
    starting: tuple[Engine, StartupGate], socket_path: Path
) -> None:
    _, gate = starting
    client = OperatorClient(str(socket_path), list_max_age=0)
    # What the engine holds already is served.
    assert b'"jobId":"ns/known"' in await client.get_job("ns/known")
    calls: tuple[Callable[[], Awaitable[object]], ...] = (
        lambda: client.get_job("ns/other"),
        lambda: client.trigger("ns/other", trace_headers={}),
        client.ping,
        client.list_jobs,
    )
    for call in calls:
        with pytest.raises(OperatorStarting):
            await call()
    gate.reconciled("ns", "other")  # e.g. found invalid: still unknown to the engine
    await client.ping()
    assert (await client.list_jobs()).total == 1
    with pytest.raises(OperatorRefused) as refused:
        await client.get_job("ns/other")
    assert refused.value.code == "JOB_NOT_FOUND"


async def test_the_sidecar_answers_503_for_a_job_not_registered_yet(
    starting: tuple[Engine, StartupGate], socket_path: Path
) -> None:
    app = create_app(
        OperatorClient(str(socket_path), list_max_age=0),
        Allowlist(parse_networks(("127.0.0.1/32",))),
        (),
    )
    async with falcon.testing.ASGIConductor(app, headers={"Host": "localhost"}) as http:
        answers = [
            await http.simulate_request(method, "/_sys/job/ns/other", remote_addr="127.0.0.1")
            for method in ("GET", "POST")
        ]
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json["error"] == {
            "code": "OPERATOR_UNAVAILABLE",
            "message": "the operator is starting; try again shortly",
        }
