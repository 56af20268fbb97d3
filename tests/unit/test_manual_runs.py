"""Manual runs have a budget of their own: refused with 429 when spent, never delaying the schedule.

The engine alone, then through the control socket and the sidecar's real
client and Falcon app (the HTTP status, ``Retry-After`` and the envelope).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from falcon import testing

from podcron.context import JobContext, Trigger
from podcron.controller.control_socket import ControlServer
from podcron.engine import ConcurrencyPolicy, Engine, RunStatus
from podcron.errors import OperatorRefused, TooManyManualRuns
from podcron.sidecar.app import create_app
from podcron.sidecar.cidr import Allowlist, parse_networks
from podcron.sidecar.operator_client import OperatorClient

from .engine_support import Recorder, spec

HUNG_FOR = 60.0


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


async def test_manual_runs_beyond_the_budget_are_refused_until_one_ends() -> None:
    engine = Engine(max_manual_runs=2, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(job, every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
    engine.trigger("ns/job")
    engine.trigger("ns/job")
    with pytest.raises(TooManyManualRuns, match="2 manual runs are active") as refused:
        engine.trigger("ns/job")
    assert refused.value.retry_after_seconds == 1
    assert refused.value.reason == "TooManyManualRuns"
    release.set()
    await recorder.until(lambda: len(recorder.finished()) == 2)
    engine.trigger("ns/job")  # the budget is back
    await recorder.until(lambda: len(recorder.finished()) == 3)
    assert all(e.status is RunStatus.SUCCESS for e in recorder.finished())
    assert engine.snapshot("ns/job").history.counts.total == 3, "a refused run is not a run"
    await engine.shutdown()


async def test_manual_runs_take_neither_run_slots_nor_threads_from_scheduled_runs(
    release: threading.Event,
) -> None:
    # One scheduled slot and one worker thread: a manual run holding either would
    # make the scheduled jobs below wait, and Forbid would then skip their ticks.
    engine = Engine(
        max_concurrent_runs=1,
        worker_threads=1,
        max_manual_runs=2,
        threads_per_job=2,
        shutdown_timeout_seconds=1.0,
    )
    recorder = Recorder(engine)

    def hog(ctx: JobContext) -> None:
        release.wait(HUNG_FOR)

    def tick_in_thread(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(hog, name="hog", every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
    engine.trigger("ns/hog")
    engine.trigger("ns/hog")
    await recorder.until(lambda: len(recorder.started("ns/hog")) == 2)
    engine.upsert(spec(tick_in_thread, name="tick", every="1s"))
    await recorder.until(lambda: recorder.count("tick", RunStatus.SUCCESS) >= 3)
    assert recorder.count("tick", RunStatus.SKIPPED) == 0
    assert all(e.trigger is Trigger.SCHEDULED for e in recorder.started("ns/tick"))
    release.set()
    await engine.shutdown()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="podcron-") as directory:
        yield Path(directory) / "control.sock"


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(max_manual_runs=1, shutdown_timeout_seconds=1.0)
    yield engine
    await engine.shutdown()


async def test_the_sidecar_answers_429_with_retry_after_and_the_envelope(
    engine: Engine, socket_path: Path
) -> None:
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(job, every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
    engine.upsert(spec(job, name="forbid", every="1h"))
    server = ControlServer(engine, socket_path)
    await server.start()
    try:
        client = OperatorClient(str(socket_path))
        app = create_app(client, Allowlist(parse_networks(["127.0.0.1/32"])), ())
        async with testing.ASGIConductor(app) as api:
            first = await api.simulate_post("/_sys/job/ns/job")
            assert first.status_code == 200
            refused = await api.simulate_post("/_sys/job/ns/job")
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "1"
            assert refused.json["data"] is None
            assert refused.json["error"]["code"] == "TOO_MANY_MANUAL_RUNS"
            assert "maxManualRuns" in refused.json["error"]["message"]
            with pytest.raises(OperatorRefused) as direct:
                await client.trigger("ns/job", trace_headers={})
            assert direct.value.code == "TOO_MANY_MANUAL_RUNS"
            assert direct.value.retry_after == 1
            release.set()
            await recorder.until(lambda: not engine.snapshot("ns/job").running)
            # A refusal of the policy keeps saying why, across the socket.
            release.clear()
            assert (await api.simulate_post("/_sys/job/ns/forbid")).status_code == 200
            with pytest.raises(OperatorRefused, match="Forbid") as policy:
                await client.trigger("ns/forbid", trace_headers={})
            assert policy.value.code == "JOB_ALREADY_RUNNING"
            release.set()
    finally:
        await server.stop()
