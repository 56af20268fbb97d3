"""The engine's own cost of one run, in CPU instructions, for this tree and others side by side.

Run with ``.venv/bin/python benchmarks/bench_run_cost.py [TREE ...]`` (needs
valgrind). Each tree (a checkout of this repository; default: this one) is
measured in child processes under valgrind's callgrind: one awaits
``bench_telemetry.ManualRuns().run(RUNS)`` (manual runs of a no-op ``async``
job, telemetry off: dispatch, task, start, span, context, body, record, end),
the other ``run(0)``; the difference over ``RUNS`` is one run's instructions.
The child imports ``podcron`` and the benchmark from the tree it measures, so
an old commit is measured as it was (``git archive COMMIT | tar -x -C DIR``).
A count, so a loaded machine does not move it; the load is printed anyway.
Prints one table and a ``RESULT run-cost ...`` line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import callgrind_instructions

RUNS = 5_000
HERE = Path(__file__).resolve().parents[1]
# The child must not find an OTLP endpoint: telemetry off is what is measured.
TELEMETRY_ENVIRONMENT = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED")


def _child(tree: Path, runs: int) -> None:
    sys.path[:0] = [str(tree / "operator"), str(tree / "benchmarks")]
    # Imported from the tree, which is on the path only now.
    import bench_telemetry
    import podcron

    if not Path(podcron.__file__).is_relative_to(tree):
        raise RuntimeError(f"imported {podcron.__file__}, not the tree {tree}")

    async def main() -> None:
        await bench_telemetry.ManualRuns().run(runs)

    asyncio.run(main())


def _instructions(tree: Path, runs: int) -> int:
    environment = {k: v for k, v in os.environ.items() if k not in TELEMETRY_ENVIRONMENT}
    environment.pop("PYTHONPATH", None)
    return callgrind_instructions(
        [sys.executable, __file__, "child", str(tree), str(runs)], env=environment
    )


def per_run(trees: Sequence[Path]) -> list[float]:
    """Instructions of one manual run in each tree; the children run side by side."""
    with concurrent.futures.ThreadPoolExecutor(2 * len(trees)) as pool:
        counts = {
            (tree, runs): pool.submit(_instructions, tree, runs)
            for tree in trees
            for runs in (0, RUNS)
        }
        return [(counts[tree, RUNS].result() - counts[tree, 0].result()) / RUNS for tree in trees]


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["child"]:
        _child(Path(argv[1]).resolve(), int(argv[2]))
        return
    trees = [Path(arg).resolve() for arg in argv] or [HERE]
    print(f"load before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print(f"  counting {len(trees)} trees ...", file=sys.stderr, flush=True)
    rows = [(str(tree), count) for tree, count in zip(trees, per_run(trees), strict=True)]
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:{width}}  {count:>10,.0f} instructions per run")
    print(f"load after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print("RESULT run-cost " + " | ".join(f"{name}: {count:,.0f}" for name, count in rows))


if __name__ == "__main__":
    main(sys.argv[1:])
