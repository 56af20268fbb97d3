"""Span export: the OpenTelemetry SDK pipeline that sends spans over OTLP.

The exporter is configured the standard way, by the ``OTEL_*`` environment
variables, and nothing else. Run spans (:mod:`podcron.telemetry.run_span`)
go to the pipeline the operator hands the engine.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status
from opentelemetry.util.types import AnyValue, Attributes

TRACER_NAME = "podcron"
DEFAULT_SERVICE_NAME = "podcron"
#: podcron's version: the instrumentation scope's and the resource's ``service.version``.
VERSION = importlib.metadata.version("podcron")

log = logging.getLogger("podcron.telemetry")


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


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Where spans go: the SDK tracer provider and the batch processor that exports its spans.

    Run spans take the provider's sampler, id generator and resource and go
    to its processor; spans that job code opens go through the provider.
    """

    provider: TracerProvider
    processor: SpanProcessor
    scope: InstrumentationScope
    limits: SpanLimits

    @classmethod
    def of(cls, provider: TracerProvider, processor: SpanProcessor) -> Pipeline:
        """Run spans for ``processor``, which must be one of ``provider``'s processors."""
        # The scope and limits the provider gives podcron's tracer.
        return cls(provider, processor, InstrumentationScope(TRACER_NAME, VERSION), SpanLimits())


def pipeline_from_environment(redact: Callable[[str], str] | None = None) -> Pipeline | None:
    """An SDK pipeline exporting over OTLP as ``OTEL_*`` says; ``None`` without an endpoint.

    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` picks ``grpc`` (the default, as
    in the Python SDK's own auto-configuration) or ``http/protobuf``. The SDK
    itself reads the sampler (``OTEL_TRACES_SAMPLER``), the batch processor's
    limits (``OTEL_BSP_*``), span limits (``OTEL_SPAN_*``, ``OTEL_ATTRIBUTE_*``)
    and the resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``,
    defaulting here to ``podcron``). ``OTEL_SDK_DISABLED=true`` turns tracing off.
    With ``redact``, every text of every span passes through it before export.
    """
    env = os.environ
    endpoint = env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or env.get(OTEL_EXPORTER_OTLP_ENDPOINT)
    if not endpoint or env.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
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
    resource = Resource.create(
        {SERVICE_NAME: DEFAULT_SERVICE_NAME, SERVICE_VERSION: VERSION}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=HashedOnceResource(resource))
    before = set(threading.enumerate())
    processor = BatchSpanProcessor(
        exporter if redact is None else RedactingExporter(exporter, redact)
    )
    _idle_priority(set(threading.enumerate()) - before)
    provider.add_span_processor(processor)
    log.info("exporting spans over OTLP/%s to %s", protocol, endpoint)
    return Pipeline.of(provider, processor)


class HashedOnceResource(Resource):
    """A resource that works out its hash once.

    The OTLP exporter groups every span it encodes by resource, and the SDK's
    ``Resource.__hash__`` serialises all the attributes to JSON each time: at a
    thousand runs a second, a tenth of the export thread's time, holding the GIL
    (docs/performance.md). A resource's attributes never change.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class RedactingExporter(SpanExporter):
    """Hands ``exporter`` spans whose texts passed through ``redact``: no secret leaves.

    Attributes, event attributes (an exception's message and stack trace) and
    the status description, of podcron's run spans and the jobs' own spans.
    It runs in the export thread, never on the event loop.
    """

    def __init__(self, exporter: SpanExporter, redact: Callable[[str], str]) -> None:
        self._exporter = exporter
        self._redact = redact

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([self._redacted(span) for span in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)

    def _redacted(self, span: ReadableSpan) -> ReadableSpan:
        status = span.status
        if status.description:
            status = Status(status.status_code, self._redact(status.description))
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=self._attributes(span.attributes),
            events=[
                Event(event.name, self._attributes(event.attributes), event.timestamp)
                for event in span.events
            ],
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _attributes(self, attributes: Attributes) -> dict[str, AnyValue]:
        return {
            key: self._redact(value) if isinstance(value, str) else value
            for key, value in (attributes or {}).items()
        }


def _idle_priority(threads: Iterable[threading.Thread]) -> None:
    """Let ``threads`` (the batch processor's) have the CPU only when no other thread wants it.

    Encoding spans takes ~23 µs each and holds the GIL; on a busy core the
    export thread and the event loop took turns, and runs due during an
    export started twice as late. At Linux's idle scheduling class (or, where
    refused, at nice 19) the thread exports when the loop waits. Under a load
    that leaves no idle time, spans queue up and the processor drops the
    excess (``OTEL_BSP_MAX_QUEUE_SIZE``) rather than delaying jobs.
    """
    for thread in threads:
        native_id = thread.native_id
        if native_id is None:
            continue
        try:
            os.sched_setscheduler(native_id, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            try:
                os.setpriority(os.PRIO_PROCESS, native_id, 19)
            except OSError as error:
                log.debug("span export thread keeps its priority: %s", error)


def configure_tracing(redact: Callable[[str], str] | None = None) -> Pipeline | None:
    """Install the OTLP-exporting pipeline when ``OTEL_*`` configures an endpoint.

    ``redact`` takes secret values out of the spans' texts before export.

    Spans that job code opens go through the global tracer provider; run
    spans go to the pipeline returned (``None`` while tracing stays off),
    which the operator hands the engine. Call :func:`flush` on shutdown.
    """
    pipeline = pipeline_from_environment(redact)
    if pipeline is not None:
        trace.set_tracer_provider(pipeline.provider)
    return pipeline


def flush(pipeline: Pipeline, timeout: float) -> bool:
    """Export the spans still queued, waiting at most ``timeout`` seconds; whether in time.

    The SDK's shutdown waits for a collector that does not answer for as long
    as its own export timeout allows; the pod's grace period is shorter, so
    wait in a daemon thread that exit does not join.
    """
    worker = threading.Thread(
        target=pipeline.provider.shutdown, name="podcron-span-flush", daemon=True
    )
    worker.start()
    worker.join(max(0.0, timeout))
    if worker.is_alive():
        log.warning("spans not fully exported within %.1fs at shutdown", timeout)
        return False
    return True
