"""Engines behind real replica agents over one store: each tick has one outcome in the ring.

Two :class:`~podcron.engine.Engine` instances, each with its own
:class:`~podcron.ha.agent.Agent` as its firing gate, share a
:class:`~podcron.ha.store.MemoryStore` and one fake loop clock (``looptime``).
Every tick of every job, over both engines, is recorded once (run or skipped)
through a join, a release and a crash; the only ticks no engine records are
those a crash left uncertain, which the survivor counts.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext
from podcron.engine import ConcurrencyPolicy, Engine, RunFinished
from podcron.ha.agent import Agent
from podcron.ha.protocol import Params
from podcron.ha.store import MemoryStore
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import LoopClock, counted, engine_on_loop_clock, spec

pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]

PARAMS = Params()
R, LAMBDA, L = PARAMS.renew_period, PARAMS.fire_ahead, PARAMS.fence_after
JOBS = [f"job-{i}" for i in range(12)]


async def _job(ctx: JobContext) -> None:
    pass


@dataclass
class Replica:
    engine: Engine
    agent: Agent
    registry: CollectorRegistry
    task: asyncio.Task[None] | None = None

    def counter(self, name: str) -> float:
        return counted(self.registry, name)


@dataclass
class Ring:
    clock: LoopClock = field(default_factory=LoopClock)
    store: MemoryStore = field(default_factory=MemoryStore)
    replicas: dict[str, Replica] = field(default_factory=dict)
    #: Every outcome of every engine: (job id, tick) -> replicas that recorded it.
    outcomes: dict[tuple[str, float], list[str]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )

    def start(self, name: str) -> Replica:
        registry = CollectorRegistry()
        agent = Agent(
            self.store,
            ring="t",
            pod_name=name,
            wall=self.clock.wall,
            monotonic=lambda: asyncio.get_running_loop().time(),
            new_suffix=lambda: name,
        )
        engine = engine_on_loop_clock(
            self.clock, gate=agent, telemetry=RunTelemetry(metrics=JobMetrics(registry))
        )

        def record(event: object) -> None:
            if isinstance(event, RunFinished):
                self.outcomes[event.job_id, event.scheduled_time.timestamp()].append(name)

        engine.add_listener(record)
        for job in JOBS:
            # Allow: every tick a replica may start does start (Forbid coalesces late ones).
            job_spec = spec(
                _job, name=job, uid=f"uid-{job}", concurrency_policy=ConcurrencyPolicy.ALLOW
            )
            engine.upsert(job_spec)
            agent.add_job(job_spec.uid)
        replica = self.replicas[name] = Replica(engine, agent, registry)
        replica.task = asyncio.create_task(agent.run(), name=f"agent {name}")
        return replica

    async def crash(self, name: str) -> None:
        """The whole replica stops at once: its agent's loop and its engine."""
        replica = self.replicas[name]
        assert replica.task is not None
        replica.task.cancel()
        await asyncio.gather(replica.task, return_exceptions=True)
        await replica.engine.shutdown()

    def ticks(self, start: float, end: float) -> set[tuple[str, float]]:
        """Every (job id, tick) due in [start, end): the jobs tick every whole second."""
        return {
            (f"ns/{job}", float(second))
            for job in JOBS
            for second in range(math.ceil(start), math.ceil(end))
        }

    async def close(self) -> None:
        for replica in self.replicas.values():
            if replica.task is not None:
                replica.task.cancel()
            await replica.engine.shutdown()
        tasks = [r.task for r in self.replicas.values() if r.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def ring() -> AsyncIterator[Ring]:
    ring = Ring()
    yield ring
    await ring.close()


def _twice(ring: Ring) -> dict[tuple[str, float], list[str]]:
    return {tick: names for tick, names in ring.outcomes.items() if len(names) > 1}


async def test_a_join_and_a_release_record_every_tick_once(ring: Ring) -> None:
    ring.start("a")
    await asyncio.sleep(3 * R)
    begin = ring.clock.wall()
    ring.start("b")
    await asyncio.sleep(8 * R)
    b_took = {tick for tick, names in ring.outcomes.items() if names == ["b"]}
    assert b_took, "b owns some jobs after it joined"
    await ring.replicas["a"].agent.release()  # SIGTERM: a hands its jobs over
    await asyncio.sleep(8 * R)
    end = ring.clock.wall() - LAMBDA
    assert _twice(ring) == {}
    assert ring.ticks(begin, end) <= ring.outcomes.keys(), "none missed"
    for replica in ring.replicas.values():
        assert replica.counter("podcron_ticks_missed_total") == 0
        assert replica.counter("podcron_ticks_uncertain_total") == 0


async def test_after_a_crash_the_survivor_records_every_tick_but_the_uncertain_ones(
    ring: Ring,
) -> None:
    ring.start("a")
    await asyncio.sleep(2 * R)
    ring.start("b")
    await asyncio.sleep(6 * R)
    begin = ring.clock.wall()
    owned_by_a = {job for (job, _), names in ring.outcomes.items() if names == ["a"]}
    assert owned_by_a, "a owns some jobs before it crashes"
    await ring.crash("a")
    await asyncio.sleep(L + 6 * R)
    end = ring.clock.wall() - LAMBDA
    assert _twice(ring) == {}
    missing = ring.ticks(begin, end) - ring.outcomes.keys()
    # A tick nobody recorded is one the crashed replica may have started: the survivor
    # counted it as uncertain (it counts the whole window, started ones included).
    assert {job for job, _ in missing} <= owned_by_a
    survivor = ring.replicas["b"]
    assert len(missing) <= survivor.counter("podcron_ticks_uncertain_total")
    assert survivor.counter("podcron_ticks_uncertain_total") <= len(owned_by_a) * (LAMBDA + 1)
    assert survivor.counter("podcron_ticks_missed_total") == 0, "L is within the allowance"
