"""The status writer's coalescing, rate limit and retries, against a recording patch function."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from podcron.controller.status import StatusWriter, merge
from podcron.errors import ApiConflict, ObjectGone, TransientApiError

from ..waiting import until

# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = pytest.mark.asyncio_debug


class RecordingApi:
    """Stands in for the API server's status endpoint; can fail on request.

    It keeps each object's status and a resourceVersion, which every patch moves
    on, and refuses a patch made on an older one (409) as the API server does.
    """

    def __init__(self) -> None:
        self.patches: list[tuple[float, str, dict[str, Any]]] = []
        self.fail_next: list[Exception] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self._lock = threading.Lock()

    def patch(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str:
        key = f"{namespace}/{name}"
        with self._lock:
            if self.fail_next:
                raise self.fail_next.pop(0)
            if resource_version is not None and resource_version != str(self.versions.get(key)):
                raise ApiConflict("409 Conflict")
            self.patches.append((time.monotonic(), key, dict(status)))
            return self._write(key, status)

    def write(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        """Somebody else's write: the object moves to a new version."""
        with self._lock:
            return self._write(f"{namespace}/{name}", status)

    def _write(self, key: str, status: Mapping[str, Any]) -> str:
        self.statuses[key] = merge(self.statuses.get(key, {}), status)
        self.versions[key] = self.versions.get(key, 0) + 1
        return str(self.versions[key])

    def read(self, namespace: str, name: str) -> tuple[Mapping[str, Any], str]:
        key = f"{namespace}/{name}"
        with self._lock:
            return dict(self.statuses.get(key, {})), str(self.versions.get(key, 0))


@pytest.fixture
async def running() -> Any:
    tasks: list[asyncio.Task[None]] = []

    def start(writer: StatusWriter) -> StatusWriter:
        tasks.append(asyncio.create_task(writer.run()))
        return writer

    yield start
    for task in tasks:
        task.cancel()


def test_merge_is_a_json_merge_patch_of_newer_over_older() -> None:
    older = {"runs": {"total": 1, "failed": 1}, "lastError": "x", "running": True}
    newer = {"runs": {"total": 2}, "running": False, "lastError": None}
    assert merge(older, newer) == {
        "runs": {"total": 2, "failed": 1},
        "lastError": None,
        "running": False,
    }


async def test_updates_to_one_object_are_coalesced(running: Any) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, per_object_interval=0.3))
    started = time.monotonic()
    for total in range(1, 51):
        writer.update("ns", "a", {"runs": {"total": total}})
        await asyncio.sleep(0.005)
    updating = time.monotonic() - started
    await until(lambda: api.patches and api.patches[-1][2]["runs"]["total"] == 50)
    # One patch per interval while updates kept coming (a loaded machine stretches the
    # loop, never the bound), and one for the last of them.
    assert len(api.patches) <= updating // 0.3 + 2
    assert len(api.patches) < 50
    gaps = [b[0] - a[0] for a, b in zip(api.patches, api.patches[1:], strict=False)]
    assert all(gap >= 0.29 for gap in gaps)


async def test_overall_rate_is_capped(running: Any) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, patches_per_second=50))
    for index in range(30):
        writer.update("ns", f"job-{index}", {"running": True})
    await until(lambda: len(api.patches) == 30)
    times = sorted(t for t, _, _ in api.patches)
    # 30 patches at 50/s cannot take less than 29 spacings of 20 ms.
    assert times[-1] - times[0] >= 29 * 0.02 * 0.95


async def test_transient_failures_are_retried_and_merged_with_newer_updates(
    running: Any,
) -> None:
    api = RecordingApi()
    api.fail_next = [TransientApiError("503 Service Unavailable")]
    writer = running(StatusWriter(api.patch, per_object_interval=0.05))
    writer.update("ns", "a", {"runs": {"total": 1, "failed": 1}, "lastError": "boom"})
    await until(lambda: not api.fail_next)
    writer.update("ns", "a", {"runs": {"total": 2}})
    await until(lambda: bool(api.patches))
    assert api.patches[-1][2] == {"runs": {"total": 2, "failed": 1}, "lastError": "boom"}


