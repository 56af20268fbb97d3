"""Free TCP ports on 127.0.0.1 for the servers the tests start."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    [port] = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on right now.

    Each probe stays bound until all are taken: one after the other, the kernel may hand the
    same port out twice (it did, and a sidecar refused to serve and probe on one port).
    """
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports
