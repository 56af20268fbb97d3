"""Telemetry benchmark: the CPU a run costs with telemetry on versus off.

Run with ``python benchmarks/bench_telemetry.py`` (``make bench-telemetry``;
``QUICK=1`` for a reduced run). It prints a table and, as its last line, a
``RESULT telemetry ...`` line.

Each measurement is a fresh subprocess of this script, pinned to one CPU (the
last one this process may use, or ``BENCH_CPU``), that triggers a no-op async
job through the engine in batches of 50 and reports its process CPU time
(all threads: the batch span processor's export thread included) per run.
The modes are:

* ``off``: no tracer provider, no metrics: what an operator without a
  collector pays for the span API's no-op calls;
* ``metrics``: the engine feeding :class:`JobMetrics` on its own registry;
* ``tracing``: the tracer provider the operator installs from ``OTEL_*``,
  with its batch span processor and gRPC OTLP exporter, sending every span
  to a real OTLP receiver on 127.0.0.1 in this (parent) process;
* ``on``: both, as the operator runs with a collector configured.

The export of the last batch (the graceful-shutdown flush) is inside the
measured window, and the receiver's span count is checked against the runs,
so a span processor that dropped spans could not flatter the result. The
operator's export thread runs at idle priority, and these runs leave the
process no idle time: every 1,000 runs the loop exports the queue itself
(``force_flush``), the same encoding work counted in the same process CPU. The
modes alternate, ``ROUNDS`` times; the table shows medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from harness import cpu_seconds, print_targets, quick
from podcron import latency
from podcron.context import JobContext
from podcron.engine import ConcurrencyPolicy, Engine, JobEvent, JobSpec, RunFinished
from podcron.schedules import Every
from podcron.telemetry import span_export
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from otlp_receiver import OtlpReceiver  # noqa: E402

MODES = ("off", "metrics", "tracing", "on")
BATCH = 50  # the manual-run budget the benchmark's engine is given
WARMUP_RUNS = 1_000
# Runs between exports of the span queue; below the batch processor's queue size (2048).
EXPORT_EVERY = 1_000
# Target: metrics and spans together add at most 100 us of CPU to a run.
TARGET_OVERHEAD_US = 100.0


class ManualRuns:
    """An engine with one no-op job that never falls due, run by triggers in batches.

    A batch (:data:`BATCH` runs, the engine's manual-run budget) is
    triggered at once, and the next waits until its runs have finished.
    """

    JOB_ID = "bench/noop"

    def __init__(self, telemetry: RunTelemetry | None = None) -> None:
        self._finished = 0
        self._batch_done = asyncio.Event()
        self.engine = Engine(listeners=[self._on_event], telemetry=telemetry, max_manual_runs=BATCH)

        async def noop(ctx: JobContext) -> None:
            pass

        self.engine.upsert(
            JobSpec(
                job_id=self.JOB_ID,
                namespace="bench",
                name="noop",
                entry_point="bench:noop",
                target=noop,
                # Never due during the measurement: only manual runs happen.
                schedule=Every(interval=timedelta(days=365)),
                concurrency_policy=ConcurrencyPolicy.ALLOW,
            )
        )

    def _on_event(self, event: JobEvent) -> None:
        if isinstance(event, RunFinished):
            self._finished += 1
            if self._finished % BATCH == 0:
                self._batch_done.set()

    async def run(self, count: int) -> None:
        """Trigger ``count`` runs (whole batches), waiting for each batch to finish."""
        for _ in range(count // BATCH):
            self._batch_done.clear()
            for _ in range(BATCH):
                self.engine.trigger(self.JOB_ID)
            await self._batch_done.wait()


async def measure(mode: str, runs: int) -> dict[str, Any]:
    """CPU per manual run of a no-op job in ``mode``; the child's whole job."""
    metrics = JobMetrics(CollectorRegistry()) if mode in ("metrics", "on") else None
    spans = span_export.configure_tracing()
    latency.tune_process()  # as the operator starts
    if (spans is not None) != (mode in ("tracing", "on")):
        raise RuntimeError(f"mode {mode}: tracing is {'on' if spans else 'off'}")
    manual = ManualRuns(RunTelemetry(metrics=metrics, spans=spans))
    provider: Any = trace.get_tracer_provider()

    async def run(count: int) -> None:
        for _ in range(count // EXPORT_EVERY):
            await manual.run(EXPORT_EVERY)
            if spans is not None:
                # This loop never waits, so the idle-priority export thread
                # would starve and spans would be dropped: export the queue
                # here, the same encoding work in the same process's CPU.
                provider.force_flush()

    await run(WARMUP_RUNS)
    cpu_start = cpu_seconds()
    await run(runs)
    if spans is not None and not span_export.flush(spans, 5.0):
        raise RuntimeError("spans were not flushed in time")
    cpu = cpu_seconds() - cpu_start
    await manual.engine.shutdown()
    return {"cpu_per_run_us": cpu / runs * 1e6, "runs": WARMUP_RUNS + runs}


def run_child(mode: str, runs: int) -> None:
    """Entry of a measurement subprocess: measure, print one JSON line."""
    os.sched_setaffinity(0, {int(os.environ["BENCH_CPU"])})
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(measure(mode, runs))))


