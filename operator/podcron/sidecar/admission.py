"""Who may open a connection, and how many: decided at accept, before a byte is parsed.

A peer that is neither allowed nor a trusted proxy is disconnected in the
first callback after ``accept()``: no buffer, no parser state, no timer, no
answer. Every admitted peer holds at most ``per_peer`` connections and all
together at most ``total``, so neither one careless client nor many can
exhaust the process's file descriptors or memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from podcron.sidecar.cidr import Address, parse_address
from podcron.sidecar.ratelimited_log import RateLimitedLog

log = logging.getLogger("podcron.sidecar")

#: Who may connect at all, judged by the TCP peer's address; ``None``: everyone.
PeerFilter = Callable[[Address], bool] | None


@dataclass(frozen=True)
class Limits:
    """Connections open at once, per peer address and over all peers."""

    per_peer: int
    total: int


class Admission:
    """Counts the open connections of one listener and admits or refuses new ones."""

    def __init__(self, listener: str, admits: PeerFilter, limits: Limits) -> None:
        self._listener = listener
        self._admits = admits
        self._limits = limits
        self._open: Counter[Address | str] = Counter()
        self._total = 0
        self._refusals = RateLimitedLog(log)

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet released."""
        return self._total

    def admit(self, peer: str) -> Address | str | None:
        """The key to :meth:`release` later, or ``None``: close the connection now."""
        address = parse_address(peer)
        if self._admits is not None and (address is None or not self._admits(address)):
            self._refuse(peer, "not in allowedCIDRs or trustedProxies")
            return None
        key: Address | str = peer if address is None else address
        if self._open[key] >= self._limits.per_peer:
            self._refuse(peer, f"it has {self._limits.per_peer} connections open already")
            return None
        if self._total >= self._limits.total:
            self._refuse(peer, f"{self._limits.total} connections are open already")
            return None
        self._open[key] += 1
        self._total += 1
        return key

    def release(self, key: Address | str) -> None:
        """A connection admitted under ``key`` has closed."""
        self._total -= 1
        self._open[key] -= 1
        if not self._open[key]:
            del self._open[key]

    def _refuse(self, peer: str, reason: str) -> None:
        self._refusals.warning("%s: refused a connection from %s: %s", self._listener, peer, reason)
