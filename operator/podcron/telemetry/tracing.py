"""The one span per run, through the OpenTelemetry API, and its export over OTLP.

The engine uses only the API: until :func:`configure_tracing` installs an SDK
tracer provider the tracer is a no-op, so tracing costs next to nothing when
no exporter is configured. The exporter is configured the standard way, by
the ``OTEL_*`` environment variables, and nothing else.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

SPAN_NAME = "podcron.job.run"
DEFAULT_SERVICE_NAME = "podcron"
#: How long a graceful shutdown waits for the last spans to reach the collector.
FLUSH_TIMEOUT_SECONDS = 5.0

log = logging.getLogger("podcron.telemetry")
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


def _otlp_exporter(protocol: str) -> SpanExporter | None:
    # Imported only when asked for: gRPC alone takes a noticeable time to load,
    # and an operator without a collector should not pay for it. Each exporter
    # reads its endpoint, headers, TLS, timeout and compression from OTEL_*.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    return None


def tracer_provider_from_environment() -> TracerProvider | None:
    """An SDK tracer provider exporting over OTLP as ``OTEL_*`` says; ``None`` without an endpoint.

    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` picks ``grpc`` (the default, as
    in the Python SDK's own auto-configuration) or ``http/protobuf``. The SDK
    itself reads the sampler (``OTEL_TRACES_SAMPLER``), the batch processor's
    limits (``OTEL_BSP_*``), the resource (``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_SERVICE_NAME``, defaulting here to ``podcron``) and
    ``OTEL_SDK_DISABLED``.
    """
    env = os.environ
    endpoint = env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or env.get(OTEL_EXPORTER_OTLP_ENDPOINT)
    if not endpoint:
        return None
    protocol = (
        env.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
        or env.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or "grpc"
    ).strip()
    exporter = _otlp_exporter(protocol)
    if exporter is None:
        # A telemetry setting must not stop jobs from running: say so, run without.
        log.warning(
            "tracing is off: OTLP protocol %r is not supported (use grpc or http/protobuf)",
            protocol,
        )
        return None
    # The environment's service name, if any, wins over podcron's default.
    resource = Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME}).merge(
        OTELResourceDetector().detect()
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("exporting spans over OTLP/%s to %s", protocol, endpoint)
    return provider


def configure_tracing() -> Callable[[], bool] | None:
    """Install the OTLP-exporting tracer provider when ``OTEL_*`` configures an endpoint.

    Returns the function to call on graceful shutdown: it exports the spans
    still queued, waiting at most :data:`FLUSH_TIMEOUT_SECONDS`, and says
    whether it finished in time. Returns ``None`` when tracing stays off.
    """
    provider = tracer_provider_from_environment()
    if provider is None:
        return None
    trace.set_tracer_provider(provider)

    def flush() -> bool:
        # The SDK's shutdown waits for a collector that does not answer for
        # as long as its own export timeout allows; the pod's grace period is
        # shorter, so wait in a daemon thread that exit does not join.
        worker = threading.Thread(target=provider.shutdown, name="podcron-span-flush", daemon=True)
        worker.start()
        worker.join(FLUSH_TIMEOUT_SECONDS)
        if worker.is_alive():
            log.warning("spans not fully exported within %ss at shutdown", FLUSH_TIMEOUT_SECONDS)
            return False
        return True

    return flush
