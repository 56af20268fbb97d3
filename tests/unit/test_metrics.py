"""The Prometheus metrics: each on a fresh registry, fed directly and by a real engine."""

from __future__ import annotations

import asyncio
import gc
import http.client
import re
import urllib.request
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from podcron.context import JobContext, Trigger
from podcron.controller.probes import ProbeServer
from podcron.engine import ConcurrencyPolicy, Engine, RunStatus
from podcron.telemetry import metrics as metrics_module
from podcron.telemetry.metrics import DURATION_BUCKETS, LATENESS_BUCKETS, JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import DEADLINE, Recorder, spec

JOB = {"namespace": "ns", "name": "job"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> JobMetrics:
    return JobMetrics(registry)


def runs(registry: CollectorRegistry, trigger: str, status: str, name: str = "job") -> float | None:
    labels = {"namespace": "ns", "name": name, "trigger": trigger, "status": status}
    return registry.get_sample_value("podcron_job_runs_total", labels)


def test_a_registered_job_starts_with_zero_counts(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    metrics.job_added("ns", "job")
    assert registry.get_sample_value("podcron_jobs_registered") == 1
    assert runs(registry, "scheduled", "failure") == 0
    assert runs(registry, "scheduled", "success") == 0
    assert registry.get_sample_value("podcron_job_duration_seconds_count", JOB) == 0
    # No success yet: no timestamp, rather than a misleading 1970.
    assert registry.get_sample_value("podcron_job_last_success_timestamp_seconds", JOB) is None


def test_outcomes_count_by_trigger_and_status(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    metrics.job_added("ns", "job")
    for trigger, status in (("scheduled", "success"), ("manual", "failure")):
        metrics.run_recorded(
            "ns", "job", trigger=trigger, status=status, duration_seconds=0.2, ended_at=1.7e9 + 0.5
        )
    metrics.run_recorded(
        "ns", "job", trigger="scheduled", status="skipped", duration_seconds=None, ended_at=0.0
    )
    assert runs(registry, "scheduled", "success") == 1
    assert runs(registry, "manual", "failure") == 1
    assert runs(registry, "scheduled", "skipped") == 1
    # Two runs took time; the skipped tick did not.
    assert registry.get_sample_value("podcron_job_duration_seconds_count", JOB) == 2
    assert registry.get_sample_value("podcron_job_duration_seconds_sum", JOB) == pytest.approx(0.4)
    assert (
        registry.get_sample_value("podcron_job_last_success_timestamp_seconds", JOB)
        == 1_700_000_000.5
    )


def test_failures_in_a_row_reset_on_success_and_ignore_skipped_ticks(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    metrics.job_added("ns", "job")

    def record(status: str) -> float | None:
        duration = None if status == "skipped" else 1.0
        metrics.run_recorded(
            "ns", "job", trigger="manual", status=status, duration_seconds=duration, ended_at=1.0
        )
        return registry.get_sample_value("podcron_job_failures_in_a_row", JOB)

    assert registry.get_sample_value("podcron_job_failures_in_a_row", JOB) == 0
    assert [record(s) for s in ("failure", "failure", "skipped", "failure")] == [1, 2, 2, 3]
    assert record("success") == 0
    assert record("failure") == 1


def test_interval_is_absent_until_known_and_while_there_is_no_next_tick(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    metrics.job_added("ns", "job")
    assert registry.get_sample_value("podcron_job_interval_seconds", JOB) is None
    metrics.job_interval("ns", "job", 300.0)
    assert registry.get_sample_value("podcron_job_interval_seconds", JOB) == 300
    metrics.job_interval("ns", "job", None)
    assert registry.get_sample_value("podcron_job_interval_seconds", JOB) is None


def test_a_success_known_from_status_is_the_last_success(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    metrics.job_added("ns", "job", last_success=1_700_000_000.0)
    last = registry.get_sample_value("podcron_job_last_success_timestamp_seconds", JOB)
    assert last == 1_700_000_000.0


def test_lateness_resolves_milliseconds_and_counts_scheduled_runs_only(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    for _ in range(6):
        metrics.run_queued()
    metrics.run_started("scheduled", 0.0007)
    metrics.run_started("scheduled", 0.003)
    metrics.run_started("manual", 0.0001)
    metrics.run_started("catch-up", 250.0)
    metrics.run_dropped()

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("podcron_job_schedule_lateness_seconds_bucket", {"le": le})

    assert (bucket("0.0005"), bucket("0.001"), bucket("0.005"), bucket("+Inf")) == (0, 1, 2, 2)
    assert registry.get_sample_value("podcron_jobs_running") == 4
    assert registry.get_sample_value("podcron_jobs_queued") == 1
    metrics.run_ended()
    assert registry.get_sample_value("podcron_jobs_running") == 3


def test_loop_lag_and_abandoned_threads(registry: CollectorRegistry, metrics: JobMetrics) -> None:
    for seconds in (0.0001, 0.02, 1.5):
        metrics.loop_lag(seconds)
    metrics.abandoned_threads(2)

    def lag(le: str) -> float | None:
        return registry.get_sample_value("podcron_event_loop_lag_seconds_bucket", {"le": le})

    assert (lag("0.0005"), lag("0.025"), lag("1.0"), lag("+Inf")) == (1, 2, 2, 3)
    assert registry.get_sample_value("podcron_event_loop_lag_seconds_sum") == pytest.approx(1.5201)
    assert registry.get_sample_value("podcron_job_threads_abandoned") == 2


def test_forget_removes_every_series_of_the_job_and_no_other(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    for name in ("job", "other"):
        metrics.job_added("ns", name)
        for trigger, status in (("manual", "success"), ("catch-up", "failure")):
            metrics.run_recorded(
                "ns", name, trigger=trigger, status=status, duration_seconds=1.0, ended_at=5.0
            )
    metrics.job_removed("ns", "job")
    remaining = {
        (sample.name, sample.labels.get("name"))
        for family in registry.collect()
        for sample in family.samples
        if "name" in sample.labels
    }
    assert remaining
    assert all(name == "other" for _, name in remaining)
    assert registry.get_sample_value("podcron_jobs_registered") == 1
    assert runs(registry, "manual", "success", name="other") == 1
    metrics.forget("ns", "never-registered")  # harmless


@pytest.fixture
async def engine(metrics: JobMetrics) -> AsyncIterator[Engine]:
    engine = Engine(
        shutdown_timeout_seconds=1.0, worker_threads=2, telemetry=RunTelemetry(metrics=metrics)
    )
    yield engine
    await engine.shutdown()


async def test_the_engine_feeds_every_metric(engine: Engine, registry: CollectorRegistry) -> None:
    outcomes = Recorder(engine)
    release = asyncio.Event()
    running = asyncio.Event()

    async def ok(ctx: JobContext) -> None:
        pass

    async def broken(ctx: JobContext) -> None:
        raise ValueError("boom")

    async def busy(ctx: JobContext) -> None:
        running.set()
        await release.wait()

    engine.upsert(spec(ok, "ok", every="1s"))
    engine.upsert(spec(broken, "broken"))
    engine.upsert(spec(busy, "busy", concurrency_policy=ConcurrencyPolicy.FORBID))
    assert registry.get_sample_value("podcron_jobs_registered") == 3
    engine.trigger("ns/ok")
    engine.trigger("ns/broken")
    engine.trigger("ns/busy")
    await asyncio.wait_for(running.wait(), DEADLINE)
    assert registry.get_sample_value("podcron_jobs_running") == 1
    # The busy run outlasts its next tick, which Forbid skips.
    await outcomes.until(lambda: outcomes.count("busy", RunStatus.SKIPPED) >= 1)
    await outcomes.until(lambda: outcomes.count("ok", RunStatus.SUCCESS) >= 2)
    release.set()
    await outcomes.until(lambda: outcomes.count("busy", RunStatus.SUCCESS) >= 1)

    assert runs(registry, "manual", "success", "ok") == 1
    assert (
        runs(registry, "scheduled", "success", "ok") == outcomes.count("ok", RunStatus.SUCCESS) - 1
    )
    assert runs(registry, "manual", "failure", "broken") == 1
    assert runs(registry, "scheduled", "skipped", "busy") == outcomes.count(
        "busy", RunStatus.SKIPPED
    )
    assert registry.get_sample_value("podcron_jobs_running") == 0
    assert (registry.get_sample_value("podcron_job_schedule_lateness_seconds_count") or 0) >= 1
    ok_labels = {"namespace": "ns", "name": "ok"}
    assert (
        registry.get_sample_value("podcron_job_last_success_timestamp_seconds", ok_labels) or 0
    ) > 0
    assert (
        registry.get_sample_value(
            "podcron_job_last_success_timestamp_seconds", {"namespace": "ns", "name": "broken"}
        )
        is None
    )
    # The broken job fails each tick; the one manual run came first.
    broken_labels = {"namespace": "ns", "name": "broken"}
    assert registry.get_sample_value(
        "podcron_job_failures_in_a_row", broken_labels
    ) == outcomes.count("broken", RunStatus.FAILURE)
    # From registration, and as each tick arms the next: the gap between ticks.
    assert registry.get_sample_value("podcron_job_interval_seconds", ok_labels) == 1.0
    engine.upsert(spec(ok, "ok", every="5m"))
    assert registry.get_sample_value("podcron_job_interval_seconds", ok_labels) == 300
    engine.upsert(spec(ok, "ok", every="1s", suspended=True))
    assert registry.get_sample_value("podcron_job_interval_seconds", ok_labels) is None

    engine.remove("ns/broken")
    assert registry.get_sample_value("podcron_jobs_registered") == 2
    assert runs(registry, "manual", "failure", "broken") is None
    assert (
        registry.get_sample_value(
            "podcron_job_duration_seconds_count", {"namespace": "ns", "name": "broken"}
        )
        is None
    )


async def test_a_jobs_interval_is_known_from_registration(
    engine: Engine, registry: CollectorRegistry
) -> None:
    async def idle(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(idle, "daily", schedule={"daily": {"at": "02:30"}}))
    engine.upsert(spec(idle, "paused", every="1m", suspended=True))
    daily = {"namespace": "ns", "name": "daily"}
    assert registry.get_sample_value("podcron_job_interval_seconds", daily) == 86_400
    paused = {"namespace": "ns", "name": "paused"}
    assert registry.get_sample_value("podcron_job_interval_seconds", paused) is None


# No proxy from the environment: these requests stay on loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, accept: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={} if accept is None else {"Accept": accept})
    try:
        with _opener.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _content_type(url: str, accept: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with _opener.open(request, timeout=5) as response:
        return str(response.headers["Content-Type"])


TRACE = 0x0AF7651916CD43DD8448EB211C80319C
OTHER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


async def test_exemplars_carry_trace_ids_in_openmetrics_only(registry: CollectorRegistry) -> None:
    # As the operator wires it: out of the registry, its text served beside the registry's.
    metrics = JobMetrics(registry=None)
    metrics.job_added("ns", "job")
    metrics.job_added("ns", "untraced")
    metrics.run_queued()
    metrics.run_started("scheduled", 0.003)
    metrics.run_traced("scheduled", 0.003, TRACE, at=1.8e9)
    metrics.run_traced("manual", 0.2, OTHER_TRACE, at=1.8e9)  # manual runs have no lateness
    for seconds, trace_id in ((0.3, TRACE), (0.4, OTHER_TRACE), (20.0, 0)):
        metrics.run_recorded(
            "ns",
            "job",
            trigger="scheduled",
            status="success",
            duration_seconds=seconds,
            ended_at=1.7e9,
            trace_id=trace_id,
        )
    metrics.run_recorded(
        "ns", "untraced", trigger="scheduled", status="failure", duration_seconds=0.3, ended_at=1.0
    )
    server = ProbeServer(
        host="127.0.0.1", port=0, ready=lambda: True, registry=registry, written=(metrics,)
    )
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        accept = "application/openmetrics-text; version=1.0.0"
        status, text = await asyncio.to_thread(_get, url, accept)
        content_type = await asyncio.to_thread(_content_type, url, accept)
        _, plain = await asyncio.to_thread(_get, url)
    finally:
        await server.stop()
    assert status == 200
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    exemplars = {
        (sample.name, sample.labels.get("name"), sample.labels["le"]): sample.exemplar
        # prometheus-client's OpenMetrics parser has no type hints.
        for family in openmetrics_families(text)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.exemplar is not None
    }
    # The latest traced run of each bucket; an untraced run leaves its bucket without one.
    lateness = exemplars.pop(("podcron_job_schedule_lateness_seconds_bucket", None, "0.005"))
    assert lateness.labels == {"trace_id": f"{TRACE:032x}"}
    assert lateness.value == pytest.approx(0.003)
    assert lateness.timestamp is not None
    duration = exemplars.pop(("podcron_job_duration_seconds_bucket", "job", "0.5"))
    assert duration.labels == {"trace_id": f"{OTHER_TRACE:032x}"}
    assert duration.value == pytest.approx(0.4)
    assert duration.timestamp is not None
    assert float(duration.timestamp) == pytest.approx(1.7e9)
    assert exemplars == {}
    # The registry's families and the written ones, then one "# EOF", last.
    assert "podcron_ready 1.0" in text
    assert text.endswith("\n# EOF\n")
    assert text.count("# EOF") == 1
    # The classic text format has no exemplars, and is what a plain GET gets.
    assert "trace_id" not in plain
    assert "# {" not in plain


async def test_exemplars_leave_with_their_job(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    metrics.job_added("ns", "job")
    metrics.run_recorded(
        "ns",
        "job",
        trigger="manual",
        status="success",
        duration_seconds=1.0,
        ended_at=1.0,
        trace_id=TRACE,
    )
    metrics.job_removed("ns", "job")
    metrics.job_added("ns", "job")
    buckets = [
        sample
        for family in registry.collect()
        if family.name == "podcron_job_duration_seconds"
        for sample in family.samples
    ]
    assert buckets
    assert all(sample.exemplar is None for sample in buckets)


async def test_metrics_and_probes_are_served_over_http(registry: CollectorRegistry) -> None:
    metrics = JobMetrics(registry=None)
    metrics.job_added("ns", "job")
    metrics.run_recorded(
        "ns", "job", trigger="scheduled", status="success", duration_seconds=0.3, ended_at=7.0
    )
    ready = False
    server = ProbeServer(
        host="127.0.0.1", port=0, ready=lambda: ready, registry=registry, written=(metrics,)
    )
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, text = await asyncio.to_thread(_get, f"{base}/metrics")
        assert status == 200
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert families["podcron_job_runs"].type == "counter"
        assert families["podcron_job_duration_seconds"].type == "histogram"
        assert families["podcron_job_schedule_lateness_seconds"].type == "histogram"
        assert families["podcron_jobs_registered"].samples[0].value == 1
        assert families["podcron_job_last_success_timestamp_seconds"].samples[0].value == 7.0
        assert all(family.documentation.endswith(".") for family in families.values())
        assert families["podcron_ready"].samples[0].value == 0
        assert await asyncio.to_thread(_get, f"{base}/healthz") == (200, "ok\n")
        assert (await asyncio.to_thread(_get, f"{base}/readyz"))[0] == 503
        ready = True
        assert (await asyncio.to_thread(_get, f"{base}/readyz"))[0] == 200
        assert registry.get_sample_value("podcron_ready") == 1
    finally:
        await server.stop()


async def test_a_scrape_holds_no_copy_of_its_text_once_sent(registry: CollectorRegistry) -> None:
    metrics = JobMetrics(registry=None)
    for index in range(100):
        metrics.job_added("ns", f"job-{index}")
    server = ProbeServer(
        host="127.0.0.1", port=0, ready=lambda: True, registry=registry, written=(metrics,)
    )
    await server.start()
    # Kept open between scrapes, as Prometheus keeps it.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

    def scrape() -> bytes:
        connection.request("GET", "/metrics")
        return connection.getresponse().read()

    try:
        text = await asyncio.to_thread(scrape)
        assert b'podcron_job_runs_total{name="job-99",namespace="ns"' in text
        gc.collect()
        held = [
            response
            for response in gc.get_objects()
            if isinstance(response, web.Response) and response.body == text
        ]
        assert held == [], "the last scrape's text stays until the connection's next request"
    finally:
        connection.close()
        await server.stop()


@pytest.mark.parametrize("openmetrics", [False, True], ids=["classic", "openmetrics"])
def test_the_written_text_is_what_prometheus_client_writes(
    registry: CollectorRegistry, metrics: JobMetrics, openmetrics: bool
) -> None:
    """Names, label order and escaping, number format, exemplars: line for line."""
    for index, name in enumerate(("job", "other", 'we"ird\\name')):
        metrics.job_added("ns", name, last_success=1.7e9 if index else None)
        metrics.job_interval("ns", name, 30.0 if index else None)
        metrics.run_recorded(
            "ns",
            name,
            trigger="manual",
            status="failure",
            duration_seconds=0.02 * index,
            ended_at=1.8e9,
            trace_id=TRACE if index == 1 else 0,
        )
        metrics.ticks_missed("ns", name, index)
    metrics.run_queued()
    metrics.run_started("scheduled", 12.5)
    metrics.run_traced("scheduled", 12.5, OTHER_TRACE, at=1.8e9)
    metrics.loop_lag(0.01)
    written = metrics.exposition(openmetrics)
    # prometheus-client's own writer, from the samples its parser read out of that text.
    generate = openmetrics_latest if openmetrics else generate_latest
    expected = generate(registry).decode()
    # Its parser keeps an exemplar's time as seconds and nanoseconds ("...093.064968000").
    times = re.compile(r"(?m)(?<=\} )(\S+ )(\d+\.\d+)$")

    def exemplar_times_as_floats(text: str) -> str:
        return times.sub(lambda found: f"{found[1]}{float(found[2])}", text)

    assert written + ("# EOF\n" if openmetrics else "") == exemplar_times_as_floats(expected)
    assert 'name="we\\"ird\\\\name"' in written


def test_histograms_render_as_prometheus_clients_own(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    # The same observations through prometheus-client's Histogram, on a registry of its own.
    reference = CollectorRegistry()
    duration = Histogram(
        "d", "d", ["namespace", "name"], buckets=DURATION_BUCKETS, registry=reference
    )
    lateness = Histogram("l", "l", buckets=LATENESS_BUCKETS, registry=reference)
    metrics.job_added("ns", "job")
    for seconds in (0.0, 0.01, 0.0100001, 0.7, 5.0, 3600.0, 7200.0):
        duration.labels("ns", "job").observe(seconds)
        metrics.run_recorded(
            "ns", "job", trigger="manual", status="success", duration_seconds=seconds, ended_at=1.0
        )
        lateness.observe(seconds / 1000)
        metrics.run_started("scheduled", seconds / 1000)

    def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
        return {
            (sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
            for family in registry.collect()
            if family.name == name
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    assert samples(registry, "podcron_job_duration_seconds") == samples(reference, "d")
    assert samples(registry, "podcron_job_schedule_lateness_seconds") == samples(reference, "l")


def test_the_label_values_are_the_engines_triggers_and_statuses() -> None:
    # metrics.py lists them itself, since telemetry does not import the engine.
    assert tuple(Trigger) == metrics_module.TRIGGERS
    assert tuple(RunStatus) == metrics_module.STATUSES


async def test_readyz_verbose_lists_the_details_whatever_the_verdict(
    registry: CollectorRegistry,
) -> None:
    lines = ["[+]resource:http up", "[-]resource:db failed (2 failed attempts): refused"]
    server = ProbeServer(
        host="127.0.0.1", port=0, ready=lambda: True, registry=registry, details=lambda: lines
    )
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert await asyncio.to_thread(_get, f"{base}/readyz?verbose") == (
            200,
            "[+]resource:http up\n[-]resource:db failed (2 failed attempts): refused\nready\n",
        )
        assert await asyncio.to_thread(_get, f"{base}/readyz") == (200, "ready\n")
    finally:
        await server.stop()


def test_a_jobs_series_are_one_object_the_garbage_collector_tracks() -> None:
    """docs/performance.md: one array per job, not prometheus-client's labelled metrics."""
    jobs = JobMetrics(CollectorRegistry())
    # A first job, so that the dict of jobs already holds a tracked object (an empty one is
    # untracked, and would count once more below).
    jobs.job_added("shop", "first")
    gc.collect()
    before = len(gc.get_objects())
    for index in range(1000):
        jobs.job_added("shop", f"job-{index}")
        jobs.run_recorded(
            "shop",
            f"job-{index}",
            trigger="scheduled",
            status="success",
            duration_seconds=0.1,
            ended_at=1e9,
        )
    gc.collect()
    # About one array per job (plus the odd cache entry); prometheus-client's
    # labelled metrics would add about forty per job.
    assert len(gc.get_objects()) - before < 2 * 1000


def test_missed_and_uncertain_ticks_are_counted_per_job_from_zero(
    registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    # Exported at 0 from the job's registration, so that an alert's increase() sees the first.
    metrics.job_added("shop", "a")
    metrics.job_added("shop", "b")
    a, b = {"namespace": "shop", "name": "a"}, {"namespace": "shop", "name": "b"}
    assert registry.get_sample_value("podcron_ticks_missed_total", a) == 0
    assert registry.get_sample_value("podcron_ticks_uncertain_total", b) == 0
    metrics.ticks_missed("shop", "a", 3)
    metrics.ticks_missed("shop", "a", 1)
    metrics.ticks_uncertain("shop", "b", 2)
    assert registry.get_sample_value("podcron_ticks_missed_total", a) == 4
    assert registry.get_sample_value("podcron_ticks_missed_total", b) == 0
    assert registry.get_sample_value("podcron_ticks_uncertain_total", a) == 0
    assert registry.get_sample_value("podcron_ticks_uncertain_total", b) == 2
    metrics.job_removed("shop", "a")
    assert registry.get_sample_value("podcron_ticks_missed_total", a) is None
