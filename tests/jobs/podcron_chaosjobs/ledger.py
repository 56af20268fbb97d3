"""The ledger: one line per started tick, appended by the job itself, read by the chaos checker.

``tick`` runs inside an operator process (``tests/jobs`` on ``PYTHONPATH``). Each scheduled or
catch-up run appends one line to the file named by ``PODCRON_CHAOS_LEDGER``: the job, the
scheduled tick podcron passed in (``ctx.scheduled_time``), which replica started it (the
harness names each operator process in ``PODCRON_CHAOS_REPLICA``; the pid tells its restarts
apart) and when, by the process's wall clock (which a clock fault may skew) and by the
monotonic clock (which no fault touches and every process on the machine shares, so the
harness can line it up with the faults it injected).

The file is opened with ``O_APPEND`` and each line is one ``write()`` of well under
``PIPE_BUF`` bytes, so concurrent replicas never interleave and a process killed mid-run
leaves either the whole line or none. Manual runs are not ticks and are not written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from podcron import JobContext

LEDGER_VARIABLE = "PODCRON_CHAOS_LEDGER"
REPLICA_VARIABLE = "PODCRON_CHAOS_REPLICA"
_TICK_TRIGGERS = ("scheduled", "catch-up")

_fd: int | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One started tick, as the ledger holds it."""

    job: str  # namespace/name
    tick: float  # the scheduled instant, seconds since the epoch
    replica: str
    pid: int
    wall: float  # the starting process's time.time()
    monotonic: float  # its time.monotonic(): the same clock as the harness's
    trigger: str

    def line(self) -> bytes:
        return (
            f"{self.job} {self.tick:.3f} {self.replica} {self.pid} {self.wall:.6f} "
            f"{self.monotonic:.6f} {self.trigger}\n"
        ).encode()

    @classmethod
    def parse(cls, line: str) -> Entry:
        job, tick, replica, pid, wall, monotonic, trigger = line.split()
        return cls(job, float(tick), replica, int(pid), float(wall), float(monotonic), trigger)


def read(path: Path) -> list[Entry]:
    """Every whole line of the ledger at ``path``; none when nothing was written yet.

    Read while replicas write: a line still being written (no newline yet) is left out.
    """
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [Entry.parse(line) for line in lines if line.endswith("\n") and line.strip()]


def _ledger() -> int:
    global _fd
    if _fd is None:
        path = os.environ[LEDGER_VARIABLE]
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


async def tick(ctx: JobContext) -> None:
    """Write this run's ledger line (one ``write()``), and return."""
    if ctx.trigger not in _TICK_TRIGGERS:
        return
    entry = Entry(
        job=f"{ctx.namespace}/{ctx.name}",
        tick=ctx.scheduled_time.timestamp(),
        replica=os.environ.get(REPLICA_VARIABLE, "?"),
        pid=os.getpid(),
        wall=time.time(),
        monotonic=time.monotonic(),
        trigger=str(ctx.trigger),
    )
    os.write(_ledger(), entry.line())
