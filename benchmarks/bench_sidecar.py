"""Sidecar benchmark: ``GET /_sys/job`` under load, plain and gzip, and the time from ``POST``
to start.

Run with ``make bench-sidecar`` (``QUICK=1`` for a reduced run of under a
minute). It prints a table and, as its last line, a ``RESULT sidecar ...`` line.

Three processes per job count, each started by this script:

* the operator side: this script's ``serve`` mode, the real :class:`Engine`
  with ``jobs`` jobs and the real :class:`ControlServer` on a Unix socket.
  kopf and the API server are left out: they are not on the request path, and
  their CPU would only blur the sidecar's figures;
* the sidecar: ``podcron sidecar``, exactly as in the pod (uvicorn, the
  guarded protocol, the CIDR filter with ``allowedCIDRs=127.0.0.1/32``);
* the load generator: ``wrk`` (Debian's package), 16 connections for 30 s,
  with its latency distribution, once without ``Accept-Encoding`` and once
  with ``Accept-Encoding: gzip``.

The jobs are varied like a real registry (every kind of schedule, several
time zones, histories with counts) so each JobMetadata has its real size;
one job in a hundred ticks every 5 s, so the list changes during the run and
the path that re-reads it is measured too.

Trigger to start: after the load, ``POST /_sys/job/bench/trigger-target``
one request at a time; the job's body prints ``time.monotonic_ns()`` (one
clock for all processes on a machine) and the figure is that instant minus
the one just before the request was sent.

The CPU columns are the sidecar's and the operator side's CPU time during
the load, per request: unlike the latencies,
they hardly depend on what else the machine is doing. ``others`` is the share
of the machine's CPU that other processes took during the load: on a shared
machine it explains most of the spread in the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import requests

from harness import (
    children_cpu_seconds,
    machine_busy_seconds,
    percentile,
    process_cpu_seconds,
    quick,
    stop,
    wait_until,
)
from podcron.context import JobContext
from podcron.controller.control_socket import ControlServer
from podcron.engine import ConcurrencyPolicy, Engine, History, JobSpec, RunCounts, RunStatus
from podcron.schedules import parse_schedule

TRIGGER_JOB = "bench/trigger-target"
SCHEDULES: list[dict[str, Any]] = [
    {"every": "15m"},
    {"hourly": {"minute": 15}},
    {"daily": {"at": "02:30"}},
    {"weekly": {"day": "Monday", "at": "09:00"}},
    {"monthly": {"day": -1, "at": "23:00"}},
    {"cron": "*/5 * * * *"},
]
TIME_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]
TARGET_P99_MS = 25.0
TARGET_TRIGGER_P99_MS = 10.0


# -- the operator side (``serve`` mode) ----------------------------------------


async def _noop(ctx: JobContext) -> None:
    return None


async def _report_start(ctx: JobContext) -> None:
    print(f"started {time.monotonic_ns()}", flush=True)


def _jobs(count: int) -> Iterator[tuple[JobSpec, History]]:
    now = datetime.now(UTC)
    for index in range(count):
        name = "trigger-target" if index == 0 else f"job-{index:05d}"
        schedule = {"every": "5s"} if index % 100 == 1 else SCHEDULES[index % len(SCHEDULES)]
        runs = index * 7 % 5000
        spec = JobSpec(
            job_id=f"bench/{name}",
            namespace="bench",
            name=name,
            entry_point="podcron_examples.report:report",
            target=_report_start if index == 0 else _noop,
            schedule=parse_schedule(schedule, time_zone=TIME_ZONES[index % len(TIME_ZONES)]),
            # The trigger target runs only when triggered, and never refuses.
            concurrency_policy=ConcurrencyPolicy.ALLOW if index == 0 else ConcurrencyPolicy.FORBID,
            suspended=index == 0,
        )
        history = History(
            last_run_time=now - timedelta(minutes=index % 90, microseconds=index),
            last_status=RunStatus.SUCCESS if index % 10 else RunStatus.FAILURE,
            last_duration_seconds=0.012 + index % 7 / 10,
            counts=RunCounts(total=runs, succeeded=runs - runs // 10, failed=runs // 10),
        )
        yield spec, history


async def _serve(socket_path: str, count: int) -> None:
    engine = Engine()
    for spec, history in _jobs(count):
        engine.upsert(spec, history=history)
    server = ControlServer(engine, socket_path)
    await server.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print("ready", flush=True)
    await stopping.wait()
    await server.stop()
    await engine.shutdown()


# -- the measuring side --------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What wrk reported."""

    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Load:
    """One wrk run: one job count, one encoding."""

    jobs: int
    gzip: bool
    body_kb: float
    wrk: WrkResult
    sidecar_cpu_ms: float
    operator_cpu_ms: float
    others_busy: float
    load_average: float


