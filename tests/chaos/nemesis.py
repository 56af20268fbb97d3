"""The nemesis: a seeded plan of faults, printed before the run, carried out on the run's parts.

The plan is made whole from ``random.Random(seed)`` before anything starts, so a seed names
one run's faults exactly (the machine's timing still varies). Faults come one at a time,
each healed before the next, with a pause between them; the last one is healed
:data:`QUIET_END_SECONDS` before the window closes.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .checker import CONTROL_PLANE_KINDS, Fault
from .proxy import FaultProxy, Mode

#: Each kind, and what it does (``seconds`` is how long it lasts before it is healed).
KINDS = {
    "kill": "SIGKILL an operator; start it again after `seconds`",
    "term": "SIGTERM an operator (a graceful stop); start it again `seconds` after it exits",
    "pause": "SIGSTOP an operator for 0.5-3 x lease_stale_seconds, then SIGCONT",
    "black-hole": "its proxy accepts and forwards nothing",
    "drop-replies": "its proxy forwards requests and discards the API server's answers",
    "latency": "its proxy delivers every chunk `value` seconds late",
    "apiserver": "SIGKILL kube-apiserver; start it again after `seconds`",
    "etcd": "SIGSTOP etcd, then SIGCONT",
    "clock": "an operator's wall clock `value` seconds off (libfaketime)",
    "rate": "an operator's wall clock running at `value` times real time (libfaketime); "
    "back at x1 it stays off by what it gained or lost until the process restarts",
}
#: Kinds that need libfaketime in the operators.
CLOCK_KINDS = frozenset({"clock", "rate"})
#: Kinds aimed at one operator process (the others hit the control plane).
OPERATOR_KINDS = frozenset(KINDS) - CONTROL_PLANE_KINDS
QUIET_END_SECONDS = 10.0
#: The pause between one fault's heal and the next fault.
GAP_SECONDS = (3.0, 8.0)


@dataclass(frozen=True, slots=True)
class Step:
    """One planned fault: ``at`` seconds after the window opened, on ``target``."""

    at: float
    kind: str
    target: str
    seconds: float
    value: str = ""

    def describe(self) -> str:
        value = f" {self.value}" if self.value else ""
        return f"+{self.at:6.1f}s {self.kind}{value} on {self.target} for {self.seconds:.1f}s"


def _duration(rng: random.Random, kind: str, lease_stale: float) -> tuple[float, str]:
    if kind in ("kill", "term"):
        return rng.uniform(1.0, 5.0), ""
    if kind == "pause":
        return rng.uniform(0.5, 3.0) * lease_stale, ""
    if kind in ("black-hole", "drop-replies"):
        return rng.uniform(3.0, 20.0), ""
    if kind == "latency":
        return rng.uniform(5.0, 20.0), f"{rng.uniform(0.1, 2.0):.2f}"
    if kind == "apiserver":
        return rng.uniform(0.0, 3.0), ""
    if kind == "etcd":
        return rng.uniform(2.0, 10.0), ""
    if kind == "clock":
        return rng.uniform(10.0, 30.0), rng.choice(("+60", "-60"))
    if kind == "rate":
        return rng.uniform(10.0, 30.0), rng.choice(("x0.5", "x2"))
    raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")


def plan(
    seed: int,
    kinds: Sequence[str],
    replicas: Sequence[str],
    window_seconds: float,
    *,
    lease_stale: float,
) -> list[Step]:
    """The faults of one run, in order; empty when ``kinds`` is."""
    rng = random.Random(seed)
    steps: list[Step] = []
    # libfaketime steps a process's clock or changes its rate, not both (tools/faketime.py):
    # the first clock fault on a replica decides which kind it gets.
    clock_kind: dict[str, str] = {}
    at = rng.uniform(*GAP_SECONDS)
    while kinds:
        kind = rng.choice(kinds)
        seconds, value = _duration(rng, kind, lease_stale)
        if kind in CLOCK_KINDS:
            fitting = [r for r in replicas if clock_kind.get(r, kind) == kind]
            if not fitting:
                continue
            target = rng.choice(fitting)
            clock_kind[target] = kind
        elif kind in OPERATOR_KINDS:
            target = rng.choice(replicas)
        else:
            target = kind.replace("apiserver", "kube-apiserver")
        if at + seconds > window_seconds - QUIET_END_SECONDS:
            break
        steps.append(Step(round(at, 1), kind, target, round(seconds, 1), value))
        at += seconds + rng.uniform(*GAP_SECONDS)
    return steps


def rate_changed(steps: Sequence[Step]) -> set[str]:
    """The replicas whose clock rate the plan changes: libfaketime's continuous mode for them."""
    return {step.target for step in steps if step.kind == "rate"}


