"""The compare-and-swap store the replica protocol runs on, and an in-memory one.

The protocol (docs/ha.md) trusts nothing but one store's linearizable
compare-and-swap: in production the Kubernetes API's Leases, here
:class:`CasStore`, which any store implements. :class:`MemoryStore` is the
one tests and the model check use; it can refuse calls, lose replies to
calls it applied, and be slowed down, call by call.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from podcron.errors import LeaseConflict, LeaseGone, StoreUnavailable


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One Lease as the store returned it."""

    name: str
    #: ``spec.holderIdentity``; "" when nobody holds it.
    holder: str
    #: The protocol's fields, ``podcron.dev/...`` annotations (docs/ha.md, Objects).
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The version a :meth:`CasStore.replace` or :meth:`CasStore.delete` of it must match.
    resource_version: str = ""

    def changed(
        self, *, holder: str | None = None, annotations: Mapping[str, str] | None = None
    ) -> LeaseRecord:
        """This record with a new holder and/or annotations merged in, for a replace."""
        return dataclasses.replace(
            self,
            holder=self.holder if holder is None else holder,
            annotations={**self.annotations, **(annotations or {})},
        )


class CasStore(Protocol):
    """Leases with compare-and-swap writes. Each call either applies whole or not at all.

    Every call may raise :class:`~podcron.errors.StoreUnavailable`: then the
    caller does not know whether a write was applied.
    """

    async def get(self, name: str) -> LeaseRecord | None:
        """The Lease ``name``, or None when there is none."""
        ...

    async def list(self, label_selector: str) -> list[LeaseRecord]:
        """Every Lease whose labels match ``label_selector`` (``key=value[,key=value…]``)."""
        ...

    async def create(
        self, name: str, holder: str, annotations: Mapping[str, str], labels: Mapping[str, str]
    ) -> LeaseRecord:
        """A new Lease; :class:`~podcron.errors.LeaseConflict` if ``name`` exists."""
        ...

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        """Writes ``record`` (holder, annotations, labels) if its version is still current.

        :class:`~podcron.errors.LeaseConflict` if the Lease moved since,
        :class:`~podcron.errors.LeaseGone` if it no longer exists.
        """
        ...

    async def delete(self, record: LeaseRecord) -> None:
        """Deletes the Lease if its version is still ``record``'s (errors as :meth:`replace`)."""
        ...


class Fault(enum.Enum):
    """What :class:`MemoryStore` does to one call."""

    NONE = "none"
    #: Nothing applied; the call raises StoreUnavailable.
    UNAVAILABLE = "unavailable"
    #: Applied (a write is in the store), but the call raises StoreUnavailable.
    LOST_REPLY = "lost-reply"


#: Decides the fault of one call from its operation (``get``, ``list``, ``create``,
#: ``replace``, ``delete``) and the Lease's name (the selector, for ``list``).
FaultRule = Callable[[str, str], Fault]
#: Awaited before a call is applied (a slow API server), with the same arguments.
LatencyHook = Callable[[str, str], Awaitable[None]]


def no_fault(operation: str, name: str) -> Fault:
    """Every call answers."""
    return Fault.NONE


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class MemoryStore:
    """A :class:`CasStore` in memory: linearizable, as etcd is, plus injected faults.

    ``fault`` decides each call's :class:`Fault`; ``latency`` (when set) is
    awaited before a call is applied. Without a latency hook no call awaits
    anything, so a synchronous driver (the model check) may run a call's
    coroutine to completion with a single ``send(None)``.
    """

    def __init__(self, fault: FaultRule = no_fault, latency: LatencyHook | None = None) -> None:
        self.fault = fault
        self.latency = latency
        self._leases: dict[str, LeaseRecord] = {}
        self._versions = itertools.count(1)
        #: Writes applied, by operation: what a test counts to bound the protocol's cost.
        self.writes: dict[str, int] = {"create": 0, "replace": 0, "delete": 0}

    def leases(self) -> dict[str, LeaseRecord]:
        """What the store holds now, by name (for tests; no fault applies)."""
        return dict(self._leases)

    async def _begin(self, operation: str, name: str) -> Fault:
        if self.latency is not None:
            await self.latency(operation, name)
        fault = self.fault(operation, name)
        if fault is Fault.UNAVAILABLE:
            raise StoreUnavailable(f"{operation} {name}: store unavailable (injected)")
        return fault

    @staticmethod
    def _end(fault: Fault, operation: str, name: str) -> None:
        if fault is Fault.LOST_REPLY:
            raise StoreUnavailable(f"{operation} {name}: reply lost (injected)")

    def _stored(self, record: LeaseRecord) -> LeaseRecord:
        version = str(next(self._versions))
        stored = dataclasses.replace(
            record,
            annotations=dict(record.annotations),
            labels=dict(record.labels),
            resource_version=version,
        )
        self._leases[record.name] = stored
        return stored

    def _current(self, record: LeaseRecord) -> LeaseRecord:
        current = self._leases.get(record.name)
        if current is None:
            raise LeaseGone(f"lease {record.name!r} does not exist")
        if current.resource_version != record.resource_version:
            raise LeaseConflict(
                f"lease {record.name!r} is at version {current.resource_version}, "
                f"not {record.resource_version}"
            )
        return current

    async def get(self, name: str) -> LeaseRecord | None:
        fault = await self._begin("get", name)
        found = self._leases.get(name)
        self._end(fault, "get", name)
        return found

    async def list(self, label_selector: str) -> list[LeaseRecord]:
        fault = await self._begin("list", label_selector)
        found = [r for r in self._leases.values() if _matches(r.labels, label_selector)]
        self._end(fault, "list", label_selector)
        return sorted(found, key=lambda r: r.name)

    async def create(
        self, name: str, holder: str, annotations: Mapping[str, str], labels: Mapping[str, str]
    ) -> LeaseRecord:
        fault = await self._begin("create", name)
        if name in self._leases:
            raise LeaseConflict(f"lease {name!r} exists")
        stored = self._stored(LeaseRecord(name, holder, annotations, labels))
        self.writes["create"] += 1
        self._end(fault, "create", name)
        return stored

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        fault = await self._begin("replace", record.name)
        self._current(record)
        stored = self._stored(record)
        self.writes["replace"] += 1
        self._end(fault, "replace", record.name)
        return stored

    async def delete(self, record: LeaseRecord) -> None:
        fault = await self._begin("delete", record.name)
        self._current(record)
        del self._leases[record.name]
        self.writes["delete"] += 1
        self._end(fault, "delete", record.name)