async def test_gone_objects_are_dropped(running: Any) -> None:
    api = RecordingApi()
    api.fail_next = [ObjectGone("Not Found")]
    writer = running(StatusWriter(api.patch, per_object_interval=0.05))
    writer.update("ns", "gone", {"running": False})
    await until(lambda: not api.fail_next)
    await writer.flush(until=asyncio.get_running_loop().time() + 5)
    assert api.patches == []


async def test_flush_sends_what_waits_for_its_interval() -> None:
    api = RecordingApi()
    writer = StatusWriter(api.patch, per_object_interval=60)
    writer.update("ns", "a", {"runs": {"total": 1}})
    await writer.flush(until=asyncio.get_running_loop().time() + 5)
    writer.update("ns", "a", {"runs": {"total": 2}})
    await writer.flush(until=asyncio.get_running_loop().time() + 5)
    assert [p[2]["runs"]["total"] for p in api.patches] == [1, 2]
    writer.close()


async def test_urgent_updates_go_ahead_of_the_queue(running: Any) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, patches_per_second=20))
    for index in range(10):
        writer.update("ns", f"job-{index}", {"running": True})
    writer.update("ns", "applied", {"conditions": []}, urgent=True)
    await until(lambda: len(api.patches) == 11)
    order = [job for _, job, _ in api.patches]
    assert order.index("ns/applied") <= 2


