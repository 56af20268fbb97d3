"""podcron side by side with the Kubernetes CronJob controller, on one real control plane.

Run with ``make bench-vs-cronjob``. ``JOBS`` lists the numbers of jobs N
(default ``100,1000``); ``DURATION`` is each window in seconds (300, or 120
with ``QUICK=1``). For each N, one configuration after the other on the same
etcd and kube-apiserver (so that a window's API writes are its scheduler's), a
fresh one for each N:

* ``cronjob-1m``: N CronJobs on ``* * * * *`` (CronJob's finest schedule), run
  by kube-controller-manager with only its cronjob and job controllers (its
  defaults otherwise: 20 requests/s to the API server, 5 cronjob workers).
* ``podcron-1m``: N ScheduledJobs on ``cron: "* * * * *"``, run by ``podcron
  operator`` as ``bench_operator.py`` runs it (telemetry on, ``/metrics``
  scraped), every job a no-op.
* ``podcron-1s``: the same N ``every: 1s``, what a CronJob cannot do.

Lateness of a CronJob: its Job's ``creationTimestamp`` minus the scheduled
time (the ``batch.kubernetes.io/cronjob-scheduled-timestamp`` annotation).
There is no kubelet or scheduler: the Job and its Pod are created and never
run, so this is the controller's own lateness, the best a CronJob can do before
a Pod even starts. ``creationTimestamp`` holds whole seconds (truncated), so
the time this benchmark's watch received each Job is shown too, to the
millisecond (an upper bound: it adds the watch's delivery). Lateness in podcron
is the run's start as the job itself sees it (``bench_operator_job``: the
clock at the start of the body minus ``ctx.scheduled_time``).

Each window starts a second before a minute does, so it holds whole minutes'
ticks and the work after each. CPU and RSS of kube-controller-manager or the
operator, and CPU of kube-apiserver and etcd, come from /proc; API writes from
the API server's ``apiserver_request_total`` (every client: besides the
scheduler measured, only the API server's own lease renewals write, about
0.1/s). After each N, a table with the machine's load beside the figures,
and one ``RESULT vs-cronjob ...`` line per configuration. Without a
kube-controller-manager (it cannot be built here), one line says so and the
benchmark is skipped.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kubernetes
import requests
import urllib3

from bench_operator import (
    Cluster,
    EventCounter,
    Operator,
    Scenario,
    measure,
    measure_usage,
    print_scenarios,
    scenario_rows,
    tally,
)
from cluster import ControlPlane, is_ready, scheduled_job
from controlplane import _die_with_parent, _free_ports
from gobuild import BinariesUnavailable
from harness import quick, stop, wait_until
from kindimages import ensure_node_binaries
from podcron.controller.resource import GROUP, PLURAL, VERSION

SCHEDULED_AT = "batch.kubernetes.io/cronjob-scheduled-timestamp"
EVERY_MINUTE = "* * * * *"
#: How long after its window a Job due inside it may still turn up (runs: NOTE_GRACE_SECONDS).
CRONJOB_GRACE_SECONDS = 60.0
#: The least time between the jobs being ready and their first measured tick.
ALIGN_MARGIN_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The numbers of jobs and the window, from the environment."""

    jobs: tuple[int, ...]
    duration_s: float

    @classmethod
    def from_env(cls) -> Settings:
        jobs = tuple(int(n) for n in os.environ.get("JOBS", "100,1000").split(","))
        return cls(jobs, float(os.environ.get("DURATION", 120 if quick() else 300)))


def _timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def sleep_to_window() -> None:
    """Sleep until a second before a minute starts, at least a margin from now."""
    start = math.ceil((time.time() + ALIGN_MARGIN_SECONDS + 1) / 60) * 60 - 1
    time.sleep(start - time.time())


def ticks_in(start: float, end: float, interval: int) -> int:
    """How many multiples of ``interval`` lie in [start, end)."""
    return len(range(math.ceil(start / interval) * interval, math.ceil(end), interval))


