"""``podcron sidecar``: the System API and the probes under uvicorn, in two worker processes.

Two listening sockets on ``sidecarHost``: ``sidecarPort`` for the API, where
only allowed peers and trusted proxies may connect, and ``sidecarProbePort``
for the kubelet, open to every address but answering only ``/healthz`` and
``/readyz``. The process binds them, forks :data:`WORKERS` workers that share
them, and supervises: it passes SIGTERM on and stops all when one dies. Each
worker serves both sockets with uvicorn's httptools protocol extended with
podcron's defences (:mod:`podcron.sidecar.protocol`) in one event loop: a
caller costs a coroutine, never a thread, so slow or hostile connections
cannot starve the others. With an empty ``allowedCIDRs`` each worker discovers
the Nodes' pod CIDRs on a background thread while it already serves loopback.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

#: Worker processes, each with its own event loop, sharing the listening sockets (the
#: kernel hands each connection to one). Two use two cores, as gunicorn's two workers did,
#: and under CPU contention each process is one share of the scheduler's.
WORKERS = 2
#: Connections open at once on the API port, per worker: per peer address (a trusted proxy
#: is one peer), and in all. wrk in benchmarks/bench_sidecar.py holds 16.
API_LIMITS = Limits(per_peer=32, total=256)
#: The kubelet holds one connection per probe; anyone else may connect here too.
PROBE_LIMITS = Limits(per_peer=4, total=64)
BACKLOG = 1024
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
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

    log.info(
        "podcron sidecar: the System API on %s, probes on port %d, operator at %s, allowed %s",
        address_text(host, settings.sidecar_port),
        settings.sidecar_probe_port,
        settings.control_socket,
        ", ".join(settings.allowed_cidrs) or "pod CIDRs of the Nodes and loopback",
    )
    # A stop signal that arrives while the workers start waits until the supervisor's
    # handler can pass it on.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    children = []
    for _ in range(WORKERS):
        # Before any thread or event loop exists: each worker starts its own after the fork.
        pid = os.fork()
        if pid == 0:
            # A stop before uvicorn takes the signals over (a worker still starting) must
            # end the worker as cleanly as a graceful stop, not by the default action.
            for signum in STOP_SIGNALS:
                signal.signal(signum, _stopped)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = 1
            try:
                code = _serve(settings, sockets)
            finally:
                os._exit(code)  # never back into the supervisor's code
        children.append(pid)
    for sock in sockets:
        sock.close()  # the workers hold them
    return _supervise(children)


def _serve(settings: Settings, sockets: list[socket.socket]) -> int:
    """One worker: its own allowlist, operator client, apps and event loop, until SIGTERM."""
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
    # uvicorn shuts down gracefully on SIGTERM or SIGINT, then raises the signal again for
    # the handler it found: _stopped, installed at the fork, so that a graceful stop exits 0.
    uvicorn.Server(config).run(sockets=sockets)
    return 0


def _supervise(children: list[int]) -> int:
    """Pass SIGTERM on to the workers and wait for them; stop all if one exits by itself.

    Returns 0 when every worker stopped cleanly after SIGTERM (or SIGINT, which a terminal
    sends the workers itself), else 1: the kubelet then restarts the container.
    """
    stopping = False
    remaining = set(children)

    def signal_all(signum: int) -> None:
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if signum == signal.SIGTERM:
            signal_all(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    exit_code = 0
    while remaining:
        pid, status = os.wait()
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not stopping:
            exit_code = 1
        if not stopping:
            log.error("sidecar worker %d exited (%d) on its own; stopping the others", pid, code)
            stopping = True
            signal_all(signal.SIGTERM)
    return exit_code


def _stopped(signum: int, frame: FrameType | None) -> None:
    """End the worker with 0: after uvicorn's graceful stop, or before its server ran."""
    os._exit(0)
