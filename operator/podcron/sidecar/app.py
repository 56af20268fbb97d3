"""The System API as a Falcon ASGI app: ``/_sys/job`` and its jobs, over the control socket.

Every answer is the ``{"data", "meta"}`` envelope, errors included
(``{"data": null, "meta": {}, "error": {"code", "message"}}``), and every
route answers ``HEAD`` where it answers ``GET``, and ``OPTIONS`` with the
same ``Allow`` list as its 405. The job list passes through as the operator
serialised it: the sidecar never decodes it.

Two apps: :func:`create_app` for the API port, where every path is filtered
by the caller's address, and :func:`create_probe_app` for the kubelet's
probes on a port of their own, which only answers ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from importlib import resources
from typing import Any, Literal

import falcon
import falcon.asgi
from falcon import constants

from podcron import wire
from podcron.errors import ErrorCode, OperatorRefused, OperatorStarting, OperatorUnavailable
from podcron.sidecar import envelope
from podcron.sidecar.cidr import Allowlist, Network, client_address
from podcron.sidecar.joblist import Versions, accepts_gzip
from podcron.sidecar.operator_client import EMPTY, OperatorClient
from podcron.sidecar.ratelimited_log import RateLimitedLog

log = logging.getLogger("podcron.sidecar")

#: The operator's refusals as HTTP statuses; the envelope's code is the operator's.
#: A code missing here answers 500.
REFUSALS: dict[str, int] = {
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.JOB_ALREADY_RUNNING: 409,
    ErrorCode.TOO_MANY_MANUAL_RUNS: 429,
}
#: Codes for errors Falcon raises itself; any other 4xx is BAD_REQUEST, 5xx INTERNAL_ERROR.
STATUS_CODES = {
    400: ErrorCode.BAD_REQUEST,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    500: ErrorCode.INTERNAL_ERROR,
}
#: The longest namespace (an RFC 1123 label) and name (a DNS subdomain) Kubernetes accepts.
MAX_NAMESPACE, MAX_NAME = 63, 253

JSON = falcon.MEDIA_JSON
OPENAPI_DOCUMENT = "openapi.yaml"
OK = envelope.data({"status": "ok"})

App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]


class ApiError(falcon.HTTPError):
    """An error answered with the envelope and its code."""

    def __init__(
        self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            falcon.code_to_http_status(status), title=code, description=message, headers=headers
        )
        self.error_code = code


def _serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    status = error.status_code
    code = getattr(error, "error_code", None) or STATUS_CODES.get(
        status, ErrorCode.BAD_REQUEST if status < 500 else ErrorCode.INTERNAL_ERROR
    )
    message = error.description or error.title or str(error.status)
    if status == 405:
        allowed = dict(error.headers or ()).get("Allow", "")
        message = f"{req.method} is not allowed on {req.path}; allowed: {allowed}"
    resp.data = envelope.error(code, message)
    resp.content_type = JSON


async def _unexpected_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, error: Exception, params: dict[str, Any]
) -> None:
    log.error("%s %s failed", req.method, req.path, exc_info=error)
    raise ApiError(500, ErrorCode.INTERNAL_ERROR, "the sidecar failed; see its log")


def _unavailable(error: OperatorUnavailable) -> ApiError:
    if isinstance(error, OperatorStarting):
        return ApiError(
            503, ErrorCode.OPERATOR_UNAVAILABLE, "the operator is starting; try again shortly"
        )
    log.warning("the operator is unreachable: %s", error)
    return ApiError(
        503, ErrorCode.OPERATOR_UNAVAILABLE, "the operator is not reachable; try again shortly"
    )


def _refused(error: OperatorRefused, path: str) -> Exception:
    """The operator's refusal as the System API answers it.

    ``NOT_OWNER`` (several replicas; a manual run or a job's runs): 307 to the same path on
    the sidecar of the replica that runs the job, same method and body; while the job moves
    between replicas, whose it is is not known yet: 503, ask again.
    """
    if error.code == ErrorCode.NOT_OWNER:
        if not error.location:
            return ApiError(503, ErrorCode.NOT_OWNER, error.message, headers={"Retry-After": "1"})
        return falcon.HTTPTemporaryRedirect(f"http://{error.location}{path}")
    status = REFUSALS.get(error.code)
    if status is None:
        raise error  # a code this sidecar does not know: _unexpected_error's 500
    subject = f"job {error.job_id}: " if error.job_id else ""
    headers = None if error.retry_after is None else {"Retry-After": str(error.retry_after)}
    return ApiError(status, ErrorCode(error.code), f"{subject}{error.message}", headers)


class CIDRFilter:
    """Middleware: 403 for a caller outside the allowlist.

    Peers that are neither allowed nor trusted proxies never get this far (the
    protocol refuses them at accept); this judges the client a trusted proxy
    names in ``X-Forwarded-For``, and peers whose network left the allowlist
    while their connection stayed open. The client judged is kept in
    ``req.context.client`` for the log lines that name the caller.
    """

    def __init__(self, allowlist: Allowlist, trusted_proxies: tuple[Network, ...]) -> None:
        self._allowlist = allowlist
        self._trusted_proxies = trusted_proxies
        self._denials = RateLimitedLog(log)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Deny before routing, so an outsider learns nothing, not even which paths exist."""
        forwarded = req.get_header("X-Forwarded-For")
        client = client_address(req.remote_addr, forwarded, self._trusted_proxies)
        peer = req.remote_addr
        req.context.client = (
            f"{client} (via {peer})" if client is not None and str(client) != peer else peer
        )
        if self._allowlist.allows(client):
            return
        self._denials.warning(
            "denied %s %s from peer %s%s",
            req.method,
            req.path[:200],
            peer,
            f" (X-Forwarded-For {forwarded[:200]!r})" if forwarded else "",
        )
        raise ApiError(403, ErrorCode.FORBIDDEN, "your address may not call this API")


class EncodedSlashFilter:
    """Middleware: 400 for ``%2F`` in the path.

    The server decodes the path before routing, so ``/_sys/job/ns%2Fname``
    would otherwise reach the job ``ns/name``. Namespaces and names never hold
    a ``/``: such a path is a mistake or a probe, and is refused on every method.
    """

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Refuse before routing."""
        raw_path: bytes = req.scope.get("raw_path") or b""
        if b"%2f" in raw_path.lower():
            raise ApiError(
                400,
                ErrorCode.BAD_REQUEST,
                "the path holds an encoded '/' (%2F); a job is /_sys/job/{namespace}/{name}",
            )


class Resource:
    """``OPTIONS`` for a resource: the methods it has, exactly as its 405 lists them."""

    async def on_options(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        """The allowed methods, in the ``Allow`` header and in the envelope."""
        methods = [
            m
            for m in sorted(constants.COMBINED_METHODS)
            if m != "WEBSOCKET" and hasattr(self, f"on_{m.lower()}")
        ]
        resp.set_header("Allow", ", ".join(methods))
        resp.data = envelope.data({"methods": methods})
        resp.content_type = JSON


class JobsResource(Resource):
    """``/_sys/job``: every job the operator runs, gzip-encoded on request, with an ETag."""

    def __init__(self, operator: OperatorClient) -> None:
        self._operator = operator
        self._versions = Versions()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """All jobs; an empty list while the operator is not up."""
        try:
            jobs = await self._operator.list_jobs()
        except OperatorUnavailable as error:
            log.debug("listing no jobs: %s", error)
            jobs = EMPTY
        version = self._versions.of(jobs)
        resp.set_header("ETag", version.etag)
        resp.set_header("Vary", "Accept-Encoding")
        resp.set_header("Cache-Control", "no-cache")
        if _matches(req.if_none_match, version.opaque_tag):
            resp.status = 304
            return
        resp.content_type = JSON
        if accepts_gzip(req.get_header("Accept-Encoding")):
            resp.set_header("Content-Encoding", "gzip")
            resp.data = await version.gzipped()
        else:
            resp.data = version.identity

    on_head = on_get


def _matches(tags: list[falcon.ETag | Literal["*"]] | None, opaque_tag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110, section 13.1.2)."""
    return any(tag == "*" or tag == opaque_tag for tag in tags or ())


def _job_id(namespace: str, name: str) -> str:
    """``namespace/name``; 404 at once for what no ScheduledJob can be called."""
    if not (0 < len(namespace) <= MAX_NAMESPACE and 0 < len(name) <= MAX_NAME):
        raise ApiError(404, ErrorCode.JOB_NOT_FOUND, f"no job can be called {namespace}/{name}")
    return f"{namespace}/{name}"


@contextlib.contextmanager
def _operator_answers(path: str) -> Iterator[None]:
    """The operator's refusals, and its absence, as the System API answers them."""
    try:
        yield
    except OperatorRefused as error:
        raise _refused(error, path) from error
    except OperatorUnavailable as error:
        raise _unavailable(error) from error


class _OneJobResource(Resource):
    """A path under ``/_sys/job/{namespace}/{name}``, answered by the operator."""

    def __init__(self, operator: OperatorClient) -> None:
        self._operator = operator

    async def on_options(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        """The allowed methods, for a path that can name a job."""
        _job_id(params["namespace"], params["name"])
        await super().on_options(req, resp)


class JobResource(_OneJobResource):
    """``/_sys/job/{namespace}/{name}``: one job, and its manual trigger."""

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, namespace: str, name: str
    ) -> None:
        """The job's JobMetadata."""
        with _operator_answers(req.path):
            data = await self._operator.get_job(_job_id(namespace, name))
        resp.data = b'{"data":%s,"meta":{}}' % data
        resp.content_type = JSON

    on_head = on_get

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, namespace: str, name: str
    ) -> None:
        """Run the job once now (trigger ``manual``), in the caller's trace if it sent one."""
        job_id = _job_id(namespace, name)
        trace_headers = {h: v for h in wire.TRACE_HEADERS if (v := req.get_header(h)) is not None}
        with _operator_answers(req.path):
            answer = await self._operator.trigger(job_id, trace_headers=trace_headers)
        log.info(
            "manual run of %s requested by %s",
            job_id,
            getattr(req.context, "client", req.remote_addr),
            extra={"job_id": job_id},
        )
        resp.data = envelope.data(answer)
        resp.content_type = JSON


