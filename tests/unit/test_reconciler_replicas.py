"""With several replicas, a job's status and Events come from its owner alone."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any, cast

import kopf
import pytest

from podcron.config import Settings
from podcron.controller.events import EventRecorder
from podcron.controller.handlers import Reconciler
from podcron.controller.replicas import Replicas
from podcron.controller.status import StatusWriter
from podcron.engine import Engine
from podcron.ha.agent import Agent
from podcron.ha.protocol import member_lease_name
from podcron.ha.ring import Assignment
from podcron.ha.store import MemoryStore
from podcron.runrecord import History, RunCounts

from .engine_support import LoopClock
from .test_ha_agent import Listener, until
from .test_resource_conditions import Events, Writer, body, ready

NAMES = [f"job-{index}" for index in range(12)]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(shutdown_timeout_seconds=1.0, loop_watchdog=False)
    yield engine
    await engine.shutdown()


def reconciler(engine: Engine, replicas: Replicas | None) -> tuple[Reconciler, Writer, Events]:
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


def one_of(agent: Agent, assignment: Assignment, *, ours: bool) -> str:
    """A job that ``agent``'s replica owns in ``assignment`` (``ours``), or one it does not."""
    return next(n for n in NAMES if (assignment.owner_of(f"uid-{n}") == agent.identity) == ours)


async def test_only_the_owner_writes_a_jobs_status_and_posts_its_events(engine: Engine) -> None:
    _, writer, events, agent, assignment = await sharing(engine)
    ours = {n for n in NAMES if assignment.owner_of(f"uid-{n}") == agent.identity}
    assert 0 < len(ours) < len(NAMES)
    assert set(writer.status) == ours
    assert all(ready(writer, n)["reason"] == "Scheduled" for n in ours)
    assert {name for name, *_ in events.posted} == ours


async def test_before_any_epoch_says_who_owns_a_job_its_owner_writes_it_when_it_gains_it(
    engine: Engine,
) -> None:
    agent = Agent(MemoryStore(), ring="t", pod_name="a")
    handlers, writer, events = reconciler(engine, Replicas(agent))
    for name in NAMES:
        await handlers.on_create(body=body(name))
    # Replicas starting side by side each wrote every new job, on versions the others
    # had moved: four patches and four Events a job, most patches refused.
    assert writer.status == {}
    assert events.posted == []
    # A spec it cannot schedule is never gained by anyone: it says so at once.
    invalid = copy.deepcopy(dict(body("invalid")))
    invalid["spec"]["schedule"] = {"cron": "61 * * * *"}
    await handlers.on_create(body=kopf.Body(cast(kopf.RawBody, invalid)))
    assert ready(writer, "invalid")["reason"] == "InvalidSchedule"
    writer.status.clear()
    events.posted.clear()
    # Its first epoch gives it every job (one replica): it writes them, and says so once.
    # Nothing says Ready on them yet: that goes before any run update (urgent).
    handlers.after_gain([f"uid-{name}" for name in NAMES])
    assert set(writer.status) == set(NAMES)
    assert all(writer.urgent[name] for name in NAMES)
    assert all(ready(writer, name)["reason"] == "Scheduled" for name in NAMES)
    # The Event once its patch is written: a job lost before that is its new owner's to say.
    assert events.posted == []
    for name in NAMES:
        handlers.landed("ns", name, writer.status[name], True)
    assert sorted(name for name, *_ in events.posted) == sorted(NAMES)
    handlers.landed("ns", NAMES[0], writer.status[NAMES[0]], True)
    assert len(events.posted) == len(NAMES), "said once"


async def test_a_gained_job_that_moves_on_before_its_patch_lands_is_announced_by_its_new_owner(
    engine: Engine,
) -> None:
    handlers, writer, events, agent, assignment = await sharing(engine)
    theirs = one_of(agent, assignment, ours=False)
    handlers.after_gain([f"uid-{theirs}"])  # the other replica left: this one gains it
    patch = dict(writer.status[theirs])
    posted = len(events.posted)
    # It came back before the patch went out (sent for the runs counted here meanwhile).
    handlers.landed("ns", theirs, patch, True)
    assert len(events.posted) == posted


async def test_a_job_gained_with_its_ready_already_written_posts_no_event_again(
    engine: Engine,
) -> None:
    handlers, writer, events, agent, assignment = await sharing(engine)
    theirs = one_of(agent, assignment, ours=False)
    ours = one_of(agent, assignment, ours=True)
    # Its owner wrote the same Ready as this replica's (same spec); the watch showed it,
    # on version 7.
    written = copy.deepcopy(dict(body(theirs)))
    written["status"] = {"conditions": [dict(ready(writer, ours))]}
    written["metadata"]["resourceVersion"] = "7"
    assert not handlers._note_status(type="MODIFIED", body=kopf.Body(cast(kopf.RawBody, written)))
    posted = len(events.posted)
    handlers.before_gain([f"uid-{theirs}"])
    handlers.after_gain([f"uid-{theirs}"])
    assert ready(writer, theirs)["reason"] == "Scheduled"
    assert len(events.posted) == posted
    assert not writer.urgent[theirs]  # the object says Ready already: no hurry
    # The patch builds on the version the owner left, not on the one reconciled.
    assert writer.versions[theirs] == "7"


