"""A real OTLP trace receiver for tests and benchmarks: the collector's gRPC TraceService.

It listens on 127.0.0.1 only, keeps every export request it is sent, and
decodes them into :class:`ReceivedSpan` only when asked, so a benchmark
pays for receiving and counting spans, not for reading them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as it arrived, ids in lower-case hex (``parent_span_id`` is "" for a root)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    scope: str
    scope_version: str
    resource: dict[str, Any]


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, on_export: Callable[[trace_service_pb2.ExportTraceServiceRequest], None]):
        self._on_export = on_export

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._on_export(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """A gRPC OTLP receiver on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self) -> None:
        self._requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._span_count = 0
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        # The generated gRPC module carries no type hints.
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self._received), self._server
        )
        self.port: int = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop(grace=None)

    def _received(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        count = sum(
            len(scope_spans.spans)
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
        )
        with self._changed:
            self._requests.append(request)
            self._span_count += count
            self._changed.notify_all()

    @property
    def span_count(self) -> int:
        """How many spans arrived so far."""
        with self._changed:
            return self._span_count

    def wait_for_count(self, count: int, *, timeout: float) -> bool:
        """Wait until at least ``count`` spans arrived; ``False`` if the deadline passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._span_count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._changed:
            requests = list(self._requests)
        return [
            ReceivedSpan(
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                kind=span.kind,
                attributes=_attributes(span.attributes),
                status_code=span.status.code,
                status_message=span.status.message,
                events=[(event.name, _attributes(event.attributes)) for event in span.events],
                scope=scope_spans.scope.name,
                scope_version=scope_spans.scope.version,
                resource=_attributes(resource_spans.resource.attributes),
            )
            for request in requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
