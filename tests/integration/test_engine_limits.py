"""The engine's limits end to end: a real operator, the real control plane, the real sidecar.

Each test starts an operator watching only its own namespace, running the
misbehaving jobs of ``jobmodules/pressure_jobs.py``, and checks what a user
sees: the counters and status of each ScheduledJob, its Events, the operator's
log and ``/metrics``. Nothing asserts on timing: the tests wait for counts of
runs and ticks, then compare counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from controlplane import ControlPlane

from ..ports import free_port
from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import annotate, apply, manifest, status, wait_event
from .sidecar_process import SidecarProcess, client

JOBS = Path(__file__).parent / "jobmodules"


def _operator_env(namespace: str, metrics_port: int, **settings: str) -> dict[str, str]:
    return {
        "PODCRON_NAMESPACES": namespace,
        "PODCRON_ALLOWED_MODULES": "pressure_jobs",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(JOBS), os.environ.get("PYTHONPATH")])),
        "PODCRON_METRICS_PORT": str(metrics_port),
    } | settings


def _job(entry: str, every: str, **spec: Any) -> dict[str, Any]:
    return {"entryPoint": f"pressure_jobs:{entry}", "schedule": {"every": every}} | spec


def _runs(plane: ControlPlane, namespace: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = status(plane, namespace, name).get("runs") or {}
    return counts


def _started(plane: ControlPlane, namespace: str, name: str) -> Callable[[], bool]:
    """Whether the job's status says it is scheduled (so the operator has it)."""
    return lambda: bool(status(plane, namespace, name).get("nextRunTime"))


