"""Whole-operator benchmark: run lateness with kopf, status writing and telemetry all on.

Run with ``make bench-operator``. ``DURATION`` (seconds, default 60) is each
scenario's measured window; ``DURATION=300`` gives the five minutes the
targets are stated for. ``PROFILE=1`` also samples the operator with py-spy
for a while after scenario (a) and prints the top frames (``PROFILE_OUT``:
where to keep py-spy's raw stacks). The last line is a
``RESULT operator ...`` line.

Everything is real and on this machine: etcd and kube-apiserver on loopback
(as in the integration tests), a ``podcron operator`` process exporting spans
over OTLP to a receiver in this process (``tools/otlp_receiver.py``), its
``/metrics`` scraped every 15 s as Prometheus would, status writing at its
default ceiling, and for (c) a ``podcron sidecar``. The jobs alternate
between a no-op and a 50 ms run (``bench_operator_job``); ``maxConcurrentRuns``
is the number of jobs, so no run waits for a slot.

Scenarios:

(a) 1,000 ``every: 1s`` jobs: all due on the same instant each second.
(b) 10,000 jobs, intervals spread over 10-60 s (``every: 10s`` ... ``60s``).
    Fixed-rate ticks fall on multiples of the interval since the epoch, so
    some seconds have well over a thousand runs due at once.
(c) (b) plus 50 spec updates a second (``timeoutSeconds`` flipped, the
    schedule unchanged) and ``GET /_sys/job`` every 100 ms through the sidecar.

The jobs are created before the operator starts; each window begins once the
operator is ready and a warm-up (``WARMUP``, default 15 s) has passed.
Lateness is what each run saw itself: its start (``time.time()``) minus its
tick's due time. A tick is missed when a job has no run for a due time inside
the window (skipped, coalesced or not yet started 5 s after the window).
Beside each p99 is its floor: the p99 the same due times would give if each
instant's runs started one after another at the cost of a bare asyncio task
woken from a future and running the jobs' first step (measured in this process
before the control plane starts), with nothing of podcron's around them. A
window holding a larger instant (the whole minute, or an hour's) has a higher
floor. So the table also gives the cost a run at an instant, which does not
depend on the instants a window holds: the last start of each instant of 300
runs or more over its runs, the median over the window's instants. Status
patches and watch events per second come from the API server's own counters;
CPU and RSS of the operator from ``/proc``; the machine's load average is
printed beside every scenario, since other work shares the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import kubernetes
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_operator_job import SLEEP_SECONDS  # noqa: E402  (this directory, on sys.path)
from cluster import install_crd, status_patches, write_requests  # noqa: E402
from controlplane import ControlPlane, ensure_binaries  # noqa: E402
from harness import (  # noqa: E402
    machine_busy_seconds,
    percentile,
    print_columns,
    process_cpu_seconds,
    rss_mb,
    wait_until,
)
from otlp_receiver import OtlpReceiver  # noqa: E402
from podcron.controller.resource import GROUP, PLURAL, VERSION  # noqa: E402

CRD = ROOT / "crds" / "scheduledjobs.podcron.dev.yaml"
CREATE_THREADS = 8
SCRAPE_SECONDS = 15.0
#: Runs due inside the window that have not noted themselves this long after it count as missed.
NOTE_GRACE_SECONDS = 5.0
SPEC_UPDATES_PER_SECOND = 50.0
SIDECAR_GET_SECONDS = 0.1
INTERVALS_B = range(10, 61)

#: Instants with at least this many runs give the cost a run at an instant.
INSTANT_RUNS_AT_LEAST = 300
#: The bare loop's cost a run is the median of this many instants of this many runs.
FLOOR_ROUNDS = 5
FLOOR_RUNS = 2000

# The targets: run lateness p99 in milliseconds per scenario, and RSS at 10,000 jobs.
TARGET_P99_MS = {"a": 25.0, "b": 10.0, "c": 15.0}
TARGET_RSS_MB = 300.0


@dataclass(frozen=True, slots=True)
class Settings:
    """How many jobs, how long, which scenarios; from the environment and the command line."""

    duration_s: float
    warmup_s: float
    jobs_a: int
    jobs_b: int
    scenarios: str
    profile_s: float
    #: A bare loop's cost a run (seconds), measured once the settings are read.
    bare_run_s: float = math.nan

    @classmethod
    def from_args(cls, argv: list[str] | None) -> Settings:
        env = os.environ
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--duration", type=float, default=float(env.get("DURATION", 60)))
        parser.add_argument("--warmup", type=float, default=float(env.get("WARMUP", 15)))
        parser.add_argument("--jobs-a", type=int, default=int(env.get("JOBS_A", 1000)))
        parser.add_argument("--jobs-b", type=int, default=int(env.get("JOBS_B", 10000)))
        parser.add_argument("--scenarios", default=env.get("SCENARIOS", "abc"))
        profile = env.get("PROFILE", "") not in ("", "0")
        parser.add_argument(
            "--profile", type=float, default=30.0 if profile else 0.0, help="py-spy seconds"
        )
        args = parser.parse_args(argv)
        return cls(
            duration_s=args.duration,
            warmup_s=args.warmup,
            jobs_a=args.jobs_a,
            jobs_b=args.jobs_b,
            scenarios=args.scenarios,
            profile_s=args.profile,
        )


@dataclass(slots=True)
class Scenario:
    """One measured window and what it found."""

    key: str
    title: str
    jobs: int
    window_s: float = 0.0
    runs: int = 0
    expected: int = 0
    missed: int = 0
    extra: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    #: The p99 a bare loop would give the same due times (see the module's doc).
    floor_p99_ms: float = math.nan
    #: The last start of each instant of INSTANT_RUNS_AT_LEAST runs over its runs: the
    #: median, in microseconds. Unlike p99, it does not depend on the instants a window holds.
    us_per_run_at_instant: float = math.nan
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    #: Per process measured (several replicas): CPU of one core and RSS.
    cpu_pcts: list[float] = field(default_factory=list)
    rss_mbs: list[float] = field(default_factory=list)
    apiserver_cpu_pct: float = 0.0
    etcd_cpu_pct: float = 0.0
    patches_per_s: float = 0.0
    writes_per_s: float = 0.0
    machine_busy_pct: float = 0.0
    watch_events_per_s: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extras: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EventCounter:
    """Watches a namespace's ScheduledJobs (or ``resource``) and counts the events.

    The API server's ``apiserver_watch_events_total`` was seen standing still
    while events flowed, so the benchmark holds a watch of its own.
    ``on_event``, if given, is handed each event (a dict) as it arrives.
    """

    def __init__(
        self,
        api: kubernetes.client.CustomObjectsApi,
        namespace: str,
        resource: tuple[str, str, str] = (GROUP, VERSION, PLURAL),
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.count = 0
        self._on_event = on_event
        self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        group, version, plural = resource
        listing = cast(
            dict[str, Any],
            api.list_namespaced_custom_object(group, version, namespace, plural, limit=1),
        )
        args = (api.list_namespaced_custom_object, group, version, namespace, plural)
        version = listing["metadata"]["resourceVersion"]
        threading.Thread(target=self._run, args=(args, version), daemon=True).start()

    def _run(self, args: tuple[Any, ...], version: str) -> None:
        with contextlib.suppress(Exception):  # it ends with the control plane
            stream = self._watch.stream(*args, resource_version=version)  # type: ignore[no-untyped-call]
            for event in stream:
                self.count += 1
                if self._on_event:
                    self._on_event(event)

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]


def _job(index: int, interval_s: int) -> dict[str, Any]:
    entry = "bench_operator_job:noop" if index % 2 == 0 else "bench_operator_job:sleep50"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ScheduledJob",
        "metadata": {"name": f"job-{index:05d}"},
        "spec": {
            "entryPoint": entry,
            "schedule": {"every": f"{interval_s}s"},
            "timeoutSeconds": 30,
        },
    }


class Cluster:
    """The control plane, an API client and the OTLP receiver every scenario shares."""

    @classmethod
    @contextmanager
    def started(cls, prefix: str) -> Iterator[Cluster]:
        """A fresh control plane with the CRD, an OTLP receiver and a work directory."""
        with (
            tempfile.TemporaryDirectory(prefix=prefix) as tmp,
            ControlPlane.start(ensure_binaries()) as plane,
            OtlpReceiver() as receiver,
        ):
            install_crd(plane)
            yield cls(plane, receiver, Path(tmp))

    def __init__(self, plane: ControlPlane, receiver: OtlpReceiver, workdir: Path) -> None:
        self.plane = plane
        self.receiver = receiver
        self.workdir = workdir
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(plane.kubeconfig)
        )
        client.configuration.connection_pool_maxsize = CREATE_THREADS
        self.api = kubernetes.client.CustomObjectsApi(client)

    def create_jobs(self, namespace: str, intervals: dict[str, int]) -> float:
        """Create one ScheduledJob per entry of ``intervals``; returns the seconds it took."""
        bodies = [_job(index, interval) for index, interval in enumerate(intervals.values())]
        return self.create_objects(namespace, bodies, self.create_scheduled_job)

    def create_scheduled_job(self, namespace: str, body: dict[str, Any]) -> None:
        self.api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def create_objects(
        self,
        namespace: str,
        bodies: list[dict[str, Any]],
        create: Callable[[str, dict[str, Any]], object],
    ) -> float:
        """Create ``namespace``, then each body in it with ``create``; returns the seconds."""
        self.plane.kubectl("create", "namespace", namespace)
        started = time.monotonic()
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(lambda body: create(namespace, body), bodies))
        return time.monotonic() - started


class Operator:
    """A ``podcron operator`` process for one namespace, telemetry on.

    ``name`` (the namespace by default) names its directory under the cluster's,
    for several processes in one namespace; ``env`` is added to the environment.
    Its watch events are counted unless ``count_events`` is False.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        jobs: int,
        *,
        name: str = "",
        env: Mapping[str, str] | None = None,
        count_events: bool = True,
    ) -> None:
        self.workdir = cluster.workdir / (name or namespace)
        self.workdir.mkdir()
        self.notes = self.workdir / "lateness.txt"
        self.socket = self.workdir / "control.sock"
        self.metrics_port = _free_port()
        self._log = (self.workdir / "operator.log").open("wb")
        self.events = EventCounter(cluster.api, namespace) if count_events else None
        environment = {k: v for k, v in cluster.plane.env().items() if not k.startswith("OTEL_")}
        environment |= {
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]
            ),
            "PODCRON_ALLOWED_MODULES": "bench_operator_job",
            "PODCRON_NAMESPACES": namespace,
            "PODCRON_MAX_CONCURRENT_RUNS": str(jobs),
            "PODCRON_CONTROL_SOCKET": str(self.socket),
            "PODCRON_METRICS_HOST": "127.0.0.1",
            "PODCRON_METRICS_PORT": str(self.metrics_port),
            "PODCRON_BENCH_LATENESS_FILE": str(self.notes),
            "OTEL_EXPORTER_OTLP_ENDPOINT": cluster.receiver.endpoint,
            **(env or {}),
        }
        self.env = environment
        self.process = subprocess.Popen(
            [sys.executable, "-m", "podcron", "operator"],
            env=environment,
            stdout=self._log,
            stderr=self._log,
            cwd=self.workdir,
        )
        self._session = requests.Session()
        self._session.trust_env = False
        self._scraping = threading.Event()
        self.scrapes: list[float] = []
        self._scraper = threading.Thread(target=self._scrape, name="scraper", daemon=True)

    def _get(self, path: str) -> requests.Response:
        return self._session.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=10)

    def wait_ready(self, timeout: float) -> float:
        """Wait for ``/readyz``; returns the seconds from start-up."""
        started = time.monotonic()

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited; see {self.workdir / 'operator.log'}")
            try:
                return self._get("/readyz").status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout, "the operator's /readyz")
        self._scraper.start()
        return time.monotonic() - started

    def _scrape(self) -> None:
        # As Prometheus would: the whole /metrics page every 15 s.
        while not self._scraping.wait(SCRAPE_SECONDS):
            started = time.monotonic()
            try:
                self._get("/metrics").raise_for_status()
            except requests.RequestException:
                continue
            self.scrapes.append(time.monotonic() - started)

    def problems(self) -> list[str]:
        return [
            line
            for line in (self.workdir / "operator.log").read_text().splitlines()
            if '"level": "WARNING"' in line or '"level": "ERROR"' in line
        ]

    def stop(self) -> None:
        if self.events is not None:
            self.events.stop()
        self._scraping.set()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@contextmanager
