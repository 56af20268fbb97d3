"""Shutdown benchmark: SIGTERM to an operator running 1,000 ``every: 1s`` jobs.

Run with ``make bench-shutdown`` (``QUICK=1``: 200 jobs). It prints a table
and, as its last line, a ``RESULT shutdown ...`` line.

A fresh control plane and a real ``podcron operator`` process, as in
``bench_api.py``. Every job is ``hello`` every second, which logs one line
per run: the log is the truth of how many runs each job made. Once every job
is Ready and has run for a while, the operator gets SIGTERM, and the
benchmark measures how long it takes to exit and then compares every job's
status with the log: ``runs.total`` must equal the runs logged and
``running`` must be false. A job whose status lags behind lost its last
update. The operator's own log lines time the phases of its shutdown.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from cluster import (
    control_plane,
    is_ready,
    operator_process,
    prepare_namespace,
    scheduled_job,
)
from harness import print_table, print_targets, quick, wait_until
from podcron.controller.resource import GROUP, PLURAL, VERSION

NAMESPACE = "bench"
CREATE_THREADS = 8
HELLO = re.compile(r"hello from (?P<job>\S+) \(")
# A text-format line: "2026-01-01 10:00:00,123 INFO    logger [job] message".
LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>\w+)\s+(?P<rest>.*)$")
# Targets: exit within 1 s of SIGTERM, with every job's last state in status.
TARGET_STOP_S = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """How many jobs, how long they run before SIGTERM, the shutdown budget."""

    jobs: int
    run_s: float
    shutdown_timeout_s: float

    @classmethod
    def from_args(cls, argv: list[str] | None) -> Settings:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--jobs", type=int, default=200 if quick() else 1000)
        parser.add_argument("--run", type=float, default=10.0, help="seconds of runs before it")
        parser.add_argument("--shutdown-timeout", type=float, default=25.0)
        args = parser.parse_args(argv)
        return cls(jobs=args.jobs, run_s=args.run, shutdown_timeout_s=args.shutdown_timeout)


@dataclass(frozen=True, slots=True)
class Results:
    """Everything the table shows."""

    jobs: int
    stop_s: float
    exit_code: int
    runs_logged: int
    jobs_lagging: int
    jobs_running: int
    phases: list[tuple[float, str]]
    load: tuple[float, float, float]


def _phases(log: str, since: float) -> list[tuple[float, str]]:
    """Warnings and the lines about stopping, as (seconds after SIGTERM, line)."""
    found = []
    for line in log.splitlines():
        match = LINE.match(line)
        if match is None or "hello from" in line:
            continue
        moment = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if moment >= since - 0.5:
            found.append((moment - since, f"{match['level']} {match['rest'][:150]}"))
    return found


def run(settings: Settings) -> Results:
    """Start everything, stop the operator, compare status with the log."""
    print(
        f"bench-shutdown: {settings.jobs} jobs every 1s, SIGTERM after {settings.run_s:g}s",
        file=sys.stderr,
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp,
        control_plane() as plane,
    ):
        workdir = Path(tmp)
        api = prepare_namespace(plane, NAMESPACE, connections=CREATE_THREADS)

        def listing() -> list[dict[str, Any]]:
            found = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
            return cast(list[dict[str, Any]], cast(dict[str, Any], found)["items"])

        env = {
            "PODCRON_LOG_FORMAT": "text",
            "PODCRON_SHUTDOWN_TIMEOUT_SECONDS": str(settings.shutdown_timeout_s),
        }
        with operator_process(plane, workdir, NAMESPACE, env) as operator:
            print("  creating ...", file=sys.stderr, flush=True)
            with ThreadPoolExecutor(CREATE_THREADS) as pool:
                list(pool.map(lambda index: _create(api, index), range(settings.jobs)))
            wait_until(
                lambda: sum(map(is_ready, listing())) >= settings.jobs,
                180,
                "every job Ready",
                interval=0.5,
            )
            print("  running ...", file=sys.stderr, flush=True)
            time.sleep(settings.run_s)
            load = os.getloadavg()
            signalled = time.time()
            started = time.monotonic()
            operator.send_signal(signal.SIGTERM)
            exit_code = operator.wait(settings.shutdown_timeout_s + 60)
            stop_s = time.monotonic() - started
        log_path = workdir / "operator.log"
        text = log_path.read_text()
        runs = Counter(match["job"] for match in HELLO.finditer(text))
        lagging = running = 0
        for body in listing():
            status = body.get("status") or {}
            job = f"{NAMESPACE}/{body['metadata']['name']}"
            if (status.get("runs") or {}).get("total", 0) != runs[job]:
                lagging += 1
            if status.get("running"):
                running += 1
    return Results(
        jobs=settings.jobs,
        stop_s=stop_s,
        exit_code=exit_code,
        runs_logged=sum(runs.values()),
        jobs_lagging=lagging,
        jobs_running=running,
        phases=_phases(text, signalled),
        load=load,
    )


def _create(api: Any, index: int) -> None:
    body = scheduled_job(index, "hello")
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)


def report(results: Results) -> None:
    """Print the phases, the table, the targets and the RESULT line."""
    r = results
    print("operator log from SIGTERM on (seconds after it)")
    for offset, line in r.phases:
        print(f"  {offset:7.2f}  {line}")
    rows = [
        ("jobs (every: 1s)", f"{r.jobs}"),
        ("runs logged", f"{r.runs_logged}"),
        ("load average at SIGTERM", " ".join(f"{value:.2f}" for value in r.load)),
        ("SIGTERM to exit", f"{r.stop_s:.2f} s"),
        ("exit code", f"{r.exit_code}"),
        ("jobs whose runs.total differs from the log", f"{r.jobs_lagging}"),
        ("jobs left running: true", f"{r.jobs_running}"),
    ]
    print_table(rows)
    print_targets(
        [
            ("every job's last state reached status", r.jobs_lagging == r.jobs_running == 0),
            (f"exit within {TARGET_STOP_S:g} s", r.stop_s < TARGET_STOP_S),
            ("exit code 0", r.exit_code == 0),
        ]
    )
    print(
        f"RESULT shutdown jobs={r.jobs} stop_s={r.stop_s:.2f} lagging={r.jobs_lagging} "
        f"running={r.jobs_running} exit={r.exit_code}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit code is 0 even when a target is missed (the table says so)."""
    report(run(Settings.from_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
