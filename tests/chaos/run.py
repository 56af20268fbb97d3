"""One chaos run: a control plane, N operator processes behind fault proxies, jobs, the nemesis.

``python -m tests.chaos.run --replicas 3 --jobs 2000 --minutes 10 --seed 1`` (``make chaos``).
The steps: start etcd and kube-apiserver; create the jobs (``podcron_chaosjobs.ledger:tick``,
intervals cycling through ``--intervals``); start each operator with a kubeconfig of its own
pointing at its proxy (and, for clock faults, libfaketime preloaded); wait until every job
has started a tick (the warm-up); open the window and let the nemesis carry out its plan;
close the window, heal, let the stragglers land (the settle time); read the ledger and the
counters, print the verdict and the RESULT line. Everything is kept in ``--workdir``, emptied first.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from controlplane import ControlPlane, ensure_binaries
from faketime import FaketimeUnavailable, ensure_libfaketime
from faketime import environment as faketime_environment
from podcron.controller.resource import GROUP, KIND, PLURAL, VERSION
from podcron.schedules import Schedule, parse_schedule
from tests.jobs.podcron_chaosjobs.ledger import LEDGER_VARIABLE, REPLICA_VARIABLE
from tests.jobs.podcron_chaosjobs.ledger import read as ledger_entries
from tests.ports import free_port

from . import checker, counters, nemesis
from .proxy import FaultProxy, ProxyLoop

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "scheduledjobs.podcron.dev.yaml"
JOBS_PATH = ROOT / "tests" / "jobs"
ENTRY_POINT = "podcron_chaosjobs.ledger:tick"
NAMESPACE = "chaos"
#: The HA settings a run may pass to every operator (``PODCRON_`` + upper case).
HA_SETTINGS = ("ha_ring", "lease_renew_seconds", "fire_bound_seconds", "lease_stale_seconds")
SCRAPE_SECONDS = 5.0
SCRAPE_TIMEOUT = 10.0
#: How often a SIGTERMed operator's counters are read while it drains.
DRAIN_SCRAPE_SECONDS = 0.2
#: Jobs with ticks missed uncounted printed before the RESULT line, to start looking from.
UNCOUNTED_SHOWN = 20
OPERATOR_COUNTERS = ("podcron_ticks_uncertain_total", "podcron_ticks_missed_total")
#: Ticks skipped under concurrencyPolicy Forbid (the job's run was still going): an outcome
#: of their own, recorded as such, not a start. Kept under this key beside the counters.
SKIPPED = "skipped"
RUNS = "podcron_job_runs_total"
OPERATOR_STARTED = "podcron operator started"


@dataclass(frozen=True)
class Settings:
    """What one run does."""

    replicas: int = 1
    jobs: int = 100
    seconds: float = 60.0
    seed: int = 1
    kinds: tuple[str, ...] = tuple(nemesis.KINDS)
    intervals: tuple[int, ...] = (1, 2, 3, 4, 5)
    ha: Mapping[str, str] = field(default_factory=dict)
    workdir: Path = Path("build/chaos")
    warmup_timeout: float = 300.0

    @property
    def lease_stale(self) -> float:
        return float(self.ha.get("lease_stale_seconds", checker.DEFAULT_LEASE_STALE_SECONDS))

    @property
    def settle_seconds(self) -> float:
        """After the window: time for a tick due at its end to be started, late or caught up."""
        return max(self.intervals) + 2 * self.lease_stale + 5


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Replica:
    """One operator process slot: restarted under the same name, a new pid each time."""

    def __init__(
        self,
        name: str,
        plane: ControlPlane,
        proxy: FaultProxy,
        workdir: Path,
        env: Mapping[str, str],
        faketime: Path | None,
        *,
        continuous_clock: bool,
    ) -> None:
        self.name = name
        self.proxy = proxy
        self.workdir = workdir
        workdir.mkdir(parents=True)
        self.kubeconfig = workdir / "kubeconfig.yaml"
        config = yaml.safe_load(plane.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.clock_file = workdir / "faketime"
        self.clock_file.write_text("+0 x1\n")
        self._env = dict(env) | {
            "KUBECONFIG": str(self.kubeconfig),
            REPLICA_VARIABLE: name,
            "POD_NAME": f"chaos-{name}",
            "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
        }
        if faketime is not None:
            self._env |= faketime_environment(
                faketime, self.clock_file, continuous=continuous_clock
            )
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        #: The operator counters last read from each process (by pid, then per job), summed
        #: at the end.
        self.counters: dict[int, dict[str, dict[str, float]]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.metrics_port = free_port()
            with (self.workdir / "operator.log").open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "podcron", "operator"],
                    env=self._env | {"PODCRON_METRICS_PORT": str(self.metrics_port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def started_count(self) -> int:
        """How many times an operator process logged that it started here."""
        return (self.workdir / "operator.log").read_text(errors="replace").count(OPERATOR_STARTED)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def scrape(self) -> bool:
        """Read the operator counters from /metrics, if the process answers in time.

        The page has series per job: at 2,000 jobs, on a loaded machine, a process busy
        with its ticks took more than a second to answer, and every read was lost.
        False when a running process gave no page.
        """
        with self._lock:
            process, port = self.process, self.metrics_port
        if process is None or process.poll() is not None:
            return True
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(
                f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT
            ) as response:
                page = response.read().decode()
        except OSError:
            return False
        found = counters.exported(page, OPERATOR_COUNTERS)
        skipped = counters.exported(page, (RUNS,), status="skipped")
        if RUNS in skipped:
            found[SKIPPED] = skipped[RUNS]
        self.counters[process.pid] = found
        return True

    def scrape_until_exit(self) -> None:
        """Read the counters every :data:`DRAIN_SCRAPE_SECONDS` until the process exits."""
        with self._lock:
            process = self.process
        while process is not None and process.poll() is None:
            self.scrape()
            time.sleep(DRAIN_SCRAPE_SECONDS)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        self.wait_exit(60)


class Cluster:
    """The run's parts, as the nemesis acts on them (:class:`nemesis.Targets`)."""

    def __init__(self, plane: ControlPlane, replicas: Sequence[Replica]) -> None:
        self.plane = plane
        self.replicas = {replica.name: replica for replica in replicas}
        self.writes = counters.ResettingSum(counters.mutating())
        self.lease_writes = counters.ResettingSum(counters.mutating("leases"))
        self._scraping = threading.Event()
        self._scraper = threading.Thread(target=self._scrape_loop, name="scraper", daemon=True)
        self._apiserver_lock = threading.Lock()
        self._calls: queue.Queue[Callable[[], None]] = queue.Queue()

    # -- nemesis.Targets

    def pid(self, replica: str) -> int:
        return self.replicas[replica].pid

    def read_counters(self, replica: str) -> None:
        if not self.replicas[replica].scrape():
            # What it counted since its last read dies with it: the checker may then find
            # ticks missed and counted nowhere that this process did count.
            _log(f"{replica} gave no /metrics page: its counts since the last read are lost")

    def signal(self, replica: str, signum: int) -> None:
        target = self.replicas[replica]
        target.signal(signum)
        if signum == signal.SIGTERM:
            # It goes on for its drain, and may count a gain it made just before the signal
            # after the read above: read it until it exits.
            threading.Thread(target=target.scrape_until_exit, daemon=True).start()

    def wait_exit(self, replica: str, timeout: float) -> None:
        self.replicas[replica].wait_exit(timeout)

    def restart(self, replica: str) -> None:
        self.replicas[replica].start()

    def proxy(self, replica: str) -> FaultProxy:
        return self.replicas[replica].proxy

    def set_clock(self, replica: str, spec: str) -> None:
        clock_file = self.replicas[replica].clock_file
        # Written whole and renamed into place: the process never reads half a line.
        staged = clock_file.with_suffix(".new")
        staged.write_text(spec + "\n")
        staged.replace(clock_file)

    def kill_control_plane(self, name: str) -> None:
        if name == "kube-apiserver":
            self.read_apiserver()  # what it counted since the last read would die with it
        with self._apiserver_lock:
            os.killpg(self.plane.pids[name], signal.SIGKILL)

    def restart_control_plane(self, name: str) -> None:
        def restart() -> None:
            with self._apiserver_lock:
                self.plane.restart(name)
                if name == "kube-apiserver":
                    self.writes.restarted()
                    self.lease_writes.restarted()

        self._on_main_thread(restart)

    def _on_main_thread(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the thread in :meth:`serve`, and wait for it.

        The control plane's processes die with the thread that started them
        (PR_SET_PDEATHSIG): one restarted from the nemesis's thread would be killed by the
        kernel when that thread ends.
        """
        done: queue.Queue[BaseException | None] = queue.Queue()

        def wrapped() -> None:
            try:
                call()
            except BaseException as error:
                done.put(error)
            else:
                done.put(None)

        self._calls.put(wrapped)
        error = done.get()
        if error is not None:
            raise error

    def serve(self, until: float, busy: Callable[[], bool]) -> None:
        """Carry out calls posted by the nemesis until monotonic ``until`` and while ``busy()``."""
        while time.monotonic() < until or busy():
            try:
                call = self._calls.get(timeout=0.2)
            except queue.Empty:
                continue
            call()

    def signal_control_plane(self, name: str, signum: int) -> None:
        os.kill(self.plane.pids[name], signum)

    # -- counters

    def read_apiserver(self) -> None:
        """One read of the API server's request counters (nothing if it does not answer)."""
        with self._apiserver_lock:
            # The page is a few MB: a loaded machine takes seconds to send it.
            result = self.plane.kubectl(
                "get", "--raw", "/metrics", "--request-timeout=30s", check=False
            )
            if result.returncode != 0:
                _log(f"the API server's /metrics was not read: {result.stderr.strip()[-200:]}")
                return
            requests = counters.samples(result.stdout, "apiserver_request_total")
            self.writes.read(requests)
            self.lease_writes.read(requests)

    def start_scraping(self) -> None:
        self.read_apiserver()
        self._scraper.start()

    def stop_scraping(self) -> None:
        self._scraping.set()
        self._scraper.join()
        self.scrape_once()

    def scrape_once(self) -> None:
        self.read_apiserver()
        # Side by side: one slow process does not hold up the others' reads.
        readers = [
            threading.Thread(target=replica.scrape, name=f"scrape {name}", daemon=True)
            for name, replica in self.replicas.items()
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()

    def _scrape_loop(self) -> None:
        while not self._scraping.wait(SCRAPE_SECONDS):
            self.scrape_once()

    def operator_counter(self, name: str) -> dict[str, int] | None:
        """``name`` per job, summed over every operator process; None if none exported it."""
        per_job: collections.Counter[str] = collections.Counter()
        exported = False
        for replica in self.replicas.values():
            for found in replica.counters.values():
                if name in found:
                    exported = True
                    per_job.update({job: round(value) for job, value in found[name].items()})
        return dict(per_job) if exported else None


def job_manifests(count: int, intervals: Sequence[int]) -> tuple[str, dict[str, Schedule]]:
    """The jobs as one YAML stream, and each job's schedule by ``namespace/name``."""
    documents, schedules = [], {}
    for index in range(count):
        name = f"chaos-{index:05d}"
        schedule = {"every": f"{intervals[index % len(intervals)]}s"}
        documents.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"entryPoint": ENTRY_POINT, "schedule": schedule},
            }
        )
        schedules[f"{NAMESPACE}/{name}"] = parse_schedule(schedule)
    return yaml.safe_dump_all(documents), schedules


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)


