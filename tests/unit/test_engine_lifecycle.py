"""The engine's job lifecycle as a hypothesis state machine, through its public API only.

Upserts, removals, manual triggers, suspensions, policy changes, runs that succeed or fail,
and shutdown come in any order; after every step the engine must still keep its promises:

* a run dispatched under Forbid never runs beside another run of its job;
* every run that started ends with exactly one outcome, and the counters match the outcomes;
* counters never go backwards;
* nothing of a removed job runs, nor reports, after :meth:`Engine.remove` returns.

Each run's body waits until the machine releases it (as a success or a failure) or until
the engine cancels it, so the machine, not the clock, decides when runs end. Scheduled
ticks are an hour apart: the runs are manual, and so the examples are reproducible.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from podcron.context import JobContext
from podcron.engine import (
    ConcurrencyPolicy,
    Engine,
    JobEvent,
    RunCounts,
    RunFinished,
    RunStarted,
    RunStatus,
)
from podcron.errors import JobAlreadyRunning, JobNotFound, TooManyManualRuns

from .engine_support import spec

T = TypeVar("T")
NAMES = ("a", "b", "c")
MAX_MANUAL_RUNS = 3
# Steps of the loop after each rule: enough for a dispatched run to reach its body, or a
# cancelled one to record its outcome (each takes a few steps), with room to spare.
SETTLE_STEPS = 20


class JobFailed(Exception):
    """What a body released as a failure raises."""


@dataclass
class Incarnation:
    """One registration of a job, from its first upsert to its removal."""

    number: int
    policy: ConcurrencyPolicy
    # Bumped at every change of policy: a run knows the policy it was dispatched under.
    epoch: int = 0
    removed: bool = False
    started: int = 0
    outcomes: list[RunStatus] = field(default_factory=list)
    counts: RunCounts = field(default_factory=RunCounts)


@dataclass(eq=False)
class Body:
    """A run's body while it executes, until the machine releases it."""

    incarnation: Incarnation
    release: asyncio.Future[bool]


class EngineLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop.set_debug(True)
        self.engine = Engine(
            max_manual_runs=MAX_MANUAL_RUNS, shutdown_timeout_seconds=0.01, loop_watchdog=False
        )
        self.engine.add_listener(self.on_event)
        self.jobs: dict[str, Incarnation] = {}
        self.numbers = itertools.count()
        self.live: list[Body] = []
        self.closed = False
        self.violations: list[str] = []

    # -- what the engine tells -------------------------------------------------------------

    def on_event(self, event: JobEvent) -> None:
        # The engine logs what its listeners and job bodies raise and carries on, so what
        # goes wrong here is kept for the invariant below to report.
        incarnation = self.jobs.get(event.name)
        if incarnation is None:
            self.violations.append(f"{type(event).__name__} of {event.name} after its removal")
        elif isinstance(event, RunStarted):
            incarnation.started += 1
        elif isinstance(event, RunFinished) and event.status is not RunStatus.SKIPPED:
            incarnation.outcomes.append(event.status)
            if len(incarnation.outcomes) > incarnation.started:
                self.violations.append(f"{event.name}: more outcomes than runs started")

    async def body(self, ctx: JobContext) -> None:
        incarnation = self.jobs.get(ctx.name)
        if incarnation is None or incarnation.number != ctx.args["incarnation"]:
            self.violations.append(f"a run of {ctx.name} started after its removal")
            return
        forbid = ctx.args["policy"] == ConcurrencyPolicy.FORBID
        others = [b for b in self.live if b.incarnation is incarnation]
        if forbid and ctx.args["epoch"] == incarnation.epoch and others:
            self.violations.append(f"{ctx.name}: a run under Forbid beside {len(others)} others")
        body = Body(incarnation, self.loop.create_future())
        self.live.append(body)
        try:
            cancelled = asyncio.ensure_future(ctx.cancelled.wait())
            waiters: set[asyncio.Future[Any]] = {body.release, cancelled}
            done, _ = await asyncio.wait(waiters, return_when="FIRST_COMPLETED")
            cancelled.cancel()
            if body.release in done and not body.release.result():
                raise JobFailed(ctx.name)
        finally:
            self.live.remove(body)

    # -- driving the loop ---------------------------------------------------------------------

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        async def then_settle() -> T:
            result = await step
            for _ in range(SETTLE_STEPS):
                await asyncio.sleep(0)
            return result

        return self.loop.run_until_complete(then_settle())

    def upsert(self, name: str, incarnation: Incarnation, *, suspended: bool) -> None:
        args = {
            "incarnation": incarnation.number,
            "policy": incarnation.policy,
            "epoch": incarnation.epoch,
        }
        job = spec(
            self.body,
            name,
            every="1h",
            args=args,
            concurrency_policy=incarnation.policy,
            suspended=suspended,
        )

        async def step() -> None:
            self.engine.upsert(job)

        self.run(step())

    # -- rules ----------------------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule(
        name=st.sampled_from(NAMES),
        policy=st.sampled_from(ConcurrencyPolicy),
        suspended=st.booleans(),
    )
    def upsert_job(self, name: str, policy: ConcurrencyPolicy, suspended: bool) -> None:
        incarnation = self.jobs.get(name)
        if incarnation is None:
            incarnation = self.jobs[name] = Incarnation(next(self.numbers), policy)
        elif incarnation.policy is not policy:
            incarnation.policy = policy
            incarnation.epoch += 1
        self.upsert(name, incarnation, suspended=suspended)

    @rule(name=st.sampled_from(NAMES))
    def remove_job(self, name: str) -> None:
        async def step() -> None:
            self.engine.remove(f"ns/{name}")

        incarnation = self.jobs.pop(name, None)
        if incarnation is not None:
            incarnation.removed = True
        self.run(step())

    @rule(name=st.sampled_from(NAMES))
    def trigger(self, name: str) -> None:
        incarnation = self.jobs.get(name)
        active = incarnation is not None and (
            len(incarnation.outcomes) < incarnation.started
            or any(b.incarnation is incarnation for b in self.live)
        )

        async def step() -> None:
            self.engine.trigger(f"ns/{name}")

        try:
            self.run(step())
        except JobNotFound:
            assert incarnation is None or self.closed
        except JobAlreadyRunning:
            assert active
        except TooManyManualRuns:
            assert len(self.live) >= MAX_MANUAL_RUNS
        else:
            assert not self.closed
            assert incarnation is not None
            if incarnation.policy is ConcurrencyPolicy.FORBID:
                assert not active, f"{name}: a trigger under Forbid accepted beside a run"

    @rule(data=st.data(), succeed=st.booleans())
    def finish_a_run(self, data: st.DataObject, succeed: bool) -> None:
        pending = [b for b in self.live if not b.release.done()]
        if not pending:
            return
        body = data.draw(st.sampled_from(pending))
        body.release.set_result(succeed)
        self.run(asyncio.sleep(0))

    @precondition(lambda self: not self.closed)
    @rule()
    def shutdown(self) -> None:
        self.closed = True
        self.run(self.engine.shutdown())
        assert not self.live, f"{len(self.live)} runs still execute after shutdown"
        for name, incarnation in self.jobs.items():
            assert len(incarnation.outcomes) == incarnation.started, (
                f"{name}: {incarnation.started} runs started,"
                f" {len(incarnation.outcomes)} outcomes after shutdown"
            )

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def no_promise_broken_inside_the_engine(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def counters_never_go_backwards_and_match_the_outcomes(self) -> None:
        for name, incarnation in self.jobs.items():
            counts = self.engine.snapshot(f"ns/{name}").history.counts
            before = incarnation.counts
            for field_name in ("total", "succeeded", "failed", "skipped"):
                now, then = getattr(counts, field_name), getattr(before, field_name)
                assert now >= then, f"{name}: {field_name} went from {then} to {now}"
            assert counts.total == counts.succeeded + counts.failed == len(incarnation.outcomes)
            assert counts.succeeded == incarnation.outcomes.count(RunStatus.SUCCESS)
            incarnation.counts = counts

    def teardown(self) -> None:
        try:
            if not self.closed:
                self.shutdown()
        finally:
            self.loop.close()


def test_engine_lifecycle() -> None:
    machine = settings(max_examples=100, stateful_step_count=50, deadline=None)(EngineLifecycle)
    machine.TestCase().runTest()
