"""Ready and LastRunSucceeded, and the failure streak, as the operator writes them."""

from __future__ import annotations

from typing import Any

from podcron.controller.conditions import JobConditions

JOB = "ns/job"
EARLIER = "2024-06-03T10:00:00Z"


def _types(status: dict[str, Any]) -> list[str]:
    return [condition["type"] for condition in status["conditions"]]


def test_last_run_succeeded_follows_runs_and_the_streak_resets_on_success() -> None:
    conditions = JobConditions()
    conditions.seed(JOB, {})
    conditions.set_ready(JOB, ok=True, reason="Scheduled", message="scheduled every 1s")
    assert _types(conditions.status(JOB)) == ["Ready"], "no LastRunSucceeded before a run"
    assert conditions.status(JOB)["consecutiveFailures"] == 0

    conditions.run_ended(JOB, succeeded=False, error="ValueError: one")
    conditions.run_ended(JOB, succeeded=False, error="ValueError: two")
    status = conditions.status(JOB)
    assert status["consecutiveFailures"] == 2
    ready, last = status["conditions"]
    assert (ready["type"], ready["status"]) == ("Ready", "True"), "runs leave Ready alone"
    assert last | {"lastTransitionTime": None} == {
        "type": "LastRunSucceeded",
        "status": "False",
        "reason": "RunFailed",
        "message": "ValueError: two",
        "lastTransitionTime": None,
    }

    conditions.run_ended(JOB, succeeded=True, error=None)
    status = conditions.status(JOB)
    assert status["consecutiveFailures"] == 0
    assert status["conditions"][1]["status"] == "True"
    assert status["conditions"][1]["reason"] == "RunSucceeded"


def test_a_restart_continues_from_status() -> None:
    written = {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Scheduled", "message": "m",
             "lastTransitionTime": EARLIER},
            {"type": "LastRunSucceeded", "status": "False", "reason": "RunFailed",
             "message": "ValueError: boom", "lastTransitionTime": EARLIER},
            {"type": "SomeoneElses", "status": "True"},
        ],
        "consecutiveFailures": 4,
    }  # fmt: skip
    conditions = JobConditions()
    conditions.seed(JOB, written)
    conditions.set_ready(JOB, ok=True, reason="Scheduled", message="m")
    conditions.run_ended(JOB, succeeded=False, error="ValueError: boom")
    status = conditions.status(JOB)
    assert status["consecutiveFailures"] == 5
    assert [c["lastTransitionTime"] for c in status["conditions"]] == [EARLIER, EARLIER]
    # Seeding again (a later event for a job already known) changes nothing.
    conditions.seed(JOB, {})
    assert conditions.status(JOB) == status


def test_a_transition_moves_the_transition_time() -> None:
    conditions = JobConditions()
    conditions.seed(JOB, {"conditions": [
        {"type": "Ready", "status": "True", "reason": "Scheduled", "message": "m",
         "lastTransitionTime": EARLIER},
    ]})  # fmt: skip
    condition = conditions.set_ready(JOB, ok=False, reason="InvalidSchedule", message="bad")
    assert condition["lastTransitionTime"] != EARLIER
    assert conditions.ready(JOB) == condition


def test_an_unreadable_streak_in_status_starts_at_zero() -> None:
    for value in (None, "3", -2, True, 1.5):
        conditions = JobConditions()
        conditions.seed(JOB, {"consecutiveFailures": value})
        assert conditions.status(JOB)["consecutiveFailures"] == 0


def test_forget_drops_the_job() -> None:
    conditions = JobConditions()
    conditions.seed(JOB, {"consecutiveFailures": 3})
    conditions.forget(JOB)
    assert conditions.ready(JOB) is None
    conditions.seed(JOB, {})
    assert conditions.status(JOB) == {"conditions": [], "consecutiveFailures": 0}


def test_an_unchanged_condition_is_kept_as_it_was() -> None:
    conditions = JobConditions()
    conditions.run_ended(JOB, succeeded=True, error=None)
    first = conditions.status(JOB)["conditions"][0]
    conditions.run_ended(JOB, succeeded=True, error=None)
    assert conditions.status(JOB)["conditions"][0] is first