def spawn(mode: str, runs: int, cpu: int, receiver: OtlpReceiver) -> dict[str, Any]:
    """Measure ``mode`` in a child; adds ``spans``, how many of its spans arrived."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["BENCH_CPU"] = str(cpu)
    if mode in ("tracing", "on"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    before = receiver.span_count
    completed = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--runs", str(runs)],
        env=env,
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    result["spans"] = receiver.span_count - before
    return result


def measure_overhead(*, quick: bool, cpu: int, runs: int | None = None) -> dict[str, Any]:
    """Per-run CPU in each telemetry mode, median over alternating rounds, with its table."""
    runs = runs or (5_000 if quick else 20_000)
    rounds = 2 if quick else 5
    print(
        f"bench-telemetry: {runs} manual runs per measurement, {rounds} rounds,"
        f" {os.cpu_count()} CPUs, measuring on CPU {cpu}",
        file=sys.stderr,
    )
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    exported: dict[str, tuple[int, int]] = {mode: (0, 0) for mode in MODES}
    with OtlpReceiver() as receiver:
        for index in range(rounds):
            print(f"  round {index + 1}/{rounds} ...", file=sys.stderr, flush=True)
            for mode in MODES:
                result = spawn(mode, runs, cpu, receiver)
                samples[mode].append(result["cpu_per_run_us"])
                spans, total = exported[mode]
                exported[mode] = (spans + result["spans"], total + result["runs"])
    median = {mode: statistics.median(values) for mode, values in samples.items()}
    complete = all(
        spans == total for mode, (spans, total) in exported.items() if mode in ("tracing", "on")
    )
    return {
        "samples": samples,
        "exported": exported,
        "median": median,
        "overhead_us": median["on"] - median["off"],
        "complete": complete,
    }


def print_overhead(result: dict[str, Any]) -> None:
    """The telemetry on/off table and its targets."""
    samples, exported, median = result["samples"], result["exported"], result["median"]
    header = (
        f"{'telemetry':10} {'CPU/run µs':>10} {'min':>7} {'max':>7} {'vs off µs':>10}"
        f" {'spans exported':>16}"
    )
    print(header)
    print("-" * len(header))
    for mode in MODES:
        spans, total = exported[mode]
        print(
            f"{mode:10} {median[mode]:>10.1f} {min(samples[mode]):>7.1f}"
            f" {max(samples[mode]):>7.1f} {median[mode] - median['off']:>10.1f}"
            f" {spans:>7}/{total:<8}"
        )
    print(
        "\nCPU/run: process CPU (all threads, the span exporter's included) over the runs,"
        " median of the rounds.\n'on' = metrics + spans over OTLP/gRPC (batch processor)"
        " to a receiver on 127.0.0.1."
    )
    overhead_us = result["overhead_us"]
    print_targets(
        [
            (
                f"telemetry adds <= {TARGET_OVERHEAD_US:g} µs per run",
                overhead_us <= TARGET_OVERHEAD_US,
            ),
            ("every span of every run exported", result["complete"]),
        ],
        "telemetry targets",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        run_child(arguments.child, arguments.runs or (5_000 if quick() else 20_000))
        return
    cpu = int(os.environ.get("BENCH_CPU", max(os.sched_getaffinity(0))))
    result = measure_overhead(quick=quick(), cpu=cpu, runs=arguments.runs)
    print_overhead(result)
    median = result["median"]
    print(
        f"RESULT telemetry telemetry_overhead_us={result['overhead_us']:.1f}"
        f" off_us={median['off']:.1f} on_us={median['on']:.1f}"
        f" tracing_us={median['tracing'] - median['off']:.1f}"
        f" metrics_us={median['metrics'] - median['off']:.1f}"
        f" spans_complete={'yes' if result['complete'] else 'no'}"
    )


if __name__ == "__main__":
    main()
