"""What the benchmarks against a real API server share (bench_api, bench_shutdown, vs_cronjob).

A fresh control plane with the CRD and a namespace, ScheduledJob bodies, and
the ``podcron operator`` process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes

from harness import stop, wait_until
from podcron.controller.resource import GROUP, KIND, PLURAL, VERSION

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

# Re-exported: the benchmarks annotate with it, and reach tools/ only through here.
from controlplane import ControlPlane as ControlPlane  # noqa: E402
from controlplane import ensure_binaries  # noqa: E402

CRD = ROOT / "crds" / "scheduledjobs.podcron.dev.yaml"
#: The line the operator logs once kopf has started.
OPERATOR_STARTED = b"podcron operator started"


@contextmanager
def control_plane() -> Iterator[ControlPlane]:
    """etcd and kube-apiserver on loopback, as the integration tests use them, for one run."""
    with ControlPlane.start(ensure_binaries()) as plane:
        yield plane


def install_crd(plane: ControlPlane) -> None:
    """The ScheduledJob CRD, applied and established."""
    plane.kubectl("apply", "--server-side", "-f", str(CRD))
    plane.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}")


def prepare_namespace(
    plane: ControlPlane, namespace: str, *, connections: int
) -> kubernetes.client.CustomObjectsApi:
    """Install the CRD, create ``namespace``; a client with ``connections`` pooled connections."""
    install_crd(plane)
    plane.kubectl("create", "namespace", namespace)
    client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(plane.kubeconfig)
    )
    client.configuration.connection_pool_maxsize = connections
    return kubernetes.client.CustomObjectsApi(client)


def scheduled_job(
    index: int, entry_point: str, every: str = "1s", *, cron: str | None = None
) -> dict[str, Any]:
    """The body of ScheduledJob ``job-<index>``, running ``entry_point`` every ``every``
    (or on the ``cron`` schedule, if given)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": f"job-{index:05d}"},
        "spec": {
            "entryPoint": entry_point,
            "schedule": {"cron": cron} if cron else {"every": every},
        },
    }


def is_ready(body: Mapping[str, Any]) -> bool:
    """Whether a ScheduledJob's ``Ready`` condition is True."""
    conditions = (body.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@contextmanager
def operator_process(
    plane: ControlPlane, workdir: Path, namespace: str, env: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``podcron operator`` watching ``namespace``, logging to ``workdir/operator.log``.

    Yields once it has started; stopped with :func:`stop` afterwards (unless
    it has exited already).
    """
    log_path = workdir / "operator.log"
    environment = plane.env() | {
        "PODCRON_NAMESPACES": namespace,
        "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
        "PODCRON_METRICS_HOST": "127.0.0.1",
        "PODCRON_METRICS_PORT": "0",
        **env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "podcron", "operator"],
            env=environment,
            stdout=log,
            stderr=log,
            cwd=workdir,
        )
        try:
            wait_until(lambda: OPERATOR_STARTED in log_path.read_bytes(), 60, "operator start-up")
            yield process
        finally:
            stop(process)


#: The verbs by which apiserver_request_total counts writes.
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


def _requests(plane: ControlPlane, counts: Callable[[dict[str, str]], bool]) -> float:
    """The API server's apiserver_request_total so far, summed over the series ``counts`` keeps."""
    total = 0.0
    for line in plane.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_request_total{"):
            series, _, value = line.rpartition(" ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if counts(labels):
                total += float(value)
    return total


def status_patches(plane: ControlPlane) -> float:
    """The API server's count of PATCH requests to scheduledjobs/status so far."""
    return _requests(
        plane,
        lambda s: (
            (s.get("resource"), s.get("subresource"), s.get("verb")) == (PLURAL, "status", "PATCH")
        ),
    )


def write_requests(plane: ControlPlane) -> float:
    """The API server's count of write requests so far, from every client and to any resource."""
    return _requests(plane, lambda s: s.get("verb") in WRITE_VERBS)
