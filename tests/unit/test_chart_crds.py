"""The chart and the package ship the CRD: helm/podcron/crds/ and operator/podcron/crds/ (read
by ``podcron validate``) are byte-for-byte copies of crds/, the single source (refresh them with
`make chart-crds`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..chart import CHART, ROOT

SOURCE = ROOT / "crds"
COPIES = [CHART / "crds", ROOT / "operator" / "podcron" / "crds"]


@pytest.mark.parametrize("copies", COPIES, ids=lambda path: str(path.relative_to(ROOT)))
def test_crd_copies_are_byte_identical_to_the_top_level_crds(copies: Path) -> None:
    source = {path.name: path.read_bytes() for path in SOURCE.glob("*.yaml")}
    copy = {path.name: path.read_bytes() for path in copies.glob("*.yaml")}
    assert source, "crds/ holds no CRD"
    where = copies.relative_to(ROOT)
    assert sorted(copy) == sorted(source), f"{where}/ must hold the same files as crds/"
    stale = [name for name in source if copy[name] != source[name]]
    assert not stale, f"{where}/ differs from crds/ in {stale}: run `make chart-crds`"