def sidecar(operator: Operator) -> Iterator[str]:
    """``podcron sidecar`` on the operator's control socket; yields its base URL."""
    port, probe_port = _free_port(), _free_port()
    log = (operator.workdir / "sidecar.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "podcron", "sidecar"],
        env=operator.env
        | {
            "PODCRON_SIDECAR_HOST": "127.0.0.1",
            "PODCRON_SIDECAR_PORT": str(port),
            "PODCRON_SIDECAR_PROBE_PORT": str(probe_port),
        },
        stdout=log,
        stderr=log,
        cwd=operator.workdir,
    )
    session = requests.Session()
    session.trust_env = False

    def serving() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the sidecar exited; see {operator.workdir / 'sidecar.log'}")
        try:
            url = f"http://127.0.0.1:{probe_port}/readyz"
            return session.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(serving, 60, "the sidecar's /readyz")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class Churn:
    """Scenario (c)'s extra load: spec updates at a steady rate and ``GET /_sys/job`` polls."""

    def __init__(self, cluster: Cluster, namespace: str, names: list[str], url: str) -> None:
        self._api = cluster.api
        self._namespace = namespace
        self._names = names
        self._url = url
        self._stop = threading.Event()
        self.updates = 0
        self.update_errors = 0
        self.gets: list[float] = []
        self.get_failures = 0
        self._threads = [
            threading.Thread(target=self._update_loop, name="updates", daemon=True),
            threading.Thread(target=self._get_loop, name="gets", daemon=True),
        ]

    def __enter__(self) -> Churn:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _update(self, index: int) -> None:
        name = random.choice(self._names)
        patch = {"spec": {"timeoutSeconds": 30 + index % 2}}
        try:
            self._api.patch_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL, name, patch
            )
            self.updates += 1
        except kubernetes.client.ApiException:
            self.update_errors += 1

    def _update_loop(self) -> None:
        # Paced on a clock, several in flight: one at a time would fall behind a loaded server.
        period = 1 / SPEC_UPDATES_PER_SECOND
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            next_at, index = time.monotonic(), 0
            while not self._stop.is_set():
                pool.submit(self._update, index)
                index += 1
                next_at += period
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _get_loop(self) -> None:
        session = requests.Session()
        session.trust_env = False
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = session.get(f"{self._url}/_sys/job", timeout=10)
                if response.status_code == 200:
                    self.gets.append(time.monotonic() - started)
                else:
                    self.get_failures += 1
            except requests.RequestException:
                self.get_failures += 1
            next_at += SIDECAR_GET_SECONDS
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def measure_usage(
    scenario: Scenario,
    plane: ControlPlane,
    pids: Sequence[int],
    duration_s: float,
    events: Callable[[], int] = lambda: 0,
) -> tuple[float, float]:
    """Sleep ``duration_s``, filling ``scenario``'s CPU, RSS, API and load figures from it.

    ``pids`` are the scheduler's processes (several replicas): CPU is their sum,
    RSS their largest, each one's in ``cpu_pcts`` and ``rss_mbs``. ``events`` is
    a count of watch events seen so far. Returns the window's start and end, in
    wall-clock seconds.
    """
    print(f"  ({scenario.key}) measuring {duration_s:g}s ...", file=sys.stderr, flush=True)
    patches_0, writes_0, events_0 = status_patches(plane), write_requests(plane), events()
    cpu_0, busy_0 = [process_cpu_seconds(p) for p in pids], machine_busy_seconds()
    side_0 = {name: process_cpu_seconds(p) for name, p in plane.pids.items()}
    start = time.time()
    time.sleep(duration_s)
    end = time.time()
    cpu_1, busy_1 = [process_cpu_seconds(p) for p in pids], machine_busy_seconds()
    scenario.rss_mbs = [rss_mb(p) for p in pids]
    side_1 = {name: process_cpu_seconds(p) for name, p in plane.pids.items()}
    patches_1, writes_1, events_1 = status_patches(plane), write_requests(plane), events()
    scenario.load = os.getloadavg()
    window = scenario.window_s = end - start
    used = [after - before for before, after in zip(cpu_0, cpu_1, strict=True)]
    scenario.cpu_pcts = [100 * seconds / window for seconds in used]
    scenario.cpu_pct = sum(scenario.cpu_pcts)
    scenario.rss_mb = max(scenario.rss_mbs)
    scenario.machine_busy_pct = 100 * (busy_1 - busy_0) / window / (os.cpu_count() or 1)
    scenario.apiserver_cpu_pct = (
        100 * (side_1["kube-apiserver"] - side_0["kube-apiserver"]) / window
    )
    scenario.etcd_cpu_pct = 100 * (side_1["etcd"] - side_0["etcd"]) / window
    scenario.patches_per_s = (patches_1 - patches_0) / window
    scenario.writes_per_s = (writes_1 - writes_0) / window
    scenario.watch_events_per_s = (events_1 - events_0) / window
    return start, end


