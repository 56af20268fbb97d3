"""The one span per run, and its export over OTLP by the OpenTelemetry SDK.

Until :func:`configure_tracing` installs a pipeline, a run's span is the
API's invalid, non-recording span, so tracing costs next to nothing when no
exporter is configured. The exporter is configured the standard way, by the
``OTEL_*`` environment variables, and nothing else.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.attributes import BoundedAttributes
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
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AnyValue, Attributes

SPAN_NAME = "podcron.job.run"
TRACER_NAME = "podcron"
DEFAULT_SERVICE_NAME = "podcron"
#: podcron's version: the instrumentation scope's and the resource's ``service.version``.
VERSION = importlib.metadata.version("podcron")

log = logging.getLogger("podcron.telemetry")
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)
# Set by configure_tracing; None while tracing is off.
_pipeline: Pipeline | None = None


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


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``, as the API and status write times."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def start_run_span(
    *,
    job_id: str,
    trigger: str,
    entry_point: str,
    scheduled_time: datetime,
    parent: otel_context.Context | None,
) -> trace.Span:
    """Open the run's span, a child of ``parent`` when the run was triggered with one.

    Tracing off gives a non-recording span in the caller's trace (invalid
    without one); a sampler that drops the run, a non-recording span with
    the run's own ids, which it propagates unsampled. End the span
    by leaving it as a context manager. It is not made current here: the
    engine attaches it inside the run's own task or thread, where the job's
    code runs.
    """
    parent_context = trace.get_current_span(parent).get_span_context()
    pipeline = _pipeline
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
        "podcron.job.scheduled_time": format_time(scheduled_time),
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


def record_failure(span: trace.Span, error: BaseException, *, description: str) -> None:
    """Mark the span failed, with the exception recorded."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, description))


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
    provider = TracerProvider(resource=resource)
    before = set(threading.enumerate())
    processor = BatchSpanProcessor(
        exporter if redact is None else RedactingExporter(exporter, redact)
    )
    _idle_priority(set(threading.enumerate()) - before)
    provider.add_span_processor(processor)
    log.info("exporting spans over OTLP/%s to %s", protocol, endpoint)
    return Pipeline.of(provider, processor)


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


def configure_tracing(
    redact: Callable[[str], str] | None = None,
) -> Callable[[float], bool] | None:
    """Install the OTLP-exporting pipeline when ``OTEL_*`` configures an endpoint.

    ``redact`` takes secret values out of the spans' texts before export.

    Returns the function to call on graceful shutdown: it exports the spans
    still queued, waiting at most the seconds it is given (what is left of
    the shutdown budget), and says whether it finished in time. Returns
    ``None`` when tracing stays off.
    """
    global _pipeline
    pipeline = pipeline_from_environment(redact)
    if pipeline is None:
        return None
    trace.set_tracer_provider(pipeline.provider)
    _pipeline = pipeline

    def flush(timeout: float) -> bool:
        # The SDK's shutdown waits for a collector that does not answer for
        # as long as its own export timeout allows; the pod's grace period is
        # shorter, so wait in a daemon thread that exit does not join.
        worker = threading.Thread(
            target=pipeline.provider.shutdown, name="podcron-span-flush", daemon=True
        )
        worker.start()
        worker.join(max(0.0, timeout))
        if worker.is_alive():
            log.warning("spans not fully exported within %.1fs at shutdown", timeout)
            return False
        return True

    return flush
