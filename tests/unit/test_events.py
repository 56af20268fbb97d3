"""The event recorder's aggregation, against a recording stand-in for the API.

A real API server sees the same in tests/integration (test_reconciliation, test_kubectl_view);
here the stand-in lets a test expire an Event or fail a request on purpose.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import pytest

from podcron.controller.events import (
    COMBINED_PREFIX,
    MAX_SIMILAR_MESSAGES,
    REPEAT_BURST,
    EventRecorder,
    ObjectRef,
)
from podcron.controller.kubeapi import KubeApi
from podcron.errors import ObjectGone, TransientApiError

from ..waiting import until

JOB = ObjectRef("ns", "job", "uid-1")


@dataclass
class Call:
    verb: str  # "create" or "patch"
    name: str
    fields: dict[str, Any]


class RecordingApi:
    """Creates and patches Events in a dict, as the API server would."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.fail_next: Exception | None = None
        self._lock = threading.Lock()

    def create_event(self, **fields: Any) -> str:
        with self._lock:
            self._maybe_fail()
            name = f"{fields['name']}.{len(self.calls)}"
            self.events[name] = dict(fields)
            self.calls.append(Call("create", name, fields))
            return name

    def patch_event(self, *, namespace: str, name: str, **fields: Any) -> None:
        with self._lock:
            self._maybe_fail()
            if name not in self.events:
                raise ObjectGone("not found")
            self.events[name] |= fields
            self.calls.append(Call("patch", name, fields))

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error


