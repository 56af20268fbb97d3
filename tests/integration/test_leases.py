"""The replica protocol's Lease store against a real API server: each write a compare-and-swap.

etcd's linearizability is all the protocol trusts (docs/ha.md), so these tests hold the
store to it on the real thing: a create of an existing Lease, a replace or delete at a
stale resourceVersion, and one of a Lease gone, are refused as the protocol expects; a
list sees only its ring. An API server that stops answering (paused, as a black-holed
one looks) or is stopped makes each call fail within the store's timeout, and a paused
one that resumes serves again. Every answer's Date tells the API server's clock, which,
on the same machine, is the test's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator

import kubernetes
import pytest

from controlplane import ControlPlane
from podcron.errors import LeaseConflict, LeaseGone, StoreUnavailable
from podcron.ha.leases import KubeLeaseStore
from podcron.ha.servertime import OffsetEstimator, Sample
from podcron.ha.store import CasStore, LeaseRecord

from ..waiting import load_factor

RING = "podcron.dev/ring"
# Short, as the renewal period is: a call that does not answer must fail in about this long.
TIMEOUT_SECONDS = 0.5
# A call must end well within this; it guards against a hang, not for speed.
HANG_GUARD_SECONDS = 10.0


def _open(plane: ControlPlane, namespace: str) -> KubeLeaseStore:
    """A store as the operator's, as the admin of ``plane`` (no retries, its own pool)."""
    configuration = kubernetes.client.Configuration(host=plane.server)
    configuration.ssl_ca_cert = str(plane.ca_file)
    configuration.cert_file = str(plane.workdir / "admin.crt")
    configuration.key_file = str(plane.workdir / "admin.key")
    configuration.retries = 0
    client = kubernetes.client.ApiClient(configuration)
    return KubeLeaseStore(namespace, client, timeout_seconds=TIMEOUT_SECONDS)


@pytest.fixture
async def store(control_plane: ControlPlane, namespace: str) -> AsyncIterator[KubeLeaseStore]:
    opened = _open(control_plane, namespace)
    yield opened
    opened.close()


async def test_create_get_and_a_second_create_refused(store: KubeLeaseStore) -> None:
    as_protocol: CasStore = store  # what the agent is given
    created = await as_protocol.create(
        "podcron-member-a", "a", {"podcron.dev/fire-bound": "12.5"}, {RING: "alpha"}
    )
    assert created.resource_version
    assert (created.holder, created.annotations, created.labels) == (
        "a",
        {"podcron.dev/fire-bound": "12.5"},
        {RING: "alpha"},
    )
    assert await store.get("podcron-member-a") == created
    with pytest.raises(LeaseConflict):
        await store.create("podcron-member-a", "b", {}, {RING: "alpha"})
    assert await store.get("podcron-member-b") is None


async def test_a_lease_without_a_holder_reads_back_with_an_empty_one(
    store: KubeLeaseStore,
) -> None:
    created = await store.create("podcron-coordinator-alpha", "", {"podcron.dev/epoch": "0"}, {})
    assert created.holder == ""
    taken = await store.replace(created.changed(holder="a"))
    assert taken.holder == "a"
    handed_back = await store.replace(taken.changed(holder=""))
    assert (await store.get(created.name)) == handed_back
    assert handed_back.holder == ""


async def test_each_answer_tells_the_api_servers_clock_to_within_a_second(
    store: KubeLeaseStore,
) -> None:
    samples: list[Sample] = []
    store.on_reply = samples.append
    await store.create("podcron-member-a", "a", {}, {RING: "alpha"})
    await store.list(f"{RING}=alpha")
    await store.get("podcron-member-a")
    assert len(samples) == 3
    estimator = OffsetEstimator()
    for sample in samples:
        estimator.add(sample)
    assert estimator.offset is not None
    # The API server runs on this machine: its clock minus the monotonic one is the wall's.
    assert abs(estimator.offset - (time.time() - time.monotonic())) < 1.0


async def test_replace_is_a_compare_and_swap_on_the_resource_version(
    store: KubeLeaseStore,
) -> None:
    first = await store.create("podcron-member-a", "a", {"podcron.dev/epoch": "1"}, {})
    second = await store.replace(first.changed(annotations={"podcron.dev/epoch": "2"}))
    assert second.resource_version != first.resource_version
    assert second.annotations == {"podcron.dev/epoch": "2"}
    # A writer that read before the second write loses, and changes nothing.
    with pytest.raises(LeaseConflict):
        await store.replace(first.changed(annotations={"podcron.dev/fenced": "true"}))
    assert await store.get("podcron-member-a") == second
    await store.delete(second)
    with pytest.raises(LeaseGone):
        await store.replace(second.changed(annotations={"podcron.dev/epoch": "3"}))


