"""The versions pinned in tools/kindimages.py are the ones its Go modules build."""

from __future__ import annotations

from kindimages import COREDNS_VERSION, KIND_VERSION

from .test_controlplane_versions import TOOLS, _required_version


def test_kind_version_matches_tools_kind() -> None:
    assert _required_version(TOOLS / "kind" / "go.mod", "sigs.k8s.io/kind") == KIND_VERSION


def test_coredns_version_matches_tools_coredns() -> None:
    go_mod = TOOLS / "coredns" / "go.mod"
    assert _required_version(go_mod, "github.com/coredns/coredns") == COREDNS_VERSION
