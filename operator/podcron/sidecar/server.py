"""``podcron sidecar``: the System API and the probes under uvicorn, in one event loop.

Two listening sockets on ``sidecarHost``: ``sidecarPort`` for the API, where
only allowed peers and trusted proxies may connect, and ``sidecarProbePort``
for the kubelet, open to every address but answering only ``/healthz`` and
``/readyz``. Both are served by uvicorn's httptools protocol extended with
podcron's defences (:mod:`podcron.sidecar.protocol`): a caller costs a
coroutine, never a thread, so slow or hostile connections cannot starve the
others. With an empty ``allowedCIDRs`` the Nodes' pod CIDRs are discovered on
a background thread while the sidecar already serves loopback.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from podcron.config import Settings
from podcron.sidecar.admission import Admission, Limits
from podcron.sidecar.app import create_app, create_probe_app
from podcron.sidecar.cidr import LOOPBACK, Address, Allowlist, Network, contains, parse_networks
from podcron.sidecar.discovery import Discovery, MinimumPrefixes
from podcron.sidecar.operator_client import OperatorClient
from podcron.sidecar.protocol import Listener, protocol_class

log = logging.getLogger("podcron.sidecar")

#: Connections open at once on the API port: per peer address (a trusted proxy
#: is one peer), and in all. wrk in benchmarks/bench_sidecar.py holds 16.
API_LIMITS = Limits(per_peer=64, total=512)
#: The kubelet holds one connection per probe; anyone else may connect here too.
PROBE_LIMITS = Limits(per_peer=8, total=128)
BACKLOG = 1024
#: Seconds a connection may stay idle between requests.
KEEP_ALIVE_SECONDS = 5
#: At SIGTERM, requests in progress get this long to finish.
GRACEFUL_SHUTDOWN_SECONDS = 10


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; an IPv6 host also takes IPv4 (dual stack)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def address_text(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_filter(
    allowlist: Allowlist, trusted_proxies: tuple[Network, ...]
) -> Callable[[Address], bool]:
    """Who may connect to the API port: an allowed address or a trusted proxy."""

    def admits(address: Address) -> bool:
        return allowlist.allows(address) or contains(trusted_proxies, address)

    return admits


def _check(settings: Settings) -> None:
    """Raise ``ValueError`` with one line naming the setting that is wrong."""
    parse_networks(settings.allowed_cidrs)
    parse_networks(settings.trusted_proxies)
    if settings.sidecar_probe_port == settings.sidecar_port:
        raise ValueError(
            f"sidecarProbePort and sidecarPort must differ (both {settings.sidecar_port})"
        )
    for name, value, bits in (
        ("podCIDRsMinPrefixV4", settings.pod_cidrs_min_prefix_v4, 32),
        ("podCIDRsMinPrefixV6", settings.pod_cidrs_min_prefix_v6, 128),
    ):
        if not 0 <= value <= bits:
            raise ValueError(f"{name} must be between 0 and {bits}, got {value}")


def main(settings: Settings) -> int:
    """Run the sidecar until SIGTERM; returns the process exit code."""
    try:
        _check(settings)
    except ValueError as error:
        log.error("bad configuration: %s", error)
        return 2
    host = settings.sidecar_host
    sockets = []
    try:
        for port in (settings.sidecar_port, settings.sidecar_probe_port):
            sockets.append(listen(host, port))
    except OSError as error:
        log.error("cannot listen on %s: %s", address_text(host, port), error)
        for sock in sockets:
            sock.close()
        return 2

    trusted_proxies = parse_networks(settings.trusted_proxies)
    if settings.allowed_cidrs:
        allowlist = Allowlist(parse_networks(settings.allowed_cidrs))
    else:
        allowlist = Allowlist(LOOPBACK)
        minimum = MinimumPrefixes(
            settings.pod_cidrs_min_prefix_v4, settings.pod_cidrs_min_prefix_v6
        )
        Discovery(allowlist, refresh_seconds=settings.cidr_refresh_seconds, minimum=minimum).start()
    operator = OperatorClient(settings.control_socket)
    api = create_app(operator, allowlist, trusted_proxies)
    listeners = {
        settings.sidecar_port: Listener(
            api, Admission("System API", peer_filter(allowlist, trusted_proxies), API_LIMITS)
        ),
        settings.sidecar_probe_port: Listener(
            create_probe_app(operator), Admission("probes", None, PROBE_LIMITS)
        ),
    }
    config = uvicorn.Config(
        api,
        http=protocol_class(listeners),
        interface="asgi3",
        lifespan="off",
        ws="none",
        # Forwarding headers are podcron's business (trustedProxies), not uvicorn's.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    log.info(
        "podcron sidecar: the System API on %s, probes on port %d, operator at %s, allowed %s",
        address_text(host, settings.sidecar_port),
        settings.sidecar_probe_port,
        settings.control_socket,
        ", ".join(settings.allowed_cidrs) or "pod CIDRs of the Nodes and loopback",
    )
    # uvicorn shuts down gracefully on SIGTERM or SIGINT, then raises the signal again for
    # the handler it found: this one, so that a graceful stop exits 0, as the operator does.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped)
    uvicorn.Server(config).run(sockets=sockets)
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    """The stop is done by the time this runs (see :func:`main`)."""