def tally(
    scenario: Scenario,
    runs: Iterable[tuple[str, float, float]],
    intervals: dict[str, int],
    start: float,
    end: float,
) -> None:
    """Runs (job, due time, lateness in seconds) against the ticks due in [start, end).

    Ticks are the multiples of each job's interval since the epoch (a cron
    schedule of every minute has the ticks of a 60 s interval).
    """
    observed: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    lateness: list[float] = []
    instants: dict[float, list[float]] = collections.defaultdict(list)
    for name, due, late in runs:
        if start <= due < end:
            observed[name][round(due * 1000)] += 1
            lateness.append(late)
            instants[due].append(late)
    expected = missed = extra = 0
    for name, interval in intervals.items():
        dues = _dues_ms(interval, start, end)
        expected += len(dues)
        missed += len(dues - set(observed[name]))
        extra += sum(count - (due in dues) for due, count in observed[name].items())
    scenario.expected, scenario.missed, scenario.extra = expected, missed, extra
    scenario.runs = len(lateness)
    if lateness:
        scenario.p50_ms = 1000 * statistics.median(lateness)
        scenario.p99_ms = 1000 * percentile(lateness, 0.99)
        scenario.max_ms = 1000 * max(lateness)
    scenario.us_per_run_at_instant = us_per_run_at_instant(instants.values())


