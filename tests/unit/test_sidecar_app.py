"""The Falcon app's envelope and error mapping, through ``falcon.testing`` and the real client.

Addresses, sockets and the real server are the integration tests' business;
these cover what only an absent or misbehaving operator shows.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from falcon import testing

from podcron import control_protocol as wire
from podcron.config import Settings
from podcron.sidecar.app import create_app
from podcron.sidecar.cidr import Allowlist, parse_networks
from podcron.sidecar.operator_client import OperatorClient


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="podcron-") as directory:
        yield Path(directory)


def _app(socket_path: Path) -> testing.TestClient:
    """The app allowing 127.0.0.1, the address ``falcon.testing`` simulates by default."""
    app = create_app(
        Settings(), OperatorClient(str(socket_path)), Allowlist(parse_networks(["127.0.0.1/32"]))
    )
    return testing.TestClient(app)


def test_without_an_operator_the_list_is_empty_and_the_rest_503(socket_dir: Path) -> None:
    api = _app(socket_dir / "absent.sock")
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


def test_a_caller_outside_the_allowlist_is_refused_before_routing(socket_dir: Path) -> None:
    api = _app(socket_dir / "absent.sock")
    result = api.simulate_get("/_sys/no-such-path", remote_addr="10.0.0.1")
    assert result.status_code == 403
    assert result.json == {
        "data": None,
        "meta": {},
        "error": {"code": "FORBIDDEN", "message": "your address may not call this API"},
    }


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
