"""The System API's HTTP/1.1 connections: uvicorn's httptools protocol, with defences.

Falcon sees requests; these act before there is one, on every connection:

* **Admission at accept** (:mod:`podcron.sidecar.admission`): a refused peer is
  disconnected in ``connection_made``, before anything is read or allocated.
* **A deadline for the request head**: the request line and headers must be
  complete within :data:`HEAD_TIMEOUT_SECONDS` of the connection opening or of
  the previous response. A peer that sends a head slowly (slowloris) is
  answered 408 and disconnected; an idle one is closed by uvicorn's keep-alive
  timeout first.
* **Limits on the head**: a request target over :data:`MAX_TARGET_BYTES` is
  414, a head over :data:`MAX_HEAD_BYTES` or with more than
  :data:`MAX_HEADER_FIELDS` fields is 431, anything the parser refuses (such
  as a raw non-ASCII path) is 400.
* **A deadline for writing**: a response the peer does not read for
  :data:`WRITE_TIMEOUT_SECONDS` is dropped with the connection, so a client
  that never reads cannot hold a large job list in memory.

Every such answer is the API's error envelope and closes the connection; it
is logged at DEBUG only, as any caller can provoke it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from podcron.errors import ErrorCode
from podcron.sidecar import envelope
from podcron.sidecar.admission import Admission
from podcron.sidecar.cidr import Address

log = logging.getLogger("podcron.sidecar")

HEAD_TIMEOUT_SECONDS = 10.0
WRITE_TIMEOUT_SECONDS = 30.0
#: Far above any path of this API, far below what would cost memory.
MAX_TARGET_BYTES = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 100


@dataclass(frozen=True)
class Listener:
    """What one listening port serves, and to whom."""

    app: Any  # an ASGI 3 application
    admission: Admission


class Rejection(Exception):
    """A request answered with an error by the protocol itself, never reaching the app."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _parser_rejection(error: httptools.HttpParserError) -> Rejection:
    if isinstance(error.__context__, Rejection):
        return error.__context__
    if isinstance(error, httptools.HttpParserInvalidURLError):
        message = "the request target is not a valid path (percent-encode non-ASCII characters)"
    else:
        message = f"not a valid HTTP/1.1 request ({error})"
    return Rejection(400, ErrorCode.BAD_REQUEST, message)


TARGET_TOO_LONG = (
    414,
    ErrorCode.URI_TOO_LONG,
    f"the request target exceeds {MAX_TARGET_BYTES} bytes",
)
HEAD_TOO_LARGE = (
    431,
    ErrorCode.HEADERS_TOO_LARGE,
    f"the request head exceeds {MAX_HEAD_BYTES} bytes",
)
TOO_MANY_FIELDS = (431, ErrorCode.HEADERS_TOO_LARGE, f"more than {MAX_HEADER_FIELDS} header fields")


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection; :func:`protocol_class` binds the listeners it may belong to."""

    #: The listeners by local port: a connection serves the app of the port it arrived on.
    listeners: ClassVar[Mapping[int, Listener]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admission: Admission | None = None
        self._ticket: Address | str = ""
        self._head_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        # Between a message's end (or the connection's start) and the next head's end.
        self._awaiting_head = True
        self._head_bytes = 0  # received while awaiting a head: bounds what the parser buffers
        self._fields = 0
        self._head_size = 0  # of the head being parsed: what the parser handed over so far
        self._rejected = False

    # -- the connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        listener = self.listeners.get(local[1]) if isinstance(local, tuple) else None
        ticket = None
        if listener is not None and isinstance(peer, tuple):
            ticket = listener.admission.admit(str(peer[0]))
        if listener is None or ticket is None:
            # Refused: nothing read, nothing kept, nothing answered.
            transport.abort()
            return
        self._admission, self._ticket = listener.admission, ticket
        super().connection_made(transport)
        self.app = listener.app
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admission is None:
            return  # refused in connection_made: uvicorn never knew it
        self._admission.release(self._ticket)
        self._admission = None
        self._cancel_head_deadline()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        self._unset_keepalive_if_required()
        if self._awaiting_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here: the request is answered as plain HTTP, then closed.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as error:
            self._reject(_parser_rejection(error))
            return
        # The parser reports a request target as it arrives (on_url checks its length),
        # but buffers a header until it is complete: this bounds what it buffers.
        if self._awaiting_head and self._head_bytes > MAX_HEAD_BYTES:
            self._reject(Rejection(*HEAD_TOO_LARGE))

    def _reject(self, rejection: Rejection) -> None:
        self._rejected = True
        self._cancel_head_deadline()
        log.debug("%s from %s: %s", rejection.status, self._ticket, rejection.message)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(
                envelope.raw_error_response(rejection.status, rejection.code, rejection.message)
            )
        # else a response to an earlier request is being written: never interleave.
        self.transport.close()

    # -- the parser's callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if len(self.url) > MAX_TARGET_BYTES:
            raise Rejection(*TARGET_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._fields > MAX_HEADER_FIELDS:
            raise Rejection(*TOO_MANY_FIELDS)
        if self._head_size > MAX_HEAD_BYTES:
            raise Rejection(*HEAD_TOO_LARGE)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._cancel_head_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request is already being answered, the next head is due.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_head_deadline()

    # -- deadlines -------------------------------------------------------------

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_SECONDS, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._awaiting_head and self._head_bytes:
            self._reject(
                Rejection(
                    408,
                    ErrorCode.REQUEST_TIMEOUT,
                    f"the request head did not arrive within {HEAD_TIMEOUT_SECONDS:g} s",
                )
            )
        else:
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(WRITE_TIMEOUT_SECONDS, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None


def protocol_class(listeners: Mapping[int, Listener]) -> type[GuardedHttpProtocol]:
    """The protocol for uvicorn's ``http`` setting, serving ``listeners`` by local port."""

    class SidecarHttpProtocol(GuardedHttpProtocol):
        pass

    SidecarHttpProtocol.listeners = listeners
    return SidecarHttpProtocol
