"""The sidecar's end of the control socket (:mod:`podcron.control_protocol`).

Each thread keeps one connection open and reconnects once when the operator
restarted under it. The job list is cached with the operator's ETag and
revalidated when it is older than ``list_max_age`` (50 ms): a "not modified"
answer is a few dozen bytes where the list itself can be half a megabyte, and
under load most requests need no exchange with the operator at all.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from io import BufferedReader
from typing import Any, NoReturn

from podcron import control_protocol as wire
from podcron.errors import JobAlreadyRunning, JobNotFound

#: How long one exchange may take before the operator counts as unreachable.
TIMEOUT_SECONDS = 5.0
#: How long a revalidated job list is served without asking the operator again.
#: Far below what a person or a poller notices, and it takes the operator off
#: the path of nearly every request under load (benchmarks/bench_sidecar.py).
LIST_MAX_AGE_SECONDS = 0.05


class OperatorUnavailable(ConnectionError):
    """The operator does not answer on the control socket."""


class OperatorStarting(OperatorUnavailable):
    """The operator answers, but still registers the jobs that existed at its start."""


@dataclass(frozen=True, slots=True)
class JobList:
    """The operator's job list: a JSON array of JobMetadata, kept as bytes."""

    etag: str | None
    total: int
    data: bytes


EMPTY = JobList(etag=None, total=0, data=b"[]")


class _Stale(ConnectionError):
    """Sending failed: the operator never saw the request, so it may be sent again."""


class _Connection:
    def __init__(self, path: str) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(TIMEOUT_SECONDS)
        try:
            self._socket.connect(path)
        except OSError:
            self._socket.close()
            raise
        self._reader: BufferedReader = self._socket.makefile("rb")

    def exchange(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        try:
            self._socket.sendall(wire.encode_line(request))
        except OSError as error:
            raise _Stale(str(error)) from error
        line = self._reader.readline(wire.MAX_LINE)
        if not line:
            raise ConnectionResetError("the operator closed the connection")
        header = wire.decode_line(line)
        length = header.get("length")
        if not isinstance(length, int) or length < 0:
            raise wire.ProtocolError(f"bad length in {header!r}")
        body = self._reader.read(length) if length else b""
        if len(body) != length:
            raise ConnectionResetError("the operator closed the connection mid-answer")
        return header, body

    def close(self) -> None:
        self._reader.close()
        self._socket.close()


class OperatorClient:
    """Calls the operator over the control socket at ``path``; safe to share between threads."""

    def __init__(self, path: str, *, list_max_age: float = LIST_MAX_AGE_SECONDS) -> None:
        self.path = path
        self._local = threading.local()
        self._list_max_age = list_max_age
        # The list and when the operator last confirmed it (monotonic), replaced
        # together so that threads never see one without the other.
        self._jobs: tuple[JobList, float] = (EMPTY, -float("inf"))

    def _exchange(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        for _ in range(2):
            connection: _Connection | None = getattr(self._local, "connection", None)
            kept = connection is not None
            try:
                if connection is None:
                    connection = self._local.connection = _Connection(self.path)
                header, body = connection.exchange(request)
            except _Stale as error:
                self._drop()
                # A kept connection dies with the operator that accepted it:
                # try once more on a fresh one, which reaches its successor.
                if kept:
                    continue
                raise OperatorUnavailable(f"control socket {self.path}: {error}") from error
            except (OSError, wire.ProtocolError) as error:
                self._drop()
                raise OperatorUnavailable(f"control socket {self.path}: {error}") from error
            if header.get("ok") is not True:
                self._raise(request, header)
            return header, body
        raise OperatorUnavailable(f"control socket {self.path}: the connection broke twice")

    def _drop(self) -> None:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    @staticmethod
    def _raise(request: Mapping[str, Any], header: Mapping[str, Any]) -> NoReturn:
        code, job_id = header.get("error"), str(request.get("jobId"))
        if code == wire.JOB_NOT_FOUND:
            raise JobNotFound(job_id)
        if code == wire.JOB_ALREADY_RUNNING:
            raise JobAlreadyRunning(job_id)
        if code == wire.NOT_READY:
            raise OperatorStarting(str(header.get("message")))
        raise wire.ProtocolError(f"the operator refused {request.get('op')}: {header!r}")

    def ping(self) -> None:
        """Return when the operator answers; raise :class:`OperatorUnavailable` otherwise."""
        self._exchange({"op": wire.Op.PING})

    def list_jobs(self) -> JobList:
        """Every job: the cached list, revalidated with the operator once it is too old.

        Raises :class:`OperatorUnavailable` when the revalidation fails; a failed
        one leaves the list due, so the next call asks the operator again.
        """
        cached, checked = self._jobs
        now = time.monotonic()
        if now - checked < self._list_max_age:
            return cached
        header, body = self._exchange({"op": wire.Op.LIST, "etag": cached.etag})
        if not header.get("notModified"):
            etag, total = header.get("etag"), header.get("total")
            if not isinstance(etag, str) or not isinstance(total, int):
                raise OperatorUnavailable(f"a list answer without etag or total: {header!r}")
            cached = JobList(etag=etag, total=total, data=body)
        self._jobs = (cached, now)
        return cached

    def get_job(self, job_id: str) -> bytes:
        """One job's JobMetadata as JSON; raises :class:`JobNotFound`."""
        return self._exchange({"op": wire.Op.GET, "jobId": job_id})[1]

    def trigger(self, job_id: str, *, trace_headers: Mapping[str, str]) -> dict[str, Any]:
        """Run the job once now; raises :class:`JobNotFound` or :class:`JobAlreadyRunning`."""
        request = {"op": wire.Op.TRIGGER, "jobId": job_id, "traceHeaders": dict(trace_headers)}
        answer: dict[str, Any] = json.loads(self._exchange(request)[1])
        # The job now runs: the next list from this worker must say so.
        self._jobs = (self._jobs[0], -float("inf"))
        return answer
