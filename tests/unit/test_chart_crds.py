"""The chart ships the CRD: helm/podcron/crds/ is a byte-for-byte copy of crds/, the single
source (refresh it with `make chart-crds`)."""

from __future__ import annotations

from ..chart import CHART, ROOT

SOURCE = ROOT / "crds"
COPY = CHART / "crds"


def test_chart_crds_are_byte_identical_to_the_top_level_crds() -> None:
    source = {path.name: path.read_bytes() for path in SOURCE.glob("*.yaml")}
    copy = {path.name: path.read_bytes() for path in COPY.glob("*.yaml")}
    assert source, "crds/ holds no CRD"
    assert sorted(copy) == sorted(source), "helm/podcron/crds/ must hold the same files as crds/"
    stale = [name for name in source if copy[name] != source[name]]
    assert not stale, f"helm/podcron/crds/ differs from crds/ in {stale}: run `make chart-crds`"