async def test_a_gained_job_gets_its_whole_status_from_its_new_owner(engine: Engine) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    theirs = one_of(agent, assignment, ours=False)
    assert theirs not in writer.status
    # The other replica leaves: this one gains the job, and writes all the owner would
    # have (that replica may have read the spec under other settings).
    handlers.after_gain([f"uid-{theirs}"])
    status = writer.status[theirs]
    assert ready(writer, theirs)["reason"] == "Scheduled"
    assert (status["observedGeneration"], status["scheduleType"]) == (1, "fixed-rate")
    assert status["replica"] == agent.identity
    assert status["runs"]["total"] == 0


async def test_a_gained_jobs_first_patch_builds_on_the_version_its_owner_left(
    engine: Engine,
) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    theirs = one_of(agent, assignment, ours=False)
    assert writer.versions[theirs] == "1"  # as it was registered here
    # Its owner wrote since, on version 7, and this replica's watch showed it.
    written = copy.deepcopy(dict(body(theirs)))
    written["status"] = {"runs": {"total": 4, "succeeded": 4}}
    written["metadata"]["resourceVersion"] = "7"
    assert not handlers._note_status(type="MODIFIED", body=kopf.Body(cast(kopf.RawBody, written)))
    handlers.before_gain([f"uid-{theirs}"])
    # Built on "1", every such patch was refused (409) and read again.
    assert writer.versions[theirs] == "7"


async def test_a_queued_status_of_a_job_owned_elsewhere_is_not_sent_unless_it_counts_runs(
    engine: Engine,
) -> None:
    handlers, _, _, agent, assignment = await sharing(engine)
    theirs = one_of(agent, assignment, ours=False)
    ours = one_of(agent, assignment, ours=True)
    ready_only = {"conditions": [], "observedGeneration": 1}
    assert not handlers.wanted("ns", theirs, ready_only)
    # A run counted here that status does not hold yet (it held none): it goes.
    counted = {"runs": {"total": 1, "succeeded": 1, "failed": 0, "skipped": 0}}
    assert handlers.wanted("ns", theirs, ready_only | counted)
    # The counters status holds already: nothing of this replica's to add.
    nothing_new = {"runs": {"total": 0, "succeeded": 0, "failed": 0, "skipped": 0}}
    assert not handlers.wanted("ns", theirs, ready_only | nothing_new)
    assert handlers.wanted("ns", ours, ready_only)
    assert handlers.wanted("ns", ours, ready_only | nothing_new)


async def test_a_refused_patch_continues_the_counters_found_and_builds_them_anew(
    engine: Engine,
) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    ours = one_of(agent, assignment, ours=True)
    assert writer.versions[ours] == "1"  # the patches build on the version reconciled
    # The job's previous owner counted 9 runs since: the patch from here is refused.
    found = {"runs": {"total": 9, "succeeded": 9}, "lastRunStatus": "success"}
    refused = {"runs": {"total": 0}, "replica": agent.identity}
    again = handlers.rebased("ns", ours, refused, found)
    assert again == {"replica": agent.identity}
    assert writer.builds[ours]()["runs"] == {"total": 9, "succeeded": 9, "failed": 0, "skipped": 0}


async def test_a_refused_patch_of_a_job_that_moved_sends_only_what_was_never_written(
    engine: Engine,
) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    theirs = one_of(agent, assignment, ours=False)
    # Nothing counted here since it was created: the status is the new owner's.
    assert handlers.rebased("ns", theirs, {"runs": {"total": 0}}, {"runs": {"total": 9}}) is None
    assert theirs not in writer.builds
    assert engine.snapshot(f"ns/{theirs}").history.counts.total == 9, "its copy goes on"
    # One run ended here after the job moved: it is counted on top of the new owner's.
    again = handlers.rebased("ns", theirs, {"runs": {"total": 10}}, {"runs": {"total": 12}})
    assert again == {"runs": {"total": 13, "succeeded": 0, "failed": 0, "skipped": 0}}


