"""Dispatch lateness on a clock that only the event loop's own work moves, for trees side by side.

Run with ``.venv/bin/python benchmarks/bench_dispatch.py [TREE ...]`` (``QUICK=1``
for 10,000 jobs only). ``make bench-engine`` measures lateness on the wall clock,
which on a shared machine shows the neighbours more than the scheduler: the same
code's p99 moves by tens of milliseconds with the load. Here the event loop's
clock is the CPU time of its own thread plus the time it would have slept (when
nothing is due, the clock jumps to the next timer at once), and the engine's
wall clock follows it. A run is late only by the work done before it started on
that thread, garbage collections included, as on an idle machine; other
processes do not move it, they only make the run take longer.

The schedules are bench-engine's (``jobs`` epoch-aligned ``every`` jobs with
intervals drawn between 1 and 10 s), and so are the systems: the engine (no
telemetry, as bench-engine's ``podcron engine`` row, without its loop watchdog,
a thread that compares the loop with real time) and the floor (a bare
``loop.call_at`` chain per job). Each tree (a checkout of this repository;
default: this one) runs in child processes that import ``podcron`` and
``bench_engine`` from it, so an old commit is measured as it was
(``git archive COMMIT | tar -x -C DIR``); the floor is measured with the first
tree. Reading the thread's CPU clock costs a system call, a few microseconds a
run on top of what bench-engine would see. Prints one table and a
``RESULT dispatch ...`` line per row.

``--model MICROSECONDS ...`` measures nothing: it works through the same minute of
ticks as one server that spends a fixed time on each run, in due order, and prints the
lateness that alone would give, beside how the ticks bunch into bursts. It is what
ties p99 to the cost of one run.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from harness import percentile, quick

HERE = Path(__file__).resolve().parents[1]
WARMUP_S = 10.0
WINDOW_S = 60.0


class _SkippingSelector(selectors.DefaultSelector):
    """Polls without blocking; where the loop would have slept, its clock moves on instead."""

    def __init__(self, loop_clock: _CpuClock) -> None:
        super().__init__()
        self._clock = loop_clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events and timeout:
            self._clock.slept += timeout
        return events


class _CpuClock:
    """This thread's CPU time since it started, plus the time it skipped sleeping."""

    def __init__(self) -> None:
        self.slept = 0.0
        self._started = time.thread_time()

    def __call__(self) -> float:
        return self.slept + time.thread_time() - self._started


class _CpuLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.cpu_clock = _CpuClock()
        super().__init__(selector=_SkippingSelector(self.cpu_clock))

    def time(self) -> float:
        return self.cpu_clock()


