"""N ScheduledJobs over several replicas, beside the same N on one replica, in one run.

Run with ``make bench-scale``. ``JOBS`` (default 20,000; 2,000 with ``QUICK=1``)
jobs, ``REPLICAS`` (default 4) replicas in one ring; then, on the same control
plane, the same jobs in a namespace of their own under one replica (a ring of
one, as the chart runs it; ``ALONE=0`` leaves that out). ``DURATION`` is each
measured window in seconds (60; 30 with ``QUICK=1``), after ``WARMUP`` (15 s).

The jobs are ``bench_operator.py``'s scenario (b): intervals 10-60 s, half of
them a no-op, half a 50 ms run, each noting its own lateness (ground truth,
``bench_operator_job``). For each configuration, one after the other so that
the API server's write counter is that configuration's alone:

* the time from starting the operators until every job's ``Ready`` condition
  is True (a watch of the namespace counts them);
* over the window: lateness p50/p99 of the runs, ticks missed (due in the
  window, no run), CPU and RSS of each replica (``/proc``), write requests per
  second (``apiserver_request_total``, every client), the machine's load.

Nothing is niced: the machine is shared, so its load is printed beside the
figures. One ``RESULT scale ...`` line per configuration ends the output.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes

from bench_operator import (
    INTERVALS_B,
    NOTE_GRACE_SECONDS,
    Cluster,
    EventCounter,
    Operator,
    Scenario,
    measure_usage,
    noted_runs,
    print_scenarios,
    scenario_rows,
    tally,
)
from cluster import is_ready
from harness import quick, wait_until

RING = "scale"


#: A job is Ready once its status says so, and one replica writes 20 statuses a second (the
#: default ceiling): the wait for every job allows three times that, and at least half an hour.
def ready_timeout(jobs: int) -> float:
    """Seconds from the operators' start until every one of ``jobs`` must be Ready."""
    return max(1800.0, 3 * jobs / 20)


class ReadyCount:
    """How many of a namespace's ScheduledJobs are Ready now, from a watch opened before any is."""

    def __init__(self, api: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
        self._ready: set[str] = set()
        self._lock = threading.Lock()
        self._watch = EventCounter(api, namespace, on_event=self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        body = event["object"]
        name = body["metadata"]["name"]
        with self._lock:
            if event["type"] != "DELETED" and is_ready(body):
                self._ready.add(name)
            else:
                self._ready.discard(name)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._ready)

    def stop(self) -> None:
        self._watch.stop()


def replica_env(namespace: str, index: int) -> dict[str, str]:
    """What makes an operator a replica of the ring, its Leases in ``namespace``."""
    return {
        "PODCRON_HA_RING": RING,
        "POD_NAMESPACE": namespace,
        "POD_NAME": f"{namespace}-r{index}",
    }


def run_configuration(
    cluster: Cluster, jobs: int, replicas: int, duration_s: float, warmup_s: float
) -> Scenario:
    """Create ``jobs`` jobs in a namespace of their own, run ``replicas`` operators, measure."""
    namespace = f"scale-{replicas}"
    key = f"{replicas} replica{'s' if replicas > 1 else ''}"
    scenario = Scenario(key, f"{jobs} jobs every 10-60s on {key}", jobs)
    intervals = {f"job-{i:05d}": INTERVALS_B[i % len(INTERVALS_B)] for i in range(jobs)}
    created = cluster.create_jobs(namespace, intervals)
    print(f"  ({key}) created {jobs} jobs in {created:.0f}s", file=sys.stderr, flush=True)
    scenario.extras["load at start 1/5/15 min"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    ready = ReadyCount(cluster.api, namespace)
    began = time.monotonic()
    operators = [
        Operator(
            cluster,
            namespace,
            jobs,
            name=f"{namespace}-r{i}",
            env=replica_env(namespace, i),
            count_events=False,
        )
        for i in range(replicas)
    ]
    try:
        for operator in operators:
            operator.wait_ready(ready_timeout(jobs))
        wait_until(
            lambda: ready.count == jobs,
            ready_timeout(jobs),
            f"{jobs} ScheduledJobs Ready",
            interval=0.5,
        )
        scenario.extras["all Ready after start"] = f"{time.monotonic() - began:.1f} s"
        ready.stop()
        print(f"  ({key}) all Ready; warming up {warmup_s:g}s", file=sys.stderr, flush=True)
        time.sleep(warmup_s)
        pids = [operator.process.pid for operator in operators]
        start, end = measure_usage(scenario, cluster.plane, pids, duration_s)
        time.sleep(NOTE_GRACE_SECONDS)
        runs = itertools.chain.from_iterable(noted_runs(operator) for operator in operators)
        tally(scenario, runs, intervals, start, end)
    finally:
        for operator in operators:
            operator.stop()
    problems = [line for operator in operators for line in operator.problems()]
    scenario.extras["operator warnings/errors"] = str(len(problems))
    for line in problems[:5]:
        print(f"  ({key}) {line[:300]}", file=sys.stderr, flush=True)
    return scenario


def _each(values: list[float], unit: str) -> str:
    return " ".join(f"{v:.0f}" for v in values) + f" {unit}"


def result_line(r: Scenario, replicas: int) -> str:
    """The ``RESULT scale`` line of one configuration."""
    ready = r.extras.get("all Ready after start", "nan s").removesuffix(" s")
    return (
        f"RESULT scale jobs={r.jobs} replicas={replicas} ready_s={ready} p99_ms={r.p99_ms:.1f} "
        f"rss_mb_max={r.rss_mb:.0f} cpu_pct={r.cpu_pct:.0f} writes_per_s={r.writes_per_s:.1f} "
        f"missed={r.missed} due={r.expected} load1={r.load[0]:.1f}"
    )


def settings(env: Mapping[str, str]) -> tuple[int, list[int], float, float]:
    """Jobs, the replica counts to run them on, window and warm-up seconds, from the environment."""
    replicas = int(env.get("REPLICAS", 4))
    alone = env.get("ALONE", "1") != "0"
    return (
        int(env.get("JOBS", 2_000 if quick() else 20_000)),
        [replicas, 1] if alone and replicas != 1 else [replicas],
        float(env.get("DURATION", 30 if quick() else 60)),
        float(env.get("WARMUP", 15)),
    )


def main() -> int:
    jobs, configurations, duration_s, warmup_s = settings(os.environ)
    print(
        f"bench-scale: {jobs} jobs on {' then '.join(map(str, configurations))} replicas;"
        f" {duration_s:g}s windows after {warmup_s:g}s warm-up; load now"
        f" {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
        flush=True,
    )
    results: list[Scenario] = []
    with Cluster.started("bench-scale-") as cluster:
        for count in configurations:
            results.append(run_configuration(cluster, jobs, count, duration_s, warmup_s))
    rows: list[tuple[str, Callable[[Scenario], str]]] = [
        *scenario_rows("operator"),
        ("CPU per replica (of one core)", lambda r: _each(r.cpu_pcts, "%")),
        ("RSS per replica", lambda r: _each(r.rss_mbs, "MiB")),
    ]
    print_scenarios(results, rows)
    for count, r in zip(configurations, results, strict=True):
        print(result_line(r, count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
