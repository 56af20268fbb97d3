"""The versions pinned in tools/controlplane.py are the ones its Go modules build."""

from __future__ import annotations

import re
from pathlib import Path

from controlplane import ETCD_VERSION, KUBERNETES_VERSION

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _required_version(go_mod: Path, module: str) -> str:
    """The version ``go_mod`` requires of ``module`` (single-line or block form)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    assert match, f"{go_mod} does not require {module}"
    return match.group(1)


def test_kubernetes_version_matches_tools_kube() -> None:
    assert _required_version(TOOLS / "kube" / "go.mod", "k8s.io/kubernetes") == KUBERNETES_VERSION


def test_kubernetes_staging_modules_are_replaced_by_the_same_release() -> None:
    # k8s.io/kubernetes v1.X.Y is built with its staging modules at v0.X.Y.
    staging_version = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
    replacements = re.findall(
        r"^\s*(k8s\.io/\S+)\s+=>\s+\S+\s+(v\S+)", (TOOLS / "kube" / "go.mod").read_text(), re.M
    )
    assert replacements, "tools/kube/go.mod replaces no staging module"
    assert {module: staging_version for module, _ in replacements} == dict(replacements)


def test_etcd_version_matches_tools_etcd() -> None:
    go_mod = TOOLS / "etcd" / "go.mod"
    assert _required_version(go_mod, "go.etcd.io/etcd/server/v3") == ETCD_VERSION
