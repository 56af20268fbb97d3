"""Who may call ``/_sys/job``: CIDR matching on the TCP peer address. No I/O.

The client is the TCP peer. ``X-Forwarded-For`` counts only when the peer
is one of the ``trustedProxies``, and then it is read from the right, hop by
hop, as long as each hop is itself a trusted proxy: the first untrusted hop
is the client. Everything on its left could have been written by the client
and is ignored. Other forwarding headers (``Forwarded``, ``X-Real-IP``) are
never read. IPv4-mapped IPv6 addresses (``::ffff:10.1.2.3``), as a dual-stack
listener reports IPv4 peers, are compared as the IPv4 address they carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

#: Where a container reaches its own pod: always allowed when ``allowedCIDRs`` is empty.
LOOPBACK: tuple[Network, ...] = (IPv4Network("127.0.0.1/32"), IPv6Network("::1/128"))

_MAPPED_PREFIX = IPv6Network("::ffff:0:0/96")


def parse_address(text: str) -> Address | None:
    """The address in ``text`` (IPv4-mapped IPv6 unwrapped), or ``None`` if there is none.

    Accepts what peers and ``X-Forwarded-For`` hops look like: ``10.1.2.3``,
    ``10.1.2.3:8080``, ``fd00::1``, ``[fd00::1]:8080``.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network:
    """A network from ``10.0.0.0/8``, ``fd00::/64`` or a bare address; raises ``ValueError``.

    Host bits are cleared (``10.1.2.3/8`` is ``10.0.0.0/8``); an IPv4-mapped
    IPv6 range becomes the IPv4 range it covers, so it matches IPv4 peers.
    """
    network = ip_network(text.strip(), strict=False)
    if isinstance(network, IPv6Network) and network.subnet_of(_MAPPED_PREFIX):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # every address in ::ffff:0:0/96 maps
        return IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Every entry of a setting such as ``allowedCIDRs``; raises ``ValueError`` naming a bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(parse_network(text))
        except ValueError as error:
            raise ValueError(f"{text!r} is not an IP network: {error}") from error
    return tuple(networks)


def contains(networks: Iterable[Network], address: Address) -> bool:
    """Whether ``address`` lies in one of ``networks`` (IPv4 never matches IPv6 ranges)."""
    return any(address in network for network in networks)


def client_address(
    peer: str, forwarded_for: str | None, trusted_proxies: Sequence[Network]
) -> Address | None:
    """The address to judge a request by, or ``None`` when it cannot be known.

    ``peer`` is the TCP peer address; ``forwarded_for`` the ``X-Forwarded-For``
    header, which counts only when the peer is a trusted proxy. A malformed
    hop in a header that does count gives ``None``: deny rather than guess.
    """
    address = parse_address(peer)
    if address is None or not forwarded_for or not contains(trusted_proxies, address):
        return address
    for hop in reversed(forwarded_for.split(",")):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None
        address = hop_address
        if not contains(trusted_proxies, address):
            break
    return address


class Allowlist:
    """The networks allowed to call; replaced whole by discovery, so readers need no lock."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)

    @property
    def networks(self) -> tuple[Network, ...]:
        """The networks allowed now."""
        return self._networks

    def replace(self, networks: Iterable[Network]) -> None:
        """Allow exactly ``networks`` from now on."""
        self._networks = tuple(networks)

    def allows(self, address: Address | None) -> bool:
        """Whether a client at ``address`` may call (an unknown one may not)."""
        return address is not None and contains(self._networks, address)
