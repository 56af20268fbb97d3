"""MemoryStore: compare-and-swap as etcd does it, and the faults the protocol must survive."""

from __future__ import annotations

import asyncio

import pytest

from podcron.errors import LeaseConflict, LeaseGone, StoreUnavailable
from podcron.ha.store import Fault, MemoryStore

LABELS = {"podcron.dev/ring": "a"}


async def test_a_replace_applies_only_on_the_version_it_read() -> None:
    store = MemoryStore()
    first = await store.create("m-1", "one", {"podcron.dev/epoch": "1"}, LABELS)
    second = await store.replace(first.changed(annotations={"podcron.dev/epoch": "2"}))
    assert second.resource_version != first.resource_version
    assert second.annotations == {"podcron.dev/epoch": "2"}
    with pytest.raises(LeaseConflict):
        await store.replace(first.changed(holder="two"))
    with pytest.raises(LeaseConflict):
        await store.delete(first)
    await store.delete(second)
    with pytest.raises(LeaseGone):
        await store.replace(second)
    assert await store.get("m-1") is None


async def test_create_refuses_a_name_that_exists() -> None:
    store = MemoryStore()
    await store.create("m-1", "one", {}, LABELS)
    with pytest.raises(LeaseConflict):
        await store.create("m-1", "two", {}, LABELS)


async def test_list_selects_by_labels() -> None:
    store = MemoryStore()
    await store.create("b", "", {}, {"podcron.dev/ring": "a", "x": "1"})
    await store.create("a", "", {}, LABELS)
    await store.create("c", "", {}, {"podcron.dev/ring": "other"})
    assert [r.name for r in await store.list("podcron.dev/ring=a")] == ["a", "b"]
    assert [r.name for r in await store.list("podcron.dev/ring=a, x=1")] == ["b"]


async def test_a_record_read_cannot_change_the_store() -> None:
    store = MemoryStore()
    annotations = {"k": "v"}
    await store.create("m", "", annotations, LABELS)
    annotations["k"] = "changed"
    record = await store.get("m")
    assert record is not None
    assert record.annotations == {"k": "v"}


async def test_unavailable_applies_nothing_and_a_lost_reply_applies_the_write() -> None:
    faults = {"m-1": Fault.UNAVAILABLE, "m-2": Fault.LOST_REPLY}
    store = MemoryStore(fault=lambda operation, name: faults.get(name, Fault.NONE))
    with pytest.raises(StoreUnavailable):
        await store.create("m-1", "one", {}, LABELS)
    with pytest.raises(StoreUnavailable):
        await store.create("m-2", "two", {}, LABELS)
    assert sorted(store.leases()) == ["m-2"]
    assert store.writes["create"] == 1


async def test_latency_is_awaited_before_the_call_applies() -> None:
    release = asyncio.Event()
    seen: list[tuple[str, str]] = []

    async def slow(operation: str, name: str) -> None:
        seen.append((operation, name))
        await release.wait()

    store = MemoryStore(latency=slow)
    creating = asyncio.create_task(store.create("m", "", {}, LABELS))
    await asyncio.sleep(0)
    assert seen == [("create", "m")]
    assert store.leases() == {}
    release.set()
    assert (await creating).name == "m"


def test_without_latency_a_call_completes_in_one_step() -> None:
    # What the model check relies on to drive the store without an event loop.
    call = MemoryStore().create("m", "", {}, LABELS)
    with pytest.raises(StopIteration) as done:
        call.send(None)
    assert done.value.value.name == "m"
