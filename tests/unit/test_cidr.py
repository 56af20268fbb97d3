"""CIDR matching, IPv4-mapped peers and X-Forwarded-For from trusted proxies only. No I/O."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

import pytest

from podcron.sidecar.cidr import (
    LOOPBACK,
    Address,
    Allowlist,
    client_address,
    parse_address,
    parse_network,
    parse_networks,
)
from podcron.sidecar.discovery import Ignored, MinimumPrefixes, pod_cidrs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("  10.1.2.3 ", "10.1.2.3"),
        ("10.1.2.3:8080", "10.1.2.3"),
        ("fd00::1", "fd00::1"),
        ("[fd00::1]:8080", "fd00::1"),
        # The address is what the first pair of brackets holds.
        ("[fd00::1]:8080]", "fd00::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("[::ffff:127.0.0.2]:443", "127.0.0.2"),
        ("unknown", None),
        ("", None),
        ("[fd00::1", None),
        ("10.1.2.300", None),
    ],
    ids=lambda value: repr(value),
)
def test_parse_address(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert address == (None if expected is None else ip_address(expected))


def test_ipv4_mapped_peer_is_compared_as_ipv4() -> None:
    allowlist = Allowlist(parse_networks(["10.0.0.0/8"]))
    assert allowlist.allows(client_address("::ffff:10.9.8.7", None, ()))
    assert not allowlist.allows(client_address("::ffff:11.9.8.7", None, ()))


def test_ipv6_ranges_match_ipv6_peers_and_never_ipv4() -> None:
    allowlist = Allowlist(parse_networks(["fd00:10:244::/56"]))
    assert allowlist.allows(client_address("fd00:10:244:12::5", None, ()))
    assert not allowlist.allows(client_address("fd00:10:245::5", None, ()))
    assert not allowlist.allows(client_address("10.244.0.5", None, ()))
    assert not Allowlist(parse_networks(["::/0"])).allows(client_address("10.0.0.1", None, ()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", IPv4Network("10.0.0.0/8")),
        ("10.1.2.3/8", IPv4Network("10.0.0.0/8")),
        ("10.1.2.3", IPv4Network("10.1.2.3/32")),
        ("fd00::/64", IPv6Network("fd00::/64")),
        ("::ffff:10.0.0.0/104", IPv4Network("10.0.0.0/8")),
        ("::ffff:127.0.0.2/128", IPv4Network("127.0.0.2/32")),
    ],
    ids=["cidr", "host-bits-cleared", "bare-address", "ipv6", "mapped-range", "mapped-host"],
)
def test_parse_network(text: str, expected: object) -> None:
    assert parse_network(text) == expected


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])


def test_the_peer_is_the_client_when_no_proxy_is_trusted() -> None:
    # The header is the client's own word: without trusted proxies it never counts.
    assert client_address("127.0.0.3", "127.0.0.2", ()) == IPv4Address("127.0.0.3")


def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    trusted = parse_networks(["127.0.0.4/32"])
    assert client_address("127.0.0.3", "127.0.0.2", trusted) == IPv4Address("127.0.0.3")


def test_forwarded_for_names_the_client_behind_a_trusted_proxy() -> None:
    trusted = parse_networks(["127.0.0.4/32"])
    assert client_address("127.0.0.4", "127.0.0.2", trusted) == IPv4Address("127.0.0.2")
    assert client_address("127.0.0.4", None, trusted) == IPv4Address("127.0.0.4")


def test_forwarded_for_is_read_from_the_right_up_to_the_first_untrusted_hop() -> None:
    trusted = parse_networks(["10.0.0.0/24"])
    # The client wrote "192.0.2.1" itself; the proxies appended what they saw.
    header = "192.0.2.1, 198.51.100.7, 10.0.0.9"
    assert client_address("10.0.0.5", header, trusted) == IPv4Address("198.51.100.7")


def test_a_chain_of_only_trusted_proxies_gives_the_leftmost() -> None:
    trusted = parse_networks(["10.0.0.0/24"])
    assert client_address("10.0.0.5", "10.0.0.7, 10.0.0.9", trusted) == IPv4Address("10.0.0.7")


def test_a_malformed_hop_from_a_trusted_proxy_denies() -> None:
    trusted = parse_networks(["10.0.0.0/24"])
    assert client_address("10.0.0.5", "10.0.0.7, garbage", trusted) is None
    assert not Allowlist(parse_networks(["0.0.0.0/0"])).allows(None)


def test_forwarded_hops_may_carry_ports_and_mapped_addresses() -> None:
    trusted = parse_networks(["10.0.0.0/24"])
    header = "[::ffff:192.0.2.1]:5000, 10.0.0.9:443"
    assert client_address("::ffff:10.0.0.5", header, trusted) == IPv4Address("192.0.2.1")


def test_an_unparsable_peer_is_denied() -> None:
    assert client_address("unix-socket", None, ()) is None


def test_allowlist_is_replaced_whole() -> None:
    allowlist = Allowlist(LOOPBACK)
    here: Address = IPv4Address("127.0.0.1")
    pod = IPv4Address("10.244.1.5")
    assert allowlist.allows(here)
    assert allowlist.allows(IPv6Address("::1"))
    assert not allowlist.allows(pod)
    allowlist.replace(parse_networks(["10.244.0.0/16"]) + LOOPBACK)
    assert allowlist.allows(pod)
    assert allowlist.networks[0] == IPv4Network("10.244.0.0/16")


def test_loopback_is_the_pods_own_address_only() -> None:
    allowlist = Allowlist(LOOPBACK)
    assert allowlist.allows(IPv4Address("127.0.0.1"))
    assert not allowlist.allows(IPv4Address("127.0.0.2"))


def test_pod_cidrs_reads_spec_pod_cidrs_and_the_older_single_field() -> None:
    nodes: list[dict[str, Any]] = [
        {"metadata": {"name": "a"}, "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}},
        {"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.2.0/24"}},
        {"metadata": {"name": "c"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}},
        {"metadata": {"name": "d"}, "spec": {}},
        {"metadata": {"name": "e"}},
    ]
    assert pod_cidrs(nodes, MinimumPrefixes()) == (
        (
            IPv4Network("10.244.1.0/24"),
            IPv4Network("10.244.2.0/24"),
            IPv6Network("fd00:10:244:1::/64"),
        ),
        [],
    )


def test_pod_cidrs_skips_an_invalid_entry() -> None:
    nodes = [{"metadata": {"name": "a"}, "spec": {"podCIDRs": ["nonsense", "10.244.1.0/24"]}}]
    assert pod_cidrs(nodes, MinimumPrefixes()) == (
        (IPv4Network("10.244.1.0/24"),),
        [Ignored("a", "nonsense", "not an IP network")],
    )


@pytest.mark.parametrize(
    ("cidr", "plausible"),
    [
        ("0.0.0.0/0", False),
        ("10.0.0.0/7", False),
        ("10.0.0.0/8", True),
        ("10.244.0.0/16", True),
        ("::ffff:0.0.0.0/96", False),  # 0.0.0.0/0, spelt as IPv4-mapped IPv6
        ("::/0", False),
        ("fd00::/31", False),
        ("fd00::/32", True),
        ("fd00:10:244::/64", True),
    ],
)
def test_pod_cidrs_wider_than_the_minimum_prefix_are_ignored(cidr: str, plausible: bool) -> None:
    nodes = [{"metadata": {"name": "wide"}, "spec": {"podCIDRs": [cidr]}}]
    networks, ignored = pod_cidrs(nodes, MinimumPrefixes(ipv4=8, ipv6=32))
    assert bool(networks) is plausible
    if not plausible:
        assert [(i.node, i.text) for i in ignored] == [("wide", cidr)]
        assert "wider than /" in ignored[0].reason


def test_the_minimum_prefixes_are_settings() -> None:
    nodes = [{"metadata": {"name": "n"}, "spec": {"podCIDRs": ["10.244.0.0/16", "fd00::/48"]}}]
    networks, ignored = pod_cidrs(nodes, MinimumPrefixes(ipv4=20, ipv6=56))
    assert networks == ()
    assert len(ignored) == 2
