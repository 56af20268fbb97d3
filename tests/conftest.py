"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import ControlPlane, ensure_binaries
from gobuild import BinariesUnavailable
from helmtool import Helm, ensure_helm
from promtool import ensure_promtool


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A real etcd and kube-apiserver on loopback, RBAC on, shared by the whole session.

    Skipped, with the reason, where the binaries are not cached and cannot be built (no Go
    toolchain). A control plane that fails to start is an error, not a skip.
    """
    try:
        binaries = ensure_binaries()
    except BinariesUnavailable as error:
        pytest.skip(reason=f"no local control plane: {error}")
    with ControlPlane.start(binaries) as plane:
        yield plane


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The pinned helm CLI (built on first use, like the control plane), with its own home.

    Skipped, with the reason, where it is not cached and cannot be built (no Go toolchain).
    """
    try:
        binary = ensure_helm()
    except BinariesUnavailable as error:
        pytest.skip(reason=f"no helm: {error}")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def promtool() -> Path:
    """The pinned promtool (built on first use, like helm), for the chart's alert rules.

    Skipped, with the reason, where it is not cached and cannot be built (no Go toolchain).
    """
    try:
        return ensure_promtool()
    except BinariesUnavailable as error:
        pytest.skip(reason=f"no promtool: {error}")
