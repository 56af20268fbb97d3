"""Shared resources benchmark: a warm connection handed to every run versus one opened per run.

Run with ``python benchmarks/bench_resources.py`` (``make bench-resources``;
``QUICK=1`` for a reduced run). It prints a table and, as its last line, a
``RESULT resources ...`` line, with the machine's load average beside.

One process, one event loop, the real :class:`~podcron.engine.Engine` and
:class:`~podcron.resources.ResourceManager`. A line-echo server on
127.0.0.1 stands for a database. Runs are started one after the other
(manual triggers, each waiting for the last run's outcome), so each figure
is the wall time of one whole run: trigger, task, context, the job, outcome.
The modes:

* ``bare``: a job that lists no resource and does nothing: the engine's own
  per-run cost, what ``make bench-engine`` dispatches;
* ``listed``: the same job listing one (warm) resource it does not touch:
  what ``ctx.resources`` adds to every run of a job that lists one;
* ``warm``: one request and answer over the shared connection (the resource);
* ``cold``: a connection opened, used once and closed in every run.

The modes alternate, ``ROUNDS`` times; the table shows medians of the
per-run means.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from podcron.context import JobContext
from podcron.engine import ConcurrencyPolicy, Engine, JobEvent, JobSpec, RunFinished, RunStatus
from podcron.resources import ResourceManager
from podcron.schedules import Every

QUICK = os.environ.get("QUICK") == "1"
RUNS = 500 if QUICK else 3000
ROUNDS = 3 if QUICK else 7
MODES = ("bare", "listed", "warm", "cold")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    writer.close()


async def _ask(connection: Connection) -> None:
    reader, writer = connection
    writer.write(b"SELECT 1\n")
    await writer.drain()
    if await reader.readline() != b"SELECT 1\n":
        raise RuntimeError("the echo server answered something else")


def _jobs(port: int) -> dict[str, Callable[[JobContext], Awaitable[None]]]:
    async def bare(ctx: JobContext) -> None:
        pass

    async def warm(ctx: JobContext) -> None:
        await _ask(ctx.resource("db", tuple))

    async def cold(ctx: JobContext) -> None:
        connection = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _ask(connection)
        finally:
            connection[1].close()
            await connection[1].wait_closed()

    return {"bare": bare, "listed": bare, "warm": warm, "cold": cold}


async def _measure() -> dict[str, list[float]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    @contextlib.asynccontextmanager
    async def database() -> AsyncIterator[Connection]:
        connection = await asyncio.open_connection("127.0.0.1", port)
        try:
            yield connection
        finally:
            connection[1].close()

    resources = ResourceManager({"db": lambda: database})
    resources.start()
    engine = Engine(max_manual_runs=1, loop_watchdog=False, resources=resources)
    finished: asyncio.Queue[RunFinished] = asyncio.Queue()

    def on_event(event: JobEvent) -> None:
        if isinstance(event, RunFinished):
            finished.put_nowait(event)

    engine.add_listener(on_event)
    for mode, target in _jobs(port).items():
        engine.upsert(
            JobSpec(
                job_id=f"bench/{mode}",
                namespace="bench",
                name=mode,
                entry_point=f"bench:{mode}",
                target=target,
                # Never due: every run is a manual one.
                schedule=Every(interval=timedelta(days=365)),
                concurrency_policy=ConcurrencyPolicy.ALLOW,
                resources=() if mode == "bare" else ("db",),
            )
        )

    async def one_round(mode: str) -> float:
        began = time.perf_counter()
        for _ in range(RUNS):
            engine.trigger(f"bench/{mode}")
            outcome = await finished.get()
            if outcome.status is not RunStatus.SUCCESS:
                raise RuntimeError(f"{mode}: {outcome.error}")
        return (time.perf_counter() - began) / RUNS * 1e6

    for mode in MODES:  # warm-up: imports, the resource's creation, the first connections
        await one_round(mode)
    per_run: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(ROUNDS):
        for mode in MODES:
            per_run[mode].append(await one_round(mode))
    await engine.shutdown()
    await resources.close(5.0)
    server.close()
    await server.wait_closed()
    return per_run


def main() -> None:
    load_before = os.getloadavg()[0]
    per_run = asyncio.run(_measure())
    load_after = os.getloadavg()[0]
    medians: dict[str, float] = {mode: statistics.median(times) for mode, times in per_run.items()}
    spread: dict[str, Any] = {mode: (min(times), max(times)) for mode, times in per_run.items()}
    print(f"{RUNS} runs per round, {ROUNDS} rounds; per run, in microseconds (median of rounds)")
    print(f"{'mode':8} {'median':>9} {'min':>9} {'max':>9}")
    for mode in MODES:
        low, high = spread[mode]
        print(f"{mode:8} {medians[mode]:9.1f} {low:9.1f} {high:9.1f}")
    print(
        f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after,"
        f" on {os.cpu_count()} CPUs"
    )
    print(
        f"RESULT resources bare_us={medians['bare']:.1f} listed_us={medians['listed']:.1f}"
        f" warm_us={medians['warm']:.1f} cold_us={medians['cold']:.1f}"
        f" cold_over_warm={medians['cold'] / medians['warm']:.1f}"
        f" load1={load_before:.1f}-{load_after:.1f}"
    )


if __name__ == "__main__":
    main()
