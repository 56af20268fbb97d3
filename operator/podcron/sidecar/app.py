"""The System API (DESIGN.md) as a Falcon WSGI app: ``/_sys/job`` over the control socket.

Every answer is the ``{"data", "meta"}`` envelope, errors included
(``{"data": null, "meta": {}, "error": {"code", "message"}}``). The job list
passes through as the operator serialised it: the sidecar never decodes it.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

import falcon

from podcron.config import Settings
from podcron.errors import JobAlreadyRunning, JobNotFound
from podcron.sidecar.cidr import Allowlist, Network, client_address, parse_networks
from podcron.sidecar.operator_client import (
    EMPTY,
    JobList,
    OperatorClient,
    OperatorStarting,
    OperatorUnavailable,
)

log = logging.getLogger("podcron.sidecar")

FORBIDDEN = "FORBIDDEN"
JOB_NOT_FOUND = "JOB_NOT_FOUND"
JOB_ALREADY_RUNNING = "JOB_ALREADY_RUNNING"
OPERATOR_UNAVAILABLE = "OPERATOR_UNAVAILABLE"
INTERNAL_ERROR = "INTERNAL_ERROR"
#: Codes for errors Falcon raises itself; any other 4xx is BAD_REQUEST, 5xx INTERNAL_ERROR.
STATUS_CODES = {
    400: "BAD_REQUEST",
    403: FORBIDDEN,
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    500: INTERNAL_ERROR,
}
#: Probes: kubelet calls them from the node's address, outside any allowlist.
UNFILTERED_PATHS = frozenset({"/healthz", "/readyz"})
#: Request headers handed to the run so that its span joins the caller's trace.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

JSON = falcon.MEDIA_JSON
OPENAPI_DOCUMENT = "openapi.yaml"


def _encode(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class ApiError(falcon.HTTPError):
    """An error answered with the envelope and one of this module's codes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(falcon.code_to_http_status(status), title=code, description=message)
        self.error_code = code


def _serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    status = error.status_code
    code = getattr(error, "error_code", None) or STATUS_CODES.get(
        status, "BAD_REQUEST" if status < 500 else INTERNAL_ERROR
    )
    message = error.description or error.title or str(error.status)
    resp.data = _encode({"data": None, "meta": {}, "error": {"code": code, "message": message}})
    resp.content_type = JSON


def _unexpected_error(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]
) -> None:
    log.error("%s %s failed", req.method, req.path, exc_info=error)
    raise ApiError(500, INTERNAL_ERROR, "the sidecar failed; see its log")


def _unavailable(error: OperatorUnavailable) -> ApiError:
    if isinstance(error, OperatorStarting):
        return ApiError(503, OPERATOR_UNAVAILABLE, "the operator is starting; try again shortly")
    log.warning("the operator is unreachable: %s", error)
    return ApiError(503, OPERATOR_UNAVAILABLE, "the operator is not reachable; try again shortly")


