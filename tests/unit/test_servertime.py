"""The API server's clock estimated from reply Dates, and the clock the engine reads it from.

Samples are passed in (monotonic send and receipt times, the server's whole-second Date):
no test reads a real clock except where :class:`OffsetClock` is checked against one.
"""

from __future__ import annotations

import logging
import time

import pytest

from podcron.engine.clock import OffsetClock
from podcron.ha.servertime import (
    MOVE_SECONDS,
    OffsetEstimator,
    Sample,
    ServerTime,
    parse_date,
)

#: The API server's clock minus the process's monotonic clock, in the simulations below.
TRUE_OFFSET = 1_700_000_000.37


def reply(sent: float, rtt: float = 0.01, offset: float = TRUE_OFFSET, wall: float = 0.0) -> Sample:
    """What a request sent at monotonic ``sent`` gets back: the server stamps it mid-way."""
    stamped = sent + rtt / 2 + offset
    return Sample(sent, sent + rtt, float(int(stamped)), wall or sent + rtt + offset)


def test_one_reply_bounds_the_offset_to_a_second_and_the_rtt() -> None:
    estimator = OffsetEstimator()
    estimate = estimator.add(reply(100.0))
    assert estimate is not None
    assert abs(estimate - TRUE_OFFSET) <= 0.51
    assert estimator.uncertainty == pytest.approx(0.505)


def test_replies_at_varied_sub_second_phases_narrow_it_well_below_a_second() -> None:
    estimator = OffsetEstimator()
    for i in range(30):
        estimator.add(reply(100.0 + i * 1.037))  # renewals drift against the server's second
    assert estimator.offset is not None
    assert estimator.uncertainty is not None
    assert abs(estimator.offset - TRUE_OFFSET) <= estimator.uncertainty < 0.05


def test_a_slow_reply_widens_nothing() -> None:
    estimator = OffsetEstimator()
    for i in range(10):
        estimator.add(reply(100.0 + i * 1.1))
    before = estimator.uncertainty
    estimator.add(reply(120.0, rtt=0.9))
    assert estimator.uncertainty == before


def test_a_stepped_server_clock_drops_the_old_samples() -> None:
    estimator = OffsetEstimator()
    for i in range(10):
        estimator.add(reply(100.0 + i * 1.1))
    estimate = estimator.add(reply(112.0, offset=TRUE_OFFSET + 60))
    assert estimate is not None
    assert abs(estimate - (TRUE_OFFSET + 60)) <= 0.51


def test_a_clock_at_another_rate_is_followed() -> None:
    """The local clock runs at half speed: the offset grows half a second a second."""
    estimator = OffsetEstimator()
    for i in range(60):
        estimate = estimator.add(reply(100.0 + i * 0.5, offset=TRUE_OFFSET + i * 0.5))
        assert estimate is not None
        assert abs(estimate - (TRUE_OFFSET + i * 0.5)) <= 0.51


def test_only_the_last_window_of_replies_counts() -> None:
    estimator = OffsetEstimator(window=3)
    for i in range(3):
        estimator.add(reply(100.0 + i * 1.3))
    narrow = estimator.uncertainty
    estimator.add(reply(104.0))
    estimator.add(reply(105.0))
    estimator.add(reply(106.0))
    assert estimator.uncertainty is not None
    assert narrow is not None
    assert estimator.uncertainty > narrow  # the same phase three times: no narrowing


def test_a_reply_received_before_it_was_sent_tells_nothing() -> None:
    estimator = OffsetEstimator()
    assert estimator.add(Sample(10.0, 9.0, 5.0, 5.0)) is None


def test_the_window_must_hold_a_sample() -> None:
    with pytest.raises(ValueError, match="window"):
        OffsetEstimator(window=0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Wed, 02 Dec 2026 16:30:00 GMT", 1796229000.0),
        (None, None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_date_headers(header: str | None, expected: float | None) -> None:
    assert parse_date(header) == expected


def test_offset_clock_is_the_wall_clock_until_set_then_monotonic_plus_offset() -> None:
    clock = OffsetClock()
    assert clock.wall is time.time
    clock.set_offset(1000.0)
    before = time.monotonic()
    read = clock.wall()
    assert before + 1000.0 <= read <= time.monotonic() + 1000.0


class Moves:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_server_time_sets_the_clock_at_once_then_only_on_moves_beyond_the_threshold() -> None:
    clock = OffsetClock()
    moves = Moves()
    skews: list[float] = []
    server = ServerTime(clock, moved=moves, gauge=skews.append)
    server.observe(reply(100.0))
    assert moves.count == 1
    assert clock.offset is not None
    for i in range(1, 20):  # narrowing the first reply's second may move it once more
        server.observe(reply(100.0 + i * 1.037))
    settled, offset = moves.count, clock.offset
    assert settled <= 2
    assert abs(offset - TRUE_OFFSET) <= MOVE_SECONDS + 0.05
    for i in range(20, 30):
        server.observe(reply(100.0 + i * 1.037))
    assert (moves.count, clock.offset) == (settled, offset)
    server.observe(reply(140.0, offset=TRUE_OFFSET + 3))  # stepped
    assert moves.count == settled + 1
    assert abs(clock.offset - (TRUE_OFFSET + 3)) <= 0.51
    assert len(skews) == 31


def test_the_gauge_reports_the_wall_clocks_skew_and_a_large_one_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = OffsetClock()
    skews: list[float] = []
    server = ServerTime(clock, gauge=skews.append)
    with caplog.at_level(logging.INFO, logger="podcron.ha"):
        for i in range(5):  # the node's wall clock 60 s behind the server's
            sample = reply(100.0 + i * 1.1)
            server.observe(Sample(sample.sent, sample.received, sample.date, sample.wall - 60))
        for i in range(5, 10):  # fixed
            server.observe(reply(100.0 + i * 1.1))
    assert all(abs(skew - 60) <= 0.51 for skew in skews[:5])
    assert all(abs(skew) <= 0.51 for skew in skews[5:])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "-60" in warnings[0]
    assert any("back within" in r.getMessage() for r in caplog.records)


def test_a_skew_within_the_estimates_uncertainty_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ServerTime(OffsetClock())
    sample = reply(100.0, rtt=2.0)  # one slow reply: the offset is known to within 1.5 s
    with caplog.at_level(logging.WARNING, logger="podcron.ha"):
        server.observe(Sample(sample.sent, sample.received, sample.date, sample.wall - 1.2))
    assert not caplog.records
