"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controlplane import BinariesUnavailable, ControlPlane, ensure_binaries


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