def _faketime(kinds: Sequence[str]) -> tuple[Path | None, tuple[str, ...]]:
    """libfaketime if clock faults are asked for, and the kinds that can run."""
    if not nemesis.CLOCK_KINDS & set(kinds):
        return None, tuple(kinds)
    try:
        return ensure_libfaketime(), tuple(kinds)
    except FaketimeUnavailable as error:
        print(f"chaos: clock and rate faults skipped: {error}", flush=True)
        return None, tuple(k for k in kinds if k not in nemesis.CLOCK_KINDS)


@contextlib.contextmanager
def _running(replicas: Sequence[Replica], proxies: ProxyLoop) -> Iterator[None]:
    try:
        yield
    finally:
        for replica in replicas:
            replica.stop()
        proxies.close()


def run(settings: Settings, plane: ControlPlane) -> checker.Verdict:
    """Carry out one run against ``plane`` (which the nemesis kills and restarts) and judge it."""
    workdir = settings.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ledger = workdir / "ledger.txt"
    ledger.unlink(missing_ok=True)
    library, kinds = _faketime(settings.kinds)
    replica_names = [f"r{index}" for index in range(settings.replicas)]
    steps = nemesis.plan(
        settings.seed, kinds, replica_names, settings.seconds, lease_stale=settings.lease_stale
    )
    print(f"chaos: seed {settings.seed}, {len(steps)} faults planned:", flush=True)
    for step in steps:
        print(f"  {step.describe()}", flush=True)

    plane.kubectl("apply", "--server-side", "-f", str(CRD))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    plane.kubectl("create", "namespace", NAMESPACE, check=False)
    manifests, schedules = job_manifests(settings.jobs, settings.intervals)
    _log(f"creating {settings.jobs} jobs")
    plane.kubectl("create", "-f", "-", input=manifests)

    env = plane.env() | {
        "PYTHONPATH": os.pathsep.join([str(JOBS_PATH), os.environ.get("PYTHONPATH", "")]),
        "PODCRON_ALLOWED_MODULES": "podcron_chaosjobs.*",
        "PODCRON_NAMESPACES": NAMESPACE,
        "POD_NAMESPACE": NAMESPACE,
        "PODCRON_MAX_CONCURRENT_RUNS": str(max(100, settings.jobs)),
        "PODCRON_SHUTDOWN_TIMEOUT_SECONDS": "5",
        "PODCRON_LOG_FORMAT": "text",
        "PODCRON_METRICS_HOST": "127.0.0.1",
        LEDGER_VARIABLE: str(ledger),
    }
    env |= {f"PODCRON_{key.upper()}": value for key, value in settings.ha.items()}
    proxies = ProxyLoop()
    replicas = [
        Replica(
            name,
            plane,
            proxies.proxy(plane.port),
            workdir / name,
            env,
            library,
            continuous_clock=name in nemesis.rate_changed(steps),
        )
        for name in replica_names
    ]
    cluster = Cluster(plane, replicas)
    with _running(replicas, proxies):
        for replica in replicas:
            replica.start()
        _log(f"{settings.replicas} operator(s) started; warming up until every job started a tick")
        _wait(
            lambda: len({e.job for e in ledger_entries(ledger)}) >= settings.jobs,
            settings.warmup_timeout,
            "every job's first tick",
        )
        cluster.start_scraping()
        window_start = time.time()
        _log(f"window open for {settings.seconds:g}s")
        chaos = nemesis.Nemesis(steps, cluster, _log)
        chaos.start()
        try:
            cluster.serve(time.monotonic() + settings.seconds, busy=chaos.running)
            # Restarts on a loaded machine push the plan late: the window keeps its quiet end
            # after the last fault, so that what that fault cost is inside it.
            cluster.serve(chaos.finished_at + nemesis.QUIET_END_SECONDS, busy=lambda: False)
            window_end = time.time()
        finally:
            chaos.stop()  # the plan is over by now, unless something failed
        chaos.join()
        cluster.read_apiserver()
        writes, lease_writes = cluster.writes.total, cluster.lease_writes.total
        _log(f"window closed; settling for {settings.settle_seconds:g}s")
        time.sleep(settings.settle_seconds)
        cluster.stop_scraping()
    verdict = checker.judge(
        entries=ledger_entries(ledger),
        schedules=schedules,
        window=(window_start, window_end),
        faults=chaos.faults,
        replicas=settings.replicas,
        uncertain=cluster.operator_counter("podcron_ticks_uncertain_total"),
        counted_missed=cluster.operator_counter("podcron_ticks_missed_total"),
        skipped=cluster.operator_counter(SKIPPED),
        writes=writes,
        lease_writes=lease_writes,
        seconds=window_end - window_start,
        lease_stale=settings.lease_stale,
    )
    for cost in verdict.costs:
        print(f"takeover: {cost.describe(window_start)}", flush=True)
    for job in verdict.uncounted[:UNCOUNTED_SHOWN]:
        print(f"uncounted: {job.describe()}", flush=True)
    print(
        verdict.result_line(
            {
                "seed": settings.seed,
                "seconds": round(window_end - window_start),
                "faults": len(steps),
            }
        ),
        flush=True,
    )
    return verdict


