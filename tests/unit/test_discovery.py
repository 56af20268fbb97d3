"""Discovery's rules with the Node listing supplied by the test: fail closed, keep the last seen,
never wait for the API server before serving, ignore implausible ranges."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address
from typing import Any

import pytest

from podcron.sidecar.cidr import LOOPBACK, Allowlist
from podcron.sidecar.discovery import Discovery, MinimumPrefixes, NodeLister

from ..waiting import wait_for

POD = IPv4Address("10.244.1.5")


class Nodes:
    """What the API server would answer, or the error it would raise; ``hold`` makes it hang."""

    def __init__(self) -> None:
        self.items: list[Mapping[str, Any]] = []
        self.error: Exception | None = None
        self.calls = 0
        self.released = threading.Event()
        self.released.set()

    def lister(self) -> NodeLister:
        def list_nodes() -> list[Mapping[str, Any]]:
            self.calls += 1
            self.released.wait()
            if self.error is not None:
                raise self.error
            return self.items

        return list_nodes


def _discovery(nodes: Nodes, allowlist: Allowlist) -> Discovery:
    return Discovery(
        allowlist, refresh_seconds=3600, minimum=MinimumPrefixes(), make_lister=nodes.lister
    )


@pytest.fixture
def started() -> Iterator[list[Discovery]]:
    """Discoveries a test started; stopped afterwards."""
    running: list[Discovery] = []
    yield running
    for discovery in running:
        discovery.stop()


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
    Discovery(
        allowlist, refresh_seconds=3600, minimum=MinimumPrefixes(), make_lister=no_config
    ).refresh()
    assert allowlist.networks == LOOPBACK


def test_start_returns_at_once_while_the_api_server_hangs(started: list[Discovery]) -> None:
    nodes, allowlist = Nodes(), Allowlist(())
    nodes.items = [{"spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    nodes.released.clear()
    discovery = _discovery(nodes, allowlist)
    discovery.start()  # returns although the first listing hangs
    started.append(discovery)
    assert allowlist.networks == LOOPBACK, "loopback only until the Nodes are read"
    wait_for(lambda: nodes.calls == 1, timeout=10, what="the first listing to start")
    nodes.released.set()
    wait_for(lambda: allowlist.allows(POD), timeout=10, what="the pod CIDR to be allowed")


def test_a_failed_first_read_is_retried_long_before_the_refresh_interval(
    started: list[Discovery],
) -> None:
    nodes, allowlist = Nodes(), Allowlist(())
    nodes.items = [{"spec": {"podCIDRs": ["10.244.1.0/24"]}}]
    nodes.error = ConnectionError("not yet")
    discovery = _discovery(nodes, allowlist)  # refreshes every hour
    discovery.start()
    started.append(discovery)
    wait_for(lambda: nodes.calls >= 1, timeout=10, what="the first listing")
    nodes.error = None
    wait_for(lambda: allowlist.allows(POD), timeout=20, what="a retry within seconds")


def test_an_implausible_range_is_ignored_with_one_warning_naming_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes, allowlist = Nodes(), Allowlist(())
    nodes.items = [
        {"metadata": {"name": "evil"}, "spec": {"podCIDRs": ["0.0.0.0/0", "::/0"]}},
        {"metadata": {"name": "good"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}},
    ]
    discovery = _discovery(nodes, allowlist)
    discovery.refresh()
    discovery.refresh()
    assert allowlist.allows(POD)
    assert not allowlist.allows(IPv4Address("192.0.2.1"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "Node evil has the pod CIDR '0.0.0.0/0', wider than /8, which no pod network is; "
        "ignoring it",
        "Node evil has the pod CIDR '::/0', wider than /32, which no pod network is; ignoring it",
    ]