class CIDRFilter:
    """Middleware: 403 for callers outside the allowlist, except on the probes."""

    def __init__(self, allowlist: Allowlist, trusted_proxies: tuple[Network, ...]) -> None:
        self._allowlist = allowlist
        self._trusted_proxies = trusted_proxies

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Deny before routing, so an outsider learns nothing, not even which paths exist."""
        if req.path in UNFILTERED_PATHS:
            return
        forwarded = req.get_header("X-Forwarded-For")
        client = client_address(req.remote_addr, forwarded, self._trusted_proxies)
        if self._allowlist.allows(client):
            return
        log.warning(
            "denied %s %s from peer %s%s",
            req.method,
            req.path,
            req.remote_addr,
            f" (X-Forwarded-For {forwarded[:200]!r})" if forwarded else "",
        )
        raise ApiError(403, FORBIDDEN, "your address may not call this API")


class JobsResource:
    """``/_sys/job``: every job the operator runs."""

    def __init__(self, operator: OperatorClient) -> None:
        self._operator = operator
        self._envelope: tuple[JobList, bytes] = (EMPTY, self._wrap(EMPTY))

    @staticmethod
    def _wrap(jobs: JobList) -> bytes:
        return b'{"data":%s,"meta":{"total":%d}}' % (jobs.data, jobs.total)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """All jobs; an empty list while the operator is not up (DESIGN.md)."""
        try:
            jobs = self._operator.list_jobs()
        except OperatorUnavailable as error:
            log.debug("listing no jobs: %s", error)
            jobs = EMPTY
        cached_jobs, envelope = self._envelope
        if jobs is not cached_jobs:
            envelope = self._wrap(jobs)
            self._envelope = (jobs, envelope)
        resp.data = envelope
        resp.content_type = JSON


class JobResource:
    """``/_sys/job/{namespace}/{name}``: one job, and its manual trigger."""

    def __init__(self, operator: OperatorClient) -> None:
        self._operator = operator

    def on_get(self, req: falcon.Request, resp: falcon.Response, namespace: str, name: str) -> None:
        """The job's JobMetadata."""
        job_id = f"{namespace}/{name}"
        try:
            data = self._operator.get_job(job_id)
        except JobNotFound as error:
            raise ApiError(404, JOB_NOT_FOUND, str(error)) from error
        except OperatorUnavailable as error:
            raise _unavailable(error) from error
        resp.data = b'{"data":%s,"meta":{}}' % data
        resp.content_type = JSON

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, namespace: str, name: str
    ) -> None:
        """Run the job once now (trigger ``manual``), in the caller's trace if it sent one."""
        job_id = f"{namespace}/{name}"
        trace_headers = {h: v for h in TRACE_HEADERS if (v := req.get_header(h)) is not None}
        try:
            answer = self._operator.trigger(job_id, trace_headers=trace_headers)
        except JobNotFound as error:
            raise ApiError(404, JOB_NOT_FOUND, str(error)) from error
        except JobAlreadyRunning as error:
            raise ApiError(409, JOB_ALREADY_RUNNING, str(error)) from error
        except OperatorUnavailable as error:
            raise _unavailable(error) from error
        log.info("manual run of %s requested by %s", job_id, req.remote_addr)
        resp.data = _encode({"data": answer, "meta": {}})
        resp.content_type = JSON


class HealthResource:
    """``/healthz``: the sidecar process serves requests."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Always ``ok`` while the process can answer at all."""
        resp.data = b'{"data":{"status":"ok"},"meta":{}}'
        resp.content_type = JSON


class ReadyResource:
    """``/readyz``: ready only while the operator answers on the control socket."""

    def __init__(self, operator: OperatorClient) -> None:
        self._operator = operator

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``ok``, or 503 ``OPERATOR_UNAVAILABLE``."""
        try:
            self._operator.ping()
        except OperatorUnavailable as error:
            raise _unavailable(error) from error
        resp.data = b'{"data":{"status":"ok"},"meta":{}}'
        resp.content_type = JSON


class OpenAPIResource:
    """``/_sys/openapi.yaml``: the OpenAPI 3 document of this API."""

    def __init__(self) -> None:
        self._document = resources.files(__package__).joinpath(OPENAPI_DOCUMENT).read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The document as shipped in the package."""
        resp.data = self._document
        resp.content_type = falcon.MEDIA_YAML


def create_app(
    settings: Settings, operator: OperatorClient, allowlist: Allowlist
) -> falcon.App[falcon.Request, falcon.Response]:
    """The System API wired to ``operator``, filtering callers by ``allowlist``.

    Raises ``ValueError`` when ``settings.trusted_proxies`` holds a bad network.
    """
    app = falcon.App(
        media_type=JSON,
        middleware=[CIDRFilter(allowlist, parse_networks(settings.trusted_proxies))],
    )
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(Exception, _unexpected_error)
    app.add_route("/_sys/job", JobsResource(operator))
    app.add_route("/_sys/job/{namespace}/{name}", JobResource(operator))
    app.add_route("/_sys/openapi.yaml", OpenAPIResource())
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(operator))
    return app
