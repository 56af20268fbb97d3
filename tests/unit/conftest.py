"""Asyncio debug mode, in the spirit of Go's ``-race``: what it reports fails the test.

Tests marked ``asyncio_debug`` (the engine's and the status writer's, module-wide) run
their event loop in debug mode. A callback that holds the loop for
:data:`SLOW_CALLBACK_SECONDS` or longer, a task or future whose exception nobody
retrieved, or an exception in a callback is logged on the ``asyncio`` logger; the fixture
below turns each such record into a failure of the test that caused it. Tests that block
their loop on purpose also carry ``blocks_event_loop``: slow callbacks are expected there.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest

#: asyncio's own default is 0.1 s; on a loaded two-core machine CPU starvation alone
#: stretched callbacks that do nothing slow to 0.8 s. What debug mode is here to catch,
#: a blocking call on the loop (a sleep, a join, synchronous I/O), takes longer.
SLOW_CALLBACK_SECONDS = 1.0
_SLOW_CALLBACK = "Executing %s took %.3f seconds"


class _AsyncioTrouble(logging.Handler):
    """Keeps what the ``asyncio`` logger warns about, slow callbacks below the limit aside."""

    def __init__(self, *, slow_allowed: bool) -> None:
        super().__init__(logging.WARNING)
        self.slow_allowed = slow_allowed
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _SLOW_CALLBACK and isinstance(record.args, tuple):
            seconds = record.args[1]
            if self.slow_allowed or (
                isinstance(seconds, float) and seconds < SLOW_CALLBACK_SECONDS
            ):
                return
        self.reports.append(self.format(record))


@pytest.fixture(autouse=True)
def asyncio_trouble_fails_the_test(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    if request.node.get_closest_marker("asyncio_debug") is None:
        yield
        return
    # Autouse, so set up before pytest-asyncio creates the test's loop, which reads this.
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    trouble = _AsyncioTrouble(
        slow_allowed=request.node.get_closest_marker("blocks_event_loop") is not None
    )
    trouble.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("asyncio")
    logger.addHandler(trouble)
    try:
        yield
        # Set up first, torn down last: the test's loop is closed by now. A task's
        # unretrieved exception is reported when the task is collected.
        gc.collect()
    finally:
        logger.removeHandler(trouble)
    if trouble.reports:
        pytest.fail("asyncio debug mode reported:\n" + "\n".join(trouble.reports), pytrace=False)
