"""The sidecar's end of the control socket (:mod:`podcron.wire`), for asyncio.

A few connections are kept open and reused, one exchange at a time each. A
kept connection that the operator closed (it restarted) is noticed before
use and replaced; if one still fails, a request the operator cannot have
acted on is sent once more on a fresh connection.

The job list is cached with the operator's ETag and revalidated when it is
older than ``list_max_age`` (50 ms): a "not modified" answer is a few dozen
bytes where the list itself can be half a megabyte, and under load most
requests need no exchange with the operator at all. Requests that find the
list due share one revalidation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podcron import wire
from podcron.errors import (
    ErrorCode,
    OperatorRefused,
    OperatorStarting,
    OperatorUnavailable,
    ProtocolError,
)

#: How long one exchange may take before the operator counts as unreachable.
TIMEOUT_SECONDS = 5.0
#: How long a revalidated job list is served without asking the operator again.
#: Far below what a person or a poller notices, and it takes the operator off
#: the path of nearly every request under load (benchmarks/bench_sidecar.py).
LIST_MAX_AGE_SECONDS = 0.05
#: Exchanges in flight at once; further requests wait for a connection.
MAX_CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class JobList:
    """The operator's job list: a JSON array of JobMetadata, kept as bytes."""

    etag: str | None
    total: int
    data: bytes


EMPTY = JobList(etag=None, total=0, data=b"[]")


class _Unsent(ConnectionError):
    """The request never reached the operator, so it may be sent again."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, path: str) -> _Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=wire.MAX_LINE)
        except OSError as error:
            raise _Unsent(str(error)) from error
        return cls(reader, writer)

    @property
    def usable(self) -> bool:
        """False once the operator closed its end (it stopped or restarted)."""
        return not (self._reader.at_eof() or self._writer.is_closing())

    async def exchange(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        try:
            self._writer.write(wire.encode_line(request))
            await self._writer.drain()
        except OSError as error:
            raise _Unsent(str(error)) from error
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            raise ConnectionResetError("the operator closed the connection") from error
        except asyncio.LimitOverrunError as error:
            raise ProtocolError("an answer header over the line limit") from error
        header = wire.decode_line(line)
        length = header.get("length")
        if not isinstance(length, int) or length < 0:
            raise ProtocolError(f"bad length in {header!r}")
        try:
            body = await self._reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as error:
            raise ConnectionResetError("the operator closed the connection mid-answer") from error
        return header, body

    def close(self) -> None:
        self._writer.close()


class OperatorClient:
    """Calls the operator over the control socket at ``path``, from one event loop."""

    def __init__(
        self,
        path: str,
        *,
        list_max_age: float = LIST_MAX_AGE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self._list_max_age = list_max_age
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        # The list and when the operator last confirmed it (monotonic).
        self._jobs: tuple[JobList, float] = (EMPTY, -float("inf"))
        self._revalidation: asyncio.Future[JobList] | None = None

    def _kept(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                return connection
            connection.close()
        return None

    async def _exchange(
        self, request: Mapping[str, Any], *, idempotent: bool
    ) -> tuple[dict[str, Any], bytes]:
        async with self._slots:
            for attempt in (1, 2):
                connection = self._kept()
                kept = connection is not None
                try:
                    async with asyncio.timeout(TIMEOUT_SECONDS):
                        if connection is None:
                            connection = await _Connection.open(self.path)
                        header, body = await connection.exchange(request)
                except (OSError, ProtocolError) as error:
                    if connection is not None:
                        connection.close()
                    # A kept connection can die with the operator that accepted it:
                    # once more on a fresh one, which reaches its successor.
                    retry = kept and attempt == 1 and (idempotent or isinstance(error, _Unsent))
                    if retry:
                        continue
                    raise OperatorUnavailable(f"control socket {self.path}: {error}") from error
                self._idle.append(connection)
                if header.get("error") == ErrorCode.NOT_READY:
                    raise OperatorStarting(str(header.get("message")))
                if header.get("ok") is not True:
                    retry_after, location = header.get("retryAfter"), header.get("location")
                    raise OperatorRefused(
                        str(header.get("error")),
                        str(header.get("message")),
                        request.get("jobId"),
                        retry_after=retry_after if isinstance(retry_after, int) else None,
                        location=location if isinstance(location, str) else None,
                    )
                return header, body
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def ping(self) -> None:
        """Return when the operator answers; raise :class:`OperatorUnavailable` otherwise."""
        await self._exchange({"op": wire.Op.PING}, idempotent=True)

    async def list_jobs(self) -> JobList:
        """Every job: the cached list, revalidated with the operator once it is too old.

        Raises :class:`OperatorUnavailable` when the revalidation fails; a failed
        one leaves the list due, so the next call asks the operator again.
        """
        cached, checked = self._jobs
        if time.monotonic() - checked < self._list_max_age:
            return cached
        if self._revalidation is None:
            self._revalidation = asyncio.ensure_future(self._revalidate(cached))
        return await asyncio.shield(self._revalidation)

    async def _revalidate(self, cached: JobList) -> JobList:
        try:
            asked = time.monotonic()
            header, body = await self._exchange(
                {"op": wire.Op.LIST, "etag": cached.etag}, idempotent=True
            )
            if not header.get("notModified"):
                etag, total = header.get("etag"), header.get("total")
                if not isinstance(etag, str) or not isinstance(total, int):
                    raise OperatorUnavailable(f"a list answer without etag or total: {header!r}")
                cached = JobList(etag=etag, total=total, data=body)
            self._jobs = (cached, asked)
            return cached
        finally:
            self._revalidation = None

    async def get_job(self, job_id: str) -> bytes:
        """One job's JobMetadata as JSON; raises :class:`OperatorRefused` (JOB_NOT_FOUND)."""
        return (await self._exchange({"op": wire.Op.GET, "jobId": job_id}, idempotent=True))[1]

    async def runs(self, job_id: str) -> tuple[int, bytes]:
        """How many runs, and the job's JSON array of PastRun; raises as :meth:`get_job` does."""
        header, body = await self._exchange({"op": wire.Op.RUNS, "jobId": job_id}, idempotent=True)
        total = header.get("total")
        if not isinstance(total, int):
            raise OperatorUnavailable(f"a runs answer without total: {header!r}")
        return total, body

    async def trigger(self, job_id: str, *, trace_headers: Mapping[str, str]) -> dict[str, Any]:
        """Run the job once now; raises :class:`OperatorRefused` when the operator refuses."""
        request = {"op": wire.Op.TRIGGER, "jobId": job_id, "traceHeaders": dict(trace_headers)}
        answer: dict[str, Any] = json.loads((await self._exchange(request, idempotent=False))[1])
        # The job now runs: the next list must say so.
        self._jobs = (self._jobs[0], -float("inf"))
        return answer
