"""Log lines: JSON objects with job and trace ids, tracebacks of failed runs, or plain text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from podcron.context import JobContext
from podcron.engine import Engine, JobEvent, JobSpec, RunFinished
from podcron.entrypoints import JobTarget
from podcron.schedules import parse_schedule
from podcron.telemetry import logs
from podcron.telemetry.logs import (
    MESSAGE_LIMIT,
    QUEUE_SIZE,
    TRACEBACK_LIMIT,
    RepeatFilter,
    configure_logging,
    make_handler,
    stop_background_writer,
)

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


def spec(target: JobTarget, timeout_seconds: float | None = None) -> JobSpec:
    return JobSpec(
        job_id="ns/job",
        namespace="ns",
        name="job",
        entry_point="tests:job",
        target=target,
        # Due in a day: only the manual run happens during the test.
        schedule=parse_schedule({"daily": {"at": "00:00"}}),
        timeout_seconds=timeout_seconds,
    )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(shutdown_timeout_seconds=1.0, worker_threads=2)
    yield engine
    await engine.shutdown()


async def run_once(engine: Engine, target: JobTarget, timeout_seconds: float | None = None) -> None:
    """Register ``target``, trigger it in the caller's trace, wait for its end."""
    done = asyncio.Event()

    def on_event(event: JobEvent) -> None:
        if isinstance(event, RunFinished):
            done.set()

    engine.add_listener(on_event)
    engine.upsert(spec(target, timeout_seconds))
    engine.trigger("ns/job", trace_headers={"traceparent": TRACEPARENT})
    await asyncio.wait_for(done.wait(), DEADLINE)


async def test_a_timed_out_run_logs_its_timeout_with_its_traceback(
    engine: Engine, captured: io.StringIO
) -> None:
    async def hangs(ctx: JobContext) -> None:
        await asyncio.Event().wait()

    await run_once(engine, hangs, timeout_seconds=0.01)
    error = [r for r in lines(captured) if r["job_id"] == "ns/job"][-1]
    assert (error["level"], error["logger"]) == ("ERROR", "podcron.job")
    assert error["message"] == "run timed out after 0.01s"
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert error["exc_info"].endswith("TimeoutError")


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


# -- floods: repeats, sizes, a reader that does not keep up ---------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warning(message: str, *args: object, job_id: str | None = None) -> logging.LogRecord:
    record = logging.LogRecord("podcron.status", logging.WARNING, __file__, 1, message, args, None)
    record.job_id = job_id
    return record


def test_repeated_warnings_are_held_back_and_counted() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(burst=5, window=60.0, clock=clock)
    template = "status patch of %s failed (%s); retrying"
    passed = [repeats.filter(warning(template, f"ns/job-{index}", "503")) for index in range(100)]
    assert passed == [True] * 5 + [False] * 95
    # Another kind (another template, another job's line, a lower level) is not held back.
    assert repeats.filter(warning("another %s", "thing"))
    assert repeats.filter(warning(template, "ns/a", "503", job_id="ns/a"))
    info = warning(template, "ns/b", "503")
    info.levelno = logging.INFO
    assert all(repeats.filter(info) for _ in range(20))
    # The next window's first line carries the count.
    clock.now += 60
    record = warning(template, "ns/job-100", "503")
    assert repeats.filter(record)
    assert record.getMessage() == (
        "status patch of ns/job-100 failed (503); retrying (95 similar lines suppressed)"
    )


def test_a_window_that_ends_quietly_hands_over_its_count() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(burst=1, window=10.0, clock=clock)
    for attempt in range(4):
        repeats.filter(warning("watch failed: attempt %d", attempt))
    assert repeats.expired() == []
    clock.now += 10
    (note,) = repeats.expired()
    assert note.getMessage() == "watch failed: attempt 3 (3 similar lines suppressed)"
    assert note.levelno == logging.WARNING
    assert repeats.expired() == [], "a count is written once"


def test_a_huge_message_and_traceback_are_cut(captured: io.StringIO) -> None:
    log = logging.getLogger("podcron.job")
    log.info("%s", "m" * 10_000_000, extra={"job_id": "ns/job"})
    try:
        raise ValueError("e" * 5_000_000)
    except ValueError:
        log.exception("run failed", extra={"job_id": "ns/job"})
    info, error = lines(captured)
    assert len(info["message"]) < MESSAGE_LIMIT + 100
    assert info["message"].endswith("... (truncated: 10,000,000 characters)")
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert len(error["exc_info"]) < TRACEBACK_LIMIT + 100
    assert "(truncated: 5," in error["exc_info"]
    assert max(len(line) for line in captured.getvalue().splitlines()) < 16 * 1024


async def test_a_job_raising_a_huge_error_logs_a_bounded_line(
    engine: Engine, captured: io.StringIO
) -> None:
    async def enormous(ctx: JobContext) -> None:
        raise RuntimeError("x" * 5_000_000)

    await run_once(engine, enormous)
    (error,) = [r for r in lines(captured) if r["level"] == "ERROR"]
    assert len(error["message"]) < MESSAGE_LIMIT
    assert len(error["exc_info"]) < TRACEBACK_LIMIT + 100


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored (and the writer thread stopped) afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    stop_background_writer()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_reader_that_does_not_keep_up_costs_lines_never_a_wait(
    root_logger: logging.Logger,
) -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    configure_logging(log_format="text", background=True, stream=stream)
    total = 3 * QUEUE_SIZE  # far more than the pipe's 64 KiB and the queue hold
    done = threading.Event()

    def flood() -> None:
        log = logging.getLogger("podcron.job")
        for index in range(total):
            log.info("line %d %s", index, "x" * 200)
        done.set()

    # Nobody reads the pipe yet: writing in the caller's thread would block here.
    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(60), "logging waited for the log's reader"
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(iter_pipe(read_end)), daemon=True)
    reader.start()
    stop_background_writer(timeout=30)
    stream.close()
    reader.join(30)
    text = b"".join(received).decode()
    written = len(re.findall(r"\] line \d+ x+", text))
    dropped = sum(int(count) for count in re.findall(r"(\d+) log lines dropped", text))
    assert dropped > 0
    assert written + dropped == total


def iter_pipe(fd: int) -> Iterator[bytes]:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            yield chunk


def test_suppressed_counts_are_written_when_the_window_ends_without_another_line(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "REPEAT_WINDOW_SECONDS", 0.5)
    stream = io.StringIO()
    configure_logging(log_format="json", background=True, stream=stream)
    log = logging.getLogger("podcron.status")
    for index in range(20):
        log.warning("status patch of %s failed", f"ns/job-{index}")
    deadline = time.monotonic() + 30
    while "similar lines suppressed" not in stream.getvalue():
        assert time.monotonic() < deadline, "the count was never written"
        time.sleep(0.05)
    messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert messages == [f"status patch of ns/job-{index} failed" for index in range(5)] + [
        "status patch of ns/job-19 failed (15 similar lines suppressed)"
    ]