@contextmanager
def controller_manager(plane: ControlPlane, binary: Path) -> Iterator[subprocess.Popen[bytes]]:
    """kube-controller-manager with only the cronjob and job controllers, on loopback."""
    (port,) = _free_ports(1)
    log_path = plane.workdir / "kube-controller-manager.log"
    command = [
        str(binary),
        f"--kubeconfig={plane.kubeconfig}",
        "--controllers=cronjob-controller,job-controller",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={plane.workdir / 'controller-manager-certs'}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=log, preexec_fn=_die_with_parent(os.getpid())
        )
    session = requests.Session()
    session.trust_env = False
    # Its serving certificate is self-signed, and only whether it answers matters.
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"kube-controller-manager exited; see {log_path}")
        try:
            url = f"https://127.0.0.1:{port}/healthz"
            return session.get(url, verify=False, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(healthy, 60, "kube-controller-manager's /healthz")
        yield process
    finally:
        stop(process)


def cron_job(index: int) -> dict[str, Any]:
    """CronJob ``job-<index>``, every minute; its Pod's image is never pulled (no node)."""
    container = {"name": "noop", "image": "registry.invalid/noop", "command": ["true"]}
    pod = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": f"job-{index:05d}"},
        "spec": {"schedule": EVERY_MINUTE, "jobTemplate": {"spec": {"template": pod}}},
    }


def run_cronjob(cluster: Cluster, binary: Path, jobs: int, duration_s: float) -> Scenario:
    """N CronJobs every minute under kube-controller-manager; one window."""
    namespace = f"cronjob-{jobs}"
    scenario = Scenario("cronjob-1m", f"{jobs} CronJobs every minute", jobs)
    created = cluster.create_objects(
        namespace,
        [cron_job(i) for i in range(jobs)],
        lambda ns, body: cluster.api.create_namespaced_custom_object(
            "batch", "v1", ns, "cronjobs", body
        ),
    )
    print(f"  (cronjob-1m) created {jobs} CronJobs in {created:.0f}s", file=sys.stderr)
    # (CronJob, scheduled time, creationTimestamp, the time the watch received it)
    seen: list[tuple[str, float, float, float]] = []

    def note(event: dict[str, Any]) -> None:
        arrived, job = time.time(), event["raw_object"]
        if event["type"] == "ADDED":
            meta = job["metadata"]
            due = _timestamp(meta["annotations"][SCHEDULED_AT])
            owner = meta["ownerReferences"][0]["name"]
            seen.append((owner, due, _timestamp(meta["creationTimestamp"]), arrived))

    watch = EventCounter(cluster.api, namespace, ("batch", "v1", "jobs"), note)
    try:
        with controller_manager(cluster.plane, binary) as process:
            sleep_to_window()
            start, end = measure_usage(scenario, cluster.plane, [process.pid], duration_s)
            expected = jobs * ticks_in(start, end, 60)

            def all_seen() -> bool:
                return sum(start <= due < end for _, due, _, _ in seen) >= expected

            with contextlib.suppress(TimeoutError):  # the Jobs still missing count as missed
                wait_until(all_seen, CRONJOB_GRACE_SECONDS, "the Jobs due in the window")
    finally:
        watch.stop()
    intervals = {f"job-{i:05d}": 60 for i in range(jobs)}
    tally(scenario, ((name, due, at - due) for name, due, at, _ in seen), intervals, start, end)
    received = Scenario("", "", jobs)
    tally(received, ((name, due, got - due) for name, due, _, got in seen), intervals, start, end)
    scenario.extras["Job received p50/p99/max"] = (
        f"{received.p50_ms:.0f}/{received.p99_ms:.0f}/{received.max_ms:.0f} ms"
    )
    return scenario


