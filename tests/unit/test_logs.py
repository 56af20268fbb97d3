"""Log lines: JSON objects with job and trace ids, tracebacks of failed runs, or plain text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from podcron.context import JobContext
from podcron.engine import Engine, JobEvent, JobSpec, RunFinished
from podcron.entrypoints import JobTarget
from podcron.schedules import parse_schedule
from podcron.telemetry.logs import make_handler

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
DEADLINE = 5.0


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the JSON handler writes for podcron's loggers, INFO and up."""
    stream = io.StringIO()
    handler = make_handler(log_format="json", stream=stream)
    logger = logging.getLogger("podcron")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line parsed as JSON: a line that is not one object fails the test."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def spec(target: JobTarget) -> JobSpec:
    return JobSpec(
        job_id="ns/job",
        namespace="ns",
        name="job",
        entry_point="tests:job",
        target=target,
        # Due in a day: only the manual run happens during the test.
        schedule=parse_schedule({"daily": {"at": "00:00"}}),
    )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(shutdown_timeout_seconds=1.0, worker_threads=2)
    yield engine
    await engine.shutdown()


async def run_once(engine: Engine, target: JobTarget) -> None:
    """Register ``target``, trigger it in the caller's trace, wait for its end."""
    done = asyncio.Event()

    def on_event(event: JobEvent) -> None:
        if isinstance(event, RunFinished):
            done.set()

    engine.add_listener(on_event)
    engine.upsert(spec(target))
    engine.trigger("ns/job", trace_headers={"traceparent": TRACEPARENT})
    await asyncio.wait_for(done.wait(), DEADLINE)


async def test_a_failed_run_logs_its_traceback_as_json_in_the_runs_trace(
    engine: Engine, captured: io.StringIO
) -> None:
    async def broken(ctx: JobContext) -> None:
        ctx.log.info("about to fail")
        raise ValueError("boom")

    await run_once(engine, broken)
    records = [r for r in lines(captured) if r["job_id"] == "ns/job"]
    info, error = records[0], records[-1]
    assert info["message"] == "about to fail"
    assert error["level"] == "ERROR"
    assert error["logger"] == "podcron.job"
    assert error["message"] == "run failed: ValueError: boom"
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert error["exc_info"].endswith("ValueError: boom")
    assert error["time"].endswith("+00:00")
    # The job's line and the engine's report of the failure lead to the same span.
    for record in (info, error):
        assert record["trace_id"] == TRACE_ID
        assert len(record["span_id"]) == 16
    assert info["span_id"] == error["span_id"]


async def test_any_logger_inside_a_thread_run_carries_the_trace(
    engine: Engine, captured: io.StringIO
) -> None:
    def job(ctx: JobContext) -> None:
        logging.getLogger("podcron.somelibrary").info("called from a job's thread")

    await run_once(engine, job)
    (record,) = [r for r in lines(captured) if r["logger"] == "podcron.somelibrary"]
    assert record["trace_id"] == TRACE_ID
    # Only the run's own logger knows the job; a library's logger knows the trace.
    assert record["job_id"] is None


def test_lines_outside_a_run_have_no_trace_ids(captured: io.StringIO) -> None:
    logging.getLogger("podcron.engine").info("nothing runs", extra={"job_id": "ns/job"})
    (record,) = lines(captured)
    assert record["job_id"] == "ns/job"
    assert "trace_id" not in record
    assert "span_id" not in record


def test_text_format_is_for_people() -> None:
    stream = io.StringIO()
    handler = make_handler(log_format="text", stream=stream)
    record = logging.LogRecord(
        "podcron.job", logging.WARNING, __file__, 1, "slow: %s", ("x",), None
    )
    record.job_id = "ns/job"
    handler.handle(record)
    line = stream.getvalue()
    assert "WARNING podcron.job [ns/job] slow: x" in line
    assert not line.startswith("{")
