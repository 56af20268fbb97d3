"""The control socket: the engine's live job state and manual triggers, for the sidecar.

A Unix socket in a directory shared with the sidecar (an emptyDir in the pod):
the operator opens no TCP port for this. The wire format is
:mod:`podcron.wire`.

Serialising 1,000 JobMetadata objects takes milliseconds, so the job list is
kept serialised: only the jobs the engine marked as changed since the last
request (:meth:`Engine.watch_changes`) are snapshotted and encoded again, and
every job only when the replicas adopted a new assignment (each job names its
owner). Snapshotting all of them for each request would hold the loop for tens
of milliseconds at 10,000 jobs. The sidecar sends the list's ETag back and
gets a body-less "not modified" while it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from podcron import wire
from podcron.controller import jobmetadata
from podcron.engine import Engine, History, JobSnapshot, JobSpec
from podcron.errors import (
    ErrorCode,
    JobAlreadyRunning,
    JobNotFound,
    NotOwner,
    ProtocolError,
    TooManyManualRuns,
)
from podcron.ha.ring import Assignment
from podcron.runrecord import format_time, past_run

log = logging.getLogger("podcron.control")

#: Jobs snapshotted and encoded again between two turns of the loop (a millisecond or two).
ENCODE_SLICE = 100
SOCKET_MODE = 0o660
DIRECTORY_MODE = 0o770


@dataclass(frozen=True, slots=True)
class _Entry:
    """One job's encoded JobMetadata and the snapshot parts it was made from."""

    spec: JobSpec
    history: History
    running: bool
    next_run_time: datetime | None
    replica: str | None
    data: bytes

    def matches(self, snapshot: JobSnapshot, replica: str | None) -> bool:
        # Specs and histories are immutable and replaced on change, so
        # identity is the cheap and exact test.
        return (
            self.spec is snapshot.spec
            and self.history is snapshot.history
            and self.running == snapshot.running
            and self.next_run_time == snapshot.next_run_time
            and self.replica == replica
        )


class JobCatalogue:
    """The engine's jobs as encoded JobMetadata, re-encoded only where they changed."""

    def __init__(self, engine: Engine, owners: Callable[[], Assignment] | None = None) -> None:
        self._engine = engine
        # With several replicas: the assignment this replica adopted, which names each
        # job's owner. It is replaced, never changed, when the replicas move jobs.
        self._owners = owners
        self._assignment: Assignment | None = None
        # A restarted operator starts a new token, so the sidecar can never
        # mistake its cached list for the new operator's.
        self._token = secrets.token_hex(8)
        self._version = 0  # the listing's, in its ETag
        self._changed = engine.watch_changes()
        # Every job's entry, by job id: listed in this order.
        self._entries: dict[str, _Entry] = {}
        self._listing: bytes | None = None  # None: not built yet
        # Whether an entry changed since the listing was built.
        self._updated = False

    def _entry(self, snapshot: JobSnapshot, assignment: Assignment | None) -> _Entry:
        replica = None if assignment is None else assignment.owner_of(snapshot.spec.uid)
        entry = self._entries.get(snapshot.spec.job_id)
        if entry is not None and entry.matches(snapshot, replica):
            return entry
        return _Entry(
            spec=snapshot.spec,
            history=snapshot.history,
            running=snapshot.running,
            next_run_time=snapshot.next_run_time,
            replica=replica,
            data=jobmetadata.encode(jobmetadata.job_metadata(snapshot, replica)),
        )

    def _refresh(self) -> bytes:
        assignment = None if self._owners is None else self._owners()
        if self._listing is None or assignment is not self._assignment:
            self._changed.take()  # every job is snapshotted now
            self._assignment = assignment
            self._entries = {
                s.spec.job_id: self._entry(s, assignment) for s in self._engine.snapshots()
            }
        else:
            self._update(self._changed.take(), assignment)
            if not self._updated:
                return self._listing
        self._updated = False
        self._listing = b"[" + b",".join(e.data for e in self._entries.values()) + b"]"
        # The ETag moves with the jobs and with every assignment adopted.
        self._version += 1
        return self._listing

    def _update(self, changed: Collection[str], assignment: Assignment | None) -> None:
        """Snapshot again the jobs ``changed``; drop those removed."""
        entries, added = self._entries, False
        for job_id in changed:
            try:
                snapshot = self._engine.snapshot(job_id)
            except JobNotFound:
                if entries.pop(job_id, None) is not None:
                    self._updated = True
                continue
            entry = self._entry(snapshot, assignment)
            if entries.get(job_id) is not entry:
                added = added or job_id not in entries
                entries[job_id] = entry
                self._updated = True
        if added:  # listed by job id
            self._entries = dict(sorted(entries.items()))

    async def catch_up(self) -> None:
        """Snapshot and encode again the jobs changed since, a slice between two turns of the loop.

        After an instant of thousands of runs, encoding them all at once (10-30 µs
        each) would hold the loop for tens of milliseconds, while runs fall due.
        """
        assignment = None if self._owners is None else self._owners()
        if self._listing is None or assignment is not self._assignment:
            return  # the listing is built anew, every job at once
        changed = list(self._changed.take())
        for start in range(0, len(changed), ENCODE_SLICE):
            if start:
                await asyncio.sleep(0)
            self._update(changed[start : start + ENCODE_SLICE], assignment)

    def listing(self) -> tuple[str, int, bytes]:
        """``(etag, total, JSON array of JobMetadata)`` for every job, by job id."""
        listing = self._refresh()
        return f"{self._token}-{self._version}", len(self._entries), listing

    def one(self, job_id: str) -> bytes:
        """One job's JobMetadata as JSON; raises :class:`JobNotFound`."""
        snapshot = self._engine.snapshot(job_id)
        return self._entry(snapshot, None if self._owners is None else self._owners()).data


