"""What the replica protocol (podcron.ha) costs: per tick, per epoch change, per second.

Run with ``make bench-ha`` (``QUICK=1`` for a reduced run). CPU time, so a loaded
machine slows the run but hardly moves the figures; the load is printed beside them.

Targets:

* the gate's verdict, asked before every tick: at most 2 µs of CPU per call;
* adopting an epoch (4,096 bucket owners, on the event loop) with 10 replicas: at
  most 100 ms of CPU. The loop stalls that long once per membership change, which
  a tick's lateness absorbs (32 to 54 ms measured, under loads of 12 and 6);
* steady state: at most 1.05 writes per replica per second (docs/ha.md: one per R),
  whatever the number of jobs.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Coroutine
from typing import Any

from harness import cpu_seconds, print_table, print_targets, quick
from podcron.ha.agent import Agent
from podcron.ha.protocol import Member, Params, Snapshot
from podcron.ha.ring import BUCKETS, assignment, bucket
from podcron.ha.store import LeaseRecord, MemoryStore

JOBS = 10_000 if quick() else 100_000


def _done(call: Coroutine[Any, Any, None]) -> None:
    # MemoryStore without latency never suspends: one send runs a step to its end.
    try:
        call.send(None)
    except StopIteration:
        return
    raise RuntimeError("a step suspended")


def verdict_us() -> float:
    """CPU per verdict, over every job of an owner that owns them all."""
    member = Member("bench-00000000", Params())
    member.acknowledged(LeaseRecord("podcron-member-bench-00000000", "", {}, {}, "1"))
    coordinator = LeaseRecord(
        "podcron-coordinator-bench",
        "bench-00000000",
        {"podcron.dev/epoch": "1", "podcron.dev/members": "bench-00000000"},
        {},
        "2",
    )
    member.observe(Snapshot.parse([coordinator], "bench"))
    member.w_acked = math.inf
    agent = Agent(MemoryStore(), ring="bench", pod_name="bench")
    agent.member = member
    keys = [f"ns/job-{i}" for i in range(JOBS)]
    for key in keys:
        agent.add_job(key)
    rounds = 5
    began = cpu_seconds()
    for tick in range(rounds):
        for key in keys:
            agent.verdict(key, float(tick))
    return (cpu_seconds() - began) / (rounds * JOBS) * 1e6


def adoption_ms(replicas: int) -> float:
    """CPU to compute an epoch's 4,096 owners among ``replicas`` members."""
    members = tuple(f"podcron-{i}-{i:08x}" for i in range(replicas))
    assignment.cache_clear()
    began = cpu_seconds()
    owners = assignment(members)
    for b in range(BUCKETS):
        owners.owner_of_bucket(b)
    return (cpu_seconds() - began) * 1e3


def writes_per_replica_second(replicas: int, seconds: int) -> float:
    """Store writes of ``replicas`` agents over ``seconds`` simulated seconds, once settled."""
    now = [0.0]
    store = MemoryStore()
    suffixes = itertools.count()
    agents = [
        Agent(
            store,
            ring="bench",
            pod_name=f"r{i}",
            wall=lambda: 1_000_000.0 + now[0],
            monotonic=lambda: now[0],
            new_suffix=lambda: f"{next(suffixes):08x}",
        )
        for i in range(replicas)
    ]
    for agent in agents:
        for i in range(1_000):
            agent.add_job(f"ns/job-{i}")
    for _ in range(10):  # the ring forms
        now[0] += 1.0
        for agent in agents:
            _done(agent.step())
    before = sum(store.writes.values())
    for _ in range(seconds):
        now[0] += 1.0
        for agent in agents:
            _done(agent.step())
    return (sum(store.writes.values()) - before) / (replicas * seconds)


def main() -> int:
    load_before = os.getloadavg()[0]
    verdict = verdict_us()
    adoption = {n: adoption_ms(n) for n in (2, 4, 10)}
    writes = writes_per_replica_second(3, 60 if quick() else 600)
    load_after = os.getloadavg()[0]
    print_table(
        [
            (f"verdict, CPU per call ({JOBS:,} jobs)", f"{verdict:.2f} µs"),
            *((f"epoch adoption, {n} replicas, CPU", f"{ms:.1f} ms") for n, ms in adoption.items()),
            ("steady-state writes per replica per second", f"{writes:.3f}"),
            ("bucket of one UID, CPU", f"{_bucket_us():.2f} µs"),
        ]
    )
    print(f"\nload average (1 min) {load_before:.1f} before, {load_after:.1f} after")
    targets = [
        ("verdict ≤ 2 µs CPU", verdict <= 2.0),
        ("epoch adoption with 10 replicas ≤ 100 ms CPU", adoption[10] <= 100.0),
        ("≤ 1.05 writes per replica per second", writes <= 1.05),
    ]
    print_targets(targets)
    print(
        f"RESULT ha verdict_us={verdict:.2f} adopt10_ms={adoption[10]:.1f}"
        f" writes_per_replica_s={writes:.3f} load1={load_before:.1f}-{load_after:.1f}"
    )
    return 0 if all(met for _, met in targets) else 1


def _bucket_us() -> float:
    keys = [f"ns/job-{i}" for i in range(JOBS)]
    began = cpu_seconds()
    for key in keys:
        bucket(key)
    return (cpu_seconds() - began) / JOBS * 1e6


if __name__ == "__main__":
    sys.exit(main())
