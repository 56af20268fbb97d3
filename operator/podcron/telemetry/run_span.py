"""The one span per run: opened by the engine just before a job's body starts.

Without a span pipeline (:mod:`podcron.telemetry.span_export`) a run's span is
the API's invalid, non-recording span, so tracing costs next to nothing when
no exporter is configured.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Mapping
from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AnyValue, Attributes

from podcron.runrecord import format_time
from podcron.telemetry.span_export import Pipeline

SPAN_NAME = "podcron.job.run"

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)


def parent_from_headers(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The caller's trace context from W3C headers (``traceparent``), if any."""
    if not headers:
        return None
    return propagate.extract(dict(headers))


class RunSpan(trace.Span):
    """A run's span: cheap to open, built into the SDK's ``ReadableSpan`` when it ends.

    The SDK's own span costs about 26 µs to open (attribute validation,
    sampling, locks), and the engine opens one per run just before the job's
    body starts: when a hundred runs fall due in the same millisecond the
    last one waited 2.6 ms for the spans of the others. This span is opened
    in a few microseconds with the provider's own sampler, id generator and
    resource, keeps what is recorded on it as plain values, and at the end
    hands the span processor the same ``ReadableSpan`` the SDK would, so the
    exporter cannot tell the difference. Attributes and events that job code
    adds go through the SDK's ``BoundedAttributes`` and limits, as they would
    on an SDK span.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_ended",
        "_events",
        "_links",
        "_name",
        "_parent",
        "_pipeline",
        "_start_ns",
        "_status",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        context: trace.SpanContext,
        parent: trace.SpanContext | None,
        attributes: Mapping[str, AnyValue],
    ) -> None:
        self._pipeline = pipeline
        self._context = context
        self._parent = parent
        self._name = SPAN_NAME
        self._attributes: Mapping[str, AnyValue] | BoundedAttributes = attributes
        self._events: list[Event] = []
        self._links: list[trace.Link] = []
        self._status = _UNSET
        self._start_ns = time.time_ns()
        self._ended = False

    def begin(self) -> None:
        """Start now: a span made ahead of its run (engine/burst.py) starts as the body does."""
        self._start_ns = time.time_ns()

    def get_span_context(self) -> trace.SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._ended:
            return
        if not isinstance(self._attributes, BoundedAttributes):
            # Only job code gets here: podcron's own attributes are valid strings.
            limits = self._pipeline.limits
            self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                self._attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        self._attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._ended:
            return
        limits = self._pipeline.limits
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: trace.SpanContext, attributes: Attributes = None) -> None:
        if not self._ended and context.is_valid:
            self._links.append(trace.Link(context, attributes))

    def update_name(self, name: str) -> None:
        if not self._ended:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK does: an OK status is final, and only ERROR has a description.
        if self._ended or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            self._status = status
        else:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The event the SDK records, by the semantic conventions for exceptions.
        kind = type(exception)
        module = kind.__module__
        event_attributes: dict[str, AnyValue] = {
            EXCEPTION_TYPE: kind.__qualname__
            if not module or module == "builtins"
            else f"{module}.{kind.__qualname__}",
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            event_attributes.update(attributes)
        self.add_event("exception", event_attributes, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        pipeline = self._pipeline
        pipeline.processor.on_end(
            ReadableSpan(
                self._name,
                context=self._context,
                parent=self._parent,
                resource=pipeline.provider.resource,
                attributes=self._attributes,
                events=tuple(self._events),
                links=tuple(self._links),
                kind=trace.SpanKind.INTERNAL,
                status=self._status,
                start_time=self._start_ns,
                end_time=time.time_ns() if end_time is None else end_time,
                instrumentation_scope=pipeline.scope,
            )
        )


def start_run_span(
    pipeline: Pipeline | None,
    *,
    job_id: str,
    trigger: str,
    entry_point: str,
    scheduled_time: datetime,
    parent: otel_context.Context | None,
) -> trace.Span:
    """Open the run's span for ``pipeline``, a child of ``parent`` when the run has one.

    No pipeline (tracing off) gives a non-recording span in the caller's trace (invalid
    without one); a sampler that drops the run, a non-recording span with
    the run's own ids, which it propagates unsampled. End the span
    by leaving it as a context manager. It is not made current here: the
    engine attaches it inside the run's own task or thread, where the job's
    code runs.
    """
    parent_context = trace.get_current_span(parent).get_span_context()
    if pipeline is None:
        # As the API's no-op tracer does: the caller's trace, if any, passes through.
        return (
            trace.NonRecordingSpan(parent_context)
            if parent_context.is_valid
            else trace.INVALID_SPAN
        )
    # What the SDK's Tracer.start_span decides, in the same order.
    parent_span = parent_context if parent_context.is_valid else None
    provider = pipeline.provider
    ids = provider.id_generator
    trace_id = ids.generate_trace_id() if parent_span is None else parent_context.trace_id
    attributes: dict[str, AnyValue] = {
        "podcron.job.id": job_id,
        "podcron.job.trigger": trigger,
        "podcron.job.entry_point": entry_point,
        "podcron.job.scheduled_time": _scheduled_text(scheduled_time),
    }
    sampling = provider.sampler.should_sample(
        parent, trace_id, SPAN_NAME, trace.SpanKind.INTERNAL, attributes
    )
    context = trace.SpanContext(
        trace_id,
        ids.generate_span_id(),
        is_remote=False,
        trace_flags=_SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED,
        trace_state=sampling.trace_state,
    )
    if sampling.decision is Decision.DROP:
        return trace.NonRecordingSpan(context)
    # The sampler's attributes: ours, plus any it adds.
    return RunSpan(pipeline, context, parent_span, sampling.attributes or {})


@functools.lru_cache(maxsize=4)
def _scheduled_text(scheduled_time: datetime) -> str:
    # The runs due at one instant (a thousand, at a thousand one-second jobs) share
    # their scheduled time: it is formatted once, not once a span.
    return format_time(scheduled_time)


def sampled_trace_id(span: trace.Span) -> int:
    """The trace id of ``span`` if it is exported (recorded and sampled), else 0.

    What the run's metrics link to as exemplars: a trace that reaches the collector.
    """
    context = span.get_span_context()
    return context.trace_id if span.is_recording() and context.trace_flags.sampled else 0


def record_failure(span: trace.Span, error: BaseException, *, description: str) -> None:
    """Mark the span failed, with the exception recorded."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, description))
