"""A restarted operator reconciles every job again: what the object already says is not written."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import kopf
import pytest

from podcron.config import Settings
from podcron.controller.events import EventRecorder
from podcron.controller.handlers import Reconciler
from podcron.controller.status import StatusWriter
from podcron.engine import Engine

from .test_resource_conditions import Events, Writer, body


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        await engine.shutdown()


async def reconciled(
    engines: list[Engine], status: Mapping[str, Any], *, busy: bool = False, **spec: Any
) -> tuple[Writer, Events]:
    """What a freshly started operator writes of job ``j`` whose object shows ``status``.

    ``busy``: an update of the job is on its way already.
    """
    engine = Engine(shutdown_timeout_seconds=1.0, loop_watchdog=False)
    engines.append(engine)
    writer, events = Writer(), Events()
    if busy:
        writer.busy.add("j")
    reconciler = Reconciler(
        engine=engine,
        writer=cast(StatusWriter, writer),
        events=cast(EventRecorder, events),
        settings=Settings(),
    )
    raw = copy.deepcopy(dict(body("j")))
    raw["spec"] |= spec
    raw["status"] = copy.deepcopy(dict(status))
    await reconciler.on_create(body=kopf.Body(cast(kopf.RawBody, raw)))
    return writer, events


async def test_a_restart_writes_nothing_of_a_job_whose_status_says_it_all(
    engines: list[Engine],
) -> None:
    daily = {"cron": "0 3 * * *"}
    writer, events = await reconciled(engines, {}, schedule=daily)
    written = json.loads(json.dumps(writer.status["j"]))  # as the API server keeps it
    assert written["conditions"][0]["reason"] == "Scheduled"
    assert len(events.posted) == 1
    # Started again: the same spec, the same status. Nothing to write, nothing to say.
    writer, events = await reconciled(engines, written, schedule=daily)
    assert writer.status == {}
    assert events.posted == []
    # A changed spec is written, at once.
    writer, _ = await reconciled(engines, written, schedule={"cron": "0 4 * * *"})
    assert writer.status["j"]["cronExpression"] == "0 4 * * *"
    assert writer.urgent["j"]


async def test_what_the_object_says_is_written_again_when_another_update_is_on_its_way(
    engines: list[Engine],
) -> None:
    writer, _ = await reconciled(engines, {})
    written = json.loads(json.dumps(writer.status["j"]))
    # Queued, not yet sent: it would overwrite the object with what it holds, so what the
    # object says now must follow it.
    writer, _ = await reconciled(engines, written, busy=True)
    assert writer.status["j"] == written
