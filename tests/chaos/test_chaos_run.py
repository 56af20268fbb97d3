"""The short chaos run `make test` includes (``-m chaos`` selects it): 100 jobs, 45 s of faults.

Three replicas on one ring, every kind of fault (docs/testing.md, "Chaos run"). It holds
the two promises a run must keep: no tick starts twice, and every tick that did not start
is counted, per job, in ``podcron_ticks_missed_total`` or ``podcron_ticks_uncertain_total``.
``PODCRON_CHAOS_SEED`` picks another plan of faults.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controlplane import ControlPlane, ensure_binaries
from gobuild import BinariesUnavailable
from tests.chaos.run import Settings, run

SEED = int(os.environ.get("PODCRON_CHAOS_SEED", "8"))

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(600)]


def test_every_tick_starts_at_most_once_under_faults(tmp_path: Path) -> None:
    try:
        binaries = ensure_binaries()
    except BinariesUnavailable as error:
        pytest.skip(reason=f"no local control plane: {error}")
    settings = Settings(
        replicas=3,
        jobs=100,
        seconds=45,
        seed=SEED,
        intervals=(2, 5, 10),
        ha={"ha_ring": "chaos"},
        workdir=tmp_path,
    )
    # A control plane of its own: the nemesis kills and restarts it.
    with ControlPlane.start(binaries, tmp_path / "controlplane") as plane:
        verdict = run(settings, plane)
    assert verdict.duplicates_all == 0, f"ticks started twice; see {tmp_path}"
    uncounted = "; ".join(job.describe() for job in verdict.uncounted)
    assert verdict.missed_outside_window == 0, f"ticks lost uncounted: {uncounted}"
