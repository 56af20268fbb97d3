"""What every benchmark measures with, in one place.

CPU time and memory of this process or another, percentiles by nearest rank,
waiting for a condition with a deadline, stopping a process. It imports
nothing heavy: benchmarks that measure their own memory import it too
(cluster.py has what the benchmarks against an API server share).
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def quick() -> bool:
    """Whether ``QUICK`` (set, and not 0) asks for a reduced run."""
    return os.environ.get("QUICK", "") not in ("", "0")


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    """Rows of (measure, value), aligned, under a heading."""
    width = max(len(label) for label, _ in rows)
    print(f"\n{'measure':<{width}}  value")
    print("-" * (width + 24))
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def print_columns(
    headings: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], width: int = 22
) -> None:
    """Rows of (measure, one value per column), aligned under ``headings``."""
    label_width = max(len(label) for label, _ in rows)
    print(f"\n{'measure':<{label_width}}" + "".join(f"{h:>{width}}" for h in headings))
    print("-" * (label_width + width * len(headings)))
    for label, cells in rows:
        print(f"{label:<{label_width}}" + "".join(f"{cell:>{width}}" for cell in cells))


def print_targets(targets: Iterable[tuple[str, bool]], title: str = "targets") -> None:
    """Each target (what, met) as ``ok`` or ``MISSED``."""
    print(f"\n{title}")
    for label, met in targets:
        print(f"  {'ok' if met else 'MISSED':6} {label}")


def callgrind_instructions(command: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Instructions valgrind's callgrind counts for the whole of ``command`` (a Python child)."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def cpu_seconds() -> float:
    """CPU time of this process (all threads), user plus system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """CPU time (user + system) of process ``pid`` so far, with its children if asked (/proc)."""
    pids = [pid]
    if with_children:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine spent so far (every CPU), from /proc/stat."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _status_mb(pid: int | str, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid`` now, in MiB."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb() -> float:
    """The peak resident set size of this process so far, in MiB (VmHWM)."""
    return _status_mb("self", "VmHWM")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0 to 1) of the sorted values, by nearest rank; NaN if none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, *, interval: float = 0.2
) -> None:
    """Return once ``condition()`` is true; raise :class:`TimeoutError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def stop(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; nothing if it has exited."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
