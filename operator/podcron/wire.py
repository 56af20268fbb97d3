"""The wire format of the control socket between the operator and its sidecar.

Both ends import this module and nothing else of each other. A connection
carries any number of exchanges, one at a time. A request is one line of
JSON; the answer is one line of JSON (the header) followed by exactly
``length`` bytes of body::

    {"op": "list", "etag": "…"}                 all jobs: a JSON array of JobMetadata,
                                                 "total" and "etag" in the header, or
                                                 {"notModified": true} and no body
    {"op": "get", "jobId": "ns/name"}           one JobMetadata object
    {"op": "runs", "jobId": "ns/name"}          its last runs, newest first: a JSON array
                                                 of PastRun, "total" in the header
    {"op": "trigger", "jobId": "ns/name",       run it once now (trigger manual); the body
     "traceHeaders": {"traceparent": "…"}}      is {"jobId", "triggered", "scheduledNextAt"}
    {"op": "ping"}                              an empty answer: the operator is up

A refused request answers ``{"ok": false, "error": CODE, "message": …}``
with CODE one of :class:`~podcron.errors.ErrorCode`'s ``JOB_NOT_FOUND``,
``JOB_ALREADY_RUNNING`` (with ``"why"``), ``TOO_MANY_MANUAL_RUNS`` (with
``"retryAfter": seconds``), ``BAD_REQUEST``, or ``NOT_READY``: the operator is still registering
the jobs that existed when it started, so it cannot say yet whether a job it
does not hold exists (``ping`` and ``list`` answer it too until then). Try it by hand with
``socat - UNIX-CONNECT:/var/run/podcron/control.sock`` and a line of JSON.

Why not HTTP: the sidecar revalidates its cached job list on every request,
and an HTTP exchange over the socket (aiohttp on one end, http.client on the
other) cost about three times the CPU of this one line each way.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

from podcron.errors import ProtocolError

#: Longest request or header line either end accepts, newline included.
MAX_LINE = 64 * 1024
#: Only these headers of a caller's request travel (as ``traceHeaders``) to the run's span.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
#: W3C Baggage allows 8192 bytes; a longer value is dropped, not truncated.
TRACE_HEADER_LIMIT = 8192


class Op(enum.StrEnum):
    """What a request asks for."""

    LIST = "list"
    GET = "get"
    RUNS = "runs"
    TRIGGER = "trigger"
    PING = "ping"


def encode_line(fields: Mapping[str, Any]) -> bytes:
    """One request or header line, newline included."""
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    """The JSON object of one line; raises :class:`ProtocolError` for anything else."""
    if not line.endswith(b"\n"):
        raise ProtocolError("the line is cut off or too long")
    try:
        fields = json.loads(line)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from error
    if not isinstance(fields, dict):
        raise ProtocolError("not a JSON object")
    return fields


def encode_answer_header(length: int, **fields: Any) -> bytes:
    """The header line of a successful answer whose body has ``length`` bytes.

    Header and body are written separately: a job list can be large, and
    joining them would copy it once more per request.
    """
    return encode_line({"ok": True, "length": length, **fields})


def encode_error(code: str, message: str, **fields: Any) -> bytes:
    """A refusal: a header line with the error code, message and ``fields``, and no body."""
    return encode_line({"ok": False, "length": 0, "error": code, "message": message, **fields})
