"""Shared resources and job configuration in a real operator against the real control plane.

The factories and jobs are in ``jobmodules/resource_jobs.py``; each test registers the
factories in the ``podcron.resources`` entry-point group the way an installed package
does (an ``entry_points.txt`` in a ``.dist-info`` directory on the operator's path) and
reads what happened, in order, from the journal the factories and jobs append to. Runs
are started through the real sidecar. No test asserts on timing: they wait for counts
and states, each with a deadline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from otlp_receiver import OtlpReceiver

from ..unit.kubelet_volume import KubeletVolume
from ..waiting import wait_for
from .conftest import OperatorProcess, get_job
from .scheduledjobs import apply, events, manifest, status, wait_event, wait_ready
from .sidecar_process import SidecarProcess, client

JOBS = Path(__file__).parent / "jobmodules"
FACTORIES = {
    "counter": "resource_jobs:counter",
    "ledger": "resource_jobs:ledger",
    "flaky": "resource_jobs:flaky",
}


def _register_factories(directory: Path) -> None:
    """What ``pip install`` of a package declaring ``podcron.resources`` leaves behind."""
    info = directory / "podcron_test_resources-0.dist-info"
    info.mkdir(parents=True)
    metadata = "Metadata-Version: 2.1\nName: podcron-test-resources\nVersion: 0\n"
    (info / "METADATA").write_text(metadata)
    lines = "".join(f"{name} = {target}\n" for name, target in FACTORIES.items())
    (info / "entry_points.txt").write_text(f"[podcron.resources]\n{lines}")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where the journal is written, and the factories registered."""
    _register_factories(tmp_path / "site")
    return tmp_path


@pytest.fixture
def operator(
    namespace: str, workdir: Path, start_operator: Callable[..., OperatorProcess]
) -> Callable[..., OperatorProcess]:
    """Start the operator on ``namespace`` with the factories registered; ``env`` adds settings."""

    def start(**env: str) -> OperatorProcess:
        path = [str(JOBS), str(workdir / "site"), os.environ.get("PYTHONPATH", "")]
        started = start_operator(
            PODCRON_NAMESPACES=namespace,
            PODCRON_ALLOWED_MODULES="resource_jobs",
            PYTHONPATH=os.pathsep.join(filter(None, path)),
            RESOURCE_TEST_DIR=str(workdir),
            **env,
        )
        wait_for(
            lambda: "podcron operator started" in started.log(),
            timeout=30,
            what=f"operator start-up; its log:\n{started.log()}",
        )
        return started

    return start


def _journal(workdir: Path) -> list[str]:
    path = workdir / "journal"
    return path.read_text().splitlines() if path.exists() else []


def _job(entry: str, *resources: str, **spec: Any) -> dict[str, Any]:
    return {
        "entryPoint": f"resource_jobs:{entry}",
        "schedule": {"every": "1s"},
        "resources": list(resources),
    } | spec


def _sidecar(operator: OperatorProcess, workdir: Path) -> SidecarProcess:
    return SidecarProcess(
        dict(os.environ)
        | {
            "PODCRON_CONTROL_SOCKET": str(operator.log_path.parent / "control.sock"),
            "PODCRON_ALLOWED_CIDRS": "127.0.0.1/32",
        },
        workdir / "sidecar.log",
    )


def test_one_object_serves_100_runs_of_two_jobs_and_is_closed_once_after_them(
    crd: ControlPlane, namespace: str, workdir: Path, operator: Callable[..., OperatorProcess]
) -> None:
    started = operator()
    # Suspended: every run below is a manual one the test asked for, through the sidecar.
    spec: dict[str, Any] = {"concurrencyPolicy": "Allow", "suspend": True}
    apply(
        crd,
        namespace,
        manifest("async", _job("count_async", "counter", "ledger", **spec)),
        manifest("thread", _job("count_in_thread", "counter", **spec)),
    )
    for name in ("async", "thread"):
        wait_ready(crd, namespace, name, reason="Suspended")
    sidecar = _sidecar(started, workdir)
    try:
        session = client()

        def accepted(url: str) -> bool:
            # Refused (429) while ten manual runs are active: try again until accepted.
            return session.post(url).status_code == 200

        for number in range(100):
            url = f"{sidecar.url}/_sys/job/{namespace}/{('async', 'thread')[number % 2]}"
            wait_for(functools.partial(accepted, url), timeout=20, what=url)
        wait_for(
            lambda: sum(line.startswith("run ") for line in _journal(workdir)) >= 100,
            timeout=30,
            what="100 runs in the journal",
        )
        wait_for(
            lambda: (
                not any(
                    job["running"] for job in session.get(f"{sidecar.url}/_sys/job").json()["data"]
                )
            ),
            timeout=20,
            what="no run active",
        )
    finally:
        sidecar.stop()
    assert started.stop(signal.SIGTERM) == 0
    journal = _journal(workdir)
    runs = [line for line in journal if line.startswith("run ")]
    assert len(runs) == 100
    assert {line.split()[1] for line in runs} == {"async", "thread"}
    (counter_id,) = {line.split()[2] for line in runs}
    # The eager ledger at start-up, the counter for the first run; each closed once, after
    # the last run, the last created first.
    assert [line for line in journal if not line.startswith("run ")] == [
        "created ledger",
        f"created counter {counter_id}",
        f"closed counter {counter_id}",
        "closed ledger",
    ]
    assert journal.index(f"closed counter {counter_id}") > journal.index(runs[-1])
    log = started.log()
    assert "resource counter closed" in log
    assert "resource ledger closed" in log


