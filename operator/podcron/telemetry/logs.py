"""Log output: one JSON object per line, or plain text for people at a terminal.

Every record carries ``job_id`` when it is about a job, and ``trace_id`` and
``span_id`` while a run's span is current, so a log line leads to its trace.
A JSON line holds ``time`` (RFC 3339, UTC), ``level``, ``logger``,
``message``, ``job_id``, the trace ids inside a run, any other ``extra``
fields, and ``exc_info`` (the formatted traceback) when one was logged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(job_id)s] %(message)s"


def _trace_ids(span_context: trace.SpanContext) -> dict[str, str]:
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` of the current span, and a ``job_id`` default."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = None
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.__dict__.update(_trace_ids(span_context))
        return True


class _JsonFormatter(JsonFormatter):
    """python-json-logger's formatter with ``time`` first, as people read a line left to right."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)


class _RunLogger(logging.LoggerAdapter[logging.Logger]):
    # Formats the trace ids when a line is logged, not when a run starts:
    # most runs log nothing, and every run starts.
    def __init__(self, logger: logging.Logger, job_id: str, span_context: trace.SpanContext):
        super().__init__(logger, {"job_id": job_id})
        self._span_context = span_context

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        if self._span_context.is_valid:
            extra |= _trace_ids(self._span_context)
        kwargs["extra"] = extra
        return msg, kwargs


def job_logger(
    logger: logging.Logger, *, job_id: str, span: trace.Span
) -> logging.LoggerAdapter[logging.Logger]:
    """``logger`` bound to a job and its run's span.

    The trace ids travel with the adapter, so lines logged after the span
    stopped being current (the engine's own report of a failure) still lead
    to the run's trace; a span current at the time of logging, such as a
    job's own child span, takes precedence through :class:`TraceContextFilter`.
    """
    return _RunLogger(logger, job_id, span.get_span_context())


def make_handler(*, log_format: str = "json", stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``log_format`` (``json`` or ``text``) to ``stream`` (default stderr)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(TraceContextFilter())
    if log_format == "json":
        handler.setFormatter(
            _JsonFormatter(
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(*, log_format: str = "json", level: str = "INFO") -> None:
    """Send the root logger's records to stderr in ``log_format`` (``json`` or ``text``)."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(log_format=log_format)]
    root.setLevel(level)
