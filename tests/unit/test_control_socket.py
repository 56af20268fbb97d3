"""The control socket end to end: a real engine, the real server, the sidecar's real client.

The client is asyncio's, as in the sidecar: it shares the event loop with the server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from podcron import wire
from podcron.context import JobContext, Trigger
from podcron.controller.control_socket import ENCODE_SLICE, ControlServer, JobCatalogue
from podcron.engine import ConcurrencyPolicy, Engine, JobSpec, RunFinished
from podcron.entrypoints import JobTarget
from podcron.errors import ErrorCode, NotOwner, OperatorRefused, OperatorUnavailable
from podcron.ha.ring import Assignment
from podcron.schedules import parse_schedule
from podcron.sidecar.operator_client import OperatorClient

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _noop(ctx: JobContext) -> None:
    return None


def _spec(name: str, target: JobTarget = _noop, **fields: Any) -> JobSpec:
    return JobSpec(
        job_id=f"ns/{name}",
        namespace="ns",
        name=name,
        entry_point=f"tests:{name}",
        target=target,
        schedule=parse_schedule({"daily": {"at": "02:30"}}, time_zone="Europe/Berlin"),
        **fields,
    )


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="podcron-"))
    yield directory / "run" / "control.sock"
    for path in sorted(directory.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    directory.rmdir()


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(shutdown_timeout_seconds=1.0)
    yield engine
    await engine.shutdown()


@pytest.fixture
async def server(engine: Engine, socket_path: Path) -> AsyncIterator[ControlServer]:
    server = ControlServer(engine, socket_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def client(socket_path: Path) -> OperatorClient:
    """A client that revalidates the list on every call, so each test sees changes at once."""
    return OperatorClient(str(socket_path), list_max_age=0)


async def test_no_jobs_lists_nothing_and_knows_no_job(
    server: ControlServer, client: OperatorClient
) -> None:
    await client.ping()
    jobs = await client.list_jobs()
    assert (jobs.total, jobs.data) == (0, b"[]")
    with pytest.raises(OperatorRefused) as refused:
        await client.get_job("ns/missing")
    assert (refused.value.code, refused.value.job_id) == (ErrorCode.JOB_NOT_FOUND, "ns/missing")
    with pytest.raises(OperatorRefused) as refused:
        await client.trigger("ns/missing", trace_headers={})
    assert refused.value.code == ErrorCode.JOB_NOT_FOUND


async def test_the_list_is_job_metadata_by_job_id_and_revalidated_by_etag(
    engine: Engine, server: ControlServer, client: OperatorClient
) -> None:
    engine.upsert(_spec("b"))
    engine.upsert(_spec("a", suspended=True))
    jobs = await client.list_jobs()
    listed = json.loads(jobs.data)
    assert jobs.total == 2
    assert [job["jobId"] for job in listed] == ["ns/a", "ns/b"]
    assert listed[0]["suspended"] is True
    assert listed[0]["nextExecutionTime"] is None
    assert listed[1]["humanReadable"] == "every day at 02:30 (Europe/Berlin)"
    assert listed[1]["nextExecutionTime"].endswith("Z")

    again = await client.list_jobs()
    assert again is jobs, "an unchanged list must come from the cache"

    engine.remove("ns/a")
    changed = await client.list_jobs()
    assert changed.etag != jobs.etag
    assert [job["jobId"] for job in json.loads(changed.data)] == ["ns/b"]


async def test_a_fresh_list_is_served_without_asking_until_a_trigger(
    engine: Engine, server: ControlServer, socket_path: Path
) -> None:
    client = OperatorClient(str(socket_path), list_max_age=3600)
    first = await client.list_jobs()
    engine.upsert(_spec("a", concurrency_policy=ConcurrencyPolicy.ALLOW))
    assert await client.list_jobs() is first, "within its max age"
    await client.trigger("ns/a", trace_headers={})
    listed = json.loads((await client.list_jobs()).data)
    assert [job["jobId"] for job in listed] == ["ns/a"], "a trigger makes the next list fresh"


async def test_one_job_is_the_same_object_as_in_the_list(
    engine: Engine, server: ControlServer, client: OperatorClient
) -> None:
    engine.upsert(_spec("a"))
    one = json.loads(await client.get_job("ns/a"))
    listed = json.loads((await client.list_jobs()).data)
    assert listed == [one]


async def test_trigger_runs_the_job_manually_in_the_callers_trace(
    engine: Engine, server: ControlServer, client: OperatorClient
) -> None:
    started = asyncio.Event()
    contexts: list[JobContext] = []

    async def job(ctx: JobContext) -> None:
        contexts.append(ctx)
        started.set()

    engine.upsert(_spec("a", target=job))
    answer = await client.trigger("ns/a", trace_headers={"traceparent": TRACEPARENT})
    assert answer == {
        "jobId": "ns/a",
        "triggered": True,
        "scheduledNextAt": json.loads(await client.get_job("ns/a"))["nextExecutionTime"],
    }
    await asyncio.wait_for(started.wait(), timeout=5)
    assert contexts[0].trigger is Trigger.MANUAL
    assert contexts[0].trace_headers()["traceparent"].split("-")[1] == TRACE_ID


async def test_trigger_of_a_running_forbid_job_is_refused(
    engine: Engine, server: ControlServer, client: OperatorClient
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        started.set()
        await release.wait()

    engine.upsert(_spec("a", target=job, concurrency_policy=ConcurrencyPolicy.FORBID))
    await client.trigger("ns/a", trace_headers={})
    await asyncio.wait_for(started.wait(), timeout=5)
    listed = json.loads((await client.list_jobs()).data)
    assert listed[0]["running"] is True
    with pytest.raises(OperatorRefused) as refused:
        await client.trigger("ns/a", trace_headers={})
    assert refused.value.code == ErrorCode.JOB_ALREADY_RUNNING
    release.set()


async def test_the_socket_is_group_only_and_removed_at_stop(
    engine: Engine, socket_path: Path
) -> None:
    server = ControlServer(engine, socket_path)
    await server.start()
    mode = (await asyncio.to_thread(socket_path.stat)).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    await server.stop()
    assert not await asyncio.to_thread(socket_path.exists)


async def test_a_stale_socket_is_replaced(engine: Engine, socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True)
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(socket_path))  # bound, never listening: what a killed operator leaves
    leftover.close()
    server = ControlServer(engine, socket_path)
    await server.start()
    try:
        await OperatorClient(str(socket_path)).ping()
    finally:
        await server.stop()


async def test_a_live_socket_or_another_file_is_never_replaced(
    engine: Engine, server: ControlServer, socket_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="another process is serving"):
        await ControlServer(engine, socket_path).start()
    other = socket_path.with_name("not-a-socket")
    other.write_text("precious")
    with pytest.raises(RuntimeError, match="is not a socket"):
        await ControlServer(engine, other).start()
    assert other.read_text() == "precious"


async def test_the_client_survives_an_operator_restart(
    engine: Engine, socket_path: Path, client: OperatorClient
) -> None:
    first = ControlServer(engine, socket_path)
    await first.start()
    await client.ping()
    await first.stop()
    with pytest.raises(OperatorUnavailable):
        await client.ping()
    with pytest.raises(OperatorUnavailable):
        await client.list_jobs()

    engine.upsert(_spec("a"))
    second = ControlServer(engine, socket_path)
    await second.start()
    try:
        jobs = await client.list_jobs()
        assert jobs.total == 1
    finally:
        await second.stop()


async def test_a_kept_connection_from_a_previous_operator_is_replaced(
    engine: Engine, socket_path: Path, client: OperatorClient
) -> None:
    first = ControlServer(engine, socket_path)
    await first.start()
    await client.ping()  # the client now keeps a connection to `first`
    await first.stop()
    second = ControlServer(engine, socket_path)
    await second.start()
    try:
        await client.ping()
    finally:
        await second.stop()


def _raw_exchange(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(str(path))
        raw.sendall(data)
        return wire.decode_line(raw.makefile("rb").readline())


@pytest.mark.parametrize(
    "line",
    [b"not json\n", b"[1]\n", b'{"op": "dance"}\n', b'{"op": "get", "jobId": 7}\n'],
    ids=["not-json", "not-an-object", "unknown-op", "bad-job-id"],
)
async def test_a_bad_request_is_answered_not_fatal(
    server: ControlServer, socket_path: Path, line: bytes
) -> None:
    header = await asyncio.to_thread(_raw_exchange, socket_path, line)
    assert header["ok"] is False
    assert header["error"] == ErrorCode.BAD_REQUEST
    await OperatorClient(str(socket_path)).ping()


async def test_an_overlong_line_is_refused(server: ControlServer, socket_path: Path) -> None:
    header = await asyncio.to_thread(_raw_exchange, socket_path, b"x" * (wire.MAX_LINE + 10))
    assert header["error"] == ErrorCode.BAD_REQUEST


async def test_the_catalogue_reencodes_only_after_a_change(engine: Engine) -> None:
    engine.upsert(_spec("a"))
    engine.upsert(_spec("b"))
    catalogue = JobCatalogue(engine)
    etag, total, listing = catalogue.listing()
    assert total == 2
    assert catalogue.listing()[2] is listing
    one_b = catalogue.one("ns/b")
    engine.upsert(_spec("a", suspended=True))
    new_etag, _, new_listing = catalogue.listing()
    assert new_etag != etag
    assert json.loads(new_listing)[0]["suspended"] is True
    assert catalogue.one("ns/b") is one_b, "an unchanged job keeps its encoding"


async def test_the_catalogue_snapshots_again_only_the_jobs_changed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("b", "d", "f"):
        engine.upsert(_spec(name))
    catalogue = JobCatalogue(engine)
    _, _, listing = catalogue.listing()
    unchanged = catalogue.one("ns/f")

    def every_job() -> None:
        raise AssertionError("every job snapshotted again")

    monkeypatch.setattr(engine, "snapshots", every_job)
    engine.upsert(_spec("d", suspended=True))
    engine.remove("ns/b")
    engine.upsert(_spec("a"))
    engine.upsert(_spec("e"))
    etag, total, listing = catalogue.listing()
    jobs = json.loads(listing)
    assert [job["name"] for job in jobs] == ["a", "d", "e", "f"], "by job id, b gone"
    assert total == 4
    assert [job["suspended"] for job in jobs] == [False, True, False, False]
    assert catalogue.one("ns/f") is unchanged
    assert catalogue.listing() == (etag, total, listing), "nothing changed since: the same"


async def test_jobs_changed_by_the_thousand_are_encoded_again_a_slice_a_turn_of_the_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"job{index:04d}" for index in range(ENCODE_SLICE * 5 // 2)]
    for name in names:
        engine.upsert(_spec(name))
    catalogue = JobCatalogue(engine)
    etag, _, _ = catalogue.listing()
    for name in names:
        engine.upsert(_spec(name, suspended=True))
    engine.remove(f"ns/{names[0]}")
    catching_up = asyncio.create_task(catalogue.catch_up())
    turns = 0
    async with asyncio.timeout(5):
        while not catching_up.done():  # another task on the loop meanwhile
            await asyncio.sleep(0)
            turns += 1
    assert turns >= 3, "the loop turned between the slices"

    def snapshot_again(job_id: str) -> None:
        raise AssertionError(f"{job_id} snapshotted again")

    monkeypatch.setattr(engine, "snapshot", snapshot_again)
    new_etag, total, listing = catalogue.listing()
    assert new_etag != etag
    assert total == len(names) - 1
    assert all(job["suspended"] for job in json.loads(listing))


async def test_the_engine_marks_each_job_whose_snapshot_may_have_changed() -> None:
    ran = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        ran.set()

    engine = Engine()
    recorded = asyncio.Event()
    engine.add_listener(lambda event: recorded.set() if isinstance(event, RunFinished) else None)
    changed = engine.watch_changes()
    engine.upsert(_spec("a", target=job))
    engine.upsert(_spec("b"))
    assert changed.take() == {"ns/a", "ns/b"}
    assert changed.take() == set(), "taken"
    engine.trigger("ns/a")
    await asyncio.wait_for(recorded.wait(), 5)  # its start, end and recording mark it
    assert ran.is_set()
    assert changed.take() == {"ns/a"}
    engine.remove("ns/b")
    assert changed.take() == {"ns/b"}
    await engine.shutdown()


async def test_each_job_names_the_replica_that_owns_it_in_the_assignment_adopted(
    engine: Engine,
) -> None:
    uids = {name: f"uid-{name}" for name in ("a", "b", "c", "d")}
    for name, uid in uids.items():
        engine.upsert(_spec(name, uid=uid))
    two = Assignment(["replica-1", "replica-2"])
    adopted = two
    catalogue = JobCatalogue(engine, lambda: adopted)
    etag, _, listing = catalogue.listing()
    owners = {job["name"]: job["replica"] for job in json.loads(listing)}
    assert owners == {name: two.owner_of(uid) for name, uid in uids.items()}
    assert set(owners.values()) <= {"replica-1", "replica-2"}
    assert json.loads(catalogue.one("ns/a"))["replica"] == owners["a"]
    # replica-2 leaves: the next epoch's assignment moves its jobs, and the list says so.
    adopted = Assignment(["replica-1"])
    assert json.loads(catalogue.one("ns/a"))["replica"] == "replica-1"
    new_etag, _, new_listing = catalogue.listing()
    assert new_etag != etag
    assert {job["replica"] for job in json.loads(new_listing)} == {"replica-1"}
    # One replica: no owner to name.
    assert json.loads(JobCatalogue(engine).one("ns/a"))["replica"] is None


async def test_a_job_another_replica_runs_is_refused_with_its_address(
    engine: Engine, socket_path: Path, client: OperatorClient
) -> None:
    ran = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        ran.set()

    def elsewhere(job_id: str) -> None:
        if job_id == "ns/theirs":
            raise NotOwner(job_id, "10.244.1.7:8080")
        if job_id == "ns/moving":
            raise NotOwner(job_id, "")

    for name in ("theirs", "moving", "ours"):
        engine.upsert(_spec(name, target=job))
    server = ControlServer(engine, socket_path, elsewhere=elsewhere)
    await server.start()
    try:
        for job_id, location in (("ns/theirs", "10.244.1.7:8080"), ("ns/moving", "")):
            with pytest.raises(OperatorRefused) as refused:
                await client.trigger(job_id, trace_headers={})
            assert (refused.value.code, refused.value.location) == (ErrorCode.NOT_OWNER, location)
            with pytest.raises(OperatorRefused) as refused:
                await client.runs(job_id)
            assert refused.value.code == ErrorCode.NOT_OWNER
        assert not ran.is_set()  # neither ran here
        await client.trigger("ns/ours", trace_headers={})
        await asyncio.wait_for(ran.wait(), timeout=5)
    finally:
        await server.stop()
