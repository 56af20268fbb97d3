"""Log output: one JSON object per line, or plain text for people at a terminal.

Every record carries ``job_id`` when it is about a job, and ``trace_id`` and
``span_id`` while a run's span is current, so a log line leads to its trace.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(job_id)s] %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` of the current span, and a ``job_id`` default."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = None
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


def configure_logging(*, log_format: str = "json", level: str = "INFO") -> None:
    """Send the root logger's records to stderr in ``log_format`` (``json`` or ``text``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
