"""End to end on kind: the image, the chart and the examples in a real cluster, kubelet and all.

One cluster serves the module: created from kind-config.yaml, the image built from the
Dockerfile and loaded into it, the chart installed with `helm install --wait` (both
containers must become ready), the examples applied. Then: runs show in status, a pod in
the cluster lists and triggers jobs over the Service, a caller from outside the pod network
is refused, kubectl triggers a run, and after `helm uninstall` every ScheduledJob and its
namespace delete at once. The cluster is deleted afterwards (PODCRON_E2E_KEEP_CLUSTER=1
keeps it for a look around).

Needs kind, a running Docker engine, helm (built from the Go module proxy like the local
control plane) and kubectl; skipped, with the reason, where one is missing. Run it with
`make e2e`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane import ensure_binaries
from gobuild import BinariesUnavailable
from helmtool import Helm

from ..chart import CHART, ROOT
from ..waiting import wait_for

pytestmark = pytest.mark.timeout(1800)

CLUSTER = "podcron-e2e"
IMAGE_REPOSITORY, IMAGE_TAG = "podcron", "e2e"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
RELEASE = "podcron"
SYSTEM = "podcron-system"
JOBS = "podcron-e2e-jobs"
SERVICE_URL = f"http://{RELEASE}.{SYSTEM}.svc:8080"
EXAMPLES = ("hello", "cleanup", "report")
# Suspended: it runs only when triggered.
ON_DEMAND = """
apiVersion: podcron.dev/v1alpha1
kind: ScheduledJob
metadata: {name: on-demand}
spec:
  entryPoint: hello
  schedule: {daily: {at: "02:30"}}
  suspend: true
"""
# The sidecar from outside the pod network: a NodePort that keeps the client's address
# (externalTrafficPolicy Local; Cluster would masquerade it as the node's pod-network
# gateway), mapped to this machine by kind-config.yaml's extraPortMappings.
NODE_PORT = 30080
OUTSIDE_SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: podcron-outside, namespace: {SYSTEM}}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {{app.kubernetes.io/name: podcron, app.kubernetes.io/instance: {RELEASE}}}
  ports: [{{port: 8080, targetPort: http, nodePort: {NODE_PORT}}}]
"""
# Runs in a pod of the cluster, from the podcron image itself (nothing to pull).
IN_CLUSTER_CLIENT = f"""
import json, urllib.error, urllib.request

def call(method, path):
    request = urllib.request.Request("{SERVICE_URL}" + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)

print(json.dumps({{
    "list": call("GET", "/_sys/job"),
    "post": call("POST", "/_sys/job/{JOBS}/on-demand"),
}}))
"""