class RunsResource(_OneJobResource):
    """``/_sys/job/{namespace}/{name}/runs``: the job's last runs, newest first."""

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, namespace: str, name: str
    ) -> None:
        """The operator's array of PastRun, passed through undecoded, and its length."""
        with _operator_answers(req.path):
            total, data = await self._operator.runs(_job_id(namespace, name))
        resp.data = b'{"data":%s,"meta":{"total":%d}}' % (data, total)
        resp.content_type = JSON

    on_head = on_get


class HealthResource(Resource):
    """``/healthz``: the sidecar process serves requests."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Always ``ok`` while the process can answer at all."""
        resp.data = OK
        resp.content_type = JSON

    on_head = on_get


class ReadyResource(Resource):
    """``/readyz``: ready only while the operator answers on the control socket."""

    def __init__(self, operator: OperatorClient) -> None:
        self._operator = operator

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """``ok``, or 503 ``OPERATOR_UNAVAILABLE``."""
        try:
            await self._operator.ping()
        except OperatorUnavailable as error:
            raise _unavailable(error) from error
        resp.data = OK
        resp.content_type = JSON

    on_head = on_get


class OpenAPIResource(Resource):
    """``/_sys/openapi.yaml``: the OpenAPI 3 document of this API."""

    def __init__(self) -> None:
        self._document = resources.files(__package__).joinpath(OPENAPI_DOCUMENT).read_bytes()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The document as shipped in the package."""
        resp.data = self._document
        resp.content_type = falcon.MEDIA_YAML

    on_head = on_get


def _app(*middleware: CIDRFilter | EncodedSlashFilter) -> App:
    app = App(media_type=JSON, middleware=list(middleware))
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(Exception, _unexpected_error)
    return app


def create_app(
    operator: OperatorClient, allowlist: Allowlist, trusted_proxies: tuple[Network, ...]
) -> App:
    """The System API wired to ``operator``, filtering callers by ``allowlist``."""
    app = _app(CIDRFilter(allowlist, trusted_proxies), EncodedSlashFilter())
    app.add_route("/_sys/job", JobsResource(operator))
    app.add_route("/_sys/job/{namespace}/{name}", JobResource(operator))
    app.add_route("/_sys/job/{namespace}/{name}/runs", RunsResource(operator))
    app.add_route("/_sys/openapi.yaml", OpenAPIResource())
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(operator))
    return app


def create_probe_app(operator: OperatorClient) -> App:
    """``/healthz`` and ``/readyz`` for anyone: the kubelet calls from the node's address."""
    app = _app()
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(operator))
    return app
