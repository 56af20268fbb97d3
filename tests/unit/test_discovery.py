"""Discovery's rules with the Node listing supplied by the test: fail closed, keep the last seen."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any

import pytest

from podcron.sidecar.cidr import LOOPBACK, Allowlist
from podcron.sidecar.discovery import Discovery, NodeLister

POD = IPv4Address("10.244.1.5")


class Nodes:
    """What the API server would answer, or the error it would raise."""

    def __init__(self) -> None:
        self.items: list[Mapping[str, Any]] = []
        self.error: Exception | None = None

    def lister(self) -> NodeLister:
        def list_nodes() -> list[Mapping[str, Any]]:
            if self.error is not None:
                raise self.error
            return self.items

        return list_nodes


def _discovery(nodes: Nodes, allowlist: Allowlist) -> Discovery:
    return Discovery(allowlist, refresh_seconds=3600, make_lister=nodes.lister)


def test_no_pod_cidrs_means_loopback_only_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    allowlist = Allowlist(())
    _discovery(Nodes(), allowlist).refresh()
    assert allowlist.networks == LOOPBACK
    assert "only loopback may call" in caplog.text


def test_discovered_cidrs_are_allowed_with_loopback() -> None:
    nodes, allowlist = Nodes(), Allowlist(())
    nodes.items = [{"spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    discovery = _discovery(nodes, allowlist)
    discovery.refresh()
    assert allowlist.allows(POD)
    assert allowlist.allows(IPv4Address("127.0.0.1"))
    nodes.items = []
    discovery.refresh()
    assert not allowlist.allows(POD)


def test_a_failing_api_keeps_what_was_seen_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    nodes, allowlist = Nodes(), Allowlist(())
    nodes.items = [{"spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    discovery = _discovery(nodes, allowlist)
    discovery.refresh()
    nodes.error = ConnectionError("api server down")
    discovery.refresh()
    assert allowlist.allows(POD)
    assert "keeping the pod CIDRs last seen: 10.244.1.0/24" in caplog.text


def test_a_failing_api_from_the_start_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    nodes, allowlist = Nodes(), Allowlist(())
    nodes.error = ConnectionError("no route")
    _discovery(nodes, allowlist).refresh()
    assert allowlist.networks == LOOPBACK
    assert "cannot read Nodes (no route); only loopback may call" in caplog.text


def test_no_credentials_at_all_fails_closed() -> None:
    def no_config() -> NodeLister:
        raise RuntimeError("no kubeconfig")

    allowlist = Allowlist(())
    Discovery(allowlist, refresh_seconds=3600, make_lister=no_config).refresh()
    assert allowlist.networks == LOOPBACK