async def test_the_run_sigterm_interrupted_is_recorded_after_the_new_owner_wrote(
    engine: Engine,
) -> None:
    handlers, _, _, agent, assignment = await sharing(engine)
    ours = one_of(agent, assignment, ours=True)
    start = "2026-12-03T06:00:00Z"
    handlers.landed("ns", ours, {"runs": {"total": 3, "succeeded": 3}, "running": True}, True)
    # SIGTERM: it owns nothing from now on and adopts no epoch, so none says who took over.
    agent.begin_release()
    drained = {
        "runs": {"total": 4, "succeeded": 3, "failed": 1},
        "running": False,
        "lastRunTime": start,
        "lastRunStatus": "failure",
        "lastError": "Interrupted: the operator shut down",
        "nextRunTime": "2026-12-03T07:00:00Z",
    }
    # The new owner wrote first, from the status as the run started.
    found = {
        "runs": {"total": 3, "succeeded": 3},
        "running": False,
        "lastRunTime": start,
        "replica": "b-00000000",
    }
    again = handlers.rebased("ns", ours, drained, found)
    assert again == {
        "runs": {"total": 4, "succeeded": 3, "failed": 1, "skipped": 0},
        "running": False,
        "lastRunTime": start,
        "lastRunStatus": "failure",
        "lastError": "Interrupted: the operator shut down",
    }
    # Refused again, the new owner having run the job since: the counters, not the fields.
    later = {
        "runs": {"total": 5, "succeeded": 5},
        "lastRunTime": "2026-12-03T06:01:00Z",
        "replica": "b-00000000",
    }
    again = handlers.rebased("ns", ours, drained, later)
    assert again == {"runs": {"total": 6, "succeeded": 5, "failed": 1, "skipped": 0}}


@pytest.mark.parametrize(
    ("found", "total"),
    [
        ({"runs": {"total": 2}}, 2),  # applied, its answer lost: not counted twice
        ({"runs": {"total": 0}, "lastError": "theirs"}, 2),  # not applied: still counted
        ({"runs": {"total": 1}}, 3),  # not applied, another writer counted one meanwhile
    ],
)
async def test_a_patch_whose_answer_was_lost_counts_its_runs_once(
    engine: Engine, found: dict[str, Any], total: int
) -> None:
    handlers, writer, _, agent, assignment = await sharing(engine)
    ours = one_of(agent, assignment, ours=True)
    # Two runs here since status said 0; the patch with them failed on the way back.
    engine.continue_history(f"ns/{ours}", History(counts=RunCounts(total=2)))
    handlers.landed("ns", ours, {"runs": {"total": 2}}, False)
    handlers.rebased("ns", ours, {"runs": {"total": 2}}, found)
    assert writer.builds[ours]()["runs"]["total"] == total


@pytest.mark.looptime
async def test_a_replica_joins_the_ring_only_once_it_holds_its_jobs_and_gains_each_of_them(
    engine: Engine,
) -> None:
    # A job registered after its bucket was gained is never gained: its ticks from the gain
    # to its registration would start nowhere and be counted nowhere.
    store, clock = MemoryStore(), LoopClock()
    agent = Agent(store, ring="t", pod_name="a", wall=clock.wall)
    listener = Listener()
    agent.set_listener(listener)
    replicas = Replicas(agent)
    handlers, _, _ = reconciler(engine, replicas)
    holds_its_jobs = asyncio.Event()
    joining = asyncio.create_task(replicas.run(holds_its_jobs.wait))
    try:
        for name in NAMES[:6]:
            await handlers.on_create(body=body(name))
        await asyncio.sleep(3 * agent.params.renew_period)  # on the fake loop clock
        assert store.leases() == {}
        for name in NAMES[6:]:
            await handlers.on_create(body=body(name))
        holds_its_jobs.set()
        await until(lambda: set(listener.gains) == {f"uid-{n}" for n in NAMES}, within=2.0)
        assert member_lease_name(agent.identity) in store.leases()
    finally:
        joining.cancel()
        await asyncio.gather(joining, return_exceptions=True)


async def test_a_run_now_another_replica_acted_on_runs_nothing_here(engine: Engine) -> None:
    # The owner's decision alone is under test: one replica, which owns every job.
    handlers, _, events = reconciler(engine, None)
    await handlers.on_create(body=body(NAMES[0]))

    def changed(kept: str) -> kopf.Body:
        raw = copy.deepcopy(dict(body(NAMES[0])))
        raw["metadata"]["annotations"] = {"podcron.dev/run-now": "2"}
        raw["status"] = {"lastRunNow": kept}
        return kopf.Body(cast(kopf.RawBody, raw))

    def run_now_events() -> list[str]:
        return [reason for _, _, reason, _ in events.posted if reason.startswith("RunNow")]

    # The job moved here after its previous owner ran "2" and said so in status; this
    # replica's watch brings the change only now, and that status with it.
    await handlers.on_run_now(body=changed("2"), reason=kopf.Reason.UPDATE, old="1", new="2")
    assert run_now_events() == []
    # Nobody acted on it yet: the owner runs it.
    await handlers.on_run_now(body=changed("1"), reason=kopf.Reason.UPDATE, old="1", new="2")
    assert run_now_events() == ["RunNow"]