def us_per_run_at_instant(instants: Iterable[Sequence[float]]) -> float:
    """The cost a run at an instant, in microseconds: the last start (lateness, seconds) of
    each instant of INSTANT_RUNS_AT_LEAST runs or more over its runs, the median; NaN if none."""
    per_run = [max(late) / len(late) for late in instants if len(late) >= INSTANT_RUNS_AT_LEAST]
    return 1e6 * statistics.median(per_run) if per_run else math.nan


def _dues_ms(interval: int, start: float, end: float) -> set[int]:
    """The ticks of a job every ``interval`` seconds in [start, end), in milliseconds."""
    first = math.ceil(start / interval) * interval
    return {round(due * 1000) for due in range(first, math.ceil(end), interval) if due < end}


def floor_p99_ms(intervals: dict[str, int], start: float, end: float, bare_run_s: float) -> float:
    """The p99 lateness of the ticks due in [start, end) had each instant's runs started
    one after another, ``bare_run_s`` apart, from the instant on."""
    instants = collections.Counter(
        due for interval in intervals.values() for due in _dues_ms(interval, start, end)
    )
    floor = [k * bare_run_s for runs in instants.values() for k in range(1, runs + 1)]
    return 1000 * percentile(floor, 0.99) if floor else math.nan


async def _bare_run(
    instant: asyncio.Future[None], due: float, notes: list[str], sleeps: bool
) -> None:
    """A run as a bare task: woken at its instant, it notes its lateness as the jobs do."""
    await instant
    started = time.time()
    notes.append(f"job-00000 {due:.3f} {started - due:.6f}\n")
    if sleeps:
        await asyncio.sleep(SLEEP_SECONDS)