class LoopClock:
    """Moves the running loop's clock forward on demand (real time still passes too)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = loop.time
        monkeypatch.setattr(loop, "time", lambda: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> LoopClock:
    return LoopClock(asyncio.get_running_loop(), monkeypatch)


@pytest.fixture
def api() -> RecordingApi:
    return RecordingApi()


def recorder(api: RecordingApi, **options: Any) -> EventRecorder:
    return EventRecorder(cast(KubeApi, api), **options)


def failed(events: EventRecorder, error: str, ref: ObjectRef = JOB) -> None:
    events.run_failed(ref, error)


async def use_the_burst(events: EventRecorder, api: RecordingApi, ref: ObjectRef = JOB) -> None:
    """Fail ``REPEAT_BURST`` times, each once the previous one reached the API."""
    for _ in range(REPEAT_BURST):
        reached = calls_reach(api, len(api.calls) + 1)
        failed(events, "ValueError: boom", ref)
        await until(reached)


def calls_reach(api: RecordingApi, count: int) -> Callable[[], bool]:
    return lambda: len(api.calls) >= count


async def test_a_repeat_counts_on_the_first_event(api: RecordingApi) -> None:
    events = recorder(api)
    for _ in range(3):
        failed(events, "ValueError: boom")
    await until(lambda: [e for e in api.events.values() if e.get("count") == 3])
    assert len(api.events) == 1
    (event,) = api.events.values()
    assert (event["event_type"], event["reason"]) == ("Warning", "RunFailed")
    assert event["message"] == "ValueError: boom"
    assert event["last_timestamp"] > event["first_timestamp"]
    assert api.calls[0].verb == "create"
    await events.close()


async def test_a_steady_stream_of_repeats_is_rate_limited_and_counted(
    api: RecordingApi, clock: LoopClock
) -> None:
    # An interval no test run lasts: only the moved clock lets the bucket refill.
    events = recorder(api, repeat_interval=1000.0)
    # A burst goes at once, one request per Event...
    await use_the_burst(events, api)
    # ...then repeats wait for the bucket, which refills on the (fake) clock.
    for _ in range(7):
        failed(events, "ValueError: boom")
    await asyncio.sleep(0.1)
    assert len(api.calls) == REPEAT_BURST, "nothing goes before the bucket refills"
    clock.advance(1000.0)
    await until(lambda: len(api.calls) == REPEAT_BURST + 1, within=15)
    assert api.calls[-1].verb == "patch"
    assert api.calls[-1].fields["count"] == REPEAT_BURST + 7
    await events.close()


async def test_changing_messages_are_combined_from_the_tenth_on(api: RecordingApi) -> None:
    events = recorder(api)
    for run in range(MAX_SIMILAR_MESSAGES + 5):
        failed(events, f"TimeoutError: request {run} timed out")
    await until(lambda: sum(e["count"] for e in api.events.values()) == MAX_SIMILAR_MESSAGES + 5)
    messages = sorted(e["message"] for e in api.events.values())
    # Nine Events of their own, then one combining the rest, showing the latest message.
    assert len(messages) == MAX_SIMILAR_MESSAGES
    combined = [e for e in api.events.values() if e["message"].startswith(COMBINED_PREFIX)]
    assert len(combined) == 1
    assert combined[0]["message"] == COMBINED_PREFIX + "TimeoutError: request 14 timed out"
    assert combined[0]["count"] == 6
    await events.close()


async def test_other_reasons_and_objects_are_not_combined(api: RecordingApi) -> None:
    events = recorder(api)
    for run in range(MAX_SIMILAR_MESSAGES):
        events.post(JOB, warning=False, reason="RunNow", message=f"run requested ({run})")
    events.post(JOB, warning=True, reason="RunFailed", message="boom")
    events.post(ObjectRef("ns", "other", "uid-2"), warning=False, reason="RunNow", message="x")
    await until(lambda: len(api.events) == MAX_SIMILAR_MESSAGES + 2)
    messages = {e["message"] for e in api.events.values()}
    assert {"boom", "x", COMBINED_PREFIX + "run requested (9)"} <= messages
    await events.close()


async def test_an_expired_event_is_created_again_as_it_stood(api: RecordingApi) -> None:
    events = recorder(api)
    failed(events, "ValueError: boom")
    await until(lambda: len(api.events) == 1)
    (first_name,) = api.events
    first = dict(api.events.pop(first_name))  # the API server's event TTL
    failed(events, "ValueError: boom")
    await until(lambda: len(api.events) == 1)
    (again,) = api.events.values()
    assert again["count"] == 2
    assert again["first_timestamp"] == first["first_timestamp"]
    assert cast(datetime, again["last_timestamp"]) > cast(datetime, first["last_timestamp"])
    await events.close()


async def test_a_transient_failure_is_sent_again_with_the_count(api: RecordingApi) -> None:
    events = recorder(api)
    failed(events, "ValueError: boom")
    await until(lambda: len(api.calls) == 1)
    api.fail_next = TransientApiError("503 Service Unavailable")
    failed(events, "ValueError: boom")
    await until(lambda: api.fail_next is None)
    failed(events, "ValueError: boom")
    await until(lambda: [e for e in api.events.values() if e["count"] == 3])
    await events.close()


async def test_a_refused_event_is_logged_and_not_retried(
    api: RecordingApi, caplog: pytest.LogCaptureFixture
) -> None:
    events = recorder(api)
    api.fail_next = PermissionError("403 Forbidden")
    failed(events, "ValueError: boom")
    await until(lambda: "could not post Event RunFailed for ns/job" in caplog.text)
    failed(events, "ValueError: boom")
    await until(lambda: len(api.events) == 1)
    (event,) = api.events.values()
    assert event["count"] == 2, "the refused occurrence is still counted"
    await events.close()


async def test_bookkeeping_is_bounded_and_pending_repeats_are_sent(api: RecordingApi) -> None:
    events = recorder(api, cache_size=8, repeat_interval=1000.0)
    first = ObjectRef("ns", "first", "uid-first")
    await use_the_burst(events, api, first)
    for _ in range(3):  # beyond the burst: they wait
        failed(events, "ValueError: boom", first)
    for index in range(20):
        failed(events, "ValueError: boom", ObjectRef("ns", f"job-{index}", f"uid-{index}"))
    assert events.series_count == 8
    # `first` was forgotten; what it still had to send went on its way.
    await until(lambda: api.events[api.calls[0].name]["count"] == REPEAT_BURST + 3)
    await events.close()


async def test_a_deleted_job_sends_nothing_more(api: RecordingApi, clock: LoopClock) -> None:
    events = recorder(api, repeat_interval=1000.0)
    other = ObjectRef("ns", "other", "uid-2")
    await use_the_burst(events, api)
    await use_the_burst(events, api, other)
    failed(events, "ValueError: boom")  # both wait for the bucket
    failed(events, "ValueError: boom", other)
    events.forget(JOB)
    assert events.series_count == 1
    clock.advance(1000.0)
    # The other job's waiting repeat goes; the deleted job's does not.
    await until(lambda: len(api.calls) == 2 * REPEAT_BURST + 1, within=15)
    assert api.calls[-1].fields.get("count") == REPEAT_BURST + 1
    assert all(e["count"] == REPEAT_BURST for n, e in api.events.items() if "job" in n)
    await events.close()


async def test_close_sends_what_waits(api: RecordingApi) -> None:
    events = recorder(api, repeat_interval=1000.0)
    await use_the_burst(events, api)
    failed(events, "ValueError: boom")
    failed(events, "ValueError: boom")
    await events.close()
    (event,) = api.events.values()
    assert event["count"] == REPEAT_BURST + 2
    events.post(JOB, warning=True, reason="RunFailed", message="after close")
    assert len(api.events) == 1
