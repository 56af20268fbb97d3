"""Several operator replicas on one ring (docs/ha.md) against the real control plane.

Each test starts real operator processes sharing the jobs of its namespace through Leases
there, with short Lease settings (:data:`HA`) so that a failover fits a test. The jobs
are ``podcron_chaosjobs.ledger:tick`` every second: each started tick appends one line,
naming the replica (``PODCRON_CHAOS_REPLICA``), to a ledger file the test reads. What is
asserted: no (job, tick) starts twice, both replicas run jobs, a killed replica's jobs
start elsewhere, either replica's System API serves every job and sends a manual run to
the owner, and the status counters never go backwards while jobs move.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane import ControlPlane
from podcron.config import Settings
from podcron.ha.protocol import Params
from tests.jobs.podcron_chaosjobs.ledger import LEDGER_VARIABLE, REPLICA_VARIABLE, Entry
from tests.jobs.podcron_chaosjobs.ledger import read as read_ledger

from ..waiting import wait_for
from .conftest import ROOT, OperatorProcess
from .scheduledjobs import apply, hello_runs, manifest, status
from .sidecar_process import SidecarProcess, client
from .statuswatch import StatusWatch, went_back

JOBS_PATH = ROOT / "tests" / "jobs"
LEDGER_JOB = {"entryPoint": "podcron_chaosjobs.ledger:tick", "schedule": {"every": "1s"}}
#: Each job is owned by a replica its UID hashes to: with 24, the chance that one replica of
#: two (or the third to join) gets none, which the tests wait for, is under one in 10,000.
JOBS = 24
#: R, Λ and L shorter than the defaults, so that a failover fits a test; L stays well above
#: a renewal's round trip on a loaded machine, so that a replica is not fenced for being slow.
HA = Settings(
    ha_ring="podcron",
    lease_namespace="set-per-test",
    lease_renew_seconds=0.5,
    fire_bound_seconds=1.5,
    lease_stale_seconds=4.0,
)
#: How long a killed replica's jobs may take to start elsewhere: fenced after L, the first
#: tick above its frozen fire bound (Λ past its last renewal, up to twice that while its
#: renewals came slowly) one interval later, plus a renewal for the survivor to adopt the
#: epoch and one to settle it. The margin absorbs process scheduling; :func:`wait_for`
#: stretches the whole by the machine's load.
FAILOVER_DEADLINE = (
    HA.lease_stale_seconds
    + Params(
        renew_period=HA.lease_renew_seconds,
        fire_ahead=HA.fire_bound_seconds,
        fence_after=HA.lease_stale_seconds,
    ).fire_ahead_at_most
    + 2 * HA.lease_renew_seconds
    + 1.0
    + 10.0
)
#: SIGTERM hands the jobs over within 2R; the rest is the same margin.
HANDOVER_DEADLINE = 2 * HA.lease_renew_seconds + 1.0 + 10.0
#: Start-up, watch and first renewals of a replica, until it runs jobs of its own.
JOIN_DEADLINE = 30.0


@dataclass
class Replica:
    """One operator process on the ring, and its sidecar when the test needs one."""

    name: str
    operator: OperatorProcess
    sidecar: SidecarProcess | None = None

    @property
    def pod(self) -> str:
        """``POD_NAME``: its identities on the ring are this plus ``-`` and 8 hex digits."""
        return f"ha-{self.name}"

    def is_identity(self, identity: object) -> bool:
        return isinstance(identity, str) and identity.startswith(f"{self.pod}-")


@dataclass
class Ring:
    """The replicas a test started, the namespace they share and the ledger their jobs write."""

    plane: ControlPlane
    namespace: str
    ledger: Path
    start: Callable[..., Replica]

    def entries(self) -> list[Entry]:
        return read_ledger(self.ledger)

    def owners(self) -> dict[str, object]:
        """Each job's ``status.replica``, the identity of the replica that last gained it."""
        return {
            name: status(self.plane, self.namespace, name).get("replica")
            for name in job_names(JOBS)
        }


def job_names(count: int) -> list[str]:
    return [f"tick-{index}" for index in range(count)]


def _create_jobs(ring: Ring) -> None:
    apply(ring.plane, ring.namespace, *(manifest(name, LEDGER_JOB) for name in job_names(JOBS)))