async def test_patches_of_one_object_never_overlap(running: Any) -> None:
    spans: list[tuple[float, float, dict[str, Any]]] = []
    first_started = threading.Event()

    def slow_patch(
        namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        started = time.monotonic()
        first_started.set()
        time.sleep(0.2)
        spans.append((started, time.monotonic(), dict(status)))

    writer = running(StatusWriter(slow_patch, per_object_interval=0.01))
    writer.update("ns", "a", {"runs": {"total": 1}})
    await until(first_started.is_set)
    # Urgent, but the first patch is still on its way: this one must follow it.
    writer.update("ns", "a", {"runs": {"total": 2}}, urgent=True)
    await until(lambda: len(spans) == 2)
    (_, first_end, first), (second_start, _, second) = spans
    assert second_start >= first_end
    assert [first["runs"]["total"], second["runs"]["total"]] == [1, 2]


async def test_an_object_is_idle_only_with_nothing_queued_nor_on_its_way(running: Any) -> None:
    sending, release = threading.Event(), threading.Event()

    def held_patch(
        namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        sending.set()
        release.wait(5)

    writer = StatusWriter(held_patch)
    assert writer.idle("ns", "a")
    writer.update("ns", "a", {"runs": {"total": 1}})
    assert not writer.idle("ns", "a")  # queued
    running(writer)
    await until(sending.is_set)
    assert not writer.idle("ns", "a")  # on its way
    release.set()
    await until(lambda: writer.idle("ns", "a"))
    assert writer.idle("ns", "b")


async def test_flush_at_shutdown_is_not_held_to_the_rate() -> None:
    api = RecordingApi()
    writer = StatusWriter(api.patch, patches_per_second=1)
    for index in range(20):
        writer.update("ns", f"job-{index}", {"running": False})
    started = time.monotonic()
    await writer.flush(until=asyncio.get_running_loop().time() + 5)
    # At 1 patch/s this would take 19 s: the last outcomes would be lost.
    assert len(api.patches) == 20
    assert time.monotonic() - started < 5
    writer.close()


def soon(seconds: float = 5.0) -> float:
    """A flush deadline ``seconds`` from now, on the event loop's clock."""
    return asyncio.get_running_loop().time() + seconds


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the writer's run() as the operator's shutdown does, and wait for it."""
    task.cancel()
    await asyncio.wait([task])


async def test_stopping_the_writer_while_a_patch_waits_for_its_turn_loses_nothing() -> None:
    api = RecordingApi()
    # 10 patches a second: the second object waits 100 ms for its turn.
    writer = StatusWriter(api.patch, patches_per_second=10)
    task = asyncio.create_task(writer.run())
    writer.update("ns", "a", {"running": False, "runs": {"total": 3}})
    writer.update("ns", "b", {"running": False, "runs": {"total": 5}})
    await until(lambda: len(api.patches) == 1)
    await stop(task)
    assert await writer.flush(until=soon()) == 0
    assert sorted((job, status["runs"]["total"]) for _, job, status in api.patches) == [
        ("ns/a", 3),
        ("ns/b", 5),
    ]
    writer.close()


async def test_stopping_the_writer_while_a_patch_waits_for_a_free_slot_loses_nothing() -> None:
    started, release = threading.Event(), threading.Event()
    sent: list[str] = []

    def patch(
        namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        if name == "slow":
            started.set()
            release.wait(5)
        sent.append(name)

    # One patch in flight at a time: "b" waits for the slot "slow" holds.
    writer = StatusWriter(patch, concurrency=1, flush_concurrency=1)
    task = asyncio.create_task(writer.run())
    writer.update("ns", "slow", {"running": False})
    writer.update("ns", "b", {"running": False})
    await until(started.is_set)
    # The writer has taken "b" from its queue, and waits for the slot.
    await until(lambda: ("ns", "b") not in writer._queued)
    await stop(task)
    release.set()
    assert await writer.flush(until=soon()) == 0
    assert sorted(sent) == ["b", "slow"]
    writer.close()


async def test_the_flush_has_many_patches_in_flight_at_once() -> None:
    # Every patch waits until 64 are in flight together: fewer, and none returns.
    together = threading.Barrier(64, timeout=10)
    api = RecordingApi()

    def patch(
        namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        together.wait()
        api.patch(namespace, name, status)

    writer = StatusWriter(patch, concurrency=16, flush_concurrency=64)
    for index in range(64):
        writer.update("ns", f"job-{index}", {"running": False})
    assert await writer.flush(until=soon(30)) == 0
    assert len(api.patches) == 64
    writer.close()


async def test_the_flush_retries_a_transient_failure_while_time_remains() -> None:
    api = RecordingApi()
    api.fail_next = [TransientApiError("503 Service Unavailable")] * 2
    writer = StatusWriter(api.patch)
    writer.update("ns", "a", {"running": False})
    assert await writer.flush(until=soon(10)) == 0
    assert [job for _, job, _ in api.patches] == ["ns/a"]
    writer.close()


async def test_the_flush_stops_at_its_deadline_and_says_what_it_did_not_write() -> None:
    release = threading.Event()

    def patch(
        namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> None:
        if name == "hung":
            release.wait(10)

    writer = StatusWriter(patch)
    writer.update("ns", "hung", {"running": False})
    writer.update("ns", "fine", {"running": False})
    try:
        assert await writer.flush(until=soon(0.5)) == 1
    finally:
        release.set()
        writer.close()


async def test_the_writer_stops_when_cancelled_as_an_update_wakes_it() -> None:
    api = RecordingApi()
    writer = StatusWriter(api.patch)
    task = asyncio.create_task(writer.run())
    writer.update("ns", "a", {"runs": {"total": 1}})
    await until(lambda: len(api.patches) == 1)
    # Waits for its per-object interval: the writer sleeps with a timeout.
    writer.update("ns", "a", {"runs": {"total": 2}})
    await asyncio.sleep(0)
    writer.update("ns", "b", {"running": True}, urgent=True)  # wakes the writer ...
    task.cancel()  # ... as the shutdown stops it
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "the cancellation was swallowed: the writer kept running"
    assert await writer.flush(until=soon()) == 0
    writer.close()


class Counting:
    """A job's run count, and how often its status fields were built from it."""

    def __init__(self) -> None:
        self.total = 0
        self.builds = 0

    def build(self) -> dict[str, Any]:
        self.builds += 1
        return {"runs": {"total": self.total}} if self.total else {}


async def test_fields_built_when_sent_are_built_once_per_patch_from_the_newest_state(
    running: Any,
) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, per_object_interval=0.3))
    job = Counting()
    for _ in range(50):
        job.total += 1
        writer.update_when_sent("ns", "a", job.build)
        await asyncio.sleep(0.005)
    await until(lambda: api.patches and api.patches[-1][2]["runs"]["total"] == 50)
    assert job.builds == len(api.patches) < 50


