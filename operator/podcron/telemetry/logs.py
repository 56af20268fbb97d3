"""Log output: one JSON object per line, or plain text for people at a terminal.

Every record carries ``job_id`` when it is about a job, and ``trace_id`` and
``span_id`` while a run's span is current, so a log line leads to its trace.
A JSON line holds ``time`` (RFC 3339, UTC), ``level``, ``logger``,
``message``, ``job_id``, the trace ids inside a run, any other ``extra``
fields, and ``exc_info`` (the formatted traceback) when one was logged.

Three limits keep the log from flooding the node or stalling the jobs:

- Repeats: a WARNING or worse of one kind (same logger, level, message
  template and job) is written at most :data:`REPEAT_BURST` times per
  :data:`REPEAT_WINDOW_SECONDS`; the rest are counted, and the count is
  written with the next line of that kind, or on its own once the window ends,
  as ``... (N similar lines suppressed)``.
- Size: a message is cut at :data:`MESSAGE_LIMIT` characters and a
  traceback at :data:`TRACEBACK_LIMIT`, each with a note of its full length:
  a line then stays below the 16 KiB that container runtimes split lines at.
- Blocking: in the operator, lines are written by a thread of their own
  (:func:`configure_logging` with ``background=True``), through a queue of at
  most :data:`QUEUE_SIZE` lines. A job's thread or the event loop only
  queues a line; when the queue is full (whoever reads stderr does not keep
  up) lines are dropped and counted, and the count is written once there is
  room, rather than the event loop waiting for the reader.

Secrets: with :func:`redact_with`, every message and traceback passes
through a function that takes secret values out (the operator's job
configuration) before it is written anywhere.
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(job_id)s] %(message)s"
#: Longest message written, in characters; the rest is cut with a note.
MESSAGE_LIMIT = 4096
#: Longest traceback (``exc_info``) or stack written, in characters.
TRACEBACK_LIMIT = 8192
#: Lines of one kind written per window before the rest are only counted.
REPEAT_BURST = 5
REPEAT_WINDOW_SECONDS = 60.0
#: Kinds of line tracked at once; beyond it, the oldest windows are forgotten.
REPEAT_KINDS = 10_000
#: Lines waiting for the writer thread; past this, new lines are dropped and counted.
QUEUE_SIZE = 2000
#: How often the writer thread reports counts when no line arrives.
NOTE_INTERVAL_SECONDS = 1.0
#: How long the process waits at exit for queued lines to be written.
EXIT_FLUSH_SECONDS = 2.0


def _trace_ids(span_context: trace.SpanContext) -> dict[str, str]:
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


def truncate(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a note of how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (truncated: {len(text):,} characters)"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` of the current span, and a ``job_id`` default."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = None
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.__dict__.update(_trace_ids(span_context))
        return True


@dataclass(slots=True)
class _Window:
    start: float
    written: int = 1
    suppressed: int = 0
    last: logging.LogRecord | None = field(default=None, repr=False)


def _add_count(record: logging.LogRecord, suppressed: int) -> None:
    """End ``record``'s message with the count of lines suppressed (after cutting it)."""
    message = truncate(record.getMessage(), MESSAGE_LIMIT)
    record.msg = f"{message} ({suppressed} similar lines suppressed)"
    record.args = None