class _WallClock:
    """The engine's wall clock: the loop's clock, from the real time when it started."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.offset = time.time() - loop.time()

    def wall(self) -> float:
        return self._loop.time() + self.offset


async def _measure(system: str, jobs: int) -> dict[str, Any]:
    import bench_engine
    from podcron import latency
    from podcron.engine import Engine, JobSpec
    from podcron.schedules import Every

    loop = asyncio.get_running_loop()
    clock = _WallClock(loop)
    intervals = bench_engine.draw_intervals(jobs)
    lateness: list[float] = []
    window = [float("inf"), float("-inf")]

    def record(due: float, started: float) -> None:
        if window[0] <= due < window[1]:
            lateness.append(started - due)

    running: list[object] = []
    if system == "podcron":
        engine = Engine(clock=clock, loop_watchdog=False)
        running.append(
            asyncio.create_task(latency.freeze_after_registrations(lambda: engine.job_count))
        )

        async def body(ctx: Any) -> None:
            record(ctx.scheduled_time.timestamp(), clock.wall())

        for index, interval in enumerate(intervals):
            engine.upsert(
                JobSpec(
                    job_id=f"bench/job-{index}",
                    namespace="bench",
                    name=f"job-{index}",
                    entry_point="bench:noop",
                    target=body,
                    schedule=Every(interval=timedelta(milliseconds=interval)),
                )
            )
    else:

        def tick(interval: int, due_ms: int) -> None:
            record(due_ms / 1000, clock.wall())
            next_ms = due_ms + interval
            loop.call_at(next_ms / 1000 - clock.offset, tick, interval, next_ms)

        now_ms = int(clock.wall() * 1000)
        for interval in intervals:
            first_ms = (now_ms // interval + 1) * interval
            loop.call_at(first_ms / 1000 - clock.offset, tick, interval, first_ms)
    start_ms = round((clock.wall() + WARMUP_S) * 1000)
    end_ms = start_ms + round(WINDOW_S * 1000)
    window[:] = [start_ms / 1000, end_ms / 1000]
    await asyncio.sleep(WARMUP_S)
    collections_before = [stats["collections"] for stats in gc.get_stats()]
    cpu_before = time.thread_time()
    await asyncio.sleep(WINDOW_S)
    cpu = time.thread_time() - cpu_before
    runs = len(lateness)
    await asyncio.sleep(1.0)  # the ticks due at the window's end
    return {
        "runs": len(lateness),
        "expected": bench_engine.expected_ticks(intervals, start_ms, end_ms),
        "p50_ms": percentile(lateness, 0.50) * 1000,
        "p99_ms": percentile(lateness, 0.99) * 1000,
        "max_ms": percentile(lateness, 1.0) * 1000,
        "cpu_per_run_us": cpu / max(runs, 1) * 1e6,
        "full_collections": gc.get_stats()[2]["collections"] - collections_before[2],
    }


def _child(tree: Path, system: str, jobs: int) -> None:
    sys.path[:0] = [str(tree / "operator"), str(tree / "benchmarks")]
    import podcron
    from podcron import latency

    if not Path(podcron.__file__).is_relative_to(tree):
        raise RuntimeError(f"imported {podcron.__file__}, not the tree {tree}")
    latency.tune_process()
    loop = _CpuLoop()
    result = loop.run_until_complete(_measure(system, jobs))
    print(json.dumps(result), flush=True)
    # Tens of thousands of jobs are still armed: do not wait for them.
    os._exit(0)


def _spawn(tree: Path, system: str, jobs: int) -> dict[str, Any]:
    print(f"  {tree} {system} {jobs} jobs ...", file=sys.stderr, flush=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, __file__, "child", str(tree), system, str(jobs)],
        env=environment,
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return result


def _model(costs_us: Sequence[float]) -> None:
    """Lateness of a server spending each of ``costs_us`` per run on a minute of ticks."""
    import bench_engine

    start_ms = 1_800_000_000_000  # any minute: the intervals are whole milliseconds
    for jobs in (10_000, 50_000):
        due: collections.Counter[int] = collections.Counter()
        for interval in bench_engine.draw_intervals(jobs):
            due.update(range(-(-start_ms // interval) * interval, start_ms + 60_000, interval))
        sizes = sorted(due.values())
        ticks = sum(sizes)
        in_bursts = sum(size for size in sizes if size >= 200) / ticks * 100
        print(
            f"{jobs} jobs: {ticks} ticks in a minute, on {len(sizes)} instants; the largest"
            f" bursts {sizes[-3:]}; {in_bursts:.1f}% of the ticks in bursts of 200 or more"
        )
        for cost_us in costs_us:
            lateness: list[float] = []
            free_ms = 0.0
            for instant in sorted(due):
                for _ in range(due[instant]):
                    begins_ms = max(float(instant), free_ms)
                    lateness.append(begins_ms - instant)
                    free_ms = begins_ms + cost_us / 1000
            print(
                f"  {cost_us:g} µs a run: p50 {percentile(lateness, 0.5):.2f}"
                f" p99 {percentile(lateness, 0.99):.2f} max {max(lateness):.1f} ms"
            )


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["child"]:
        _child(Path(argv[1]).resolve(), argv[2], int(argv[3]))
        return
    if argv[:1] == ["--model"]:
        _model([float(cost) for cost in argv[1:]])
        return
    trees = [Path(arg).resolve() for arg in argv] or [HERE]
    sizes = (10_000,) if quick() else (10_000, 50_000)
    print(f"load before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    rows: list[tuple[str, int, dict[str, Any]]] = []
    for jobs in sizes:
        rows.append(("floor", jobs, _spawn(trees[0], "floor", jobs)))
        rows.extend((str(tree), jobs, _spawn(tree, "podcron", jobs)) for tree in trees)
    width = max(len(name) for name, _, _ in rows)
    header = (
        f"{'system':{width}} {'jobs':>6} {'runs':>8} {'of':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'max ms':>7} {'CPU/run µs':>10} {'full GCs':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, jobs, row in rows:
        print(
            f"{name:{width}} {jobs:>6} {row['runs']:>8} {row['expected']:>8}"
            f" {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['max_ms']:>7.1f}"
            f" {row['cpu_per_run_us']:>10.1f} {row['full_collections']:>8}"
        )
    print(f"window {WINDOW_S:g}s of the loop's clock after a {WARMUP_S:g}s warm-up")
    print(f"load after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    for name, jobs, row in rows:
        print(
            f"RESULT dispatch system={name} jobs={jobs} p50_ms={row['p50_ms']:.3f}"
            f" p99_ms={row['p99_ms']:.3f} max_ms={row['max_ms']:.3f}"
            f" cpu_per_run_us={row['cpu_per_run_us']:.1f}"
            f" full_collections={row['full_collections']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