async def test_fields_built_when_sent_go_over_the_eager_ones_of_the_same_patch() -> None:
    api = RecordingApi()
    writer = StatusWriter(api.patch)
    job = Counting()
    job.total = 3
    writer.update_when_sent("ns", "a", job.build)
    writer.update("ns", "a", {"runs": {"total": 1, "failed": 1}, "replica": "r1"})
    await writer.flush(until=asyncio.get_running_loop().time() + 5)
    assert [p[2] for p in api.patches] == [{"runs": {"total": 3, "failed": 1}, "replica": "r1"}]
    writer.close()


async def test_fields_built_empty_send_no_patch_and_a_forgotten_object_builds_nothing(
    running: Any,
) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, per_object_interval=0.01))
    nothing, forgotten = Counting(), Counting()
    forgotten.total = 1
    writer.update_when_sent("ns", "empty", nothing.build)
    writer.update_when_sent("ns", "gone", forgotten.build)
    writer.forget("ns", "gone")
    await until(lambda: nothing.builds == 1)
    writer.update("ns", "marker", {"running": False})  # patched after the empty one's turn
    await until(lambda: api.patches)
    assert [p[1] for p in api.patches] == ["ns/marker"]
    assert forgotten.builds == 0
    assert writer.pending == 0


async def test_the_flush_builds_what_waits_and_sends_it() -> None:
    api = RecordingApi()
    writer = StatusWriter(api.patch, per_object_interval=60)
    job = Counting()
    job.total = 7
    writer.update_when_sent("ns", "a", job.build)
    unsent = await writer.flush(until=asyncio.get_running_loop().time() + 5)
    assert unsent == 0
    assert [p[2] for p in api.patches] == [{"runs": {"total": 7}}]
    writer.close()


async def test_a_patch_on_an_old_version_is_sent_again_as_rebase_says(running: Any) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {"runs": {"total": 5}})
    writer = running(StatusWriter(api.patch, per_object_interval=0.01, read=api.read))
    handed: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def rebase(
        namespace: str, name: str, refused: Mapping[str, Any], found: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        handed.append((dict(refused), dict(found)))
        return {"runs": {"total": found["runs"]["total"] + 1}}

    writer.rebase = rebase
    writer.note_version("ns", "a", version)
    api.write("ns", "a", {"runs": {"total": 7}})  # somebody else wrote since
    writer.update("ns", "a", {"runs": {"total": 6}})
    await until(lambda: api.statuses["ns/a"]["runs"]["total"] == 8)
    assert handed == [({"runs": {"total": 6}}, {"runs": {"total": 7}})]
    # The refused patch never landed, so the counter never went from 7 to 6.
    assert [status for _, _, status in api.patches] == [{"runs": {"total": 8}}]


async def test_a_rebase_that_returns_nothing_sends_nothing(running: Any) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {"runs": {"total": 5}})
    writer = running(StatusWriter(api.patch, per_object_interval=0.01, read=api.read))
    refused: list[Mapping[str, Any]] = []
    writer.rebase = lambda namespace, name, patch, found: refused.append(patch)
    writer.note_version("ns", "a", version)
    api.write("ns", "a", {"runs": {"total": 7}})
    writer.update("ns", "a", {"runs": {"total": 6}})
    await until(lambda: bool(refused))
    await until(lambda: writer.pending == 0)
    assert api.patches == []
    assert api.statuses["ns/a"] == {"runs": {"total": 7}}


async def test_without_a_rebase_a_refused_patch_goes_again_on_no_version(running: Any) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {})
    writer = running(StatusWriter(api.patch, per_object_interval=0.01))
    writer.note_version("ns", "a", version)
    api.write("ns", "a", {"lastError": "theirs"})
    writer.update("ns", "a", {"running": True})
    await until(lambda: bool(api.patches))
    assert api.statuses["ns/a"] == {"lastError": "theirs", "running": True}


async def test_the_writers_own_patches_keep_its_version_current(running: Any) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {})
    writer = running(StatusWriter(api.patch, per_object_interval=0.01, read=api.read))
    writer.rebase = lambda *_: pytest.fail("no other writer: nothing to rebase")
    writer.note_version("ns", "a", version)

    def written(total: int) -> Callable[[], bool]:
        return lambda: api.statuses["ns/a"].get("runs") == {"total": total}

    for total in (1, 2, 3):
        writer.update("ns", "a", {"runs": {"total": total}})
        await until(written(total))
        # An older version, noted late (a watch lags behind), does not replace it.
        writer.note_version("ns", "a", version)
    assert len(api.patches) == 3


