"""The System API's envelope, as bytes: ``{"data", "meta"}``, and errors with ``data: null``.

Shared by the Falcon app and the HTTP protocol under it, which answers the
requests that never reach Falcon (a head too large, a malformed request line,
a head that did not arrive in time) in the same envelope.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from podcron.errors import ErrorCode


def encode(document: object) -> bytes:
    """Compact JSON, as every answer is sent."""
    return json.dumps(document, separators=(",", ":")).encode()


def data(payload: object) -> bytes:
    """A successful answer without meta fields."""
    return encode({"data": payload, "meta": {}})


def error(code: ErrorCode, message: str) -> bytes:
    """An error answer."""
    return encode({"data": None, "meta": {}, "error": {"code": code, "message": message}})


def raw_error_response(status: int, code: ErrorCode, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the protocol layer."""
    body = error(code, message)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
