"""The short chaos run `make test` includes (``-m chaos`` selects it): 100 jobs, 45 s of faults.

With one replica (today) the faults are those one process must survive without starting a
tick twice; clock faults are left out: a process whose clock was stepped forward starts ticks
early, and a successor started before real time reaches them would start them again (nothing
remembers them across the restart; docs/ha.md's fire bound does). Once the operator has
``podcron.ha``, the run uses three replicas on one ring with every fault.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from controlplane import ControlPlane, ensure_binaries
from gobuild import BinariesUnavailable
from tests.chaos import nemesis
from tests.chaos.run import Settings, run

HA = importlib.util.find_spec("podcron.ha") is not None
SEED = int(os.environ.get("PODCRON_CHAOS_SEED", "8"))

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(600)]


def test_every_tick_starts_at_most_once_under_faults(tmp_path: Path) -> None:
    try:
        binaries = ensure_binaries()
    except BinariesUnavailable as error:
        pytest.skip(reason=f"no local control plane: {error}")
    kinds = tuple(k for k in nemesis.KINDS if HA or k not in nemesis.CLOCK_KINDS)
    settings = Settings(
        replicas=3 if HA else 1,
        jobs=100,
        seconds=45,
        seed=SEED,
        kinds=kinds,
        intervals=(2, 5, 10),
        ha={"ha_ring": "chaos"} if HA else {},
        workdir=tmp_path,
    )
    # A control plane of its own: the nemesis kills and restarts it.
    with ControlPlane.start(binaries, tmp_path / "controlplane") as plane:
        verdict = run(settings, plane)
    assert verdict.duplicates_all == 0, f"ticks started twice; see {tmp_path}"
    # Not asserted yet: ticks lost outside the counted windows. With three replicas a
    # handover still loses some (docs/testing.md, "Chaos run"); RESULT prints how many.
