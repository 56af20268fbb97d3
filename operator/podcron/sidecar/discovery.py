"""The pod network's CIDRs, read from the cluster's Nodes, for an empty ``allowedCIDRs``.

Each Node's ``spec.podCIDRs`` (or the older ``spec.podCIDR``) is read on a
background thread, and the allowlist becomes those networks plus loopback.
Until the first read succeeds, and whenever nothing is discovered, only
loopback may call (fail closed) and a warning says so; the sidecar serves
from its first moment all the same. A first read that fails is retried with
growing pauses (1 s, 2 s, 4 s … up to ``cidrRefreshSeconds``), then the
Nodes are re-read every ``cidrRefreshSeconds``. A failed refresh after a
successful one keeps the networks last seen: pod CIDRs are assigned once per
Node, so an API server hiccup is no reason to lock the callers out.

A range wider than ``podCIDRsMinPrefixV4`` / ``podCIDRsMinPrefixV6`` (by
default /8 and /32) is no pod CIDR any cluster assigns: a Node claiming
``0.0.0.0/0`` would otherwise open the API to every address. Such a range is
ignored, with a warning naming the Node.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from podcron import kubeclient
from podcron.sidecar.cidr import LOOPBACK, Allowlist, Network, parse_network

log = logging.getLogger("podcron.sidecar.discovery")

#: Seconds to connect, then to read the answer: a hung API server must not hold discovery.
REQUEST_TIMEOUT_SECONDS = (5.0, 10.0)
FIRST_RETRY_SECONDS = 1.0

NodeLister = Callable[[], list[Mapping[str, Any]]]


@dataclass(frozen=True)
class MinimumPrefixes:
    """The shortest prefix a discovered pod CIDR may have, per IP version."""

    ipv4: int = 8
    ipv6: int = 32

    def of(self, network: Network) -> int:
        """The minimum for ``network``'s IP version."""
        return self.ipv4 if network.version == 4 else self.ipv6


@dataclass(frozen=True)
class Ignored:
    """A pod CIDR of a Node that is not allowed, and why."""

    node: str
    text: str
    reason: str


def pod_cidrs(
    nodes: Iterable[Mapping[str, Any]], minimum: MinimumPrefixes
) -> tuple[tuple[Network, ...], list[Ignored]]:
    """Every plausible pod CIDR of ``nodes`` (each once, sorted), and the ones ignored."""
    found: set[Network] = set()
    ignored: list[Ignored] = []
    for node in nodes:
        spec = node.get("spec") or {}
        name = str((node.get("metadata") or {}).get("name"))
        texts = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        for text in map(str, texts):
            try:
                network = parse_network(text)
            except ValueError:
                ignored.append(Ignored(name, text, "not an IP network"))
                continue
            if network.prefixlen < minimum.of(network):
                reason = f"wider than /{minimum.of(network)}, which no pod network is"
                ignored.append(Ignored(name, text, reason))
                continue
            found.add(network)
    return tuple(sorted(found, key=lambda n: (n.version, n))), ignored


def kubernetes_node_lister() -> NodeLister:
    """List Nodes with the official client: in-cluster credentials, else the kubeconfig."""
    # One attempt per refresh, bounded by the timeout: discovery paces its own retries.
    api = client.CoreV1Api(kubeclient.api_client(retries=0))

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
        minimum: MinimumPrefixes,
        make_lister: Callable[[], NodeLister] = kubernetes_node_lister,
    ) -> None:
        self._allowlist = allowlist
        self._refresh_seconds = refresh_seconds
        self._minimum = minimum
        self._make_lister = make_lister
        self._lister: NodeLister | None = None
        self._discovered: tuple[Network, ...] | None = None
        self._failing = False
        self._read_once = False
        self._warned: set[Ignored] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Allow loopback only, and read the Nodes on a daemon thread from now on."""
        self._allowlist.replace(LOOPBACK)
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
        backoff = FIRST_RETRY_SECONDS
        while True:
            if self.refresh() or self._read_once:
                pause = self._refresh_seconds
            else:
                pause, backoff = min(backoff, self._refresh_seconds), backoff * 2
            if self._stopping.wait(pause):
                return

    def refresh(self) -> bool:
        """Read the Nodes once and update the allowlist; never raises. True if read."""
        try:
            if self._lister is None:
                self._lister = self._make_lister()
            networks, ignored = pod_cidrs(self._lister(), self._minimum)
        except Exception as error:  # any API or config failure: keep serving, fail closed
            self._failed(error)
            return False
        self._failing, self._read_once = False, True
        for each in ignored:
            if each not in self._warned:
                self._warned.add(each)
                log.warning(
                    "Node %s has the pod CIDR %r, %s; ignoring it",
                    each.node,
                    each.text,
                    each.reason,
                )
        self._set(networks)
        return True

    def _failed(self, error: Exception) -> None:
        if not self._failing:
            self._failing = True
            if self._discovered:
                log.warning(
                    "cannot read Nodes (%s); keeping the pod CIDRs last seen: %s",
                    error,
                    ", ".join(map(str, self._discovered)),
                )
            else:
                log.warning(
                    "cannot read Nodes (%s); only loopback may call /_sys/job until they are read",
                    error,
                )
        if self._discovered is None:
            self._discovered = ()
            self._allowlist.replace(LOOPBACK)

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
