"""Addresses as the sidecar sees them on real sockets: IPv4-mapped peers, and an empty
``allowedCIDRs``, where the Nodes' ``spec.podCIDRs`` in the real control plane become the
allowlist, plus loopback, and nothing but loopback while no Node has one.

The pod CIDR is a loopback subnet so that real clients bound to it can call. No
operator runs here: the job list is empty, which is all these tests need.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import ControlPlane

from .conftest import wait_for
from .sidecar_process import SidecarProcess, client

POD_CIDR = "127.0.9.0/24"
IN_POD_NETWORK = "127.0.9.7"
OUTSIDE = "127.0.10.7"


def _node(name: str) -> str:
    return f"""
apiVersion: v1
kind: Node
metadata: {{name: {name}}}
spec:
  podCIDR: {POD_CIDR}
  podCIDRs: ["{POD_CIDR}", "fd00:9::/64"]
"""


@pytest.fixture
def sidecar(control_plane: ControlPlane, tmp_path: Path) -> Iterator[SidecarProcess]:
    sidecar = SidecarProcess(
        control_plane.env()
        | {
            "PODCRON_ALLOWED_CIDRS": "",
            "PODCRON_CIDR_REFRESH_SECONDS": "0.3",
            "PODCRON_CONTROL_SOCKET": str(tmp_path / "absent.sock"),
        },
        tmp_path / "sidecar.log",
    )
    yield sidecar
    assert sidecar.stop() == 0


def _status(source: str, url: str) -> int:
    return client(source).get(f"{url}/_sys/job").status_code


def test_pod_cidrs_of_nodes_become_the_allowlist(
    control_plane: ControlPlane, sidecar: SidecarProcess
) -> None:
    nodes = control_plane.kubectl("get", "nodes", "-o", "name").stdout.split()
    if not nodes:
        assert "no pod CIDRs found on any Node; only loopback may call" in sidecar.log()
    assert _status("127.0.0.1", sidecar.url) == 200
    assert _status(IN_POD_NETWORK, sidecar.url) == 403

    name = f"podcron-test-{os.getpid()}"
    control_plane.kubectl("apply", "-f", "-", input=_node(name))
    try:
        wait_for(
            lambda: _status(IN_POD_NETWORK, sidecar.url) == 200,
            timeout=15,
            what="the Node's pod CIDR to be allowed",
        )
        assert _status(OUTSIDE, sidecar.url) == 403
        assert _status("127.0.0.1", sidecar.url) == 200, "loopback stays allowed"
        assert f"pod CIDRs from Nodes allowed: {POD_CIDR}, fd00:9::/64" in sidecar.log()
    finally:
        control_plane.kubectl("delete", "node", name, "--wait=false")
    wait_for(
        lambda: _status(IN_POD_NETWORK, sidecar.url) == 403,
        timeout=15,
        what="the deleted Node's pod CIDR to be dropped",
    )


def _mapped_listener_possible() -> bool:
    if not socket.has_ipv6:
        return False
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::ffff:127.0.0.1", 0))
        except OSError:
            return False
    return True


@pytest.mark.skipif(
    not _mapped_listener_possible(), reason="no IPv6 socket can bind ::ffff:127.0.0.1 here"
)
def test_ipv4_mapped_peers_match_ipv4_ranges(tmp_path: Path) -> None:
    sidecar = SidecarProcess(
        dict(os.environ)
        | {
            "PODCRON_ALLOWED_CIDRS": "127.0.0.2/32",
            "PODCRON_CONTROL_SOCKET": str(tmp_path / "absent.sock"),
        },
        tmp_path / "sidecar.log",
        host="::ffff:127.0.0.1",
    )
    try:
        assert _status("127.0.0.2", sidecar.url) == 200
        assert _status("127.0.0.3", sidecar.url) == 403
        # The listener is IPv6: this is the form in which the peer reached the filter.
        assert "denied GET /_sys/job from peer ::ffff:127.0.0.3" in sidecar.log()
    finally:
        assert sidecar.stop() == 0
