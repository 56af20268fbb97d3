"""The Falcon app's envelope, methods and caching, through ``falcon.testing`` and the real client.

Addresses, sockets and the real server are the integration tests' business;
these cover what only an absent or misbehaving operator shows, and the rules
of each route that need no operator.
"""

from __future__ import annotations

import gzip
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from podcron import wire
from podcron.sidecar.app import create_app, create_probe_app
from podcron.sidecar.cidr import Allowlist, parse_networks
from podcron.sidecar.joblist import accepts_gzip
from podcron.sidecar.operator_client import OperatorClient

ROUTES = {
    "/_sys/job": ["GET", "HEAD", "OPTIONS"],
    "/_sys/job/ns/name": ["GET", "HEAD", "OPTIONS", "POST"],
    "/_sys/openapi.yaml": ["GET", "HEAD", "OPTIONS"],
    "/healthz": ["GET", "HEAD", "OPTIONS"],
    "/readyz": ["GET", "HEAD", "OPTIONS"],
}


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="podcron-") as directory:
        yield Path(directory)


def _app(socket_path: Path) -> testing.TestClient:
    """The app allowing 127.0.0.1, the address ``falcon.testing`` simulates by default."""
    app = create_app(
        OperatorClient(str(socket_path)), Allowlist(parse_networks(["127.0.0.1/32"])), ()
    )
    return testing.TestClient(app)


@pytest.fixture
def api(socket_dir: Path) -> testing.TestClient:
    return _app(socket_dir / "absent.sock")


def test_without_an_operator_the_list_is_empty_and_the_rest_503(api: testing.TestClient) -> None:
    assert api.simulate_get("/_sys/job").json == {"data": [], "meta": {"total": 0}}
    for result in (
        api.simulate_get("/_sys/job/ns/name"),
        api.simulate_post("/_sys/job/ns/name"),
        api.simulate_get("/readyz"),
    ):
        assert result.status_code == 503
        assert result.json["error"]["code"] == "OPERATOR_UNAVAILABLE"
        assert result.json["data"] is None
    assert api.simulate_get("/healthz").json == {"data": {"status": "ok"}, "meta": {}}


def test_a_caller_outside_the_allowlist_is_refused_before_routing(
    api: testing.TestClient,
) -> None:
    result = api.simulate_get("/_sys/no-such-path", remote_addr="10.0.0.1")
    assert result.status_code == 403
    assert result.json == {
        "data": None,
        "meta": {},
        "error": {"code": "FORBIDDEN", "message": "your address may not call this API"},
    }


def test_denials_are_logged_at_a_bounded_rate(
    api: testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(100):
        assert api.simulate_get("/_sys/job", remote_addr="10.0.0.1").status_code == 403
    denials = [r for r in caplog.records if r.getMessage().startswith("denied GET /_sys/job")]
    assert 1 <= len(denials) <= 5


@pytest.mark.parametrize(("path", "methods"), list(ROUTES.items()), ids=list(ROUTES))
def test_options_and_405_agree_on_the_allowed_methods(
    api: testing.TestClient, path: str, methods: list[str]
) -> None:
    options = api.simulate_options(path)
    assert options.status_code == 200
    assert options.headers["Allow"] == ", ".join(methods)
    assert options.json == {"data": {"methods": methods}, "meta": {}}
    refused = api.simulate_request("PATCH", path)
    assert refused.status_code == 405
    assert refused.headers["Allow"] == options.headers["Allow"]
    assert refused.json["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert refused.json["error"]["message"].endswith(f"allowed: {', '.join(methods)}")


@pytest.mark.parametrize("path", [p for p in ROUTES if p != "/_sys/job/ns/name"])
def test_head_answers_as_get_without_a_body(api: testing.TestClient, path: str) -> None:
    got, head = api.simulate_get(path), api.simulate_head(path)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers["Content-Length"] == str(len(got.content))
    assert head.headers["Content-Type"] == got.headers["Content-Type"]


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("path", ["/_sys/job/ns%2Fname", "/_sys/job/ns/a%2fb", "/_sys/job%2F"])
def test_an_encoded_slash_is_refused_on_every_method(
    api: testing.TestClient, method: str, path: str
) -> None:
    result = api.simulate_request(method, path)
    assert result.status_code == 400
    if method != "HEAD":
        assert result.json["error"]["code"] == "BAD_REQUEST"
        assert "%2F" in result.json["error"]["message"]


def test_the_probe_app_answers_only_the_probes(socket_dir: Path) -> None:
    probes = testing.TestClient(create_probe_app(OperatorClient(str(socket_dir / "absent.sock"))))
    # The kubelet calls from the node: no allowlist here.
    assert probes.simulate_get("/healthz", remote_addr="192.0.2.7").status_code == 200
    assert probes.simulate_get("/readyz", remote_addr="192.0.2.7").status_code == 503
    missing = probes.simulate_get("/_sys/job", remote_addr="192.0.2.7")
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, GZIP;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("deflate, br", False),
        ("identity", False),
        ("gzip;q=nonsense", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_the_list_is_gzipped_on_request_and_revalidated_by_etag(api: testing.TestClient) -> None:
    plain = api.simulate_get("/_sys/job")
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    etag = plain.headers["ETag"]
    assert etag.startswith('W/"')
    packed = api.simulate_get("/_sys/job", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["ETag"] == etag
    assert gzip.decompress(packed.content) == plain.content
    for tag in (etag, etag.removeprefix("W/"), f'"other", {etag}', "*"):
        cached = api.simulate_get("/_sys/job", headers={"If-None-Match": tag})
        assert cached.status_code == 304, tag
        assert cached.content == b""
        assert cached.headers["ETag"] == etag
    assert api.simulate_get("/_sys/job", headers={"If-None-Match": '"other"'}).status_code == 200


def test_an_operator_answer_the_sidecar_does_not_know_is_a_500(
    socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = socket_dir / "odd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def odd_operator() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(wire.encode_error("SOMETHING_NEW", "a code from a newer operator"))

    thread = threading.Thread(target=odd_operator)
    thread.start()
    try:
        result = _app(path).simulate_get("/_sys/job/ns/name")
    finally:
        thread.join(5)
        listener.close()
    assert result.status_code == 500
    assert result.json["error"]["code"] == "INTERNAL_ERROR"
    assert "GET /_sys/job/ns/name failed" in caplog.text


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/_sys/job/ns/name"), ("GET", "/_sys/job/ns/name/runs")]
)
@pytest.mark.parametrize(
    ("location", "status"), [("10.244.1.7:8080", 307), ("[fd00::7]:8080", 307), ("", 503)]
)
def test_a_job_another_replica_runs_is_redirected_to_it(
    socket_dir: Path, method: str, path: str, location: str, status: int
) -> None:
    socket_path = socket_dir / "replica.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.listen()

    def replica() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            refusal = wire.encode_error("NOT_OWNER", "run elsewhere", location=location)
            connection.sendall(refusal)

    thread = threading.Thread(target=replica)
    thread.start()
    try:
        result = _app(socket_path).simulate_request(method, path)
    finally:
        thread.join(5)
        listener.close()
    assert result.status_code == status
    if status == 307:
        assert result.headers["Location"] == f"http://{location}{path}"
    else:  # moving between replicas: ask again
        assert result.headers["Retry-After"] == "1"
        assert result.json["error"]["code"] == "NOT_OWNER"
