"""One burst a second: the engine alone, telemetry on, 1,000 runs due at once; trees side by side.

Run with ``.venv/bin/python benchmarks/bench_burst.py [TREE ...]`` (``make bench-burst``;
``JOBS``, ``WINDOW`` seconds, ``WARMUP`` seconds and ``ROUNDS`` change the defaults:
1,000, 20, 5 and 3). It is bench-operator's scenario (a) without the operator around
the engine: no kopf, no API server, no status writer. ``JOBS`` ``every: 1s`` jobs,
half of them no-ops and half sleeping 50 ms, each with a 30 s timeout, fall due
together every second; the engine's metrics are on and its spans go over OTLP to a
receiver in this (parent) process, as the operator's would. ``SHAPE=b`` gives the jobs
bench-operator's scenario (b) intervals instead (``every: 10s`` ... ``60s``, take
``JOBS=10000 WINDOW=60 WARMUP=15``): what the engine alone does with that scenario, so
the best a design with the engine in a process of its own could do. Beside each p99
is bench-operator's floor for the same due times and the cost a run at an instant.
Each body notes when it started (the ground truth, not the engine's own metric); a
burst's last run says how long starting all of them took, and the loop thread's CPU
time over the runs gives its cost per run. The time the garbage collector ran while a
burst was being started (from its instant to its last start) is summed per burst: the
median and the worst burst are printed.

Each tree (a checkout of this repository; default: this one) is measured in child
processes that import ``podcron`` from it (``git archive COMMIT | tar -x -C DIR``),
taking turns, ``ROUNDS`` times each; the table shows each tree's median round. The
heap is frozen once the jobs are registered, as the operator does. The machine's load
is printed before and after. Prints one table and a ``RESULT burst ...`` line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench_operator import INTERVALS_B, bare_run_seconds, floor_p99_ms, us_per_run_at_instant
from harness import percentile

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tools"))
from otlp_receiver import OtlpReceiver  # noqa: E402  (tools/, put on sys.path above)

JOBS = int(os.environ.get("JOBS", "1000"))
WINDOW_S = float(os.environ.get("WINDOW", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WARMUP_S = float(os.environ.get("WARMUP", "5"))
#: "a": every job every second; "b": bench-operator's scenario (b) intervals.
SHAPE = os.environ.get("SHAPE", "a")
SLOW_BODY_S = 0.05
TIMEOUT_S = 30.0


def _intervals() -> list[int]:
    """Each job's interval in seconds, by index."""
    if SHAPE == "b":
        return [INTERVALS_B[index % len(INTERVALS_B)] for index in range(JOBS)]
    return [1] * JOBS


def _child(tree: Path) -> None:
    sys.path.insert(0, str(tree / "operator"))
    # Imported from the tree, which is on the path only now.
    from prometheus_client import CollectorRegistry

    import podcron
    from podcron import latency
    from podcron.context import JobContext
    from podcron.engine import Engine, JobSpec
    from podcron.schedules import Every
    from podcron.telemetry import span_export
    from podcron.telemetry.metrics import JobMetrics
    from podcron.telemetry.run_telemetry import RunTelemetry

    if not Path(podcron.__file__).is_relative_to(tree):
        raise RuntimeError(f"imported {podcron.__file__}, not the tree {tree}")
    latency.tune_process()
    noted: list[tuple[float, float]] = []
    collections: list[tuple[float, float]] = []  # (began, seconds) of each collection
    began = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.time()
        else:
            collections.append((began[0], time.time() - began[0]))

    gc.callbacks.append(on_collection)

    async def fast(ctx: JobContext) -> None:
        noted.append((ctx.scheduled_time.timestamp(), time.time()))

    async def slow(ctx: JobContext) -> None:
        noted.append((ctx.scheduled_time.timestamp(), time.time()))
        await asyncio.sleep(SLOW_BODY_S)

    async def main() -> None:
        spans = span_export.configure_tracing()
        if spans is None:
            raise RuntimeError("no OTLP endpoint: the parent sets OTEL_EXPORTER_OTLP_ENDPOINT")
        telemetry = RunTelemetry(metrics=JobMetrics(CollectorRegistry()), spans=spans)
        engine = Engine(telemetry=telemetry, max_concurrent_runs=JOBS)
        freezer = asyncio.create_task(latency.freeze_after_registrations(lambda: engine.job_count))
        for index, interval in enumerate(_intervals()):
            engine.upsert(
                JobSpec(
                    job_id=f"bench/job-{index}",
                    namespace="bench",
                    name=f"job-{index}",
                    entry_point="bench:job",
                    target=slow if index % 2 else fast,
                    schedule=Every(interval=timedelta(seconds=interval)),
                    timeout_seconds=TIMEOUT_S,
                )
            )
        await asyncio.sleep(WARMUP_S)
        start = time.time()
        noted.clear()
        cpu, full = time.thread_time(), gc.get_stats()[2]["collections"]
        await asyncio.sleep(WINDOW_S)
        cpu, full = time.thread_time() - cpu, gc.get_stats()[2]["collections"] - full
        end = time.time()
        window = [(due, at) for due, at in noted if start <= due < end]
        summary = _summary(window, cpu, collections)
        print(json.dumps(summary | {"full_gcs": full, "start": start, "end": end}), flush=True)
        # Runs still sleeping, the heap's freezer, the span exporter's thread: none is waited for.
        freezer.cancel()
        os._exit(0)

    asyncio.run(main())


