"""Telemetry of a real operator: spans at a real OTLP receiver, /metrics over HTTP, JSON logs.

One operator serves the module, with four jobs: ``hello`` (succeeds every
second), ``broken`` (fails every second: a bad argument), ``busy`` (runs
1.5 s every second, so Forbid skips ticks) and ``late`` (times out). A
manual run of ``hello`` is posted through the real sidecar with a
``traceparent``.

The operator's batch span processor is told to wait an hour between
exports, so no span leaves before shutdown: the spans at the receiver are
the ones the graceful shutdown flushed. The metrics tests therefore come
first in this file, and the span and log tests, which stop the operator, after them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from controlplane import ControlPlane
from otlp_receiver import OtlpReceiver, ReceivedSpan

from ..alerting import used_metrics
from ..ports import free_port
from ..waiting import wait_for
from .conftest import TEARDOWN_STOP_SECONDS, OperatorProcess
from .scheduledjobs import apply, manifest, namespace_for_module, started_operator
from .sidecar_process import SidecarProcess, client

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2

JOBS = [
    manifest("hello", {"entryPoint": "hello", "schedule": {"every": "1s"}}),
    manifest(
        "broken",
        {"entryPoint": "cleanup", "schedule": {"every": "1s"}, "args": {"retentionDays": "many"}},
    ),
    manifest(
        "busy", {"entryPoint": "cleanup", "schedule": {"every": "1s"}, "args": {"batches": 30}}
    ),
    manifest(
        "late",
        {
            "entryPoint": "cleanup",
            "schedule": {"every": "2s"},
            "timeoutSeconds": 1,
            "args": {"batches": 100},
        },
    ),
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Deployment:
    """The module's operator, where its metrics are, and the namespace of its jobs."""

    operator: OperatorProcess
    metrics_url: str
    namespace: str

    def records(self) -> list[dict[str, Any]]:
        """The operator's log, every line parsed: a line that is not a JSON object fails."""
        records = [json.loads(line) for line in self.operator.log().splitlines() if line.strip()]
        assert all(isinstance(record, dict) for record in records)
        return records

    def scrape(self) -> Samples:
        """``/metrics`` over HTTP, parsed by prometheus-client's own parser."""
        response = client().get(f"{self.metrics_url}/metrics", timeout=5)
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The sample ``metric{labels}``, ``None`` when the series does not exist."""
    return samples.get((metric, frozenset(labels.items())))


def job(name: str, namespace: str, **labels: str) -> dict[str, str]:
    """The labels of job ``name``'s series, plus ``labels``."""
    return {"namespace": namespace, "name": name, **labels}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def deployment(
    crd: ControlPlane, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The operator with the four jobs applied, once each of them ran."""
    port = free_port()
    with namespace_for_module(crd, "telemetry") as namespace:
        operator = started_operator(
            crd,
            tmp_path_factory.mktemp("telemetry-operator"),
            PODCRON_NAMESPACES=namespace,
            PODCRON_LOG_FORMAT="json",
            PODCRON_METRICS_HOST="127.0.0.1",
            PODCRON_METRICS_PORT=str(port),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="3600000",
        )
        try:
            apply(crd, namespace, *JOBS)
            deployment = Deployment(operator, f"http://127.0.0.1:{port}", namespace)
            yield deployment
        finally:
            operator.stop(timeout=TEARDOWN_STOP_SECONDS)


@pytest.fixture(scope="module")
def manual_run(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A run of ``hello`` posted through the real sidecar, in the caller's trace."""
    sidecar = SidecarProcess(
        dict(os.environ)
        | {
            "PODCRON_CONTROL_SOCKET": str(deployment.operator.log_path.parent / "control.sock"),
            "PODCRON_ALLOWED_CIDRS": "127.0.0.1/32",
        },
        tmp_path_factory.mktemp("telemetry-sidecar") / "sidecar.log",
    )
    try:
        url = f"{sidecar.url}/_sys/job/{deployment.namespace}/hello"
        wait_for(
            lambda: client().post(url, headers={"traceparent": TRACEPARENT}).status_code == 200,
            timeout=20,
            what="the sidecar to trigger hello",
        )
        yield
    finally:
        sidecar.stop()


# What each job is there for: (job, trigger, status) of runs the tests need.
OUTCOMES = [
    ("hello", "scheduled", "success"),
    ("hello", "manual", "success"),
    ("broken", "scheduled", "failure"),
    ("busy", "scheduled", "skipped"),
    ("late", "scheduled", "failure"),
]


def reached(deployment: Deployment, outcomes: list[tuple[str, str, str]]) -> Samples:
    """A scrape once each of ``outcomes`` happened at least once."""
    ns = deployment.namespace

    def counted() -> Samples | None:
        samples = deployment.scrape()
        runs = [
            value(samples, "podcron_job_runs_total", **job(name, ns, trigger=t, status=s))
            for name, t, s in outcomes
        ]
        return samples if all(runs) else None

    result: Samples = wait_for(counted, timeout=30, interval=0.3, what=f"{outcomes} in /metrics")
    return result


def test_health_and_readiness_are_served(deployment: Deployment) -> None:
    session = client()
    assert session.get(f"{deployment.metrics_url}/healthz", timeout=5).status_code == 200
    assert session.get(f"{deployment.metrics_url}/readyz", timeout=5).status_code == 200


def test_counters_histograms_and_gauges_move_with_runs(
    deployment: Deployment, manual_run: None
) -> None:
    ns = deployment.namespace
    before = reached(deployment, OUTCOMES)
    assert value(before, "podcron_jobs_registered") == 4
    growing = [
        ("podcron_job_runs_total", job("hello", ns, trigger="scheduled", status="success")),
        ("podcron_job_runs_total", job("broken", ns, trigger="scheduled", status="failure")),
        ("podcron_job_runs_total", job("busy", ns, trigger="scheduled", status="skipped")),
        ("podcron_job_duration_seconds_count", job("hello", ns)),
        ("podcron_job_duration_seconds_count", job("broken", ns)),
        ("podcron_job_last_success_timestamp_seconds", job("hello", ns)),
        ("podcron_job_schedule_lateness_seconds_count", {}),
    ]

    def moved() -> Samples | None:
        after = deployment.scrape()
        grown = all(
            (value(after, metric, **labels) or 0) > (value(before, metric, **labels) or 0)
            for metric, labels in growing
        )
        return after if grown else None

    after: Samples = wait_for(moved, timeout=15, interval=0.3, what="the metrics to move")
    manual = job("hello", ns, trigger="manual", status="success")
    assert value(after, "podcron_job_runs_total", **manual) == 1
    assert value(after, "podcron_job_last_success_timestamp_seconds", **job("broken", ns)) is None
    # Lateness resolves half a millisecond; no scheduled start here is a second late.
    lateness = "podcron_job_schedule_lateness_seconds"
    assert value(after, f"{lateness}_bucket", le="0.0005") is not None
    assert value(after, f"{lateness}_bucket", le="1.0") == value(after, f"{lateness}_count")
    # The busy job runs three quarters of the time: the gauge sees it.
    wait_for(
        lambda: (value(deployment.scrape(), "podcron_jobs_running") or 0) >= 1,
        timeout=10,
        what="podcron_jobs_running to count the busy run",
    )


def test_every_metric_the_dashboard_and_alerts_use_is_exported(
    deployment: Deployment, manual_run: None
) -> None:
    reached(deployment, OUTCOMES)  # its manual run is the fixture's
    wanted = used_metrics()

    def missing() -> set[str]:
        return wanted - {name for name, _ in deployment.scrape()}

    # A job's interval appears once the engine has armed it after a tick.
    wait_for(lambda: not missing(), timeout=10, interval=0.3, what="every metric in /metrics")


#: OpenMetrics exemplars by (sample name, job name or "" for the operator's) -> trace id.
Exemplars = dict[tuple[str, str], str]


@pytest.fixture(scope="module")
def exemplars(deployment: Deployment) -> Exemplars:
    """The exemplars of an OpenMetrics scrape, once lateness and both jobs' durations have one."""
    wanted = {
        ("podcron_job_schedule_lateness_seconds_bucket", ""),
        ("podcron_job_duration_seconds_bucket", "hello"),
        ("podcron_job_duration_seconds_bucket", "broken"),
    }

    def scraped() -> Exemplars | None:
        response = client().get(
            f"{deployment.metrics_url}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            timeout=5,
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        found: Exemplars = {}
        # prometheus-client's OpenMetrics parser has no type hints.
        for family in openmetrics_families(response.text):  # type: ignore[no-untyped-call]
            for sample in family.samples:
                if sample.exemplar is not None:
                    assert set(sample.exemplar.labels) == {"trace_id"}
                    key = (sample.name, sample.labels.get("name", ""))
                    found[key] = sample.exemplar.labels["trace_id"]
        return found if wanted <= set(found) else None

    result: Exemplars = wait_for(scraped, timeout=20, interval=0.3, what="exemplars in /metrics")
    return result


def test_an_openmetrics_scrape_has_trace_ids_as_exemplars(
    deployment: Deployment, exemplars: Exemplars
) -> None:
    assert all(re.fullmatch(r"[0-9a-f]{32}", trace_id) for trace_id in exemplars.values())
    assert {name for name, _ in exemplars} == {
        "podcron_job_schedule_lateness_seconds_bucket",
        "podcron_job_duration_seconds_bucket",
    }
    # The classic text format, which a plain GET gets, has none.
    plain = client().get(f"{deployment.metrics_url}/metrics", timeout=5)
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "trace_id" not in plain.text


def test_a_deleted_jobs_series_disappear(
    deployment: Deployment, crd: ControlPlane, manual_run: None
) -> None:
    ns = deployment.namespace
    reached(deployment, OUTCOMES)
    crd.kubectl("delete", "scheduledjob", "busy", "-n", ns)

    def gone() -> Samples | None:
        samples = deployment.scrape()
        left = [key for key in samples if ("name", "busy") in key[1]]
        return samples if not left else None

    samples = wait_for(gone, timeout=10, interval=0.2, what="busy's series to disappear")
    assert value(samples, "podcron_jobs_registered") == 3
    assert value(samples, "podcron_job_duration_seconds_count", **job("hello", ns))


@pytest.fixture(scope="module")
def spans(deployment: Deployment, manual_run: None, receiver: OtlpReceiver) -> list[ReceivedSpan]:
    """Every span of the module, as the operator's graceful shutdown flushed them."""
    reached(deployment, [outcome for outcome in OUTCOMES if outcome[0] != "busy"])
    assert receiver.span_count == 0, "spans left before shutdown: the test proves nothing"
    assert deployment.operator.stop(signal.SIGTERM) == 0
    # Flushed before the process exited: no waiting here.
    received = [span for span in receiver.spans() if span.name == "podcron.job.run"]
    assert received
    return received


def of(spans: list[ReceivedSpan], job: str, trigger: str) -> list[ReceivedSpan]:
    return [
        s
        for s in spans
        if s.attributes["podcron.job.id"].endswith(f"/{job}")
        and s.attributes["podcron.job.trigger"] == trigger
    ]


def test_every_exemplar_leads_to_an_exported_span(
    exemplars: Exemplars, spans: list[ReceivedSpan]
) -> None:
    assert set(exemplars.values()) <= {span.trace_id for span in spans}


def test_scheduled_runs_have_a_span_each(spans: list[ReceivedSpan], deployment: Deployment) -> None:
    hello = of(spans, "hello", "scheduled")
    assert len(hello) >= 2
    span = hello[0]
    assert span.attributes["podcron.job.id"] == f"{deployment.namespace}/hello"
    assert span.attributes["podcron.job.entry_point"] == "hello"
    # Due on a whole second, as an `every: 1s` tick is.
    assert span.attributes["podcron.job.scheduled_time"].endswith(".000Z")
    assert span.kind == SPAN_KIND_INTERNAL
    assert span.status_code != STATUS_ERROR
    assert span.parent_span_id == ""
    assert (span.scope, span.scope_version) == ("podcron", importlib.metadata.version("podcron"))
    assert span.resource["service.name"] == "podcron"
    assert span.resource["service.version"] == importlib.metadata.version("podcron")
    # One trace per scheduled run.
    assert len({s.trace_id for s in hello}) == len(hello)


@pytest.mark.parametrize(
    ("job", "trigger"), [("hello", "scheduled"), ("hello", "manual"), ("broken", "scheduled")]
)
def test_the_scheduled_time_is_written_as_status_writes_times(
    spans: list[ReceivedSpan], job: str, trigger: str
) -> None:
    times = [span.attributes["podcron.job.scheduled_time"] for span in of(spans, job, trigger)]
    assert times
    for written in times:
        # RFC 3339 in UTC with milliseconds, as in status and the System API.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", written), written


def test_a_manual_run_is_a_child_of_the_callers_span(spans: list[ReceivedSpan]) -> None:
    (span,) = of(spans, "hello", "manual")
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, CALLER_SPAN_ID)
    assert span.status_code != STATUS_ERROR


def test_failed_and_timed_out_runs_are_errors_with_the_exception(
    spans: list[ReceivedSpan],
) -> None:
    broken = of(spans, "broken", "scheduled")
    assert broken
    for span in broken:
        assert span.status_code == STATUS_ERROR
        assert span.status_message.startswith("ValueError: invalid literal for int()")
        ((name, attributes),) = span.events
        assert name == "exception"
        assert attributes["exception.type"] == "ValueError"
        assert "Traceback" in attributes["exception.stacktrace"]
    # The run shutdown interrupts may end cleanly: only the others surely timed out.
    timed_out = [span for span in of(spans, "late", "scheduled") if span.status_code]
    assert timed_out
    for span in timed_out:
        assert span.status_code == STATUS_ERROR
        assert span.status_message == "TimeoutError: run exceeded 1.0s"
        assert span.events[0][1]["exception.type"] == "TimeoutError"


def test_a_failed_runs_json_log_leads_to_its_span(
    spans: list[ReceivedSpan], deployment: Deployment
) -> None:
    errors = [
        record
        for record in deployment.records()
        if record["level"] == "ERROR" and record["job_id"] == f"{deployment.namespace}/broken"
    ]
    assert errors
    record = errors[0]
    assert record["logger"] == "podcron.job"
    assert record["message"].startswith("run failed: ValueError")
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: invalid literal for int()" in record["exc_info"]
    datetime.fromisoformat(record["time"])
    failed = {(s.trace_id, s.span_id) for s in of(spans, "broken", "scheduled")}
    assert (record["trace_id"], record["span_id"]) in failed
