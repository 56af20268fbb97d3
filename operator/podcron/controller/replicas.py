"""This replica's place in a ring of replicas, as the operator's handlers need it.

:mod:`podcron.ha` decides which replica starts which job's ticks
(docs/ha.md); this module connects it to the rest of the operator: the
Leases through the Kubernetes API, the engine's gate, the metrics, and the
status ownership rules (only a job's owner writes its run status, and a job
it gains continues the counters its previous owner wrote).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from podcron.config import Settings
from podcron.engine.clock import OffsetClock
from podcron.engine.gate import Gain, GateListener, Verdict
from podcron.errors import StoreUnavailable
from podcron.ha.agent import Agent
from podcron.ha.leases import KubeLeaseStore
from podcron.ha.protocol import RING_LABEL, Params
from podcron.ha.ring import Assignment
from podcron.ha.servertime import ServerTime
from podcron.telemetry.replica_metrics import ReplicaMetrics

log = logging.getLogger("podcron.replicas")


class GainHooks(Protocol):
    """Told the UIDs of jobs this replica gains, before the engine catches them up and after."""

    def before_gain(self, uids: Sequence[str]) -> None: ...

    def after_gain(self, uids: Sequence[str]) -> None: ...


class Replicas:
    """The agent of this replica, the gate the engine consults through it, and its clock.

    :attr:`server_time` keeps ``clock`` (the engine's, and the agent's for fire
    bounds) on the API server's time, from the Date of the Lease replies; its
    ``moved`` is set to the engine's re-arm once the engine exists.
    """

    def __init__(
        self,
        agent: Agent,
        store: KubeLeaseStore | None = None,
        server_time: ServerTime | None = None,
    ) -> None:
        self.agent = agent
        self._store = store
        self._stop_watch = threading.Event()
        self.server_time = server_time

    @classmethod
    def from_settings(cls, settings: Settings, clock: OffsetClock) -> Replicas:
        """The agent over the Leases of ``settings.lease_namespace``, counted in /metrics."""
        metrics = ReplicaMetrics()
        server_time = ServerTime(clock, gauge=metrics.clock_offset)
        store = KubeLeaseStore.from_environment(
            settings.lease_namespace,
            timeout_seconds=settings.lease_renew_seconds,
            on_reply=server_time.observe,
        )
        params = Params(
            renew_period=settings.lease_renew_seconds,
            fire_ahead=settings.fire_bound_seconds,
            fence_after=settings.lease_stale_seconds,
        )
        pod = os.environ.get("POD_NAME") or socket.gethostname()
        agent = Agent(
            store,
            ring=settings.ha_ring,
            pod_name=pod,
            endpoint=_endpoint(settings),
            params=params,
            # Not clock.wall itself: the clock swaps that function when its offset changes.
            wall=lambda: clock.wall(),
            observer=metrics,
        )
        metrics.owned = agent.owned_jobs
        metrics.fire_lead = lambda: agent.fire_lead
        return cls(agent, store, server_time)

    async def set_clock(self) -> None:
        """Set the clock from one reply of the API server (a list of the ring's Leases).

        Before any job is registered: each is armed at its next tick by this clock, and
        ticks armed on a node's clock a minute behind were all a minute overdue once it
        was set; the loop, passing over them in batches, came to some after a tick of a
        job it had gained meanwhile, and that tick was started nowhere (a chaos run).
        Without a reply the node's clock stays, as before.
        """
        if self._store is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._store.list(f"{RING_LABEL}={self.agent.ring}")

    async def run(self, ready: Callable[[], Awaitable[object]]) -> None:
        """The agent's loop, once ``ready`` returns and one more reply set the clock again.

        ``ready``: every ScheduledJob that existed at start-up is registered here. A job
        is gained only if it was known when its bucket was (docs/ha.md, "Joining"): one
        registered after its bucket came here would lose its ticks from the gain to its
        registration, neither started nor counted. Without the clock, the first renewal
        would take its fire bound from the node's clock, and a bound never goes down: a
        node ahead would keep it high for as long.
        """
        await ready()
        await self.set_clock()
        await self.agent.run()

    @property
    def identity(self) -> str:
        return self.agent.identity

    def owns(self, uid: str) -> bool:
        """Whether this replica starts the ticks of job ``uid`` (and so writes its status)."""
        return self.agent.owns(uid)

    def runs_elsewhere(self, uid: str) -> bool:
        """Whether another replica owns job ``uid`` in the epoch this one adopted last.

        Not the same as not owning it: a replica that released its jobs at SIGTERM
        owns none, but no other has taken them in its view yet, so the outcomes of
        the runs it interrupts are still its to write.
        """
        owner = self.agent.owner_of(uid)
        return owner is not None and owner != self.agent.identity

    def assignment(self) -> Assignment:
        """Who owns which job in the epoch this replica adopted last (replaced when it moves)."""
        return self.agent.member.assignment

    def gate(self) -> HookedGate:
        """The engine's gate: the agent's verdicts, with gains shown to its ``hooks``."""
        return HookedGate(self.agent)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch the ring's Leases in a thread, so that a handover is seen before the next
        renewal (docs/ha.md, rule 8): each change is handed to the agent on ``loop``."""
        if self._store is None:
            return
        store, agent = self._store, self.agent
        threading.Thread(
            target=store.watch,
            args=(
                f"{RING_LABEL}={agent.ring}",
                lambda record: loop.call_soon_threadsafe(agent.noticed, record),
                self._stop_watch,
            ),
            name="podcron lease watch",
            daemon=True,
        ).start()

    def close(self) -> None:
        self._stop_watch.set()
        if self._store is not None:
            self._store.close()


def _endpoint(settings: Settings) -> str:
    """Where other replicas' sidecars redirect a manual run of a job this one runs.

    The pod's address (the chart sets ``POD_IP``), else the sidecar's own when it is one
    address; empty (no redirect, the caller asks again) when neither says where.
    """
    address = os.environ.get("POD_IP") or settings.sidecar_host
    with contextlib.suppress(ValueError):  # a host name is an address too
        if ipaddress.ip_address(address).is_unspecified:
            return ""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{settings.sidecar_port}"


class HookedGate:
    """The agent as the engine's :class:`FiringGate`, telling ``hooks`` of each gain.

    ``hooks`` is set once the reconciler exists (it needs the engine, which needs the gate).
    """

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.hooks: GainHooks | None = None
        self.verdict: Callable[[str, float], Verdict] = agent.verdict
        self.asked_before: Callable[[float], None] = agent.asked_before
        self.owns: Callable[[str], bool] = agent.owns

    def set_listener(self, listener: GateListener) -> None:
        self._agent.set_listener(_HookedListener(self, listener))


class _HookedListener:
    def __init__(self, gate: HookedGate, engine: GateListener) -> None:
        self._gate = gate
        self._engine = engine

    def bound_moved(self) -> None:
        self._engine.bound_moved()

    def decide_due(self) -> None:
        self._engine.decide_due()

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        keys = [gain.key for gain in gained]
        hooks = self._gate.hooks
        if hooks is not None and keys:
            hooks.before_gain(keys)
        self._engine.owners_changed(gained, lost)
        if hooks is not None and keys:
            # Once the catch-up runs the engine just dispatched have started: a failover's
            # status patches, one a job, took up to 0.6 s of the loop at 2,000 jobs, and
            # the status of a job gained can wait that long where its ticks cannot.
            asyncio.get_running_loop().call_soon(self._after_gain, hooks, keys)

    def _after_gain(self, hooks: GainHooks, keys: list[str]) -> None:
        # A job lost again meanwhile is another replica's to write.
        owned = [key for key in keys if self._gate.owns(key)]
        if owned:
            hooks.after_gain(owned)
