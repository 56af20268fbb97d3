"""The System API's envelope, as bytes: ``{"data", "meta"}``, and errors with ``data: null``.

Shared by the Falcon app and the HTTP protocol under it, which answers the
requests that never reach Falcon (a head too large, a malformed request line,
a head that did not arrive in time) in the same envelope.
"""

from __future__ import annotations

import json
from http import HTTPStatus

#: Error codes of the envelope, beside the operator's own (podcron.wire).
BAD_REQUEST = "BAD_REQUEST"
FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
URI_TOO_LONG = "URI_TOO_LONG"
HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
OPERATOR_UNAVAILABLE = "OPERATOR_UNAVAILABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"


def encode(document: object) -> bytes:
    """Compact JSON, as every answer is sent."""
    return json.dumps(document, separators=(",", ":")).encode()


def data(payload: object) -> bytes:
    """A successful answer without meta fields."""
    return encode({"data": payload, "meta": {}})


def error(code: str, message: str) -> bytes:
    """An error answer."""
    return encode({"data": None, "meta": {}, "error": {"code": code, "message": message}})


def raw_error_response(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for the protocol layer."""
    body = error(code, message)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