class Targets(Protocol):
    """What the nemesis acts on: operators, their proxies and clocks, the control plane."""

    def pid(self, replica: str) -> int: ...
    def read_counters(self, replica: str) -> None: ...
    def signal(self, replica: str, signum: int) -> None: ...
    def wait_exit(self, replica: str, timeout: float) -> None: ...
    def restart(self, replica: str) -> None: ...
    def proxy(self, replica: str) -> FaultProxy: ...
    def set_clock(self, replica: str, spec: str) -> None: ...
    def kill_control_plane(self, name: str) -> None: ...
    def restart_control_plane(self, name: str) -> None: ...
    def signal_control_plane(self, name: str, signum: int) -> None: ...


class Nemesis:
    """Carries out a plan on a thread of its own, from :meth:`start` on; records each fault."""

    def __init__(self, steps: Sequence[Step], targets: Targets, log: Callable[[str], None]) -> None:
        self._steps = steps
        self._targets = targets
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        #: When the last fault was healed (monotonic); slow restarts put it past the plan.
        self.finished_at = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def running(self) -> bool:
        """Whether the plan is still being carried out."""
        return self._thread.is_alive()

    def join(self) -> None:
        """Wait for the plan to finish (every fault healed); re-raise what broke it."""
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop waiting: what is injected is healed at once, and nothing new starts."""
        self._stop.set()

    def _sleep_until(self, at: float) -> bool:
        return not self._stop.wait(max(0.0, self._began + at - time.monotonic()))

    def _run(self) -> None:
        try:
            for step in self._steps:
                if not self._sleep_until(step.at):
                    return
                self._log(f"nemesis {step.describe()}")
                self._apply(step)
                if step.kind in CONTROL_PLANE_KINDS:
                    # Restarted (it answers) or resumed: a failover can go on from here.
                    self.faults[-1] = dataclasses.replace(self.faults[-1], healed=time.monotonic())
        except BaseException as error:  # reported by join(), on the caller's thread
            self.error = error
        finally:
            self.finished_at = time.monotonic()

    def _record(self, step: Step) -> None:
        pid = self._targets.pid(step.target) if step.kind in OPERATOR_KINDS else 0
        self.faults.append(
            Fault(step.kind, step.target, pid, time.monotonic(), time.time(), seconds=step.seconds)
        )

    def _apply(self, step: Step) -> None:
        t, target = self._targets, step.target
        if step.kind in ("kill", "term"):
            # Its counts die with it: read first. The read takes seconds on a loaded
            # machine, while the process goes on: the fault is when the signal goes out.
            t.read_counters(target)
        self._record(step)
        if step.kind == "kill":
            t.signal(target, signal.SIGKILL)
            t.wait_exit(target, 30)
            self._stop.wait(step.seconds)
            t.restart(target)
        elif step.kind == "term":
            t.signal(target, signal.SIGTERM)
            t.wait_exit(target, 60)
            self._stop.wait(step.seconds)
            t.restart(target)
        elif step.kind == "pause":
            t.signal(target, signal.SIGSTOP)
            self._stop.wait(step.seconds)
            t.signal(target, signal.SIGCONT)
        elif step.kind in ("black-hole", "drop-replies", "latency"):
            proxy = t.proxy(target)
            proxy.set_mode(Mode(step.kind), float(step.value or 0))
            self._stop.wait(step.seconds)
            proxy.set_mode(Mode.PASS)
        elif step.kind == "apiserver":
            t.kill_control_plane("kube-apiserver")
            self._stop.wait(step.seconds)
            t.restart_control_plane("kube-apiserver")
        elif step.kind == "etcd":
            t.signal_control_plane("etcd", signal.SIGSTOP)
            self._stop.wait(step.seconds)
            t.signal_control_plane("etcd", signal.SIGCONT)
        elif step.kind == "clock":
            t.set_clock(target, f"{step.value} x1")
            self._stop.wait(step.seconds)
            t.set_clock(target, "+0 x1")
        elif step.kind == "rate":
            t.set_clock(target, f"+0 {step.value}")
            self._stop.wait(step.seconds)
            t.set_clock(target, "+0 x1")
