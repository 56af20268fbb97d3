"""What a caller can make the sidecar spend: connections per peer and in all, log lines. No I/O."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

import pytest

from podcron.sidecar.admission import Admission, Limits
from podcron.sidecar.cidr import Address
from podcron.sidecar.ratelimited_log import RateLimitedLog


def _only(allowed: str) -> Admission:
    def admits(address: Address) -> bool:
        return address == IPv4Address(allowed)

    return Admission("System API", admits, Limits(per_peer=2, total=3))


def test_a_peer_outside_the_filter_is_refused_and_counts_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = _only("10.0.0.1")
    assert admission.admit("10.0.0.2") is None
    assert admission.admit("not an address") is None
    assert admission.open_connections == 0
    assert "System API: refused a connection from 10.0.0.2: not in allowedCIDRs" in caplog.text


def test_connections_are_capped_per_peer_and_in_all() -> None:
    admission = Admission("probes", None, Limits(per_peer=2, total=3))
    first = admission.admit("10.0.0.1")
    assert first == IPv4Address("10.0.0.1")
    assert admission.admit("::ffff:10.0.0.1") == first, "one peer, however it is spelt"
    assert admission.admit("10.0.0.1") is None, "per peer"
    assert admission.admit("10.0.0.2") is not None
    assert admission.admit("10.0.0.3") is None, "in all"
    admission.release(first)
    assert admission.open_connections == 2
    assert admission.admit("10.0.0.3") is not None
    assert admission.admit("10.0.0.1") is None, "10.0.0.1 still holds one, and the total is 3"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_limited_warning_counts_what_it_dropped(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test"), burst=2, interval=10, clock=clock)
    for n in range(100):
        limited.warning("denied %d", n)
    assert [r.getMessage() for r in caplog.records] == ["denied 0", "denied 1"]
    assert limited.suppressed == 98
    clock.now = 9.9
    limited.warning("denied late")
    assert len(caplog.records) == 2, "still the same window"
    clock.now = 10.0
    limited.warning("denied %s", "again")
    assert caplog.records[-1].getMessage() == (
        "denied again (99 similar lines suppressed before this one)"
    )
    assert caplog.records[-1].levelname == "WARNING"
    assert limited.suppressed == 0
