"""A TCP proxy per operator process, between it and the API server, whose faults can be switched.

TLS stays end to end: the proxy moves bytes and never looks inside them. Modes:

* ``pass``: bytes flow both ways.
* ``black-hole``: connections are accepted, and nothing is forwarded either way. The bytes
  are held, not delivered late: when the mode changes, every connection that had bytes held
  is reset, as a path that stayed dead past TCP's retransmissions would leave it.
* ``drop-replies``: requests reach the API server, which applies them; its answers are
  discarded, so the client never learns. A connection that lost bytes is reset when the mode
  changes (its TLS stream is broken past repair).
* ``latency``: every chunk is delivered ``latency`` seconds after it arrived, in order.

All proxies share one event loop on a thread of their own; :meth:`FaultProxy.set_mode` may be
called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

CHUNK = 64 * 1024
T = TypeVar("T")


class Mode(enum.StrEnum):
    PASS = "pass"
    BLACK_HOLE = "black-hole"
    DROP_REPLIES = "drop-replies"
    LATENCY = "latency"


class _Connection:
    """One client connection and its upstream; ``damaged`` once it lost or held bytes."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.damaged = False

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class FaultProxy:
    """Listens on 127.0.0.1 (a port of the system's choosing), forwards to ``upstream``."""

    def __init__(self, loop: ProxyLoop, upstream_port: int) -> None:
        self._loop = loop
        self._upstream_port = upstream_port
        self._mode = Mode.PASS
        self._latency = 0.0
        self._changed = asyncio.Event()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def mode(self) -> Mode:
        return self._mode

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_mode(self, mode: Mode, latency: float = 0.0) -> None:
        """Switch to ``mode`` (``latency``: seconds, for :attr:`Mode.LATENCY`); any thread."""
        self._loop.call(self._set_mode(mode, latency))

    async def _set_mode(self, mode: Mode, latency: float) -> None:
        self._mode, self._latency = mode, latency
        for connection in [c for c in self._connections if c.damaged]:
            connection.reset()
        # Wake every pump holding bytes, with a fresh event for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _accept(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        connection = _Connection(client)
        self._connections.add(connection)
        try:
            while self._mode is Mode.BLACK_HOLE:  # accepted, never forwarded
                connection.damaged = True
                await self._changed.wait()
            if connection.damaged:
                return
            upstream_reader, connection.upstream = await asyncio.open_connection(
                "127.0.0.1", self._upstream_port
            )
            await asyncio.gather(
                self._pump(reader, connection.upstream, connection, reply=False),
                self._pump(upstream_reader, client, connection, reply=True),
            )
        except OSError:
            pass
        finally:
            self._connections.discard(connection)
            connection.reset()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        *,
        reply: bool,
    ) -> None:
        """Move bytes one way until either side closes, as the mode says."""
        delayed: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_delayed(delayed, writer))
        try:
            while data := await reader.read(CHUNK):
                while self._mode is Mode.BLACK_HOLE:
                    connection.damaged = True
                    await self._changed.wait()
                if connection.damaged:
                    return
                if self._mode is Mode.DROP_REPLIES and reply:
                    connection.damaged = True
                    continue
                delay = self._latency if self._mode is Mode.LATENCY else 0.0
                await delayed.put((time.monotonic() + delay, data))
            await delayed.put((0.0, b""))  # end of stream, after what is queued
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            connection.reset()

    @staticmethod
    async def _send_delayed(
        delayed: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await delayed.get()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.reset()


class ProxyLoop:
    """The thread and event loop every :class:`FaultProxy` of a run lives on."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxies", daemon=True)
        self._thread.start()
        self._proxies: list[FaultProxy] = []

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the proxies' loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def proxy(self, upstream_port: int) -> FaultProxy:
        """A new proxy to ``127.0.0.1:upstream_port``, listening once this returns."""

        async def create() -> FaultProxy:
            proxy = FaultProxy(self, upstream_port)
            await proxy._start()
            return proxy

        proxy = self.call(create())
        self._proxies.append(proxy)
        return proxy

    def close(self) -> None:
        """Close every proxy and its connections, then stop the loop."""

        async def close_all() -> None:
            for proxy in self._proxies:
                await proxy._close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.call(close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