@dataclass(frozen=True)
class Row:
    """The figures of one job count."""

    jobs: int
    plain: Load
    gzip: Load
    trigger_p50_ms: float
    trigger_p99_ms: float
    trigger_max_ms: float


def _milliseconds(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    percentiles = {
        int(p): _milliseconds(v, u)
        for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    requests_match = re.search(r"^\s+(\d+) requests in", output, re.M)
    rps_match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if len(percentiles) != 3 or requests_match is None or rps_match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        requests=int(requests_match.group(1)),
        rps=float(rps_match.group(1)),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        errors=errors,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _lines(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


GZIP = {"Accept-Encoding": "gzip"}


def _load(
    url: str,
    count: int,
    gzip: bool,
    pids: tuple[int, int],
    *,
    duration: int,
    connections: int,
    session: requests.Session,
) -> Load:
    """wrk against ``GET /_sys/job``, with the CPU the sidecar, the operator and others took."""
    headers = GZIP if gzip else {"Accept-Encoding": "identity"}
    body = session.get(f"{url}/_sys/job", headers=headers, stream=True).raw.read()
    sidecar_pid, operator_pid = pids
    cpu_before = (
        process_cpu_seconds(sidecar_pid, with_children=True),
        process_cpu_seconds(operator_pid, with_children=True),
    )
    busy_before, wrk_before, started = (
        machine_busy_seconds(),
        children_cpu_seconds(),
        time.monotonic(),
    )
    wrk = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            *(["-H", "Accept-Encoding: gzip"] if gzip else []),
            f"{url}/_sys/job",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    load = parse_wrk(wrk.stdout)
    sidecar_cpu = process_cpu_seconds(sidecar_pid, with_children=True) - cpu_before[0]
    operator_cpu = process_cpu_seconds(operator_pid, with_children=True) - cpu_before[1]
    # What the rest of the machine took meanwhile: the latencies depend on it.
    others = machine_busy_seconds() - busy_before
    others -= sidecar_cpu + operator_cpu + children_cpu_seconds() - wrk_before
    others_busy = max(0.0, others) / ((time.monotonic() - started) * (os.cpu_count() or 1))
    return Load(
        jobs=count,
        gzip=gzip,
        body_kb=len(body) / 1024,
        wrk=load,
        sidecar_cpu_ms=sidecar_cpu * 1000 / load.requests,
        operator_cpu_ms=operator_cpu * 1000 / load.requests,
        others_busy=others_busy,
        load_average=os.getloadavg()[0],
    )


def measure(count: int, *, duration: int, connections: int, triggers: int, workdir: Path) -> Row:
    """Start the three processes for ``count`` jobs and measure."""
    socket_path = str(workdir / f"control-{count}.sock")
    host = subprocess.Popen(
        [sys.executable, __file__, "serve", "--socket", socket_path, "--count", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert host.stdout is not None
    starts = _lines(host.stdout)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    sidecar_log = (workdir / f"sidecar-{count}.log").open("w")
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "podcron", "sidecar"],
        env=os.environ
        | {
            "PODCRON_CONTROL_SOCKET": socket_path,
            "PODCRON_SIDECAR_HOST": "127.0.0.1",
            "PODCRON_SIDECAR_PORT": str(port),
            "PODCRON_SIDECAR_PROBE_PORT": str(_free_port()),
            "PODCRON_ALLOWED_CIDRS": "127.0.0.1/32",
            "PODCRON_LOG_LEVEL": "WARNING",
        },
        stdout=sidecar_log,
        stderr=subprocess.STDOUT,
    )
    session = requests.Session()
    session.trust_env = False
    try:
        if starts.get(timeout=60) != "ready":
            raise RuntimeError("the engine host did not start")

        def listed() -> bool:
            try:
                return bool(session.get(f"{url}/_sys/job").json()["meta"]["total"] == count)
            except requests.RequestException:
                return False

        wait_until(listed, 60, f"the sidecar to list {count} jobs")
        plain, packed = (
            _load(
                url,
                count,
                gzip,
                (sidecar.pid, host.pid),
                duration=duration,
                connections=connections,
                session=session,
            )
            for gzip in (False, True)
        )

        delays: list[float] = []
        trigger_url = f"{url}/_sys/job/{TRIGGER_JOB}"
        for _ in range(triggers):
            sent = time.monotonic_ns()
            response = session.post(trigger_url)
            if response.status_code != 200:
                raise RuntimeError(f"trigger failed: {response.status_code} {response.text}")
            line = starts.get(timeout=10)
            delays.append((int(line.split()[1]) - sent) / 1e6)
        return Row(
            jobs=count,
            plain=plain,
            gzip=packed,
            trigger_p50_ms=statistics.median(delays),
            trigger_p99_ms=percentile(delays, 0.99),
            trigger_max_ms=max(delays),
        )
    finally:
        stop(sidecar, 20)
        stop(host, 20)
        sidecar_log.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``serve``, the operator side of it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="internal: the engine and control socket")
    serve.add_argument("--socket", required=True)
    serve.add_argument("--count", type=int, required=True)
    parser.add_argument("--jobs", default="1000,10000", help="job counts, comma-separated")
    parser.add_argument("--duration", type=int, default=5 if quick() else 30, help="seconds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--triggers", type=int, default=50 if quick() else 300)
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        asyncio.run(_serve(arguments.socket, arguments.count))
        return 0
    if shutil.which("wrk") is None:
        print("bench-sidecar needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2

    counts = [int(n) for n in arguments.jobs.split(",")]
    print(
        f"GET /_sys/job: wrk, 2 threads, {arguments.connections} connections, "
        f"{arguments.duration} s per job count and encoding; then {arguments.triggers} "
        f"sequential POSTs (trigger to job start). {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at start (other work on the machine shares them)."
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="podcron-bench-") as directory:
        for count in counts:
            rows.append(
                measure(
                    count,
                    duration=arguments.duration,
                    connections=arguments.connections,
                    triggers=arguments.triggers,
                    workdir=Path(directory),
                )
            )
    header = (
        f"{'jobs':>6} {'gzip':>4} {'body KB':>8} {'requests':>9} {'rps':>8} {'p50 ms':>7} "
        f"{'p90 ms':>7} {'p99 ms':>7} {'errors':>6} {'trig p50':>9} {'trig p99':>9} "
        f"{'trig max':>9} {'cpu/req sidecar':>15} {'operator':>8} {'others':>6} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        for load in (row.plain, row.gzip):
            w = load.wrk
            trigger = (
                f"{row.trigger_p50_ms:>9.2f} {row.trigger_p99_ms:>9.2f} {row.trigger_max_ms:>9.2f}"
                if load is row.plain
                else f"{'':>9} {'':>9} {'':>9}"
            )
            print(
                f"{row.jobs:>6} {'yes' if load.gzip else 'no':>4} {load.body_kb:>8.1f} "
                f"{w.requests:>9} {w.rps:>8.0f} {w.p50_ms:>7.2f} {w.p90_ms:>7.2f} "
                f"{w.p99_ms:>7.2f} {w.errors:>6} {trigger} "
                f"{load.sidecar_cpu_ms:>12.3f} ms {load.operator_cpu_ms:>5.3f} ms "
                f"{load.others_busy:>6.0%} {load.load_average:>5.1f}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    first, last = rows[0], rows[-1]
    print(
        f"targets at {first.jobs} jobs: p99 <= {TARGET_P99_MS} ms with zero errors, "
        f"trigger-to-start p99 <= {TARGET_TRIGGER_P99_MS} ms"
    )
    print(
        f"RESULT sidecar jobs={first.jobs} p50_ms={first.plain.wrk.p50_ms:.2f} "
        f"p99_ms={first.plain.wrk.p99_ms:.2f} rps={first.plain.wrk.rps:.0f} "
        f"errors={first.plain.wrk.errors + first.gzip.wrk.errors} "
        f"trigger_to_start_p99_ms={first.trigger_p99_ms:.2f} "
        f"gzip_p99_ms={first.gzip.wrk.p99_ms:.2f} gzip_rps={first.gzip.wrk.rps:.0f} "
        f"jobs_{last.jobs}_p99_ms={last.plain.wrk.p99_ms:.2f} "
        f"jobs_{last.jobs}_gzip_p99_ms={last.gzip.wrk.p99_ms:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
