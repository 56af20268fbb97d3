"""Resource factories and jobs for the tests of shared resources and job configuration.

The tests register the factories in the ``podcron.resources`` group (an
``entry_points.txt`` they write) and put this directory on the operator's
``PYTHONPATH``. Everything that happens is appended as one line to the
journal, ``$RESOURCE_TEST_DIR/journal``, from the operator's event loop or a
resource's own thread, in the order it happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from podcron import JobContext
from podcron.resources import eager


def _directory() -> Path:
    return Path(os.environ["RESOURCE_TEST_DIR"])


def journal(line: str) -> None:
    """Append ``line``: one write of a short line with O_APPEND, whole even across threads."""
    with (_directory() / "journal").open("a") as file:
        file.write(line + "\n")


class Counter:
    """The shared object: its id tells every run whether it got the same one."""


@contextlib.asynccontextmanager
async def counter() -> AsyncIterator[Counter]:
    """Lazy and async: created by the first run that lists it."""
    made = Counter()
    journal(f"created counter {id(made)}")
    try:
        yield made
    finally:
        journal(f"closed counter {id(made)}")


@eager
@contextlib.contextmanager
def ledger() -> Iterator[list[str]]:
    """Eager and sync: created at start-up, in a thread of its own, before ``counter``."""
    journal("created ledger")
    try:
        yield []
    finally:
        journal("closed ledger")


@contextlib.asynccontextmanager
async def flaky() -> AsyncIterator[str]:
    """Fails while the file ``flaky-down`` exists."""
    if (_directory() / "flaky-down").exists():
        raise ConnectionRefusedError("flaky is down (the test made it so)")
    yield "flaky"


async def count_async(ctx: JobContext) -> None:
    """An async job: journals the id of the shared counter."""
    journal(f"run {ctx.name} {id(ctx.resource('counter', Counter))}")


def count_in_thread(ctx: JobContext) -> None:
    """A plain def job (a worker thread): the same, through the mapping."""
    journal(f"run {ctx.name} {id(ctx.resources['counter'])}")


async def use_flaky(ctx: JobContext) -> None:
    """Succeeds whenever ``flaky`` could be created."""
    journal(f"run {ctx.name} {ctx.resources['flaky']}")


async def read_config(ctx: JobContext) -> None:
    """Journals the greeting and a digest of the token, then fails quoting the token."""
    token = ctx.config.secret("token")
    digest = hashlib.sha256(token.reveal_bytes()).hexdigest()
    journal(f"config {ctx.config.text('greeting')} {digest}")
    ctx.log.info("read the config: %s", ctx.config)
    raise PermissionError(f"the service refused token {token.reveal()}")
