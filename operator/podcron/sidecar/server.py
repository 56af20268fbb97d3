"""``podcron sidecar``: the System API under gunicorn, on ``sidecarHost:sidecarPort`` only.

gunicorn pre-forks a few threaded workers; WSGI hands each request's TCP
peer over as ``REMOTE_ADDR``, which is what the CIDR filter judges. Each
worker builds its own app after the fork: its own control-socket client (one
connection per thread) and, with an empty ``allowedCIDRs``, its own Node
discovery thread (threads do not survive a fork).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from podcron.config import Settings
from podcron.sidecar.app import create_app
from podcron.sidecar.cidr import Allowlist, parse_networks
from podcron.sidecar.discovery import Discovery
from podcron.sidecar.operator_client import OperatorClient

log = logging.getLogger("podcron.sidecar")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Two processes for two cores, four threads each: the threads overlap one
#: request's socket writes with another's Python, and gthread keeps
#: connections alive, which the sync worker cannot. Measured against sync
#: workers and other counts with benchmarks/bench_sidecar.py.
WORKERS = 2
WORKER_CLASS = "gthread"
THREADS = 4


class _RootLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own messages through the root logger, in podcron's log format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string: IPv6 hosts go in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SidecarServer(BaseApplication):  # type: ignore[misc]
    """gunicorn serving :func:`create_app` with podcron's settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        """Fixed gunicorn settings: nothing is read from gunicorn's own files or variables."""
        settings = self._settings
        options: dict[str, Any] = {
            "bind": [bind_address(settings.sidecar_host, settings.sidecar_port)],
            "workers": WORKERS,
            "worker_class": WORKER_CLASS,
            "threads": THREADS,
            "proc_name": "podcron-sidecar",
            # Forwarding headers are podcron's business (trustedProxies), not gunicorn's.
            "forwarded_allow_ips": "",
            "proxy_protocol": "off",
            # gunicorn's own control socket would be a second way into the pod.
            "control_socket_disable": True,
            "graceful_timeout": 10,
            "logger_class": _RootLogger,
            "loglevel": settings.log_level.lower(),
        }
        if Path("/dev/shm").is_dir():
            # Worker heartbeats: a memory file system keeps them off a read-only root.
            options["worker_tmp_dir"] = "/dev/shm"
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self) -> WSGIApp:
        """The app, built in each worker after the fork."""
        settings = self._settings
        if settings.allowed_cidrs:
            allowlist = Allowlist(parse_networks(settings.allowed_cidrs))
        else:
            allowlist = Allowlist(())
            Discovery(allowlist, refresh_seconds=settings.cidr_refresh_seconds).start()
        app: WSGIApp = create_app(settings, OperatorClient(settings.control_socket), allowlist)
        return app


def main(settings: Settings) -> int:
    """Run the sidecar until SIGTERM; returns the process exit code."""
    try:
        parse_networks(settings.allowed_cidrs)
        parse_networks(settings.trusted_proxies)
    except ValueError as error:
        log.error("bad configuration: %s", error)
        return 2
    log.info(
        "podcron sidecar on %s, operator at %s, allowed %s",
        bind_address(settings.sidecar_host, settings.sidecar_port),
        settings.control_socket,
        ", ".join(settings.allowed_cidrs) or "pod CIDRs of the Nodes and loopback",
    )
    SidecarServer(settings).run()
    return 0
