"""The pod network's CIDRs, read from the cluster's Nodes, for an empty ``allowedCIDRs``.

Each Node's ``spec.podCIDRs`` (or the older ``spec.podCIDR``) is re-read
every ``cidrRefreshSeconds`` on a background thread, and the allowlist
becomes those networks plus loopback. With nothing discovered, only loopback
may call (fail closed) and a warning says so. A failed refresh after a
successful one keeps the networks last seen: pod CIDRs are assigned once per
Node, so an API server hiccup is no reason to lock the callers out.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client, config

from podcron.sidecar.cidr import LOOPBACK, Allowlist, Network, parse_network

log = logging.getLogger("podcron.sidecar.discovery")

REQUEST_TIMEOUT_SECONDS = 10.0

NodeLister = Callable[[], list[Mapping[str, Any]]]


def pod_cidrs(nodes: Iterable[Mapping[str, Any]]) -> tuple[Network, ...]:
    """Every valid pod CIDR of ``nodes`` (Node objects as JSON), each once, sorted."""
    found: set[Network] = set()
    for node in nodes:
        spec = node.get("spec") or {}
        texts = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        for text in texts:
            try:
                found.add(parse_network(str(text)))
            except ValueError:
                name = (node.get("metadata") or {}).get("name")
                log.warning("Node %s has an invalid pod CIDR %r; ignoring it", name, text)
    return tuple(sorted(found, key=lambda n: (n.version, n)))


def kubernetes_node_lister() -> NodeLister:
    """List Nodes with the official client: in-cluster credentials, else the kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CoreV1Api()

    def list_nodes() -> list[Mapping[str, Any]]:
        # Raw JSON: the client's model classes would cost more than the request.
        response: Any = api.list_node(
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        items: list[Mapping[str, Any]] = json.loads(response.data).get("items") or []
        return items

    return list_nodes


class Discovery:
    """Keeps an :class:`Allowlist` at the Nodes' pod CIDRs plus loopback."""

    def __init__(
        self,
        allowlist: Allowlist,
        *,
        refresh_seconds: float,
        make_lister: Callable[[], NodeLister] = kubernetes_node_lister,
    ) -> None:
        self._allowlist = allowlist
        self._refresh_seconds = refresh_seconds
        self._make_lister = make_lister
        self._lister: NodeLister | None = None
        self._discovered: tuple[Network, ...] | None = None
        self._failing = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Refresh once now, then every ``refresh_seconds`` on a daemon thread."""
        self.refresh()
        self._thread = threading.Thread(
            target=self._run, name="podcron-cidr-discovery", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing (waits for a refresh in progress)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._refresh_seconds):
            self.refresh()

    def refresh(self) -> None:
        """Read the Nodes once and update the allowlist; never raises."""
        try:
            if self._lister is None:
                self._lister = self._make_lister()
            networks = pod_cidrs(self._lister())
        except Exception as error:  # any API or config failure: keep serving, fail closed
            if not self._failing:
                self._failing = True
                if self._discovered:
                    log.warning(
                        "cannot read Nodes (%s); keeping the pod CIDRs last seen: %s",
                        error,
                        ", ".join(map(str, self._discovered)),
                    )
                else:
                    log.warning("cannot read Nodes (%s); only loopback may call /_sys/job", error)
            if self._discovered is None:
                self._discovered = ()
                self._allowlist.replace(LOOPBACK)
            return
        self._failing = False
        self._set(networks)

    def _set(self, networks: tuple[Network, ...]) -> None:
        if networks == self._discovered:
            return
        self._discovered = networks
        self._allowlist.replace(networks + LOOPBACK)
        if networks:
            log.info("pod CIDRs from Nodes allowed: %s", ", ".join(map(str, networks)))
        else:
            log.warning(
                "no pod CIDRs found on any Node; only loopback may call /_sys/job "
                "(set allowedCIDRs to allow others)"
            )
