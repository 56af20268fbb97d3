"""API benchmark: 1,000 ScheduledJobs against a real API server.

Run with ``make bench-api`` (``QUICK=1``: 200 jobs and a shorter window). It
prints a table and, as its last line, a ``RESULT api ...`` line.

A fresh control plane (etcd and kube-apiserver on loopback, as in the
integration tests) and a real ``podcron operator`` process, both on this
machine. Every job is ``every: 1s`` and runs ``bench_api_job:probe``, which
notes how late each run started.

1. Ready: the jobs are created (8 at a time, through the API) while a watch
   notes when each first shows ``Ready=True``. ``ready_total_s`` runs from the
   first create to the last Ready; the per-object figure from an object's
   create to its Ready.
2. Steady state: after a warm-up, over a window, the API server's own
   request counter (``apiserver_request_total``) gives the status patches that
   reached it per second; the watch gives the busiest object's rate; the
   probe's notes give run lateness and, counted per tick due inside the
   window, the runs that never happened; ``/proc`` gives the operator's CPU
   and RSS.

All ``every: 1s`` ticks fall on the same instants (multiples of one second
since the epoch), so each second a thousand runs are due at once: lateness
includes the time to dispatch the ones before.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kubernetes

from cluster import (
    ROOT,
    ControlPlane,
    control_plane,
    is_ready,
    operator_process,
    prepare_namespace,
    scheduled_job,
    status_patches,
)
from harness import (
    percentile,
    print_table,
    print_targets,
    process_cpu_seconds,
    quick,
    rss_mb,
    wait_until,
)
from podcron.controller.resource import GROUP, PLURAL, VERSION

NAMESPACE = "bench"
CREATE_THREADS = 8

# Targets: every job Ready within 30 s of the first create; runs start within 1 s of their
# tick (p99), none missed; status patches at or under the configured ceiling.
TARGET_READY_TOTAL_S = 30.0
# The status writer's patches in flight at once (StatusWriter's concurrency): a
# patch started before the window may finish, and be counted, inside it.
IN_FLIGHT = 16
TARGET_LATENESS_P99_S = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """How big and how long; ``QUICK=1`` shrinks both."""

    jobs: int
    warmup_s: float
    window_s: float
    ceiling: float

    @classmethod
    def from_args(cls, argv: list[str] | None) -> Settings:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--jobs", type=int, default=200 if quick() else 1000)
        parser.add_argument("--window", type=float, default=10.0 if quick() else 30.0)
        parser.add_argument("--warmup", type=float, default=5.0)
        parser.add_argument(
            "--ceiling", type=float, default=20.0, help="statusPatchesPerSecond of the operator"
        )
        args = parser.parse_args(argv)
        return cls(jobs=args.jobs, warmup_s=args.warmup, window_s=args.window, ceiling=args.ceiling)


class Watcher:
    """Watches the namespace's ScheduledJobs from a thread: Ready times and modifications."""

    def __init__(self, api: kubernetes.client.CustomObjectsApi) -> None:
        self._api = api
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self.ready_at: dict[str, float] = {}
        self.modified: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._started = threading.Event()
        self._stopping = False

    def start(self) -> None:
        self._thread.start()
        self._started.wait(30)

    def _run(self) -> None:
        try:
            self._watch_events()
        except Exception:
            if not self._stopping:
                raise

    def _watch_events(self) -> None:
        listing = cast(
            dict[str, Any],
            self._api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL),
        )
        version = listing["metadata"]["resourceVersion"]
        self._started.set()
        for event in self._watch.stream(  # type: ignore[no-untyped-call]
            self._api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            resource_version=version,
            allow_watch_bookmarks=False,
        ):
            now = time.time()
            body = event["object"]
            name = body["metadata"]["name"]
            if event["type"] == "MODIFIED":
                self.modified.append((now, name))
            if name not in self.ready_at and is_ready(body):
                self.ready_at[name] = now

    def stop(self) -> None:
        self._stopping = True
        self._watch.stop()  # type: ignore[no-untyped-call]


@contextmanager
def _operator(
    plane: ControlPlane, workdir: Path, settings: Settings, lateness_file: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``podcron operator`` running the probe job, stopped with SIGTERM afterwards."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
        "PODCRON_ALLOWED_MODULES": "bench_api_job",
        "PODCRON_STATUS_PATCHES_PER_SECOND": str(settings.ceiling),
        "PODCRON_BENCH_LATENESS_FILE": str(lateness_file),
    }
    with operator_process(plane, workdir, NAMESPACE, env) as process:
        yield process


@dataclass(frozen=True, slots=True)
class Results:
    """Everything the table shows."""

    jobs: int
    create_s: float
    ready_total_s: float
    ready_p50_s: float
    ready_p99_s: float
    ready_count: int
    window_s: float
    patches: int
    patches_per_s: float
    busiest_object_per_s: float
    runs_per_s: float
    ticks_missed: int
    lateness_p50_s: float
    lateness_p99_s: float
    lateness_max_s: float
    operator_cpu_pct: float
    operator_rss_mb: float


