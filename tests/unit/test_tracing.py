"""Which tracer provider the standard OTEL_* variables give; nothing is installed globally here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from podcron.telemetry import tracing

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


def build(providers: list[TracerProvider]) -> TracerProvider:
    result = tracing.tracer_provider_from_environment()
    assert result is not None
    providers.append(result)
    return result


def exporter_of(provider: TracerProvider) -> object:
    (processor,) = provider._active_span_processor._span_processors
    assert isinstance(processor, BatchSpanProcessor)
    return processor.span_exporter


def test_no_endpoint_means_no_provider_and_no_exporter() -> None:
    assert tracing.tracer_provider_from_environment() is None
    assert tracing.configure_tracing() is None


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
def test_an_endpoint_gives_a_batching_grpc_exporter_named_podcron(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider], variable: str
) -> None:
    monkeypatch.setenv(variable, ENDPOINT)
    built = build(providers)
    assert isinstance(exporter_of(built), GrpcSpanExporter)
    assert built.resource.attributes["service.name"] == "podcron"


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
)
def test_http_protobuf_protocol(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider], variable: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv(variable, "http/protobuf")
    assert isinstance(exporter_of(build(providers)), HttpSpanExporter)


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
    assert tracing.tracer_provider_from_environment() is None
    assert "'http/json' is not supported" in caplog.text