def _trace_headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        key: text
        for key, text in value.items()
        if key in wire.TRACE_HEADERS
        and isinstance(text, str)
        and len(text) <= wire.TRACE_HEADER_LIMIT
    }


#: What a job the engine does not hold answers before the operator is ready.
NOT_READY_MESSAGE = (
    "the operator is still registering the ScheduledJobs that existed at its start; "
    "try again shortly"
)


def _always_ready() -> bool:
    return True


class ControlServer:
    """Serves :mod:`podcron.wire` for one engine on a Unix socket.

    Until ``ready()`` is true, ``ping``, ``list`` and any request about a job
    the engine does not hold answer ``NOT_READY``: the job may exist and not
    be registered yet. Jobs already registered are served as usual.
    """

    def __init__(
        self,
        engine: Engine,
        path: str | os.PathLike[str],
        *,
        ready: Callable[[], bool] = _always_ready,
        elsewhere: Callable[[str], None] | None = None,
        owners: Callable[[], Assignment] | None = None,
    ) -> None:
        self._engine = engine
        self._ready = ready
        # With several replicas: raises NotOwner for a job another replica runs, so that a
        # manual run goes where the job's scheduled runs go (one place for Forbid and status).
        self._elsewhere = elsewhere
        self._catalogue = JobCatalogue(engine, owners)
        self.path = Path(path)
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen on the socket: create its directory, replace a stale socket, chmod 0660.

        Raises :class:`RuntimeError` when the path is something else than a
        socket, or when another process still serves it.
        """
        self.path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        self._remove_stale()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=wire.MAX_LINE
        )
        os.chmod(self.path, SOCKET_MODE)
        self._inode = self.path.stat().st_ino

    def _remove_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RuntimeError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing the stale control socket %s", self.path)
            self.path.unlink(missing_ok=True)
            return
        finally:
            probe.close()
        raise RuntimeError(f"another process is serving the control socket {self.path}")

    async def stop(self) -> None:
        """Stop listening, drop the connections and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            # Only our own socket: a successor may already have bound the path.
            if self.path.lstat().st_ino == self._inode:
                self.path.unlink()
        log.info("control socket closed")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                writer.writelines(await self._answer(line))
                await writer.drain()
        except ValueError:
            # readline's limit: a line this long is no request of ours.
            writer.write(wire.encode_error(ErrorCode.BAD_REQUEST, "request line too long"))
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, line: bytes) -> list[bytes]:
        try:
            request = wire.decode_line(line)
            op = wire.Op(str(request.get("op")))
        except (ProtocolError, ValueError) as error:  # a bad line, or an unknown op
            return [wire.encode_error(ErrorCode.BAD_REQUEST, str(error))]
        if op in (wire.Op.PING, wire.Op.LIST) and not self._ready():
            return [wire.encode_error(ErrorCode.NOT_READY, NOT_READY_MESSAGE)]
        if op is wire.Op.LIST:
            await self._catalogue.catch_up()
        try:
            return self._handle(op, request)
        except JobNotFound as error:
            if not self._ready():
                return [wire.encode_error(ErrorCode.NOT_READY, NOT_READY_MESSAGE)]
            return [wire.encode_error(ErrorCode.JOB_NOT_FOUND, str(error))]
        except JobAlreadyRunning as error:
            return [wire.encode_error(ErrorCode.JOB_ALREADY_RUNNING, str(error), why=error.why)]
        except NotOwner as error:
            return [wire.encode_error(ErrorCode.NOT_OWNER, str(error), location=error.endpoint)]
        except TooManyManualRuns as error:
            return [
                wire.encode_error(
                    ErrorCode.TOO_MANY_MANUAL_RUNS,
                    str(error),
                    retryAfter=error.retry_after_seconds,
                )
            ]

    def _handle(self, op: wire.Op, request: dict[str, Any]) -> list[bytes]:
        if op is wire.Op.PING:
            return [wire.encode_answer_header(0)]
        if op is wire.Op.LIST:
            etag, total, body = self._catalogue.listing()
            if request.get("etag") == etag:
                return [wire.encode_answer_header(0, notModified=True, etag=etag, total=total)]
            return [wire.encode_answer_header(len(body), etag=etag, total=total), body]
        job_id = request.get("jobId")
        if not isinstance(job_id, str):
            return [wire.encode_error(ErrorCode.BAD_REQUEST, "jobId must be a string")]
        if op is wire.Op.GET:
            body = self._catalogue.one(job_id)
            return [wire.encode_answer_header(len(body)), body]
        # A job's runs and its manual runs are where its scheduled runs are: the owner's.
        if self._elsewhere is not None:
            self._elsewhere(job_id)
        if op is wire.Op.RUNS:
            runs = self._engine.runs(job_id)
            body = jobmetadata.encode([past_run(run) for run in runs])
            return [wire.encode_answer_header(len(body), total=len(runs)), body]
        snapshot = self._engine.trigger(
            job_id, trace_headers=_trace_headers(request.get("traceHeaders"))
        )
        log.info("job %s triggered through the control socket", job_id, extra={"job_id": job_id})
        body = jobmetadata.encode(
            {
                "jobId": job_id,
                "triggered": True,
                "scheduledNextAt": format_time(snapshot.next_run_time),
            }
        )
        return [wire.encode_answer_header(len(body)), body]