def run(settings: Settings) -> Results:
    """Start everything, measure, stop everything."""
    print(
        f"bench-api: {settings.jobs} jobs every 1s, status ceiling {settings.ceiling:g}/s, "
        f"window {settings.window_s:g}s",
        file=sys.stderr,
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
        control_plane() as plane,
    ):
        workdir, lateness_file = Path(tmp), Path(tmp) / "lateness.txt"
        api = prepare_namespace(plane, NAMESPACE, connections=CREATE_THREADS)
        watcher = Watcher(api)
        watcher.start()
        with _operator(plane, workdir, settings, lateness_file) as operator:
            created_at: dict[str, float] = {}

            def create(index: int) -> None:
                body = scheduled_job(index, "bench_api_job:probe")
                api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
                created_at[body["metadata"]["name"]] = time.time()

            print("  creating ...", file=sys.stderr, flush=True)
            started = time.time()
            with ThreadPoolExecutor(CREATE_THREADS) as pool:
                list(pool.map(create, range(settings.jobs)))
            create_s = time.time() - started
            try:
                wait_until(lambda: len(watcher.ready_at) >= settings.jobs, 120, "every job Ready")
            except TimeoutError as error:
                print(f"  {error}", file=sys.stderr)
            ready = [watcher.ready_at[name] - created_at[name] for name in watcher.ready_at]
            ready_total_s = max(watcher.ready_at.values(), default=started) - started

            print("  steady state ...", file=sys.stderr, flush=True)
            time.sleep(settings.warmup_s)
            patches_0, cpu_0 = status_patches(plane), process_cpu_seconds(operator.pid)
            window_start = time.time()
            time.sleep(settings.window_s)
            window_end = time.time()
            patches_1, cpu_1 = status_patches(plane), process_cpu_seconds(operator.pid)
            operator_rss_mb = rss_mb(operator.pid)
            # The probe writes its notes about once a second.
            time.sleep(2.0)
        watcher.stop()
        notes = lateness_file.read_text().splitlines()
        problems = [
            line
            for line in (workdir / "operator.log").read_text().splitlines()
            if '"level": "WARNING"' in line or '"level": "ERROR"' in line
        ]
        print(f"  operator warnings and errors: {len(problems)}", file=sys.stderr)
        for line in problems[:5]:
            print(f"    {line[:300]}", file=sys.stderr)

    window = window_end - window_start
    per_object = Counter(
        name for moment, name in watcher.modified if window_start <= moment < window_end
    )
    ticks = range(math.ceil(window_start), math.floor(window_end))
    runs = [(round(float(due)), float(late)) for due, late in (line.split() for line in notes)]
    in_window = [(due, late) for due, late in runs if due in ticks]
    lateness = [late for _, late in in_window]
    per_tick = Counter(due for due, _ in in_window)
    return Results(
        jobs=settings.jobs,
        create_s=create_s,
        ready_total_s=ready_total_s,
        ready_p50_s=statistics.median(ready),
        ready_p99_s=percentile(ready, 0.99),
        ready_count=len(ready),
        window_s=window,
        patches=round(patches_1 - patches_0),
        patches_per_s=(patches_1 - patches_0) / window,
        busiest_object_per_s=max(per_object.values(), default=0) / window,
        runs_per_s=len(lateness) / len(ticks),
        ticks_missed=sum(max(0, settings.jobs - per_tick[tick]) for tick in ticks),
        lateness_p50_s=statistics.median(lateness),
        lateness_p99_s=percentile(lateness, 0.99),
        lateness_max_s=max(lateness),
        operator_cpu_pct=100 * (cpu_1 - cpu_0) / window,
        operator_rss_mb=operator_rss_mb,
    )


def report(settings: Settings, results: Results) -> None:
    """Print the table, the targets and the RESULT line."""
    r = results
    rows = [
        ("jobs (every: 1s)", f"{r.jobs}"),
        ("create, 8 at a time", f"{r.create_s:.1f} s"),
        ("Ready", f"{r.ready_count} of {r.jobs}"),
        ("all Ready, from first create", f"{r.ready_total_s:.1f} s"),
        ("per object, create to Ready p50", f"{r.ready_p50_s:.2f} s"),
        ("per object, create to Ready p99", f"{r.ready_p99_s:.2f} s"),
        ("steady-state window", f"{r.window_s:.1f} s"),
        ("status patches reaching the API server", f"{r.patches_per_s:.1f} /s"),
        ("configured ceiling", f"{settings.ceiling:g} /s"),
        ("busiest object's modifications", f"{r.busiest_object_per_s:.2f} /s"),
        ("scheduled runs per tick", f"{r.runs_per_s:.1f} (due: {r.jobs})"),
        ("runs missed in the window", f"{r.ticks_missed}"),
        ("run lateness p50", f"{1000 * r.lateness_p50_s:.1f} ms"),
        ("run lateness p99", f"{1000 * r.lateness_p99_s:.1f} ms"),
        ("run lateness max", f"{1000 * r.lateness_max_s:.1f} ms"),
        ("operator CPU", f"{r.operator_cpu_pct:.0f} % of one core"),
        ("operator RSS", f"{r.operator_rss_mb:.0f} MiB"),
    ]
    print_table(rows)
    print_targets(
        [
            ("every job Ready", r.ready_count == r.jobs),
            (
                f"all Ready within {TARGET_READY_TOTAL_S:g} s",
                r.ready_total_s <= TARGET_READY_TOTAL_S,
            ),
            (
                f"status patches at or under the ceiling ({settings.ceiling:g}/s,"
                f" give or take {IN_FLIGHT} in flight at the window's edges)",
                r.patches <= settings.ceiling * r.window_s + IN_FLIGHT,
            ),
            ("no object patched more than about once a second", r.busiest_object_per_s <= 1.1),
            ("runs on time: no tick missed", r.ticks_missed == 0),
            (
                f"runs on time: lateness p99 under {TARGET_LATENESS_P99_S:g} s",
                r.lateness_p99_s < TARGET_LATENESS_P99_S,
            ),
        ]
    )
    print(
        f"RESULT api jobs={r.jobs} ready_total_s={r.ready_total_s:.1f} "
        f"ready_p99_s={r.ready_p99_s:.2f} patches_per_s={r.patches_per_s:.1f} "
        f"operator_rss_mb={r.operator_rss_mb:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit code is 0 even when a target is missed (the table says so)."""
    settings = Settings.from_args(argv)
    report(settings, run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
