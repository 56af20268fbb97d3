"""With several replicas, a job's status and Events come from its owner alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest

from podcron.config import Settings
from podcron.controller.events import EventRecorder
from podcron.controller.handlers import Reconciler
from podcron.controller.replicas import Replicas
from podcron.controller.status import StatusWriter
from podcron.engine import Engine
from podcron.ha.agent import Agent
from podcron.ha.ring import Assignment
from podcron.ha.store import MemoryStore

from .test_resource_conditions import Events, Writer, body, ready

NAMES = [f"job-{index}" for index in range(12)]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(shutdown_timeout_seconds=1.0, loop_watchdog=False)
    yield engine
    await engine.shutdown()


def reconciler(engine: Engine, replicas: Replicas) -> tuple[Reconciler, Writer, Events]:
    writer, events = Writer(), Events()
    return (
        Reconciler(
            engine=engine,
            writer=cast(StatusWriter, writer),
            events=cast(EventRecorder, events),
            settings=Settings(),
            replicas=replicas,
        ),
        writer,
        events,
    )


async def sharing(engine: Engine) -> tuple[Reconciler, Writer, Events, Agent, Assignment]:
    """A reconciler of replica a, sharing the jobs with b, every job created."""
    agent = Agent(MemoryStore(), ring="t", pod_name="a")
    # The epoch this replica adopted: it and one other replica share the jobs.
    assignment = Assignment([agent.identity, "b-00000000"])
    agent.member.assignment = assignment
    handlers, writer, events = reconciler(engine, Replicas(agent))
    for name in NAMES:
        await handlers.on_create(body=body(name))
    return handlers, writer, events, agent, assignment


async def test_only_the_owner_writes_a_jobs_status_and_posts_its_events(engine: Engine) -> None:
    _, writer, events, agent, assignment = await sharing(engine)
    ours = {n for n in NAMES if assignment.owner_of(f"uid-{n}") == agent.identity}
    assert 0 < len(ours) < len(NAMES)
    assert set(writer.status) == ours
    assert all(ready(writer, n)["reason"] == "Scheduled" for n in ours)
    assert {name for name, *_ in events.posted} == ours


async def test_before_any_epoch_says_who_owns_a_job_every_replica_writes_it(
    engine: Engine,
) -> None:
    agent = Agent(MemoryStore(), ring="t", pod_name="a")
    handlers, writer, events = reconciler(engine, Replicas(agent))
    for name in NAMES:
        await handlers.on_create(body=body(name))
    assert set(writer.status) == set(NAMES)
    assert {name for name, *_ in events.posted} == set(NAMES)


async def test_a_gained_job_gets_its_whole_status_from_its_new_owner(engine: Engine) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    theirs = next(n for n in NAMES if assignment.owner_of(f"uid-{n}") != agent.identity)
    assert theirs not in writer.status
    # The other replica leaves: this one gains the job, and writes all the owner would
    # have (that replica may have read the spec under other settings).
    handlers.after_gain([f"uid-{theirs}"])
    status = writer.status[theirs]
    assert ready(writer, theirs)["reason"] == "Scheduled"
    assert (status["observedGeneration"], status["scheduleType"]) == (1, "fixed-rate")
    assert status["replica"] == agent.identity
    assert status["runs"]["total"] == 0


async def test_a_refused_patch_continues_the_counters_found_and_builds_them_anew(
    engine: Engine,
) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    ours = next(n for n in NAMES if assignment.owner_of(f"uid-{n}") == agent.identity)
    assert writer.versions[ours] == "1"  # the patches build on the version reconciled
    # The job's previous owner counted 9 runs since: the patch from here is refused.
    found = {"runs": {"total": 9, "succeeded": 9}, "lastRunStatus": "success"}
    refused = {"runs": {"total": 0}, "replica": agent.identity}
    again = handlers.rebased("ns", ours, refused, found)
    assert again == {"replica": agent.identity}
    assert writer.builds[ours]()["runs"] == {"total": 9, "succeeded": 9, "failed": 0, "skipped": 0}


async def test_a_refused_patch_of_a_job_that_moved_is_dropped(engine: Engine) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    theirs = next(n for n in NAMES if assignment.owner_of(f"uid-{n}") != agent.identity)
    assert handlers.rebased("ns", theirs, {"runs": {"total": 3}}, {"runs": {"total": 9}}) is None
    assert theirs not in writer.builds


async def test_a_released_replica_drops_a_refused_patch_once_another_owner_wrote(
    engine: Engine,
) -> None:
    handlers, _, _, agent, assignment = await sharing(engine)
    ours = next(n for n in NAMES if assignment.owner_of(f"uid-{n}") == agent.identity)
    # SIGTERM: it owns nothing from now on and adopts no epoch, so none says who took over.
    agent.begin_release()
    drained = {"runs": {"total": 4}, "lastRunStatus": "failure"}
    found_before = {"runs": {"total": 3}, "replica": agent.identity}
    assert handlers.rebased("ns", ours, drained, found_before) is not None
    found_after = {"runs": {"total": 5}, "replica": "b-00000000"}
    assert handlers.rebased("ns", ours, drained, found_after) is None