async def _bare_instant(runs: int) -> float:
    """``runs`` bare tasks made ready and let go at once: seconds a run until all started."""
    loop = asyncio.get_running_loop()
    instants = [loop.create_future() for _ in range(runs)]
    notes: list[str] = []
    due = time.time()
    tasks = [
        asyncio.create_task(_bare_run(instant, due, notes, index % 2 == 1))
        for index, instant in enumerate(instants)
    ]
    await asyncio.sleep(0)  # every task waits on its instant
    started = time.perf_counter()
    for instant in instants:
        instant.set_result(None)
    # Scheduled after every task's wake-up: it runs once they all have taken their step.
    all_started: asyncio.Future[float] = loop.create_future()
    loop.call_soon(lambda: all_started.set_result(time.perf_counter()))
    seconds = await all_started - started
    await asyncio.gather(*tasks)
    return seconds / runs


def bare_run_seconds() -> float:
    """A bare loop's cost a run at an instant: the median of FLOOR_ROUNDS instants.

    The collector is off, as podcron's is while it starts a burst.
    """
    gc.disable()
    try:
        return statistics.median(
            asyncio.run(_bare_instant(FLOOR_RUNS)) for _ in range(FLOOR_ROUNDS)
        )
    finally:
        gc.enable()


def noted_runs(operator: Operator) -> Iterator[tuple[str, float, float]]:
    """The runs the jobs noted (``bench_operator_job``): job, due time, lateness."""
    for line in operator.notes.read_text().splitlines():
        name, due, late = line.split()
        yield name, float(due), float(late)


