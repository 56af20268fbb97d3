"""An async job that checks a service with a shared HTTP client and a token from the Secret.

``http_client`` is a resource factory, registered in the ``podcron.resources``
entry-point group: every run of every job that lists ``resources: [http]``
gets the same :class:`aiohttp.ClientSession`, so its connections stay open
between runs, and podcron closes it once at shutdown.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from podcron import JobContext


@contextlib.asynccontextmanager
async def http_client() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session for every run: a pool of keep-alive connections, 10 s per request.

    An ``aiohttp.ClientSession`` belongs to the event loop: async jobs may use it,
    thread (plain ``def``) jobs may not.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def uptime(ctx: JobContext) -> None:
    """GET ``config.uptimeUrl`` with the Secret's ``uptimeToken``; fail unless it answers 2xx."""
    url = ctx.config.text("uptimeUrl")
    token = ctx.config.secret("uptimeToken")
    session = ctx.resource("http", aiohttp.ClientSession)
    # Revealed into the header only: the token is in no variable, log line or error.
    headers = {"Authorization": f"Bearer {token.reveal()}", **ctx.trace_headers()}
    async with session.get(url, headers=headers) as response:
        ctx.log.info("%s answered %d", url, response.status)
        if response.status >= 300:
            raise RuntimeError(f"{url} answered {response.status} {response.reason}")