def _run(*command: str, timeout: float = 600, input: str | None = None) -> str:
    """Run a command; fail the test with its output if it fails."""
    result = subprocess.run(
        command, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def _docker_engine() -> tuple[str | None, str]:
    """The docker CLI if it reaches a running engine, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return None, "no container engine: `docker` is not installed"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
    if info.returncode != 0:
        said = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"no container engine: `docker info` failed: {said}"
    return docker, ""


def _kubectl() -> tuple[str | None, str]:
    """kubectl from PATH, else the one built for the local control plane; else why not."""
    found = shutil.which("kubectl")
    if found:
        return found, ""
    try:
        return str(ensure_binaries().kubectl), ""
    except BinariesUnavailable as error:
        return None, f"no kubectl: {error}"


@dataclass(frozen=True)
class Cluster:
    """The kind cluster and the tools that reach it."""

    kubeconfig: Path
    kubectl_binary: str
    helm: Helm
    outside_port: int  # the host port kind maps to NODE_PORT

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """kubectl against the cluster; its output."""
        return _run(self.kubectl_binary, f"--kubeconfig={self.kubeconfig}", *args, input=input)

    def status(self, name: str) -> dict[str, Any]:
        """The status of ScheduledJob ``name`` in the jobs namespace ({} if none yet)."""
        job = json.loads(self.kubectl("get", "scheduledjob", name, "-n", JOBS, "-o", "json"))
        found: dict[str, Any] = job.get("status") or {}
        return found

    def ready(self, name: str) -> bool:
        """Whether the job's Ready condition is True."""
        conditions = self.status(name).get("conditions") or ()
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def succeeded(self, name: str) -> int:
        """The job's successful runs, as its status counts them."""
        runs: dict[str, int] = self.status(name).get("runs") or {}
        return runs.get("succeeded", 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cluster(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kind = shutil.which("kind")
    docker, no_docker = _docker_engine()
    kubectl, no_kubectl = _kubectl()
    if kind is None or docker is None or kubectl is None:
        missing = [no_docker, no_kubectl]
        if kind is None:
            missing.insert(0, "kind is not installed (https://kind.sigs.k8s.io)")
        pytest.skip("; ".join(reason for reason in missing if reason))
    workdir = tmp_path_factory.mktemp("kind")

    # kind-config.yaml as it is, but for the cluster's name and a free host port, so that
    # this cluster can live next to one made for the README's quick start.
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    config["name"] = CLUSTER
    outside_port = _free_port()
    config["nodes"][0]["extraPortMappings"][0]["hostPort"] = outside_port
    (workdir / "kind-config.yaml").write_text(yaml.safe_dump(config))
    kubeconfig = workdir / "kubeconfig"
    if CLUSTER in _run(kind, "get", "clusters").split():  # left by an interrupted run
        _run(kind, "delete", "cluster", "--name", CLUSTER)
    try:
        _run(
            kind,
            "create",
            "cluster",
            f"--config={workdir / 'kind-config.yaml'}",
            f"--kubeconfig={kubeconfig}",
            "--wait=180s",
            timeout=600,
        )
        _run(docker, "build", "--tag", IMAGE, str(ROOT), timeout=1200)
        _run(kind, "load", "docker-image", IMAGE, "--name", CLUSTER)
        yield Cluster(kubeconfig, kubectl, helm, outside_port)
    finally:
        if not os.environ.get("PODCRON_E2E_KEEP_CLUSTER"):
            _run(kind, "delete", "cluster", "--name", CLUSTER)


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    """The chart installed and ready, the examples applied, and the jobs registered."""
    cluster.helm.run(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM,
        "--create-namespace",
        "--set",
        f"image.repository={IMAGE_REPOSITORY},image.tag={IMAGE_TAG},image.pullPolicy=Never",
        "--wait",
        "--timeout=5m",
        kubeconfig=cluster.kubeconfig,
    )
    cluster.kubectl("create", "namespace", JOBS)
    cluster.kubectl("apply", "-n", JOBS, "-f", str(ROOT / "examples"))
    cluster.kubectl("apply", "-n", JOBS, "-f", "-", input=ON_DEMAND)
    wait_for(
        lambda: cluster.succeeded("hello") >= 1,
        timeout=120,
        interval=1,
        what="the first run of the hello example",
    )
    return cluster


def test_both_containers_run_as_the_unprivileged_user(installed: Cluster) -> None:
    pod = json.loads(
        installed.kubectl(
            "get", "pods", "-n", SYSTEM, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
        )
    )["items"]
    assert len(pod) == 1
    statuses = {s["name"]: s for s in pod[0]["status"]["containerStatuses"]}
    assert set(statuses) == {"operator", "sidecar"}
    assert all(s["ready"] for s in statuses.values())
    for container in statuses:
        uid = installed.kubectl(
            "exec", "-n", SYSTEM, f"deployment/{RELEASE}", "-c", container, "--", "id", "-u"
        )
        assert uid.strip() == "65532"


def test_examples_run_and_report_in_status(installed: Cluster) -> None:
    for name in EXAMPLES:
        wait_for(
            functools.partial(installed.ready, name),
            timeout=60,
            interval=1,
            what=f"{name} Ready",
        )
    wait_for(lambda: installed.succeeded("hello") >= 3, timeout=60, interval=1, what="hello runs")
    # cleanup runs every 15 s.
    wait_for(
        lambda: installed.succeeded("cleanup") >= 1, timeout=60, interval=1, what="cleanup runs"
    )
    assert installed.status("report")["nextRunTime"]


def test_a_pod_in_the_cluster_lists_and_triggers_jobs(installed: Cluster) -> None:
    before = installed.succeeded("on-demand")
    installed.kubectl(
        "run",
        "e2e-client",
        "-n",
        JOBS,
        f"--image={IMAGE}",
        "--image-pull-policy=Never",
        "--restart=Never",
        "--command",
        "--",
        "python",
        "-c",
        IN_CLUSTER_CLIENT,
    )
    try:
        installed.kubectl(
            "wait",
            "pod/e2e-client",
            "-n",
            JOBS,
            "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=120s",
        )
        answers = json.loads(installed.kubectl("logs", "pod/e2e-client", "-n", JOBS))
    finally:
        installed.kubectl("delete", "pod", "e2e-client", "-n", JOBS, "--wait=false")
    code, listed = answers["list"]
    assert code == 200
    ids = {job["jobId"] for job in listed["data"]}
    assert {f"{JOBS}/{name}" for name in (*EXAMPLES, "on-demand")} <= ids
    code, posted = answers["post"]
    assert code == 200, posted
    assert posted["data"]["triggered"] is True
    wait_for(
        lambda: installed.succeeded("on-demand") == before + 1,
        timeout=30,
        interval=1,
        what="the run the pod asked for",
    )


def test_a_caller_outside_the_pod_network_is_refused(installed: Cluster) -> None:
    installed.kubectl("apply", "-f", "-", input=OUTSIDE_SERVICE)
    base = f"http://127.0.0.1:{installed.outside_port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def answer(path: str) -> tuple[int, bytes]:
        try:
            with opener.open(f"{base}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError:
            return 0, b""

    # Not a byte of HTTP comes back: the chart's NetworkPolicy drops the connection, or,
    # where the network does not enforce it, the sidecar disconnects the peer at accept.
    for path in ("/_sys/job", "/healthz"):
        assert answer(path) == (0, b"")
    logs = installed.kubectl("logs", "-n", SYSTEM, f"deployment/{RELEASE}", "-c", "sidecar")
    assert "denied GET" not in logs


def test_kubectl_triggers_a_run(installed: Cluster) -> None:
    before = installed.succeeded("on-demand")
    installed.kubectl(
        "annotate",
        "scheduledjob",
        "on-demand",
        "-n",
        JOBS,
        "podcron.dev/run-now=e2e",
        "--overwrite",
    )
    wait_for(
        lambda: installed.succeeded("on-demand") == before + 1,
        timeout=30,
        interval=1,
        what="the run the annotation asked for",
    )


def test_metrics_count_the_runs(installed: Cluster) -> None:
    metrics = installed.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{SYSTEM}/services/{RELEASE}:metrics/proxy/metrics"
    )
    labels = f'namespace="{JOBS}",name="hello",trigger="scheduled",status="success"'
    assert f"podcron_job_runs_total{{{labels}}}" in metrics


def test_helm_uninstall_leaves_no_scheduled_job_stuck(installed: Cluster) -> None:
    installed.helm.run(
        "uninstall", RELEASE, "--namespace", SYSTEM, "--wait", kubeconfig=installed.kubeconfig
    )
    # With the operator gone, nothing may hold a ScheduledJob or its namespace.
    installed.kubectl("delete", "-n", JOBS, "-f", str(ROOT / "examples"), "--timeout=60s")
    installed.kubectl("delete", "namespace", JOBS, "--timeout=120s")
    left = installed.kubectl("get", "scheduledjobs", "--all-namespaces", "-o", "name")
    assert left.strip() == ""
