"""Secret values of the job configuration never reach a log line or an exported span."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from podcron.jobconfig import REDACTED, ConfigSource
from podcron.telemetry import logs, span_export

TOKEN = "tok-9f8e7d6c5b4a"


@pytest.fixture
def config(tmp_path: Path) -> ConfigSource:
    (tmp_path / "token").write_text(TOKEN + "\n")
    source = ConfigSource(secrets_dir=tmp_path)
    source.load()
    return source


@pytest.fixture
def redacted_log(config: ConfigSource) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure_logging(log_format="json", stream=stream)
    logs.redact_with(config.redact_known)
    yield stream
    logs.redact_with(None)
    logs.configure_logging(log_format="json")


def test_a_secret_in_a_message_or_traceback_is_written_redacted(redacted_log: io.StringIO) -> None:
    log = logging.getLogger("podcron.job")
    try:
        raise PermissionError(f"refused {TOKEN}")
    except PermissionError:
        log.exception("run failed: %s", f"Bearer {TOKEN}")
    written = redacted_log.getvalue()
    assert TOKEN not in written
    assert written.count(REDACTED) >= 2


def test_exported_spans_carry_no_secret(config: ConfigSource) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    exporter = span_export.RedactingExporter(memory, config.redact_known)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("run") as span:
        span.set_attribute("url", f"https://user:{TOKEN}@db")
        span.set_attribute("attempt", 3)
        span.record_exception(RuntimeError(f"denied {TOKEN}"))
        span.set_status(Status(StatusCode.ERROR, f"RuntimeError: denied {TOKEN}"))
    (exported,) = memory.get_finished_spans()
    texts = [
        str(dict(exported.attributes or {})),
        str([dict(event.attributes or {}) for event in exported.events]),
        exported.status.description or "",
    ]
    assert all(TOKEN not in text and REDACTED in text for text in texts)
    assert (exported.attributes or {})["attempt"] == 3
    assert exported.status.status_code is StatusCode.ERROR