def _settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0, help="the measured window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults",
        default="all",
        help=f"'all', 'none', or kinds separated by commas: {', '.join(nemesis.KINDS)}",
    )
    parser.add_argument("--intervals", default="1,2,3,4,5", help="job intervals in seconds, cycled")
    parser.add_argument(
        "--ha",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help=f"an HA setting for every operator, one of {', '.join(HA_SETTINGS)}",
    )
    parser.add_argument("--workdir", type=Path, default=Path("build/chaos"))
    parser.add_argument(
        "--warmup-timeout",
        type=float,
        default=600.0,
        help="seconds for every job to start its first tick before the run gives up",
    )
    args = parser.parse_args(argv)
    if args.faults == "all":
        kinds = tuple(nemesis.KINDS)
    elif args.faults == "none":
        kinds = ()
    else:
        kinds = tuple(kind.strip() for kind in args.faults.split(",") if kind.strip())
        unknown = set(kinds) - set(nemesis.KINDS)
        if unknown:
            parser.error(
                f"unknown fault kinds {sorted(unknown)}; known: {', '.join(nemesis.KINDS)}"
            )
    ha: dict[str, str] = {}
    for item in args.ha:
        key, _, value = item.partition("=")
        if key not in HA_SETTINGS or not value:
            parser.error(
                f"--ha {item!r}: must be SETTING=VALUE with SETTING one of {', '.join(HA_SETTINGS)}"
            )
        ha[key] = value
    if args.replicas < 1 or args.jobs < 1 or args.minutes <= 0:
        parser.error("--replicas and --jobs must be at least 1, --minutes positive")
    return Settings(
        replicas=args.replicas,
        jobs=args.jobs,
        seconds=args.minutes * 60,
        seed=args.seed,
        kinds=kinds,
        intervals=tuple(int(i) for i in args.intervals.split(",")),
        ha=ha,
        workdir=args.workdir,
        warmup_timeout=args.warmup_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = _settings(argv)
    workdir = settings.workdir.resolve()
    # A run's record is the last run's only: etcd's data in particular must start empty.
    shutil.rmtree(workdir, ignore_errors=True)
    with ControlPlane.start(ensure_binaries(), workdir / "controlplane") as plane:
        verdict = run(settings, plane)
    return 1 if verdict.duplicates_all or verdict.missed_outside_window else 0


if __name__ == "__main__":
    sys.exit(main())
