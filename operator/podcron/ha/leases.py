"""The replica protocol's store in Kubernetes: ``coordination.k8s.io/v1`` Leases in one namespace.

Each write is a compare-and-swap by the API server on the ``resourceVersion``
it read (docs/ha.md): ``delete`` has it as a precondition, and ``replace`` is
a JSON merge patch that carries it (a 409 when the Lease moved) and sets the
holder, the annotations and the labels, the keys the record dropped to null.
Not a PUT: the API server lets a PUT create a Lease that does not exist,
resourceVersion or not, so a fenced replica's renewal would bring back the
Lease the coordinator had cleaned up; a patch of a missing Lease is a 404.
(Nor a strategic merge patch with ``$patch: replace``: on a Lease without
annotations it applies nothing and still answers 200.) Which keys a record
dropped is known from the version it was read at, which the store remembers
of every Lease it returned; for another version it reads the Lease first.

The API server's answers become the store's errors: 409 is
:class:`~podcron.errors.LeaseConflict`, 404 :class:`~podcron.errors.LeaseGone`,
and anything else that did not answer the call (a 5xx, a refusal, a lost
connection, a timeout) :class:`~podcron.errors.StoreUnavailable`, after which
the protocol assumes a write may or may not have been applied.

The official client is synchronous, so calls run in a small thread pool of
the store's own, on a connection pool of its own: a renewal never queues
behind the status writer's patches. Every request has a short total timeout
(about the renewal period): a black-holed API server makes a renewal fail in
that time, and the replica stops starting ticks when its fire bound runs out
rather than waiting on a socket. urllib3 does not retry: the protocol paces
its own retries, each a fresh read. Bodies are plain JSON both ways; the
client's model classes would cost a millisecond a Lease for nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from podcron import kubeclient
from podcron.errors import LeaseConflict, LeaseGone, StoreUnavailable
from podcron.ha.servertime import Sample, parse_date
from podcron.ha.store import LeaseRecord

#: Renewal, the coordinator's writes and a list may overlap; a few threads keep them apart.
POOL_SIZE = 3
#: How long one watch of the ring's Leases lasts before it is opened again (server side).
WATCH_SECONDS = 300


def _record(lease: Mapping[str, Any]) -> LeaseRecord:
    metadata = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    return LeaseRecord(
        name=str(metadata["name"]),
        holder=str(spec.get("holderIdentity") or ""),
        annotations=dict(metadata.get("annotations") or {}),
        labels=dict(metadata.get("labels") or {}),
        resource_version=str(metadata["resourceVersion"]),
    )


def _body(
    name: str, holder: str, annotations: Mapping[str, str], labels: Mapping[str, str]
) -> dict[str, Any]:
    """A new Lease. An empty holder is no holderIdentity at all, as kubectl shows a free Lease."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "annotations": dict(annotations), "labels": dict(labels)},
        "spec": {"holderIdentity": holder} if holder else {},
    }


def _compare_and_swap(record: LeaseRecord, was: LeaseRecord) -> dict[str, Any]:
    """A merge patch that makes the Lease ``record`` if it is still ``was`` (same version)."""

    def whole(now: Mapping[str, str], before: Mapping[str, str]) -> dict[str, str | None]:
        return {**dict.fromkeys(before.keys() - now.keys()), **now}

    return {
        "metadata": {
            "resourceVersion": record.resource_version,
            "annotations": whole(record.annotations, was.annotations),
            "labels": whole(record.labels, was.labels),
        },
        "spec": {"holderIdentity": record.holder or None},
    }


def _json(response: Any) -> dict[str, Any]:
    """The JSON of a response read with ``_preload_content=False``."""
    try:
        return dict(json.loads(response.data))
    finally:
        response.release_conn()


def _timed(call: Callable[[], Any]) -> tuple[dict[str, Any], Sample | None]:
    """``call``'s JSON, and when it was sent and received with the API server's ``Date``:
    what the server's clock is estimated from (podcron.ha.servertime)."""
    sent = time.monotonic()
    response = call()
    received = time.monotonic()
    wall = time.time()
    date = parse_date(response.headers.get("Date"))
    return _json(response), None if date is None else Sample(sent, received, date, wall)