def run_podcron(
    cluster: Cluster, key: str, jobs: int, interval: int, duration_s: float
) -> Scenario:
    """N no-op ScheduledJobs every ``interval`` seconds (a cron schedule for a minute)."""
    namespace = f"{key}-{jobs}"
    every = "every minute" if interval == 60 else f"every {interval}s"
    scenario = Scenario(key, f"{jobs} ScheduledJobs {every}", jobs)
    schedule: dict[str, Any] = (
        {"cron": EVERY_MINUTE} if interval == 60 else {"every": f"{interval}s"}
    )
    bodies = [scheduled_job(i, "bench_operator_job:noop", **schedule) for i in range(jobs)]
    created = cluster.create_objects(namespace, bodies, cluster.create_scheduled_job)
    print(f"  ({key}) created {jobs} ScheduledJobs in {created:.0f}s", file=sys.stderr)

    def all_ready() -> bool:
        try:
            listing = cast(
                dict[str, Any],
                cluster.api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
            )
        except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError):
            return False  # a loaded API server was seen to cut a large listing short
        return sum(map(is_ready, listing["items"])) == jobs

    operator = Operator(cluster, namespace, jobs)
    try:
        operator.wait_ready(READY_TIMEOUT_SECONDS)
        wait_until(all_ready, READY_TIMEOUT_SECONDS, f"{jobs} ScheduledJobs Ready", interval=5)
        if interval == 60:
            sleep_to_window()
        intervals = {f"job-{i:05d}": interval for i in range(jobs)}
        measure(scenario, cluster, operator, intervals, duration_s)
    finally:
        operator.stop()
    scenario.extras["operator warnings/errors"] = str(len(operator.problems()))
    return scenario


def _cpu_seconds(r: Scenario) -> str:
    return f"{r.cpu_pct * r.window_s / 100:.1f} s"


def result_line(r: Scenario) -> str:
    """The ``RESULT vs-cronjob`` line of one configuration."""
    return (
        f"RESULT vs-cronjob config={r.key} jobs={r.jobs} window_s={r.window_s:.0f} "
        f"due={r.expected} missed={r.missed} p50_ms={r.p50_ms:.1f} p99_ms={r.p99_ms:.1f} "
        f"max_ms={r.max_ms:.1f} cpu_pct={r.cpu_pct:.1f} cpu_s={r.cpu_pct * r.window_s / 100:.1f} "
        f"rss_mb={r.rss_mb:.0f} "
        f"writes_per_s={r.writes_per_s:.1f} load1={r.load[0]:.1f} "
        f"machine_busy_pct={r.machine_busy_pct:.0f}"
    )


def main() -> int:
    """Each N, each configuration; a table per N; the exit code is 0 once it has run."""
    s = Settings.from_env()
    try:
        controller_manager_binary = ensure_node_binaries() / "kube-controller-manager"
    except BinariesUnavailable as error:
        first_line = str(error).splitlines()[0] if str(error) else "unavailable"
        print(f"bench-vs-cronjob: skipped, kube-controller-manager cannot be built: {first_line}")
        return 0
    print(
        f"bench-vs-cronjob: N={','.join(map(str, s.jobs))}, {s.duration_s:g}s windows;"
        f" load now {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
        flush=True,
    )
    for jobs in s.jobs:
        # A fresh control plane for each N: kube-controller-manager watches every
        # namespace, and would also run the CronJobs an earlier N left behind.
        with Cluster.started("bench-vs-cronjob-") as cluster:
            results = [
                run_cronjob(cluster, controller_manager_binary, jobs, s.duration_s),
                run_podcron(cluster, "podcron-1m", jobs, 60, s.duration_s),
                run_podcron(cluster, "podcron-1s", jobs, 1, s.duration_s),
            ]
        # Printed as each N ends: a later N that fails keeps what was measured.
        cpu_seconds = ("scheduler CPU in the window", _cpu_seconds)
        print_scenarios(results, [*scenario_rows("scheduler"), cpu_seconds])
        print()
        for r in results:
            print(result_line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