def test_a_failing_factory_makes_its_jobs_unready_until_it_recovers(
    crd: ControlPlane, namespace: str, workdir: Path, operator: Callable[..., OperatorProcess]
) -> None:
    (workdir / "flaky-down").touch()
    operator()
    apply(
        crd,
        namespace,
        manifest("needs-flaky", _job("use_flaky", "flaky")),
        manifest("needs-counter", _job("count_async", "counter")),
    )
    # The first run asks for it, the attempt fails: Ready=False with the factory's reason.
    found = wait_ready(crd, namespace, "needs-flaky", reason="ResourceUnavailable")
    ready = next(c for c in found["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["message"] == (
        "resource 'flaky' is unavailable: ConnectionRefusedError: "
        "flaky is down (the test made it so); retrying"
    )
    event = wait_event(crd, namespace, "needs-flaky", reason="ResourceUnavailable")
    assert event["type"] == "Warning"
    # Its runs fail at once and count; the other job runs on.
    failed = wait_for(
        lambda: (
            (status(crd, namespace, "needs-flaky").get("runs") or {}).get("failed", 0) >= 1
            and status(crd, namespace, "needs-flaky")
        ),
        timeout=20,
        what="a failed run of needs-flaky",
    )
    assert failed["lastError"].startswith("resource 'flaky' is unavailable: ConnectionRefused")
    wait_for(
        lambda: (
            (status(crd, namespace, "needs-counter").get("runs") or {}).get("succeeded", 0) >= 2
        ),
        timeout=20,
        what="needs-counter runs on",
    )
    (workdir / "flaky-down").unlink()
    # Retried with backoff: Ready again without a new reconcile, and runs succeed.
    wait_ready(crd, namespace, "needs-flaky", reason="Scheduled", timeout=40)
    wait_for(
        lambda: any(line == "run needs-flaky flaky" for line in _journal(workdir)),
        timeout=20,
        what="a run of needs-flaky with its resource",
    )
    reasons = [e["reason"] for e in events(crd, namespace, "needs-flaky")]
    assert "ResourceUnavailable" in reasons
    assert "Scheduled" in reasons


def test_a_job_naming_an_unknown_resource_is_refused(
    crd: ControlPlane, namespace: str, operator: Callable[..., OperatorProcess]
) -> None:
    operator()
    apply(crd, namespace, manifest("typo", _job("count_async", "countr")))
    found = wait_ready(crd, namespace, "typo", reason="ResourceNotFound")
    ready = next(c for c in found["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["message"].startswith(
        "spec.resources: no resource factory named 'countr' in entry-point group "
        "podcron.resources (registered: counter, flaky, "
    )
    assert found.get("nextRunTime") is None
    event = wait_event(crd, namespace, "typo", reason="ResourceNotFound")
    assert event["type"] == "Warning"


def test_config_reloads_and_a_secret_reaches_the_job_but_nothing_else(
    crd: ControlPlane, namespace: str, workdir: Path, operator: Callable[..., OperatorProcess]
) -> None:
    token = f"tok-{secrets.token_hex(16)}"
    config = KubeletVolume(workdir / "config")
    config.write({"greeting": "hello"})
    secret = KubeletVolume(workdir / "secrets")
    secret.write({"token": token})
    with OtlpReceiver() as receiver:
        started = operator(
            PODCRON_JOB_CONFIG_DIR=str(config.path),
            PODCRON_JOB_SECRETS_DIR=str(secret.path),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            PODCRON_LOG_FORMAT="json",
        )
        apply(crd, namespace, manifest("reader", _job("read_config")))
        digest = hashlib.sha256(token.encode()).hexdigest()
        wait_for(
            lambda: f"config hello {digest}" in _journal(workdir),
            timeout=20,
            what="a run that read the config and the token",
        )
        # The kubelet's update: a new version, ..data swapped. The next run sees it.
        config.write({"greeting": "bonjour"})
        wait_for(
            lambda: f"config bonjour {digest}" in _journal(workdir),
            timeout=20,
            what="a run that read the changed config",
        )
        wait_event(crd, namespace, "reader", reason="RunFailed")
        sidecar = _sidecar(started, workdir)
        try:
            session = client()
            answers = [
                session.get(f"{sidecar.url}/_sys/job").text,
                session.get(f"{sidecar.url}/_sys/job/{namespace}/reader").text,
            ]
        finally:
            sidecar.stop()
        assert started.stop(signal.SIGTERM) == 0
        receiver.wait_for_count(1, timeout=10)
        spans = [
            json.dumps([s.attributes, s.events, s.status_message], default=str)
            for s in receiver.spans()
        ]
    found_status = status(crd, namespace, "reader")
    texts = {
        "operator log": started.log(),
        "status": json.dumps(get_job(crd, namespace, "reader")),
        "events": json.dumps(events(crd, namespace, "reader")),
        "System API": "\n".join(answers),
        "spans": "\n".join(spans),
    }
    for where, text in texts.items():
        assert token not in text, f"the Secret's value is in the {where}"
    # The failure quoting the token did reach each of them, redacted.
    assert found_status["lastError"] == ("PermissionError: the service refused token ********")
    for where in ("operator log", "events", "spans"):
        assert "refused token ********" in texts[where], where
    assert spans