def _summary(
    noted: list[tuple[float, float]], cpu_s: float, collections: list[tuple[float, float]]
) -> dict[str, Any]:
    lateness = [at - due for due, at in noted]
    bursts: dict[float, list[float]] = {}
    for due, at in noted:
        bursts.setdefault(due, []).append(at - due)
    # How long the garbage collector held the loop while each burst was being started.
    collecting = [
        sum(seconds for began, seconds in collections if due <= began <= due + max(late))
        for due, late in bursts.items()
    ]
    return {
        "runs": len(noted),
        "bursts": len(bursts),
        "p50_ms": percentile(lateness, 0.50) * 1000,
        "p99_ms": percentile(lateness, 0.99) * 1000,
        "max_ms": max(lateness) * 1000,
        "last_ms": statistics.median(max(values) for values in bursts.values()) * 1000,
        "us_per_run_at_instant": us_per_run_at_instant(bursts.values()),
        "cpu_per_run_us": cpu_s / max(len(noted), 1) * 1e6,
        "gc_in_burst_ms": statistics.median(collecting) * 1000,
        "gc_in_burst_max_ms": max(collecting) * 1000,
    }


def _measure(tree: Path, endpoint: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, __file__, "child", str(tree)],
        env=env | {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return result


def _load() -> str:
    return "/".join(f"{load:.2f}" for load in os.getloadavg())


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["child"]:
        _child(Path(argv[1]).resolve())
        return
    trees = [Path(arg).resolve() for arg in argv] or [HERE]
    shape = "every-1s jobs due together" if SHAPE != "b" else "jobs at 10-60 s (scenario b)"
    bare_run_s = bare_run_seconds()
    print(
        f"bench-burst: {JOBS} {shape}, {WINDOW_S:.0f}s windows, {ROUNDS} rounds; bare loop"
        f" {bare_run_s * 1e6:.1f} us a run; load before (1/5/15 min) {_load()}"
    )
    intervals = {f"bench/job-{index}": interval for index, interval in enumerate(_intervals())}
    results: dict[Path, list[dict[str, Any]]] = {tree: [] for tree in trees}
    with OtlpReceiver() as receiver:
        for round_ in range(ROUNDS):
            for tree in trees:
                print(f"  round {round_ + 1}: {tree} ...", file=sys.stderr, flush=True)
                result = _measure(tree, receiver.endpoint)
                result["floor_ms"] = floor_p99_ms(
                    intervals, result["start"], result["end"], bare_run_s
                )
                results[tree].append(result)
    print(f"load after {_load()}")
    print(
        "tree: p50 / p99 / max lateness (the p99's floor), median last run of a burst,"
        " cost a run at an instant, loop CPU per run (all rounds)"
    )
    line = []
    for tree, rounds in results.items():
        median = sorted(rounds, key=lambda r: r["p99_ms"])[len(rounds) // 2]
        every = ", ".join(f"{r['p99_ms']:.1f}" for r in rounds)
        print(
            f"  {tree}: {median['p50_ms']:.1f} / {median['p99_ms']:.1f} /"
            f" {median['max_ms']:.1f} ms (floor {median['floor_ms']:.1f}),"
            f" last {median['last_ms']:.1f} ms,"
            f" {median['us_per_run_at_instant']:.1f} us a run at an instant,"
            f" {median['cpu_per_run_us']:.1f} us of CPU a run,"
            f" {median['full_gcs']} full collections,"
            f" collecting {median['gc_in_burst_ms']:.1f} ms a burst"
            f" ({median['gc_in_burst_max_ms']:.1f} at most)"
            f" (p99 of each round: {every} ms; {median['runs']} runs)"
        )
        line.append(
            f"{tree.name}: p99_ms={median['p99_ms']:.1f} floor_ms={median['floor_ms']:.1f}"
            f" us_per_run={median['cpu_per_run_us']:.1f}"
            f" us_per_run_at_instant={median['us_per_run_at_instant']:.1f}"
        )
    print(f"RESULT burst jobs={JOBS} shape={SHAPE} " + " | ".join(line))


if __name__ == "__main__":
    main(sys.argv[1:])