class KubeLeaseStore:
    """A :class:`~podcron.ha.store.CasStore` over the Leases of ``namespace``.

    ``timeout_seconds`` bounds each request, connecting included. Call
    :meth:`close` when done: it ends the threads and the connections.
    ``on_reply`` hears, on the loop, the timing and ``Date`` of every answer.
    """

    def __init__(
        self,
        namespace: str,
        api_client: kubernetes.client.ApiClient,
        *,
        timeout_seconds: float = 1.0,
        on_reply: Callable[[Sample], None] | None = None,
    ) -> None:
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.namespace = namespace
        self._client = api_client
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._timeout = timeout_seconds
        self.on_reply = on_reply
        self._threads = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="podcron-lease")
        # The latest version of each Lease this store returned: what a replace of it changes.
        self._seen: dict[str, LeaseRecord] = {}

    @classmethod
    def from_environment(
        cls,
        namespace: str,
        *,
        timeout_seconds: float = 1.0,
        on_reply: Callable[[Sample], None] | None = None,
    ) -> KubeLeaseStore:
        """In-cluster credentials in a pod, the current kubeconfig elsewhere."""
        client = kubeclient.api_client(pool_size=POOL_SIZE, retries=0)
        return cls(namespace, client, timeout_seconds=timeout_seconds, on_reply=on_reply)

    def watch(
        self, label_selector: str, changed: Callable[[LeaseRecord], None], stop: threading.Event
    ) -> None:
        """Hand ``changed`` each Lease of ``label_selector`` as it changes, until ``stop`` is set.

        Blocking: run it in a thread of its own (``changed`` is called there). A hint
        only, that a step may be worth taking sooner: the protocol decides on what it
        reads itself. A watch that ends or breaks is opened again after a second.
        """
        while not stop.is_set():
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in watch.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_lease,
                    self.namespace,
                    label_selector=label_selector,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    if stop.is_set():
                        break
                    changed(_record(event["raw_object"]))
            except (ApiException, OSError, urllib3.exceptions.HTTPError, ValueError):
                stop.wait(1.0)
            finally:
                watch.stop()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop the threads (a call under way finishes within its timeout) and the pool."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]  # the client has no hints here

    async def _call(
        self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """``function``'s answer as JSON, read in one of the store's threads; errors mapped."""
        kwargs |= {"_request_timeout": self._timeout, "_preload_content": False}
        call = functools.partial(function, *args, **kwargs)
        try:
            answer, sample = await asyncio.get_running_loop().run_in_executor(
                self._threads, _timed, call
            )
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflict(f"{what}: {error.status} {error.reason}") from error
            if error.status == 404:
                raise LeaseGone(f"{what}: {error.status} {error.reason}") from error
            # 5xx, 429, and refusals such as a missing grant (403): the Lease did not change
            # as asked, and the protocol treats the replica as it treats one cut off.
            raise StoreUnavailable(f"{what}: {error.status} {error.reason}") from error
        except (OSError, urllib3.exceptions.HTTPError, ValueError) as error:
            # ValueError: an answer that is not JSON (a proxy's error page).
            raise StoreUnavailable(f"{what}: {type(error).__name__}: {error}") from error
        if sample is not None and self.on_reply is not None:
            self.on_reply(sample)
        return answer

    def _remember(self, lease: Mapping[str, Any]) -> LeaseRecord:
        record = self._seen[str(lease["metadata"]["name"])] = _record(lease)
        return record

    async def get(self, name: str) -> LeaseRecord | None:
        try:
            response = await self._call(
                f"get lease {name}",
                self._api.read_namespaced_lease,
                name,
                self.namespace,
            )
        except LeaseGone:
            self._seen.pop(name, None)
            return None
        return self._remember(response)

    async def list(self, label_selector: str) -> list[LeaseRecord]:
        what = f"list leases {label_selector}"
        try:
            response = await self._call(
                what, self._api.list_namespaced_lease, self.namespace, label_selector=label_selector
            )
        except LeaseGone as error:  # no such namespace: nothing the protocol can act on
            raise StoreUnavailable(str(error)) from error
        items = response.get("items") or []
        return sorted((self._remember(item) for item in items), key=lambda record: record.name)

    async def create(
        self, name: str, holder: str, annotations: Mapping[str, str], labels: Mapping[str, str]
    ) -> LeaseRecord:
        body = _body(name, holder, annotations, labels)
        try:
            response = await self._call(
                f"create lease {name}", self._api.create_namespaced_lease, self.namespace, body
            )
        except LeaseGone as error:  # no such namespace
            raise StoreUnavailable(str(error)) from error
        return self._remember(response)

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        if not record.resource_version:
            # Without a version the patch would apply unconditionally: never a CAS.
            raise ValueError(f"replacing lease {record.name} needs the version it was read at")
        was = self._seen.get(record.name)
        if was is None or was.resource_version != record.resource_version:
            was = await self.get(record.name)
            if was is None:
                raise LeaseGone(f"replace lease {record.name}: it does not exist")
            if was.resource_version != record.resource_version:
                raise LeaseConflict(
                    f"replace lease {record.name}: at version {was.resource_version}, "
                    f"not {record.resource_version}"
                )
        try:
            response = await self._call(
                f"replace lease {record.name}",
                self._api.patch_namespaced_lease,
                record.name,
                self.namespace,
                _compare_and_swap(record, was),
                _content_type="application/merge-patch+json",
            )
        except LeaseGone:
            self._seen.pop(record.name, None)
            raise
        return self._remember(response)

    async def delete(self, record: LeaseRecord) -> None:
        if not record.resource_version:
            raise ValueError(f"deleting lease {record.name} needs the version it was read at")
        try:
            await self._call(
                f"delete lease {record.name}",
                self._api.delete_namespaced_lease,
                record.name,
                self.namespace,
                body={"preconditions": {"resourceVersion": record.resource_version}},
            )
        finally:
            # Deleted, gone or moved: either way the version remembered is not current.
            self._seen.pop(record.name, None)