async def test_replace_writes_the_record_whole_dropped_keys_included(
    store: KubeLeaseStore, control_plane: ControlPlane, namespace: str
) -> None:
    first = await store.create(
        "podcron-member-a", "a", {"podcron.dev/epoch": "1", "podcron.dev/released": "true"}, {}
    )
    second = await store.replace(
        dataclasses.replace(first, annotations={"podcron.dev/epoch": "2"}, labels={RING: "alpha"})
    )
    assert (second.annotations, second.labels) == ({"podcron.dev/epoch": "2"}, {RING: "alpha"})
    # Another store (another replica) never saw the first version: it reads before it writes.
    other = _open(control_plane, namespace)
    try:
        third = await other.replace(dataclasses.replace(second, annotations={}, labels={}))
        assert (third.annotations, third.labels) == ({}, {})
        with pytest.raises(LeaseConflict):
            await other.replace(second)
    finally:
        other.close()
    # This store last saw the second version: the API server itself refuses the stale write.
    with pytest.raises(LeaseConflict, match="409"):
        await store.replace(second.changed(annotations={"podcron.dev/fenced": "true"}))
    assert await store.get("podcron-member-a") == third


async def test_delete_has_a_precondition_on_the_resource_version(store: KubeLeaseStore) -> None:
    first = await store.create("podcron-member-a", "a", {}, {})
    moved = await store.replace(first.changed(annotations={"podcron.dev/released": "true"}))
    with pytest.raises(LeaseConflict):
        await store.delete(first)
    assert await store.get("podcron-member-a") == moved
    await store.delete(moved)
    assert await store.get("podcron-member-a") is None
    with pytest.raises(LeaseGone):
        await store.delete(moved)


async def test_a_record_without_a_version_is_never_written_unconditionally(
    store: KubeLeaseStore,
) -> None:
    unread = LeaseRecord("podcron-member-a", "a")
    with pytest.raises(ValueError, match="needs the version it was read at"):
        await store.replace(unread)
    with pytest.raises(ValueError, match="needs the version it was read at"):
        await store.delete(unread)


async def test_list_selects_the_rings_leases_by_label(store: KubeLeaseStore) -> None:
    for name, ring in (("m-b", "alpha"), ("m-a", "alpha"), ("m-c", "beta")):
        await store.create(name, name, {}, {RING: ring})
    await store.create("unlabelled", "x", {}, {})
    alpha = await store.list(f"{RING}=alpha")
    assert [record.name for record in alpha] == ["m-a", "m-b"]
    assert alpha[0] == await store.get("m-a")
    assert [record.name for record in await store.list(f"{RING}=beta")] == ["m-c"]
    assert await store.list(f"{RING}=gamma") == []


async def test_a_watch_hands_over_each_change_of_the_rings_leases(store: KubeLeaseStore) -> None:
    seen: asyncio.Queue[LeaseRecord] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    watching = threading.Thread(
        target=store.watch,
        args=(f"{RING}=alpha", lambda r: loop.call_soon_threadsafe(seen.put_nowait, r), stop),
        daemon=True,
    )
    watching.start()
    try:
        created = await store.create("m-w", "w", {}, {RING: "alpha"})
        await store.create("m-other", "o", {}, {RING: "beta"})
        # The watch may open after the create (then it lists it first): either way it comes.
        async with asyncio.timeout(HANG_GUARD_SECONDS * load_factor()):
            assert (await seen.get()).name == "m-w"
            released = await store.replace(
                created.changed(annotations={"podcron.dev/released": "true"})
            )
            while (record := await seen.get()).resource_version != released.resource_version:
                pass
        assert record == released
    finally:
        stop.set()


async def test_a_create_in_a_namespace_that_does_not_exist_is_unavailable(
    control_plane: ControlPlane,
) -> None:
    store = _open(control_plane, f"missing-{os.getpid()}")
    try:
        with pytest.raises(StoreUnavailable, match="404"):
            await store.create("podcron-member-a", "a", {}, {})
        # A list there finds nothing, as the API server answers for any namespace.
        assert await store.list(f"{RING}=alpha") == []
    finally:
        store.close()


@pytest.fixture
def own_plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """A control plane of its own, to pause and to stop without disturbing the shared one."""
    with ControlPlane.start(control_plane.binaries) as plane:
        yield plane


async def _fails_unavailable(store: KubeLeaseStore) -> StoreUnavailable:
    async with asyncio.timeout(HANG_GUARD_SECONDS * load_factor()):
        with pytest.raises(StoreUnavailable) as raised:
            await store.get("podcron-member-a")
    return raised.value


async def test_an_api_server_that_stops_answering_fails_each_call_within_the_timeout(
    own_plane: ControlPlane,
) -> None:
    store = _open(own_plane, "default")
    apiserver = own_plane.pids["kube-apiserver"]
    try:
        created = await store.create("podcron-member-a", "a", {}, {})
        # Paused: connections are accepted by the kernel and never answered, as a
        # black-holed server's are. Only the store's timeout ends the call.
        os.kill(apiserver, signal.SIGSTOP)
        try:
            error = await _fails_unavailable(store)
            assert "timed out" in str(error).lower() or "timeout" in str(error).lower()
        finally:
            os.kill(apiserver, signal.SIGCONT)
        async with asyncio.timeout(HANG_GUARD_SECONDS * load_factor()):
            while True:  # the server catches up on what it missed while paused
                try:
                    assert await store.get("podcron-member-a") == created
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1)
        own_plane.stop()
        error = await _fails_unavailable(store)
        assert "refused" in str(error).lower()
    finally:
        store.close()