async def test_a_version_taken_from_another_writer_is_built_on_without_a_refusal(
    running: Any,
) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {})
    writer = running(StatusWriter(api.patch, per_object_interval=0.01, read=api.read))
    writer.rebase = lambda *_: pytest.fail("the version was current: nothing to rebase")
    writer.note_version("ns", "a", version)
    theirs = api.write("ns", "a", {"runs": {"total": 7}})  # a job's previous owner wrote
    writer.take_version("ns", "a", theirs)  # as the watch showed it, before the gain
    writer.update("ns", "a", {"runs": {"total": 8}})
    await until(lambda: api.statuses["ns/a"]["runs"]["total"] == 8)
    assert len(api.patches) == 1


async def test_an_update_no_longer_wanted_is_dropped_unsent(running: Any) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, per_object_interval=0.01))
    writer.wanted = lambda namespace, name, patch: name != "moved" or "runs" in patch
    writer.update("ns", "moved", {"running": False}, urgent=True)  # its owner writes it now
    writer.update("ns", "ours", {"running": False})
    writer.update_when_sent("ns", "moved-ran", lambda: {"runs": {"total": 1}})
    await until(lambda: writer.pending == 0)
    assert sorted(name for _, name, _ in api.patches) == ["ns/moved-ran", "ns/ours"]


async def test_a_refused_patch_goes_again_without_waiting_out_the_interval(running: Any) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {})
    writer = running(StatusWriter(api.patch, per_object_interval=3600, read=api.read))
    writer.rebase = lambda namespace, name, refused, found: refused
    writer.note_version("ns", "a", version)
    api.write("ns", "a", {"lastError": "theirs"})  # say, kopf's write right after
    writer.update("ns", "a", {"conditions": ["Ready"]}, urgent=True)
    # An hour between two patches of one object, but the refused one was due already.
    await until(lambda: bool(api.patches))
    assert api.statuses["ns/a"] == {"lastError": "theirs", "conditions": ["Ready"]}


async def test_a_refused_read_after_a_conflict_drops_the_patch_and_the_writer_goes_on(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api = RecordingApi()
    version = api.write("ns", "a", {})
    refusals = [PermissionError("403 Forbidden")]

    def read(namespace: str, name: str) -> tuple[Mapping[str, Any], str]:
        if refusals:
            raise refusals.pop()
        return api.read(namespace, name)

    writer = running(StatusWriter(api.patch, per_object_interval=0.01, read=read))
    writer.rebase = lambda namespace, name, refused, found: refused
    writer.note_version("ns", "a", version)
    api.write("ns", "a", {"lastError": "theirs"})
    writer.update("ns", "a", {"running": True})
    await until(lambda: "could not be read again" in caplog.text)
    await until(lambda: writer.pending == 0)
    assert api.patches == []
    # The next update is sent on the version the read would have found: rebased again.
    api.write("ns", "a", {"lastError": "again"})
    writer.update("ns", "a", {"running": False})
    await until(lambda: bool(api.patches))
    assert api.statuses["ns/a"] == {"lastError": "again", "running": False}


async def test_the_writer_says_which_patches_landed_and_which_perhaps_did(running: Any) -> None:
    api = RecordingApi()
    writer = running(StatusWriter(api.patch, per_object_interval=0.01))
    heard: list[tuple[str, dict[str, Any], bool]] = []
    writer.landed = lambda namespace, name, patch, sure: heard.append((name, dict(patch), sure))
    api.fail_next = [TransientApiError("504 Gateway Timeout")]
    writer.update("ns", "a", {"runs": {"total": 1}})
    await until(lambda: len(heard) == 2)
    assert heard == [("a", {"runs": {"total": 1}}, False), ("a", {"runs": {"total": 1}}, True)]
    api.fail_next = [ObjectGone("Not Found")]  # refused for good: nothing landed
    writer.update("ns", "b", {"runs": {"total": 2}})
    await until(lambda: not api.fail_next and writer.pending == 0)
    assert len(heard) == 2
