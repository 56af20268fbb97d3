"""The one span per run, through the OpenTelemetry API.

Only the API is used here: until a tracer provider is installed (from the
standard ``OTEL_*`` variables at start-up) the tracer is a no-op, so tracing
costs next to nothing when no exporter is configured.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

SPAN_NAME = "podcron.job.run"
_tracer = trace.get_tracer("podcron")


def parent_from_headers(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The caller's trace context from W3C headers (``traceparent``), if any."""
    if not headers:
        return None
    return propagate.extract(dict(headers))


@contextmanager
def run_span(
    *,
    job_id: str,
    trigger: str,
    entry_point: str,
    scheduled_time: datetime,
    parent: otel_context.Context | None,
) -> Iterator[trace.Span]:
    """Open the run's span, a child of ``parent`` when the run was triggered with one.

    The span is not made current here: the engine attaches it inside the
    run's own task or thread, where the job's code runs.
    """
    span = _tracer.start_span(
        SPAN_NAME,
        context=parent,
        kind=trace.SpanKind.INTERNAL,
        attributes={
            "podcron.job.id": job_id,
            "podcron.job.trigger": trigger,
            "podcron.job.entry_point": entry_point,
            "podcron.job.scheduled_time": scheduled_time.isoformat(),
        },
    )
    try:
        yield span
    finally:
        span.end()


def record_failure(span: trace.Span, error: BaseException, *, description: str) -> None:
    """Mark the span failed, with the exception recorded."""
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, description))
