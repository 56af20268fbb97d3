"""What the engine reports each run to: its metrics and its span, in one object."""

from __future__ import annotations

from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import trace

from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_span import start_run_span
from podcron.telemetry.span_export import Pipeline


class RunTelemetry:
    """Metrics (``None``: not collected) and the span pipeline (``None``: tracing off).

    The engine takes one and asks nothing of telemetry but through it, so a
    test or a benchmark hands it the pipeline and registry it wants, and
    nothing is global.
    """

    __slots__ = ("metrics", "spans")

    def __init__(self, *, metrics: JobMetrics | None = None, spans: Pipeline | None = None) -> None:
        self.metrics = metrics
        self.spans = spans

    def start_span(
        self,
        *,
        job_id: str,
        trigger: str,
        entry_point: str,
        scheduled_time: datetime,
        parent: otel_context.Context | None,
    ) -> trace.Span:
        """Open a run's span (:func:`podcron.telemetry.run_span.start_run_span`)."""
        return start_run_span(
            self.spans,
            job_id=job_id,
            trigger=trigger,
            entry_point=entry_point,
            scheduled_time=scheduled_time,
            parent=parent,
        )
