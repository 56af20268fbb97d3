"""An operator killed with SIGKILL and started again loses nothing that reached status.

One scenario serves the module: two hello jobs every 2 s, ``catchup`` with
``startingDeadlineSeconds`` and ``plain`` without; the first operator (watching
all namespaces, the default) runs them, is SIGKILLed, stays down for more than
a tick, and a second operator takes over. At the end both jobs are suspended
so that their status settles, and the tests read what happened from status
and from the two operators' logs.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from controlplane import ControlPlane

from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import (
    apply,
    hello_runs,
    manifest,
    namespace_for_module,
    patch_spec,
    started_operator,
    status,
    wait_ready,
)

INTERVAL = timedelta(seconds=2)
JOBS: dict[str, dict[str, Any]] = {
    "catchup": {"entryPoint": "hello", "schedule": {"every": "2s"}, "startingDeadlineSeconds": 60},
    "plain": {"entryPoint": "hello", "schedule": {"every": "2s"}},
}


@dataclass(frozen=True)
class Scenario:
    """What the two operators did, and the status before and after."""

    namespace: str
    first: OperatorProcess
    second: OperatorProcess
    killed_at: datetime
    runs_at_kill: dict[str, dict[str, int]]
    final: dict[str, dict[str, Any]]

    def runs(self, operator: OperatorProcess, name: str) -> list[tuple[str, datetime]]:
        """(trigger, due time) of the runs of ``name`` that ``operator`` made."""
        return hello_runs(operator.log(), f"{self.namespace}/{name}")


def _runs(plane: ControlPlane, namespace: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = status(plane, namespace, name).get("runs", {})
    return counts


@pytest.fixture(scope="module")
def scenario(crd: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("restarts")
    operators: list[OperatorProcess] = []
    with namespace_for_module(crd, "restarts") as namespace:

        def made_by(operator: OperatorProcess, name: str) -> int:
            return len(hello_runs(operator.log(), f"{namespace}/{name}"))

        try:
            first = started_operator(crd, workdir / "first")
            operators.append(first)
            apply(crd, namespace, *(manifest(name, spec) for name, spec in JOBS.items()))

            def ran_twice(name: str) -> bool:
                return _runs(crd, namespace, name).get("succeeded", 0) >= 2

            for name in JOBS:
                wait_for(partial(ran_twice, name), timeout=20, what=f"two runs of {name}")
            first.stop(signal.SIGKILL)
            killed_at = datetime.now(UTC)
            # The downtime under test: long enough that a tick passes with no
            # operator (the next tick is at most one interval after the kill).
            time.sleep((INTERVAL + timedelta(seconds=0.5)).total_seconds())
            runs_at_kill = {name: _runs(crd, namespace, name) for name in JOBS}

            second = started_operator(crd, workdir / "second")
            operators.append(second)

            def ran_again(name: str) -> bool:
                return made_by(second, name) >= 3

            for name in JOBS:
                wait_for(partial(ran_again, name), timeout=20, what=f"{name} after the restart")
            # Suspended, the jobs stop running and their status settles.
            for name in JOBS:
                patch_spec(crd, namespace, name, {"suspend": True})
            for name in JOBS:
                wait_ready(crd, namespace, name, reason="Suspended")

            def settled(name: str) -> dict[str, Any] | None:
                found = status(crd, namespace, name)
                expected = runs_at_kill[name]["total"] + made_by(second, name)
                return found if found["runs"]["total"] == expected else None

            final = {
                name: wait_for(partial(settled, name), timeout=15, what=f"{name}'s final status")
                for name in JOBS
            }
            yield Scenario(namespace, first, second, killed_at, runs_at_kill, final)
        finally:
            for operator in operators:
                operator.stop(signal.SIGKILL)


@pytest.mark.parametrize("name", JOBS)
def test_counters_continue_after_sigkill(scenario: Scenario, name: str) -> None:
    at_kill = scenario.runs_at_kill[name]
    assert at_kill["total"] >= 2
    made = scenario.runs(scenario.second, name)
    # settled() waited for exactly this: the second operator's runs on top of
    # the first one's counters, none reset, none counted twice.
    assert scenario.final[name]["runs"] == {
        "total": at_kill["total"] + len(made),
        "succeeded": at_kill["succeeded"] + len(made),
        "failed": 0,
        "skipped": 0,
    }


@pytest.mark.parametrize("name", JOBS)
def test_schedule_continues_on_its_ticks(scenario: Scenario, name: str) -> None:
    first = [due for trigger, due in scenario.runs(scenario.first, name)]
    second = [
        due for trigger, due in scenario.runs(scenario.second, name) if trigger == "scheduled"
    ]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for due in first + second:
        assert (due - epoch) % INTERVAL == timedelta(0), f"{due} is not on a 2 s tick"
    assert all(later - earlier == INTERVAL for earlier, later in itertools.pairwise(second))
    # The first scheduled run after the restart is the first tick after start-up.
    assert second[0] - first[-1] >= 2 * INTERVAL, "the downtime should have cost a tick"
    assert len(second) >= 2


def test_a_missed_tick_is_caught_up_exactly_once_with_a_starting_deadline(
    scenario: Scenario,
) -> None:
    runs = scenario.runs(scenario.second, "catchup")
    catch_ups = [due for trigger, due in runs if trigger == "catch-up"]
    assert len(catch_ups) == 1
    (missed,) = catch_ups
    last_before_kill = scenario.runs(scenario.first, "catchup")[-1][1]
    first_after_restart = next(due for trigger, due in runs if trigger == "scheduled")
    # The most recent tick that no operator ran: after the last run, before the next.
    assert last_before_kill < missed < first_after_restart
    assert missed >= scenario.killed_at - INTERVAL
    assert first_after_restart - missed == INTERVAL
    assert runs[0] == ("catch-up", missed), "the catch-up runs at once, at resume"
    assert "catch-up" not in {trigger for trigger, _ in scenario.runs(scenario.first, "catchup")}


def test_no_catch_up_without_a_starting_deadline(scenario: Scenario) -> None:
    triggers = [trigger for trigger, _ in scenario.runs(scenario.second, "plain")]
    assert triggers
    assert set(triggers) == {"scheduled"}
