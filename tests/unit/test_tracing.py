"""The span pipeline the standard OTEL_* variables give, and run spans as the SDK would make them.

Nothing is installed globally here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk import resources as sdk_resources
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import StatusCode

from podcron import runrecord
from podcron.telemetry import run_span, span_export
from podcron.telemetry.run_telemetry import RunTelemetry

ENDPOINT = "http://127.0.0.1:4317"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def providers() -> Iterator[list[TracerProvider]]:
    """Collects the providers a test builds, and shuts them down (stopping their threads)."""
    built: list[TracerProvider] = []
    yield built
    for each in built:
        each.shutdown()


def build_pipeline(providers: list[TracerProvider]) -> span_export.Pipeline:
    result = span_export.pipeline_from_environment()
    assert result is not None
    providers.append(result.provider)
    return result


def build(providers: list[TracerProvider]) -> TracerProvider:
    return build_pipeline(providers).provider


def exporter_of(pipeline: span_export.Pipeline) -> object:
    processor = pipeline.processor
    assert isinstance(processor, BatchSpanProcessor)
    return processor.span_exporter


def test_no_endpoint_means_no_pipeline_and_no_exporter() -> None:
    assert span_export.pipeline_from_environment() is None
    assert span_export.configure_tracing() is None
    assert RunTelemetry().start_span(**RUN) is trace.INVALID_SPAN


def test_otel_sdk_disabled_turns_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert span_export.pipeline_from_environment() is None


def test_spans_are_exported_from_a_thread_at_idle_priority(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    before = set(threading.enumerate())
    build(providers)
    (exporting,) = set(threading.enumerate()) - before
    assert exporting.native_id is not None
    # SCHED_IDLE, or nice 19 where a seccomp profile refuses it.
    assert os.sched_getscheduler(exporting.native_id) == os.SCHED_IDLE or (
        os.getpriority(os.PRIO_PROCESS, exporting.native_id) == 19
    )
    # Only that thread: the caller's, which runs the event loop, keeps its priority.
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE


def test_run_spans_go_to_the_providers_own_batch_processor(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    pipeline = build_pipeline(providers)
    ended: list[ReadableSpan] = []
    monkeypatch.setattr(pipeline.processor, "on_end", ended.append)
    pipeline.provider.get_tracer("job code").start_span("a job's own span").end()
    RunTelemetry(spans=pipeline).start_span(**RUN).end()
    assert [span.name for span in ended] == ["a job's own span", run_span.SPAN_NAME]


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
def test_an_endpoint_gives_a_batching_grpc_exporter_named_podcron(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider], variable: str
) -> None:
    monkeypatch.setenv(variable, ENDPOINT)
    pipeline = build_pipeline(providers)
    built = pipeline.provider
    assert isinstance(exporter_of(pipeline), GrpcSpanExporter)
    assert built.resource.attributes["service.name"] == "podcron"
    assert built.resource.attributes["service.version"] == importlib.metadata.version("podcron")


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
)
def test_http_protobuf_protocol(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider], variable: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv(variable, "http/protobuf")
    assert isinstance(exporter_of(build_pipeline(providers)), HttpSpanExporter)


def test_service_name_and_sampler_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-jobs")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    built = build(providers)
    assert built.resource.attributes["service.name"] == "shop-jobs"
    assert built.resource.attributes["deployment.environment"] == "prod"
    assert built.sampler is ALWAYS_OFF


def test_an_unsupported_protocol_leaves_tracing_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert span_export.pipeline_from_environment() is None
    assert "'http/json' is not supported" in caplog.text


# -- run spans, side by side with the SDK's own spans --------------------------

SCHEDULED = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
RUN: dict[str, Any] = {
    "job_id": "shop/report",
    "trigger": "scheduled",
    "entry_point": "shop.jobs:report",
    "scheduled_time": SCHEDULED,
    "parent": None,
}
REMOTE_PARENT = trace.SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
)


@dataclass
class Pipelines:
    """A run-span pipeline and an SDK tracer on one provider, exporting to memory."""

    exporter: InMemorySpanExporter
    sdk_tracer: trace.Tracer
    telemetry: RunTelemetry

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def pipelines(sampler: Sampler) -> Iterator[Pipelines]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    resource = Resource.create({"service.name": "podcron"})
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(processor)
    yield Pipelines(
        exporter,
        provider.get_tracer(span_export.TRACER_NAME, span_export.VERSION),
        RunTelemetry(spans=span_export.Pipeline.of(provider, processor)),
    )
    provider.shutdown()


@pytest.fixture
def sampler() -> Sampler:
    return ALWAYS_ON


def as_exported(span: ReadableSpan) -> dict[str, Any]:
    """What an exporter reads of a span, less the ids and times that differ by nature."""
    return {
        "name": span.name,
        "kind": span.kind,
        "attributes": dict(span.attributes or {}),
        "events": [(event.name, dict(event.attributes or {})) for event in span.events],
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "parent": span.parent,
        "sampled": span.context.trace_flags.sampled,
        "resource": span.resource,
        "scope": span.instrumentation_scope,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
    }


def run_and_sdk_span(pipelines: Pipelines, parent: Context | None) -> tuple[ReadableSpan, ...]:
    """One run span and one SDK span, each treated as a failing job would treat it."""
    sdk = pipelines.sdk_tracer.start_span(
        run_span.SPAN_NAME,
        context=parent,
        attributes={
            "podcron.job.id": RUN["job_id"],
            "podcron.job.trigger": RUN["trigger"],
            "podcron.job.entry_point": RUN["entry_point"],
            "podcron.job.scheduled_time": "2026-11-27T05:00:00.000Z",
        },
    )
    run = pipelines.telemetry.start_span(**RUN | {"parent": parent})
    try:
        raise ValueError("no such table")
    except ValueError as error:
        for span in (run, sdk):
            with span:
                span.set_attribute("rows", 3)
                span.set_attributes({"shop.tables": ["a", "b"], "shop.limits": {"rows": 10}})
                span.add_event("retry", {"attempt": 2})
                span.add_link(REMOTE_PARENT, {"why": "batch"})
                run_span.record_failure(span, error, description="ValueError: no such table")
    return pipelines.finished()


def test_a_run_span_exports_exactly_what_the_sdk_span_would(pipelines: Pipelines) -> None:
    run, sdk = run_and_sdk_span(pipelines, parent=None)
    assert as_exported(run) == as_exported(sdk)
    assert run.attributes is not None
    assert run.attributes["rows"] == 3
    assert run.status.status_code is StatusCode.ERROR
    assert run.parent is None
    assert run.start_time is not None
    assert run.end_time is not None
    assert run.start_time <= run.end_time


@pytest.mark.parametrize(
    "scheduled_time",
    [
        SCHEDULED,
        # A manual run is due when asked for: microseconds, any offset.
        datetime(2026, 11, 27, 6, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1))),
    ],
    ids=["scheduled", "manual"],
)
def test_the_scheduled_time_is_written_as_the_api_writes_times(
    pipelines: Pipelines, scheduled_time: datetime
) -> None:
    with pipelines.telemetry.start_span(**RUN | {"scheduled_time": scheduled_time}):
        pass
    (span,) = pipelines.finished()
    assert span.attributes is not None
    written = span.attributes["podcron.job.scheduled_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(written))
    assert datetime.fromisoformat(str(written).replace("Z", "+00:00")) == scheduled_time.replace(
        microsecond=scheduled_time.microsecond // 1000 * 1000
    )


def test_runs_due_at_one_instant_format_their_scheduled_time_once(
    pipelines: Pipelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    formatted: list[datetime] = []

    def counted(moment: datetime) -> str:
        formatted.append(moment)
        return runrecord.format_time(moment)

    monkeypatch.setattr(run_span, "format_time", counted)
    instant = datetime(2031, 5, 4, 3, 2, 1, 987000, tzinfo=UTC)  # no other test's
    for _ in range(3):
        with pipelines.telemetry.start_span(**RUN | {"scheduled_time": instant}):
            pass
    assert formatted == [instant]
    spans = pipelines.finished()
    written = {(span.attributes or {})["podcron.job.scheduled_time"] for span in spans}
    assert len(spans) == 3
    assert written == {"2031-05-04T03:02:01.987Z"}


def test_the_exported_resource_is_hashed_once_not_for_every_span(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    # The OTLP exporter hashes each span's resource; the SDK's hash serialises it to JSON.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)
    resource = build_pipeline(providers).provider.resource
    serialised: list[object] = []

    def counted(*args: Any, **kwargs: Any) -> str:
        serialised.append(args)
        return json.dumps(*args, **kwargs)  # what the SDK's module imported

    monkeypatch.setattr(sdk_resources, "dumps", counted)
    hashes = {hash(resource) for _ in range(3)}
    assert serialised == []
    plain = Resource(resource.attributes, resource.schema_url)
    assert hashes == {hash(plain)}
    assert resource == plain


def test_the_scope_names_podcrons_version(pipelines: Pipelines) -> None:
    with pipelines.telemetry.start_span(**RUN):
        pass
    (span,) = pipelines.finished()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "podcron"
    assert span.instrumentation_scope.version == importlib.metadata.version("podcron")


def test_a_run_span_is_a_child_of_the_callers_trace(pipelines: Pipelines) -> None:
    parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE_PARENT))
    run, sdk = run_and_sdk_span(pipelines, parent=parent)
    assert as_exported(run) == as_exported(sdk)
    assert run.context.trace_id == REMOTE_PARENT.trace_id
    assert run.parent == REMOTE_PARENT


@pytest.mark.parametrize("sampler", [ALWAYS_OFF])
def test_a_sampler_that_drops_runs_gives_an_unsampled_span_with_ids(
    pipelines: Pipelines,
) -> None:
    span = pipelines.telemetry.start_span(**RUN)
    assert not span.is_recording()
    assert span.get_span_context().is_valid
    assert not span.get_span_context().trace_flags.sampled
    span.end()
    assert pipelines.finished() == ()


def test_an_ok_status_is_final_as_on_an_sdk_span(pipelines: Pipelines) -> None:
    for span in (pipelines.telemetry.start_span(**RUN), pipelines.sdk_tracer.start_span("sdk")):
        with span:
            span.set_status(StatusCode.OK)
            span.set_status(StatusCode.ERROR, "too late")
    assert [span.status.status_code for span in pipelines.finished()] == [StatusCode.OK] * 2


def test_without_tracing_the_callers_trace_passes_through() -> None:
    parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE_PARENT))
    span = RunTelemetry().start_span(**RUN | {"parent": parent})
    assert not span.is_recording()
    assert span.get_span_context() == REMOTE_PARENT


def test_an_ended_run_span_takes_no_more_changes(pipelines: Pipelines) -> None:
    span = pipelines.telemetry.start_span(**RUN)
    assert span.is_recording()
    span.end()
    span.set_attribute("late", True)
    span.add_event("late")
    span.update_name("renamed")
    span.end()
    (exported,) = pipelines.finished()
    assert not span.is_recording()
    assert exported.name == run_span.SPAN_NAME
    assert exported.attributes is not None
    assert "late" not in exported.attributes
    assert exported.events == ()


def test_a_run_span_is_podcrons_own_not_the_sdks(pipelines: Pipelines) -> None:
    """docs/performance.md: the SDK's span costs several times as much to open."""
    span = pipelines.telemetry.start_span(**RUN)
    assert isinstance(span, run_span.RunSpan)
    span.end()
