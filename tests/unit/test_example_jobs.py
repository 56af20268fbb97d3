"""The example jobs' own tests, written as a job author writes them, with ``podcron.testing``."""

from __future__ import annotations

from datetime import UTC, datetime

from podcron import Trigger
from podcron.testing import harness, next_runs
from podcron_examples.cleanup import cleanup
from podcron_examples.hello import hello
from podcron_examples.report import report

MONDAY_2AM = datetime(2026, 3, 30, 2, 0, tzinfo=UTC)


def test_hello_greets_with_its_argument() -> None:
    run = harness(args={"greeting": "good morning"}, name="hello", now=MONDAY_2AM)
    outcome = run.run(hello)
    assert outcome.succeeded
    assert run.messages == [
        "good morning from default/hello (manual run due 2026-03-30T02:00:00+00:00)"
    ]


def test_hello_names_a_scheduled_run_and_its_due_time() -> None:
    due = datetime(2026, 3, 30, 1, 59, 58, tzinfo=UTC)
    run = harness(trigger=Trigger.SCHEDULED, scheduled_time=due, now=MONDAY_2AM)
    run.run(hello)
    assert run.messages == ["hello from default/job (scheduled run due 2026-03-30T01:59:58+00:00)"]


def test_cleanup_deletes_every_batch() -> None:
    run = harness(args={"retentionDays": 30, "batches": 2}, timeout=60)
    outcome = run.run(cleanup)
    assert outcome.succeeded
    assert run.messages == ["deleting rows older than 30 days"]


def test_cleanup_stops_at_once_when_cancelled() -> None:
    run = harness(args={"batches": 1000}, cancelled=True)
    outcome = run.run(cleanup)
    assert outcome.succeeded
    assert run.messages[-1] == "cancelled after 0 batches"


def test_report_says_tracing_is_off_without_an_exporter() -> None:
    run = harness(args={"kind": "weekly"})
    assert run.run(report).succeeded
    assert run.messages == ["building the weekly report (trace headers: tracing off)"]


def test_the_cleanup_schedule_of_the_example() -> None:
    # examples/cleanup.yaml: every 15 seconds, on the multiples of 15 s since the epoch.
    ticks = next_runs({"every": "15s"}, datetime(2026, 3, 30, 2, 0, 7, tzinfo=UTC), 2)
    assert ticks == [
        datetime(2026, 3, 30, 2, 0, 15, tzinfo=UTC),
        datetime(2026, 3, 30, 2, 0, 30, tzinfo=UTC),
    ]
