"""Addresses as the sidecar sees them on real sockets: IPv4-mapped peers, and an empty
``allowedCIDRs``, where the Nodes' ``spec.podCIDRs`` in the real control plane become the
allowlist, plus loopback, and nothing but loopback while no Node has one, while the API
server hangs, or where a Node claims an implausibly wide range.

The pod CIDR is a loopback subnet so that real clients bound to it can call. No
operator runs here: the job list is empty, which is all these tests need. A caller
that is not allowed is disconnected at accept: :data:`REFUSED`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from controlplane import ControlPlane

from ..waiting import wait_for
from .sidecar_process import SidecarProcess, client

POD_CIDR = "127.0.9.0/24"
IN_POD_NETWORK = "127.0.9.7"
OUTSIDE = "127.0.10.7"
REFUSED = 0


def _node(name: str, *cidrs: str) -> str:
    cidrs = cidrs or (POD_CIDR, "fd00:9::/64")
    return f"""
apiVersion: v1
kind: Node
metadata: {{name: {name}}}
spec:
  podCIDR: {cidrs[0]}
  podCIDRs: {json.dumps(list(cidrs))}
"""


def _sidecar(env: dict[str, str], workdir: Path) -> SidecarProcess:
    return SidecarProcess(
        env
        | {
            "PODCRON_ALLOWED_CIDRS": "",
            "PODCRON_CIDR_REFRESH_SECONDS": "0.3",
            "PODCRON_CONTROL_SOCKET": str(workdir / "absent.sock"),
        },
        workdir / "sidecar.log",
    )


@pytest.fixture
def sidecar(control_plane: ControlPlane, tmp_path: Path) -> Iterator[SidecarProcess]:
    sidecar = _sidecar(control_plane.env(), tmp_path)
    yield sidecar
    assert sidecar.stop() == 0


def _status(source: str, url: str) -> int:
    try:
        return client(source).get(f"{url}/_sys/job", timeout=10).status_code
    except requests.ConnectionError:
        return REFUSED


def test_pod_cidrs_of_nodes_become_the_allowlist(
    control_plane: ControlPlane, sidecar: SidecarProcess
) -> None:
    nodes = control_plane.kubectl("get", "nodes", "-o", "name").stdout.split()
    if not nodes:
        wait_for(
            lambda: "no pod CIDRs found on any Node; only loopback may call" in sidecar.log(),
            timeout=15,
            what="discovery to find no pod CIDR",
        )
    assert _status("127.0.0.1", sidecar.url) == 200
    assert _status(IN_POD_NETWORK, sidecar.url) == REFUSED

    name = f"podcron-test-{os.getpid()}"
    control_plane.kubectl("apply", "-f", "-", input=_node(name))
    try:
        wait_for(
            lambda: _status(IN_POD_NETWORK, sidecar.url) == 200,
            timeout=15,
            what="the Node's pod CIDR to be allowed",
        )
        assert _status(OUTSIDE, sidecar.url) == REFUSED
        assert _status("127.0.0.1", sidecar.url) == 200, "loopback stays allowed"
        assert f"pod CIDRs from Nodes allowed: {POD_CIDR}, fd00:9::/64" in sidecar.log()
    finally:
        control_plane.kubectl("delete", "node", name, "--wait=false")
    wait_for(
        lambda: _status(IN_POD_NETWORK, sidecar.url) == REFUSED,
        timeout=15,
        what="the deleted Node's pod CIDR to be dropped",
    )


def _mapped_listener_possible() -> bool:
    if not socket.has_ipv6:
        return False
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::ffff:127.0.0.1", 0))
        except OSError:
            return False
    return True


@pytest.mark.skipif(
    not _mapped_listener_possible(), reason="no IPv6 socket can bind ::ffff:127.0.0.1 here"
)
def test_ipv4_mapped_peers_match_ipv4_ranges(tmp_path: Path) -> None:
    sidecar = SidecarProcess(
        dict(os.environ)
        | {
            "PODCRON_ALLOWED_CIDRS": "127.0.0.2/32",
            "PODCRON_CONTROL_SOCKET": str(tmp_path / "absent.sock"),
        },
        tmp_path / "sidecar.log",
        host="::ffff:127.0.0.1",
    )
    try:
        assert _status("127.0.0.2", sidecar.url) == 200
        assert _status("127.0.0.3", sidecar.url) == REFUSED
        # The listener is IPv6: this is the form in which the peer reached the filter.
        # The line is written by the sidecar's log thread, after the refusal.
        wait_for(
            lambda: "refused a connection from ::ffff:127.0.0.3" in sidecar.log(),
            timeout=10,
            what="the refusal's log line",
        )
    finally:
        assert sidecar.stop() == 0


def test_a_node_claiming_every_address_is_ignored_with_a_warning(
    control_plane: ControlPlane, sidecar: SidecarProcess
) -> None:
    name = f"podcron-wide-{os.getpid()}"
    control_plane.kubectl("apply", "-f", "-", input=_node(name, "0.0.0.0/0", "::/0"))
    try:
        wait_for(
            lambda: f"Node {name} has the pod CIDR '0.0.0.0/0', wider than /8" in sidecar.log(),
            timeout=15,
            what="the warning naming the Node",
        )
        assert f"Node {name} has the pod CIDR '::/0', wider than /32" in sidecar.log()
        assert _status(OUTSIDE, sidecar.url) == REFUSED
        assert _status("127.0.0.1", sidecar.url) == 200
    finally:
        control_plane.kubectl("delete", "node", name, "--wait=false")


class GatedProxy:
    """A TCP proxy to ``target`` that holds every connection until :meth:`open` is called:
    an API server that accepts connections and never answers, until it does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._opened = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def held(self) -> int:
        """Connections accepted and not yet passed on."""
        with self._lock:
            return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._opened:
                    self._held.append(connection)
                    continue
            self._forward(connection)

    def _forward(self, connection: socket.socket) -> None:
        upstream = socket.create_connection(self._target)
        for source, sink in ((connection, upstream), (upstream, connection)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            sink.close()
            source.close()

    def open(self) -> None:
        """Pass every held connection and every later one on to the target."""
        with self._lock:
            self._opened = True
            held, self._held = self._held, []
        for connection in held:
            self._forward(connection)

    def close(self) -> None:
        """Stop accepting."""
        self._listener.close()


def test_the_sidecar_serves_at_once_while_the_api_server_hangs(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    kubeconfig = yaml.safe_load(control_plane.kubeconfig.read_text())
    server = kubeconfig["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = GatedProxy((host, int(port)))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.address[1]}"
    hung = tmp_path / "hung-kubeconfig.yaml"
    hung.write_text(yaml.safe_dump(kubeconfig))
    name = f"podcron-hung-{os.getpid()}"
    control_plane.kubectl("apply", "-f", "-", input=_node(name))
    try:
        # SidecarProcess returns once /healthz answers: while Node discovery still hangs.
        sidecar = _sidecar(control_plane.env() | {"KUBECONFIG": str(hung)}, tmp_path)
        try:
            wait_for(lambda: proxy.held >= 1, timeout=30, what="discovery to ask the API server")
            assert _status("127.0.0.1", sidecar.url) == 200, "loopback is served meanwhile"
            assert _status(IN_POD_NETWORK, sidecar.url) == REFUSED, "no pod CIDR is known yet"
            assert client(IN_POD_NETWORK).get(f"{sidecar.probe_url}/healthz").status_code == 200
            proxy.open()
            wait_for(
                lambda: _status(IN_POD_NETWORK, sidecar.url) == 200,
                timeout=60,
                what="the pod CIDR once the API server answers",
            )
        finally:
            assert sidecar.stop() == 0
    finally:
        proxy.close()
        control_plane.kubectl("delete", "node", name, "--wait=false")