class RepeatFilter(logging.Filter):
    """Writes a WARNING or worse of one kind at most ``burst`` times per ``window`` seconds.

    A kind is the logger, the level, the message template (before its
    arguments are filled in) and the record's ``job_id``: the same warning
    about a thousand jobs' status patches is one kind, one job's failures
    another than the next job's. The first line of a kind after a window
    with suppressed lines carries their count; :meth:`expired` hands over
    the counts of windows that ended without one. Safe to use from any thread.
    """

    def __init__(
        self,
        *,
        burst: int = REPEAT_BURST,
        window: float = REPEAT_WINDOW_SECONDS,
        kinds: int = REPEAT_KINDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._burst = burst
        self._window = window
        self._kinds = kinds
        # Insertion order is window start order: a new window re-inserts its kind.
        self._windows: dict[tuple[str, int, str, object], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        template = record.msg if isinstance(record.msg, str) else repr(record.msg)
        key = (record.name, record.levelno, template[:500], getattr(record, "job_id", None))
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.start < self._window:
                if window.written < self._burst:
                    window.written += 1
                    return True
                window.suppressed += 1
                window.last = record
                return False
            self._windows.pop(key, None)
            self._windows[key] = _Window(start=now)
            if len(self._windows) > self._kinds:
                del self._windows[next(iter(self._windows))]
        if window is not None and window.suppressed:
            _add_count(record, window.suppressed)
        return True

    def expired(self, *, all_windows: bool = False) -> list[logging.LogRecord]:
        """Lines carrying the counts of windows that ended with lines suppressed.

        Each is the last line suppressed, with the count; the window is then
        forgotten, so the count is written once. ``all_windows`` (at exit)
        ends every window now.
        """
        now = self._clock()
        notes = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if not all_windows and now - window.start < self._window:
                    break  # the rest started later
                del self._windows[key]
                if window.suppressed and window.last is not None:
                    note = copy.copy(window.last)
                    _add_count(note, window.suppressed)
                    notes.append(note)
        return notes


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


# Takes secret values out of every message and traceback; set by redact_with().
_redactor: Callable[[str], str] | None = None


def redact_with(redactor: Callable[[str], str] | None) -> None:
    """Pass every message and traceback written through ``redactor`` (None: as they are)."""
    global _redactor
    _redactor = redactor


def bounded(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` with its message, traceback and stack cut to the limits.

    The arguments are merged into the message and the exception is formatted
    here, so the copy holds no reference to the job's objects or frames.
    """
    redact = _redactor
    bounded_record = copy.copy(record)
    if not isinstance(record.msg, dict):  # a dict is python-json-logger's structured record
        message = record.getMessage()
        bounded_record.msg = truncate(message if redact is None else redact(message), MESSAGE_LIMIT)
        bounded_record.args = None
    exc_text = record.exc_text
    if record.exc_info and record.exc_info[1] is not None:
        exc_text = "".join(traceback.format_exception(record.exc_info[1])).rstrip("\n")
    if exc_text is not None and redact is not None:
        exc_text = redact(exc_text)
    bounded_record.exc_info = None
    bounded_record.exc_text = None if exc_text is None else truncate(exc_text, TRACEBACK_LIMIT)
    if record.stack_info:
        bounded_record.stack_info = truncate(record.stack_info, TRACEBACK_LIMIT)
    return bounded_record


_Records = queue.Queue[logging.LogRecord]
# Tells the writer thread to stop (the base class compares by identity).
_STOP = logging.makeLogRecord({"msg": "stop"})


class _BoundedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes records cut to the limits."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(bounded(record))


class _QueueHandler(logging.handlers.QueueHandler):
    """Queues records cut to the limits; a full queue drops them and counts."""

    def __init__(self, records: _Records) -> None:
        super().__init__(records)
        self.records = records
        self._dropped = 0
        self._dropped_lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return bounded(record)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.records.put_nowait(record)
        except queue.Full:
            with self._dropped_lock:
                self._dropped += 1

    def take_dropped(self) -> int:
        """How many records were dropped since the last call."""
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        return dropped


class _Listener(logging.handlers.QueueListener):
    """Writes queued records from its own thread, with the counts of dropped and repeated lines."""

    def __init__(
        self, handler: _QueueHandler, repeats: RepeatFilter, target: logging.Handler
    ) -> None:
        super().__init__(handler.records, target)
        self._records = handler.records
        self._handler = handler
        self._repeats = repeats
        self._target = target
        self._notes_due = 0.0

    _sentinel = _STOP

    def dequeue(self, block: bool) -> logging.LogRecord:
        # The base class stops at its sentinel and at queue.Empty: so
        # wait in slices, writing the counts in between, and never raise it.
        while True:
            self._write_notes()
            try:
                return self._records.get(block, NOTE_INTERVAL_SECONDS)
            except queue.Empty:
                continue

    def _write_notes(self, *, last: bool = False) -> None:
        now = time.monotonic()
        if now < self._notes_due and not last:
            return
        self._notes_due = now + NOTE_INTERVAL_SECONDS
        dropped = self._handler.take_dropped()
        if dropped:
            note = logging.LogRecord(
                "podcron.logs",
                logging.WARNING,
                __file__,
                0,
                "%d log lines dropped: the log's reader did not keep up",
                (dropped,),
                None,
            )
            note.job_id = None
            self.handle(note)
        for record in self._repeats.expired(all_windows=last):
            self.handle(bounded(record))

    def enqueue_sentinel(self) -> None:
        # Unlike the base class, wait for room: a full queue must not lose the stop.
        self._records.put(_STOP, timeout=EXIT_FLUSH_SECONDS)

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> None:
        """Write what is queued, waiting at most ``timeout`` for a stalled reader."""
        thread = self._thread
        if thread is None:
            return
        try:
            self.enqueue_sentinel()
        except queue.Full:
            return
        thread.join(timeout)
        self._thread = None
        if not thread.is_alive():  # else the reader is stalled: writing here would block too
            self._write_notes(last=True)


_listener: _Listener | None = None


def make_handler(
    *, log_format: str = "json", stream: TextIO | None = None, cut: bool = True
) -> logging.Handler:
    """A handler writing ``log_format`` (``json`` or ``text``) to ``stream`` (default stderr).

    It writes in the calling thread, records cut to the limits unless ``cut``
    is false (for records :func:`bounded` already cut).
    """
    output = sys.stderr if stream is None else stream
    handler = _BoundedHandler(output) if cut else logging.StreamHandler(output)
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


def configure_logging(
    *,
    log_format: str = "json",
    level: str = "INFO",
    background: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Send the root logger's records to ``stream`` (default stderr) in ``log_format``.

    Records are cut to the limits. With ``background`` (the operator),
    repeated warnings are held back and lines are written by a thread of
    their own through a bounded queue (see the module's documentation); that
    thread does not survive a fork, so a process that forks workers (the
    sidecar under gunicorn) writes in the calling thread.
    """
    global _listener
    stop_background_writer()
    root = logging.getLogger()
    root.setLevel(level)
    if not background:
        root.handlers[:] = [make_handler(log_format=log_format, stream=stream)]
        return
    # Records are cut before they are queued, in the thread that logs them.
    target = make_handler(log_format=log_format, stream=stream, cut=False)
    repeats = RepeatFilter(burst=REPEAT_BURST, window=REPEAT_WINDOW_SECONDS)
    handler = _QueueHandler(_Records(QUEUE_SIZE))
    # The current span is the calling thread's: read it before the record is queued.
    handler.addFilter(TraceContextFilter())
    handler.addFilter(repeats)
    _listener = _Listener(handler, repeats, target)
    _listener.start()
    root.handlers[:] = [handler]


def stop_background_writer(timeout: float = EXIT_FLUSH_SECONDS) -> None:
    """Write the lines still queued (waiting at most ``timeout``) and stop the writer thread."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.close(timeout)


atexit.register(stop_background_writer)