def measure(
    scenario: Scenario,
    cluster: Cluster,
    operator: Operator,
    intervals: dict[str, int],
    duration_s: float,
    bare_run_s: float = math.nan,
) -> None:
    """Measure one window of ``duration_s`` into ``scenario``; ``bare_run_s``: a bare
    loop's cost a run, for the floor."""
    events = operator.events
    start, end = measure_usage(
        scenario,
        cluster.plane,
        [operator.process.pid],
        duration_s,
        lambda: 0 if events is None else events.count,
    )
    time.sleep(NOTE_GRACE_SECONDS)
    tally(scenario, noted_runs(operator), intervals, start, end)
    if not math.isnan(bare_run_s):
        scenario.floor_p99_ms = floor_p99_ms(intervals, start, end, bare_run_s)


def profile(operator: Operator, seconds: float) -> list[str]:
    """Sample the operator with py-spy; the top frames by own time and by time inside them.

    Only samples holding the GIL count: a thread waiting on a lock or a socket delays nothing.
    """
    out = Path(os.environ.get("PROFILE_OUT", operator.workdir / "profile.txt"))
    command = ["py-spy", "record", "--pid", str(operator.process.pid), "--duration"]
    # --gil: only the thread holding the GIL, that is what keeps the event loop from a due run.
    command += [str(round(seconds)), "--rate", "200", "--gil", "--format", "raw"]
    command += ["--output", str(out)]
    spy = Path(sys.executable).parent / "py-spy"
    command[0] = str(spy) if spy.exists() else "py-spy"
    print(f"  profiling the operator for {seconds:g}s ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.exists():
        return [f"py-spy failed: {done.stderr.strip()[-300:]}"]
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inside[frame] += count
    lines = [f"{total} samples holding the GIL; top 10 by own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(10)]
    # The frames every sample passes through (the entry point, the loop) say nothing.
    below_root = [(f, n) for f, n in inside.most_common() if n < total / 2]
    lines.append("top 10 by time inside them:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in below_root[:10]]
    lines.append("kopf's share, top 5 frames by time inside them:")
    kopf = [(f, n) for f, n in below_root if "kopf/" in f]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in kopf[:5]]
    return lines


def run_a(cluster: Cluster, s: Settings, results: list[Scenario], profile_lines: list[str]) -> None:
    intervals = {f"job-{i:05d}": 1 for i in range(s.jobs_a)}
    scenario = Scenario("a", f"{s.jobs_a} jobs every 1s", s.jobs_a)
    created = cluster.create_jobs("bench-a", intervals)
    print(f"  (a) created {s.jobs_a} jobs in {created:.0f}s", file=sys.stderr, flush=True)
    operator = Operator(cluster, "bench-a", s.jobs_a)
    try:
        scenario.extras["ready after start"] = f"{operator.wait_ready(300):.1f} s"
        time.sleep(s.warmup_s)
        measure(scenario, cluster, operator, intervals, s.duration_s, s.bare_run_s)
        if s.profile_s:
            profile_lines += profile(operator, s.profile_s)
    finally:
        operator.stop()
    scenario.extras["operator warnings/errors"] = str(len(operator.problems()))
    results.append(scenario)


def run_bc(cluster: Cluster, s: Settings, results: list[Scenario]) -> None:
    intervals = {f"job-{i:05d}": INTERVALS_B[i % len(INTERVALS_B)] for i in range(s.jobs_b)}
    created = cluster.create_jobs("bench-b", intervals)
    print(f"  (b) created {s.jobs_b} jobs in {created:.0f}s", file=sys.stderr, flush=True)
    operator = Operator(cluster, "bench-b", s.jobs_b)
    try:
        ready = f"{operator.wait_ready(600):.1f} s"
        time.sleep(s.warmup_s)
        if "b" in s.scenarios:
            scenario = Scenario("b", f"{s.jobs_b} jobs every 10-60s", s.jobs_b)
            scenario.extras["ready after start"] = ready
            measure(scenario, cluster, operator, intervals, s.duration_s, s.bare_run_s)
            results.append(scenario)
        if "c" in s.scenarios:
            scenario = Scenario("c", "(b) + 50 spec updates/s + GET /_sys/job per 100 ms", s.jobs_b)
            with (
                sidecar(operator) as url,
                Churn(cluster, "bench-b", list(intervals), url) as churn,
            ):
                measure(scenario, cluster, operator, intervals, s.duration_s, s.bare_run_s)
            scenario.extras["spec updates/s"] = f"{churn.updates / scenario.window_s:.1f}"
            scenario.extras["GET /_sys/job p50/p99"] = (
                f"{1000 * statistics.median(churn.gets):.0f}/"
                f"{1000 * percentile(churn.gets, 0.99):.0f} ms"
                if churn.gets
                else "none answered"
            )
            scenario.extras["GET failures, update errors"] = (
                f"{churn.get_failures}, {churn.update_errors}"
            )
            results.append(scenario)
    finally:
        operator.stop()
    for scenario in results:
        if scenario.key in "bc":
            scenario.extras["operator warnings/errors"] = str(len(operator.problems()))


def _extra(key: str) -> Callable[[Scenario], str]:
    return lambda r: r.extras.get(key, "")


def scenario_rows(scheduler: str) -> list[tuple[str, Callable[[Scenario], str]]]:
    """The rows of a table of scenarios (one column each); ``scheduler`` names the process."""
    return [
        ("jobs", lambda r: f"{r.jobs}"),
        ("window", lambda r: f"{r.window_s:.0f} s"),
        ("runs due / noted", lambda r: f"{r.expected} / {r.runs}"),
        ("ticks missed (+ extra runs)", lambda r: f"{r.missed} (+{r.extra})"),
        ("lateness p50", lambda r: f"{r.p50_ms:.1f} ms"),
        ("lateness p99", lambda r: f"{r.p99_ms:.1f} ms"),
        ("lateness max", lambda r: f"{r.max_ms:.1f} ms"),
        (f"{scheduler} CPU (of one core)", lambda r: f"{r.cpu_pct:.0f} %"),
        (f"{scheduler} RSS", lambda r: f"{r.rss_mb:.0f} MiB"),
        ("API write requests (all)", lambda r: f"{r.writes_per_s:.1f} /s"),
        (
            "kube-apiserver / etcd CPU",
            lambda r: f"{r.apiserver_cpu_pct:.0f} / {r.etcd_cpu_pct:.0f} %",
        ),
        ("machine busy (all cores)", lambda r: f"{r.machine_busy_pct:.0f} %"),
        ("machine load 1/5/15 min", lambda r: "/".join(f"{x:.1f}" for x in r.load)),
    ]


def print_scenarios(
    results: list[Scenario], rows: list[tuple[str, Callable[[Scenario], str]]]
) -> None:
    """The scenarios' titles, then ``rows`` and every scenario's extras as one column each."""
    print(f"machine: {os.cpu_count()} cores; scenarios:")
    for r in results:
        print(f"  ({r.key}) {r.title}")
    extras = sorted({key for r in results for key in r.extras})
    rows = [*rows, *((key, _extra(key)) for key in extras)]
    cells = [(label, [cell(r) for r in results]) for label, cell in rows]
    print_columns([f"({r.key})" for r in results], cells)


def report(results: list[Scenario], profile_lines: list[str]) -> None:
    """The table, the targets, the profile and the RESULT line."""
    by_key = {r.key: r for r in results}
    print_scenarios(
        results,
        [
            *scenario_rows("operator"),
            ("lateness p99 floor (a bare loop)", lambda r: f"{r.floor_p99_ms:.1f} ms"),
            (
                f"last start of an instant ({INSTANT_RUNS_AT_LEAST}+ runs) a run",
                lambda r: f"{r.us_per_run_at_instant:.1f} us",
            ),
            ("status patches", lambda r: f"{r.patches_per_s:.1f} /s"),
            ("watch events", lambda r: f"{r.watch_events_per_s:.1f} /s"),
        ],
    )
    print("\ntargets")
    for r in results:
        ok = r.p99_ms <= TARGET_P99_MS[r.key]
        print(
            f"  {'OK' if ok else 'MISSED':6} ({r.key}) lateness p99 <= {TARGET_P99_MS[r.key]:g} ms"
        )
        print(f"  {'OK' if r.missed == 0 else 'MISSED':6} ({r.key}) no tick missed")
    if "b" in by_key:
        ok = by_key["b"].rss_mb <= TARGET_RSS_MB
        print(f"  {'OK' if ok else 'MISSED':6} (b) RSS <= {TARGET_RSS_MB:g} MiB")
    if profile_lines:
        print("\nprofile of (a), py-spy:")
        for line in profile_lines:
            print(line)

    def p99(key: str) -> str:
        return f"{by_key[key].p99_ms:.1f}" if key in by_key else "nan"

    b = by_key.get("b")
    rss_10k, cpu_10k = (b.rss_mb, b.cpu_pct) if b else (math.nan, math.nan)
    print(
        f"RESULT operator jobs_1k_p99_ms={p99('a')} jobs_10k_p99_ms={p99('b')} "
        f"jobs_10k_updates_p99_ms={p99('c')} missed={sum(r.missed for r in results)} "
        f"rss_10k_mb={rss_10k:.0f} cpu_10k_pct={cpu_10k:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; the exit code is 0 even when a target is missed (the table says so)."""
    s = Settings.from_args(argv)
    print(
        f"bench-operator: scenarios {s.scenarios}, {s.duration_s:g}s windows after"
        f" {s.warmup_s:g}s warm-up; load now {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
        flush=True,
    )
    s = dataclasses.replace(s, bare_run_s=bare_run_seconds())
    print(
        f"  a bare loop starts a run made ready in {1e6 * s.bare_run_s:.1f} us",
        file=sys.stderr,
        flush=True,
    )
    results: list[Scenario] = []
    profile_lines: list[str] = []
    with Cluster.started("bench-operator-") as cluster:
        if "a" in s.scenarios:
            run_a(cluster, s, results, profile_lines)
        if "b" in s.scenarios or "c" in s.scenarios:
            run_bc(cluster, s, results)
        print(f"  spans received: {cluster.receiver.span_count}", file=sys.stderr)
    report(results, profile_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
