"""The gate the operator hands the engine: a gain's hooks around the engine's catch-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import cast

from podcron.controller.replicas import HookedGate, Replicas
from podcron.engine.clock import OffsetClock
from podcron.engine.gate import Gain, GateListener, Verdict
from podcron.ha.agent import Agent
from podcron.ha.leases import KubeLeaseStore
from podcron.ha.protocol import RING_LABEL
from podcron.ha.store import MemoryStore


class FakeAgent:
    """What :class:`HookedGate` uses of the agent; a test says what it owns."""

    def __init__(self) -> None:
        self.owned: set[str] = set()
        self.listener: GateListener | None = None

    def verdict(self, key: str, tick: float) -> Verdict:
        return Verdict.START

    def asked_before(self, instant: float) -> None:
        pass

    def owns(self, key: str) -> bool:
        return key in self.owned

    def set_listener(self, listener: GateListener) -> None:
        self.listener = listener


class CatchingUp:
    """An engine whose catch-up starts one run a job gained, as a task."""

    def __init__(self, order: list[tuple[str, list[str]]]) -> None:
        self.order = order

    def bound_moved(self) -> None:
        pass

    def decide_due(self) -> None:
        pass

    def owners_changed(self, gained: Sequence[Gain], lost: Sequence[str]) -> None:
        for gain in gained:
            asyncio.get_running_loop().create_task(self._run(gain.key))

    async def _run(self, key: str) -> None:
        self.order.append(("run", [key]))


class Hooks:
    def __init__(self, order: list[tuple[str, list[str]]]) -> None:
        self.order = order

    def before_gain(self, uids: Sequence[str]) -> None:
        self.order.append(("before", list(uids)))

    def after_gain(self, uids: Sequence[str]) -> None:
        self.order.append(("after", list(uids)))


def _gate(order: list[tuple[str, list[str]]]) -> tuple[FakeAgent, GateListener]:
    agent = FakeAgent()
    gate = HookedGate(cast(Agent, agent))
    gate.hooks = Hooks(order)
    gate.set_listener(CatchingUp(order))
    assert agent.listener is not None
    return agent, agent.listener


async def test_the_catch_up_runs_of_a_gain_start_before_the_status_of_its_jobs_is_written() -> None:
    order: list[tuple[str, list[str]]] = []
    agent, listener = _gate(order)
    agent.owned |= {"a", "b"}
    listener.owners_changed([Gain("a", 1.0), Gain("b", 1.0)], [])
    assert order == [("before", ["a", "b"])]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == [("before", ["a", "b"]), ("run", ["a"]), ("run", ["b"]), ("after", ["a", "b"])]


async def test_a_job_lost_again_before_its_status_is_written_is_left_to_its_new_owner() -> None:
    order: list[tuple[str, list[str]]] = []
    agent, listener = _gate(order)
    agent.owned |= {"a", "b"}
    listener.owners_changed([Gain("a", 1.0), Gain("b", 1.0)], [])
    agent.owned.discard("b")
    listener.owners_changed([Gain("c", 1.0)], [])  # c is not owned either by then
    for _ in range(3):
        await asyncio.sleep(0)
    assert [entry for entry in order if entry[0] == "after"] == [("after", ["a"])]


class ListingStore:
    """What :meth:`Replicas.set_clock` uses of the store: a list, whose reply sets the clock."""

    def __init__(self, clock: OffsetClock) -> None:
        self.clock = clock
        self.selectors: list[str] = []

    async def list(self, selector: str) -> list[object]:
        self.selectors.append(selector)
        # As ServerTime does with the reply's Date: here the API server is a minute ahead.
        self.clock.set_offset(time.time() - time.monotonic() + 60.0)
        return []


async def test_the_clock_is_set_from_one_reply_of_the_api_server_when_asked() -> None:
    clock = OffsetClock()
    store = ListingStore(clock)
    agent = Agent(MemoryStore(), ring="t", pod_name="a")
    replicas = Replicas(agent, cast(KubeLeaseStore, store))
    before = clock.wall()
    await replicas.set_clock()
    assert store.selectors == [f"{RING_LABEL}=t"]
    assert clock.wall() - before > 59