@pytest.fixture
def ring(
    crd: ControlPlane,
    namespace: str,
    tmp_path: Path,
    start_operator: Callable[..., OperatorProcess],
) -> Iterator[Ring]:
    """Start replicas with ``ring.start(name)``; operators and sidecars stop afterwards."""
    ledger = tmp_path / "ledger.txt"
    sidecars: list[SidecarProcess] = []
    env = {
        "PODCRON_NAMESPACES": namespace,
        "PODCRON_ALLOWED_MODULES": "podcron_chaosjobs.*,podcron_examples.*",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(JOBS_PATH), os.environ.get("PYTHONPATH")])),
        "PODCRON_HA_RING": HA.ha_ring,
        "PODCRON_LEASE_NAMESPACE": namespace,
        "PODCRON_LEASE_RENEW_SECONDS": str(HA.lease_renew_seconds),
        "PODCRON_FIRE_BOUND_SECONDS": str(HA.fire_bound_seconds),
        "PODCRON_LEASE_STALE_SECONDS": str(HA.lease_stale_seconds),
        LEDGER_VARIABLE: str(ledger),
    }

    def start(name: str, *, with_sidecar: bool = False) -> Replica:
        replica_env = env | {"POD_NAME": f"ha-{name}", REPLICA_VARIABLE: name}
        sidecar = None
        if with_sidecar:
            # The sidecar first: the operator tells the other replicas its port, for redirects.
            socket_path = tmp_path / f"{name}.sock"
            sidecar = SidecarProcess(
                dict(os.environ)
                | {"PODCRON_CONTROL_SOCKET": str(socket_path)}
                | {"PODCRON_ALLOWED_CIDRS": "127.0.0.1/32"},
                tmp_path / f"sidecar-{name}.log",
            )
            sidecars.append(sidecar)
            replica_env |= {
                "PODCRON_CONTROL_SOCKET": str(socket_path),
                "PODCRON_SIDECAR_HOST": "127.0.0.1",
                "PODCRON_SIDECAR_PORT": str(sidecar.port),
            }
        operator = start_operator(**replica_env)
        wait_for(
            lambda: "podcron operator started" in operator.log() or operator.process.poll(),
            timeout=30,
            what=f"replica {name} to start",
        )
        assert operator.process.poll() is None, operator.log()
        return Replica(name, operator, sidecar)

    yield Ring(crd, namespace, ledger, start)
    for sidecar in sidecars:
        sidecar.stop()


def _duplicates(entries: list[Entry]) -> list[tuple[str, float]]:
    counted = Counter((entry.job, round(entry.tick, 3)) for entry in entries)
    return [key for key, count in counted.items() if count > 1]


def _replicas_running(entries: list[Entry], since: float = 0.0) -> dict[str, set[str]]:
    """Per replica name, the jobs it started a tick of at or after wall time ``since``."""
    jobs: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        if entry.tick >= since:
            jobs[entry.replica].add(entry.job)
    return jobs


def _all_running(ring: Ring, names: set[str]) -> Callable[[], bool]:
    """Whether every job has started a tick, and each replica in ``names`` some of them."""

    def running() -> bool:
        by_replica = _replicas_running(ring.entries())
        every_job = set().union(*by_replica.values()) if by_replica else set()
        return len(every_job) == JOBS and names <= {r for r, jobs in by_replica.items() if jobs}

    return running


def test_two_replicas_share_the_jobs_and_never_start_a_tick_twice(ring: Ring) -> None:
    _create_jobs(ring)
    ring.start("a")
    ring.start("b")
    wait_for(_all_running(ring, {"a", "b"}), timeout=JOIN_DEADLINE, what="both replicas' ticks")
    shared_from = time.time()
    # Long enough for every job to tick well over a dozen times with both replicas up.
    wait_for(
        lambda: (
            min(Counter(e.job for e in ring.entries() if e.tick >= shared_from).values(), default=0)
            >= 15
        ),
        timeout=40,
        what="15 ticks of every job",
    )
    entries = ring.entries()
    assert _duplicates(entries) == []
    shared = _replicas_running(entries, since=shared_from)
    assert shared["a"], dict(shared)
    assert shared["b"], dict(shared)


def test_a_killed_replicas_jobs_start_on_the_other(ring: Ring) -> None:
    _create_jobs(ring)
    a = ring.start("a")
    ring.start("b")
    wait_for(_all_running(ring, {"a", "b"}), timeout=JOIN_DEADLINE, what="both replicas' ticks")
    killed_at = time.time()
    orphaned = _replicas_running(ring.entries())["a"]
    a.operator.stop(signal.SIGKILL)

    def taken_over() -> bool:
        return orphaned <= _replicas_running(ring.entries(), since=killed_at)["b"]

    wait_for(taken_over, timeout=FAILOVER_DEADLINE, what=f"b to start ticks of {orphaned}")
    assert _duplicates(ring.entries()) == []