class Metrics:
    """The operator's ``/metrics``, scraped on demand."""

    def __init__(self, port: int) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._session = client()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self._session.get(self._url, timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics_port() -> int:
    return free_port()


def test_a_hung_def_job_holds_forbid_and_starves_no_other_def_job(
    crd: ControlPlane,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    metrics_port: int,
) -> None:
    # Two worker threads: before, the hung job's piled-up runs took both within seconds.
    operator = start_operator(
        **_operator_env(
            namespace,
            metrics_port,
            PODCRON_WORKER_THREADS="2",
            PODCRON_SHUTDOWN_TIMEOUT_SECONDS="20",
        )
    )
    quick = [f"quick-{index}" for index in range(5)]
    apply(
        crd,
        namespace,
        manifest("hung", _job("sleep_in_thread", "1s", timeoutSeconds=1, args={"seconds": 60})),
        *(manifest(name, _job("quick_in_thread", "1s")) for name in quick),
    )
    wait_for(
        lambda: (
            all(_runs(crd, namespace, name).get("succeeded", 0) >= 4 for name in quick)
            and _runs(crd, namespace, "hung").get("skipped", 0) >= 4
        ),
        timeout=90,
        interval=0.5,
        what="every quick job to run 4 times and the hung job to skip 4 ticks",
    )
    hung = status(crd, namespace, "hung")
    # One run started: it timed out at its deadline, and its thread still sleeps,
    # so the job is running and Forbid skips every tick since.
    assert hung["runs"]["failed"] == 1
    assert hung["runs"]["succeeded"] == 0
    assert hung["running"] is True
    assert hung["lastError"].startswith("TimeoutError: run exceeded 1")
    event = wait_event(crd, namespace, "hung", reason="ThreadAbandoned")
    assert event["type"] == "Warning"
    assert "1 abandoned threads" in event["message"]
    assert Metrics(metrics_port).value("podcron_job_threads_abandoned") == 1
    for name in quick:
        assert _runs(crd, namespace, name)["failed"] == 0
    # SIGTERM: the only thread left belongs to a run that has its outcome, so
    # nothing is interrupted, and nothing waits for it.
    assert operator.stop() == 0
    assert "Interrupted" not in operator.log()


def test_300_manual_runs_get_their_budget_and_429_and_never_delay_the_schedule(
    crd: ControlPlane,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    metrics_port: int,
    tmp_path: Path,
) -> None:
    operator = start_operator(**_operator_env(namespace, metrics_port))
    apply(
        crd,
        namespace,
        manifest(
            "slow",
            _job("sleep", "1s", suspend=True, concurrencyPolicy="Allow", args={"seconds": 120}),
        ),
        manifest("tick", _job("quick", "2s")),
    )
    wait_for(_started(crd, namespace, "tick"), timeout=30, what="tick to be scheduled")
    sidecar = SidecarProcess(
        dict(os.environ)
        | {"PODCRON_CONTROL_SOCKET": str(operator.log_path.parent / "control.sock")}
        | {"PODCRON_ALLOWED_CIDRS": "127.0.0.1/32"},
        tmp_path / "sidecar.log",
    )
    try:
        url = f"{sidecar.url}/_sys/job/{namespace}/slow"
        wait_for(lambda: client().get(url).status_code == 200, timeout=30, what="slow in the API")
        wait_for(
            lambda: _runs(crd, namespace, "tick").get("succeeded", 0) >= 1,
            timeout=30,
            what="a first run of tick",
        )
        before = _runs(crd, namespace, "tick")
        sessions = [client() for _ in range(16)]

        def post(index: int) -> requests.Response:
            return sessions[index % len(sessions)].post(url, timeout=30)

        with ThreadPoolExecutor(len(sessions)) as pool:
            answers = list(pool.map(post, range(300)))
        codes = [answer.status_code for answer in answers]
        # The default budget is 10 manual runs at once; each lasts two minutes.
        assert codes.count(200) == 10
        assert codes.count(429) == 290
        refused = next(answer for answer in answers if answer.status_code == 429)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["data"] is None
        assert refused.json()["error"]["code"] == "TOO_MANY_MANUAL_RUNS"
        # A run-now annotation spends the same budget: refused with an Event.
        annotate(crd, namespace, "slow", "podcron.dev/run-now", "now")
        event = wait_event(crd, namespace, "slow", reason="RunNowRefused")
        assert "maxManualRuns" in event["message"]
        # The schedule goes on as if nobody had called: five more runs of tick, none skipped.
        wait_for(
            lambda: _runs(crd, namespace, "tick").get("succeeded", 0) >= before["succeeded"] + 5,
            timeout=60,
            interval=0.5,
            what="five more runs of tick",
        )
        after = _runs(crd, namespace, "tick")
        assert after["skipped"] == before["skipped"]
        assert after["failed"] == 0
        scraped = Metrics(metrics_port)
        running = scraped.value("podcron_jobs_running")
        assert running is not None
        assert 10 <= running <= 11, "the ten manual runs, and tick if it runs just now"
        assert scraped.value("podcron_jobs_queued") == 0
    finally:
        sidecar.stop()


def test_an_async_job_blocking_the_loop_is_named_once(
    crd: ControlPlane,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    metrics_port: int,
) -> None:
    operator = start_operator(**_operator_env(namespace, metrics_port))
    apply(crd, namespace, manifest("blocker", _job("block_the_loop", "3s", args={"seconds": 1.5})))
    wait_for(
        lambda: _runs(crd, namespace, "blocker").get("succeeded", 0) >= 3,
        timeout=60,
        interval=0.5,
        what="three runs of blocker",
    )
    warnings = [
        line
        for line in operator.log().splitlines()
        if f"job {namespace}/blocker has held the event loop" in line
    ]
    assert len(warnings) == 1, "named once per job per minute, not once per run"
    assert "WARNING" in warnings[0]
    scraped = Metrics(metrics_port)
    count = scraped.value("podcron_event_loop_lag_seconds_count")
    within_a_second = scraped.value("podcron_event_loop_lag_seconds_bucket", le="1.0")
    assert count is not None
    assert within_a_second is not None
    assert count - within_a_second >= 2, "the heartbeats the blocks held up"


def test_a_job_that_cancels_itself_fails(
    crd: ControlPlane,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    metrics_port: int,
) -> None:
    start_operator(**_operator_env(namespace, metrics_port))
    apply(crd, namespace, manifest("quitter", _job("cancel_itself", "1s")))
    wait_for(
        lambda: _runs(crd, namespace, "quitter").get("total", 0) >= 2,
        timeout=60,
        interval=0.5,
        what="two runs of quitter",
    )
    quitter = status(crd, namespace, "quitter")
    assert quitter["runs"]["succeeded"] == 0
    assert quitter["runs"]["failed"] == quitter["runs"]["total"]
    assert quitter["lastRunStatus"] == "failure"
    assert quitter["lastError"] == "asyncio.exceptions.CancelledError: gave up"


def test_running_counts_bodies_and_waiting_is_lateness_not_duration(
    crd: ControlPlane,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    metrics_port: int,
) -> None:
    start_operator(**_operator_env(namespace, metrics_port, PODCRON_MAX_CONCURRENT_RUNS="2"))
    busy = [f"busy-{index}" for index in range(4)]
    apply(
        crd,
        namespace,
        *(
            manifest(name, _job("sleep", "1s", concurrencyPolicy="Allow", args={"seconds": 3}))
            for name in busy
        ),
    )
    wait_for(_started(crd, namespace, busy[0]), timeout=30, what="the busy jobs to be scheduled")
    scraped = Metrics(metrics_port)
    seen: list[tuple[float | None, float | None]] = []

    def saturated() -> bool:
        samples = scraped.samples()
        seen.append(
            (
                samples.get(("podcron_jobs_running", ())),
                samples.get(("podcron_jobs_queued", ())),
            )
        )
        ran = sum(_runs(crd, namespace, name).get("total", 0) for name in busy)
        return ran >= 8

    wait_for(saturated, timeout=90, interval=0.5, what="eight runs of the busy jobs")
    running = [value for value, _ in seen if value is not None]
    queued = [value for _, value in seen if value is not None]
    assert running, "podcron_jobs_running is exported"
    assert max(running) <= 2, "running means running: never more than maxConcurrentRuns"
    assert queued
    assert max(queued) >= 1, "the runs waiting for a slot show as queued"
    assert max(queued) <= len(busy), "at most one queued tick per job"
    samples = scraped.samples()
    for name in busy:
        labels = (("name", name), ("namespace", namespace))
        count = samples[("podcron_job_duration_seconds_count", labels)]
        within = samples[("podcron_job_duration_seconds_bucket", (("le", "5.0"), *labels))]
        assert count >= 1
        assert within == count, f"{name}: a duration is the body's 3 s, never the wait"
    lateness_count = samples[("podcron_job_schedule_lateness_seconds_count", ())]
    lateness_within_a_second = samples[
        ("podcron_job_schedule_lateness_seconds_bucket", (("le", "1.0"),))
    ]
    assert lateness_count - lateness_within_a_second >= 1, "the wait shows as lateness"