def test_either_replicas_system_api_lists_every_job_and_sends_a_manual_run_to_its_owner(
    ring: Ring,
) -> None:
    # A job that only runs when asked, besides the ledger jobs that show both replicas own some.
    apply(
        ring.plane,
        ring.namespace,
        manifest("manual", {"entryPoint": "hello", "schedule": {"every": "1h"}, "suspend": True}),
    )
    _create_jobs(ring)
    replicas = [ring.start("a", with_sidecar=True), ring.start("b", with_sidecar=True)]
    wait_for(_all_running(ring, {"a", "b"}), timeout=JOIN_DEADLINE, what="both replicas' ticks")
    session = client()
    every_job = sorted([f"{ring.namespace}/{name}" for name in [*job_names(JOBS), "manual"]])
    for replica in replicas:
        assert replica.sidecar is not None
        url = f"{replica.sidecar.url}/_sys/job"

        def listed(url: str = url) -> list[str]:
            return sorted(job["jobId"] for job in session.get(url, timeout=10).json()["data"])

        # A replica runs the ticks of the jobs it registered before it has registered every
        # job that existed at its start; until then its operator is not ready and the list
        # is empty (README, System API).
        wait_for(lambda: listed() != [], timeout=JOIN_DEADLINE, what=f"{replica.name}'s list")
        assert listed() == every_job, replica.name

    path = f"/_sys/job/{ring.namespace}/manual"

    def settled_owner() -> Replica | None:
        # The status may still name the replica that owned the job before the other joined:
        # the owner is the one whose sidecar answers a (harmless) read of its runs itself,
        # while the other redirects there, and the status names it.
        answers = [
            session.get(f"{r.sidecar.url}{path}/runs", allow_redirects=False, timeout=10)
            for r in replicas
            if r.sidecar is not None
        ]
        codes = sorted(a.status_code for a in answers)
        named = status(ring.plane, ring.namespace, "manual").get("replica")
        if codes != [200, 307] or named is None:
            return None
        owner = replicas[[a.status_code for a in answers].index(200)]
        return owner if owner.is_identity(named) else None

    owner = wait_for(settled_owner, timeout=JOIN_DEADLINE, what="the manual job's settled owner")
    owner_identity = status(ring.plane, ring.namespace, "manual")["replica"]
    other = next(r for r in replicas if r is not owner)
    assert owner.sidecar is not None
    assert other.sidecar is not None
    answer = session.post(f"{other.sidecar.url}{path}", allow_redirects=False, timeout=10)
    assert answer.status_code == 307, answer.text
    assert answer.headers["Location"] == f"{owner.sidecar.url}{path}"
    followed = session.post(answer.headers["Location"], timeout=10)
    assert followed.status_code == 200, followed.text

    job_id = f"{ring.namespace}/manual"
    wait_for(
        lambda: (status(ring.plane, ring.namespace, "manual").get("runs") or {}).get("total") == 1,
        timeout=20,
        what="the manual run in status",
    )
    assert [trigger for trigger, _ in hello_runs(owner.operator.log(), job_id)] == ["manual"]
    assert hello_runs(other.operator.log(), job_id) == []
    assert status(ring.plane, ring.namespace, "manual")["replica"] == owner_identity


def test_status_counters_never_go_backwards_while_jobs_move(ring: Ring) -> None:
    _create_jobs(ring)
    everything = job_names(JOBS)
    watch = StatusWatch(ring.plane, ring.namespace)
    try:
        a = ring.start("a")
        b = ring.start("b")
        wait_for(_all_running(ring, {"a", "b"}), timeout=JOIN_DEADLINE, what="both replicas")

        def owned_by(replica: Replica, names: list[str]) -> Callable[[], bool]:
            def moved() -> bool:
                latest = [watch.latest(name) for name in names]
                return all(replica.is_identity(owner) and runs for runs, owner in latest)

            return moved

        # SIGTERM: a hands its jobs over, then drains; b continues their counters.
        a.operator.stop(signal.SIGTERM)
        wait_for(owned_by(b, everything), timeout=HANDOVER_DEADLINE, what="b to own every job")
        moved_at = {name: watch.latest(name)[0].get("total", 0) for name in everything}
        # A replica joining takes some of b's jobs while b runs them.
        c = ring.start("c")
        wait_for(
            lambda: any(c.is_identity(watch.latest(name)[1]) for name in everything),
            timeout=JOIN_DEADLINE,
            what="c to gain jobs from b",
        )
        # Every job runs on after moving, its counters above those seen when b took it.
        wait_for(
            lambda: all(watch.latest(n)[0].get("total", 0) > moved_at[n] + 2 for n in everything),
            timeout=HANDOVER_DEADLINE,
            what="every job to run on after moving",
        )
        assert b.operator.process.poll() is None
        assert c.operator.process.poll() is None
    finally:
        seen = watch.stop()
    assert {name: went_back(history) for name, history in seen.items()} == {
        name: [] for name in seen
    }
    assert set(seen) == set(everything)
    assert _duplicates(ring.entries()) == []
