"""End to end on kind: the image, the chart and the examples in a real cluster, kubelet and all.

One cluster serves the module (tools/kindcluster.py): stock kind images where a registry
answers, else a node image built here (tools/kindimages.py); podcron's image built from the
Dockerfile, plus a job module of the suite's own, loaded into it; the chart installed with
`helm install --wait`, the examples applied. Then what a cluster adds over a bare API server:
the pod's own ServiceAccount, probes as the kubelet runs them, the read-only root file system
and UID 65532, the System API from a pod (allowed) and from outside (refused), a `helm
upgrade` the new pod picks up, SIGTERM from `kubectl delete pod`, and `helm uninstall`
leaving nothing but the CRD. The cluster is deleted afterwards (PODCRON_E2E_KEEP_CLUSTER=1
keeps it for a look around).

Needs a container engine (Docker; Debian's docker.io is installed and started where missing)
and Go. Skipped, with the reason, only where no engine can run. Run it with `make e2e`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import kindengine
from controlplane import ensure_binaries
from gobuild import BinariesUnavailable
from helmtool import Helm
from kindcluster import kind_cluster

from ..chart import CHART, ROOT
from ..waiting import wait_for

pytestmark = pytest.mark.timeout(5400)  # a cold machine builds the node image first

CLUSTER = "podcron-e2e"
IMAGE_REPOSITORY, IMAGE_TAG = "podcron", "e2e"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
RELEASE = "podcron"
RELEASE_SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
SYSTEM = "podcron-system"
# Short, so that a pod deleted with a run active records it within seconds.
SHUTDOWN_TIMEOUT_SECONDS, GRACE_PERIOD_SECONDS = 5, 15
# The suite's own job module, added to podcron's image as users add theirs; allowed only
# once `helm upgrade` sets allowedModules.
E2E_JOBS = """
import asyncio


async def hold(ctx):
    ctx.log.info("holding run of %s started", ctx.job_id)
    await asyncio.sleep(3600)  # deaf to ctx.cancelled: only the shutdown's cancel ends it
"""
HOLDING = """
apiVersion: podcron.dev/v1alpha1
kind: ScheduledJob
metadata: {name: holding}
spec:
  entryPoint: e2e_jobs:hold
  schedule: {daily: {at: "02:30"}}
  suspend: true
"""
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
    docker: str
    node: str  # the node's container

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
        return self.condition(name, "Ready").get("status") == "True"

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        """The job's condition of type ``kind`` ({} if none)."""
        conditions = self.status(name).get("conditions") or ()
        return next((c for c in conditions if c.get("type") == kind), {})

    def succeeded(self, name: str) -> int:
        """The job's successful runs, as its status counts them."""
        runs: dict[str, int] = self.status(name).get("runs") or {}
        return runs.get("succeeded", 0)

    def pods(self) -> list[dict[str, Any]]:
        """The release's pods, not those being deleted."""
        found = json.loads(
            self.kubectl("get", "pods", "-n", SYSTEM, "-l", RELEASE_SELECTOR, "-o", "json")
        )["items"]
        return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]

    def on_node(self, *command: str) -> str:
        """Run ``command`` in the node's container (as the kubelet's neighbour)."""
        return _run(self.docker, "exec", self.node, *command)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cluster(helm: Helm) -> Iterator[Cluster]:
    kubectl, no_kubectl = _kubectl()
    if kubectl is None:
        pytest.skip(no_kubectl)
    with contextlib.ExitStack() as stack:
        try:
            docker = stack.enter_context(kindengine.docker_engine())
        except kindengine.EngineUnavailable as error:
            pytest.skip(str(error))
        keep = bool(os.environ.get("PODCRON_E2E_KEEP_CLUSTER"))
        outside_port = _free_port()
        made = stack.enter_context(kind_cluster(docker, CLUSTER, outside_port, keep=keep))
        # podcron's image plus a job module of the suite's own, the way users add theirs.
        with tempfile.TemporaryDirectory() as context:
            (Path(context) / "e2e_jobs.py").write_text(E2E_JOBS)
            (Path(context) / "Dockerfile").write_text(
                f"FROM {made.image}\nCOPY e2e_jobs.py /opt/e2e/\nENV PYTHONPATH=/opt/e2e\n"
            )
            _run(docker, "build", "--tag", IMAGE, context)
        made.load(IMAGE)
        yield Cluster(
            made.kubeconfig, kubectl, helm, outside_port, docker, f"{CLUSTER}-control-plane"
        )


INSTALL_VALUES = (
    f"image.repository={IMAGE_REPOSITORY},image.tag={IMAGE_TAG},image.pullPolicy=Never,"
    f"shutdownTimeoutSeconds={SHUTDOWN_TIMEOUT_SECONDS},"
    f"terminationGracePeriodSeconds={GRACE_PERIOD_SECONDS}"
)


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
        INSTALL_VALUES,
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


def _exec(cluster: Cluster, container: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            cluster.kubectl_binary,
            f"--kubeconfig={cluster.kubeconfig}",
            "exec",
            "-n",
            SYSTEM,
            f"deployment/{RELEASE}",
            "-c",
            container,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_both_containers_run_as_the_unprivileged_user_on_a_read_only_root(
    installed: Cluster,
) -> None:
    pods = installed.pods()
    assert len(pods) == 1
    statuses = {s["name"]: s for s in pods[0]["status"]["containerStatuses"]}
    assert set(statuses) == {"operator", "sidecar"}
    assert all(s["ready"] for s in statuses.values())
    for container in statuses:
        assert _exec(installed, container, "id", "-u").stdout.strip() == "65532"
        written = _exec(installed, container, "touch", "/opt/podcron/written")
        assert written.returncode != 0
        assert "Read-only file system" in written.stderr
        # /tmp is the one writable place (an emptyDir).
        assert _exec(installed, container, "touch", "/tmp/written").returncode == 0


def test_the_operator_talks_to_the_api_as_its_service_account(installed: Cluster) -> None:
    # No kubeconfig anywhere: the in-cluster configuration, from the pod's own token.
    probe = _exec(
        installed,
        "operator",
        "python",
        "-c",
        "import os, pathlib; "
        "print(os.environ.get('KUBECONFIG', '-'), os.environ['KUBERNETES_SERVICE_HOST'], "
        "pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount/token').stat().st_size > 0)",
    )
    kubeconfig, service_host, has_token = probe.stdout.split()
    assert (kubeconfig, has_token) == ("-", "True")
    assert service_host == installed.kubectl(
        "get", "service", "kubernetes", "-n", "default", "-o", "jsonpath={.spec.clusterIP}"
    )
    account = installed.pods()[0]["spec"]["serviceAccountName"]
    assert account == RELEASE
    # What the operator did (a status written) is what its account may do, and no more.
    subject = f"system:serviceaccount:{SYSTEM}:{account}"
    can = functools.partial(installed.kubectl, "auth", "can-i", f"--as={subject}")
    assert can("patch", "scheduledjobs/status", "-n", JOBS).strip() == "yes"
    refused = subprocess.run(
        [
            installed.kubectl_binary,
            f"--kubeconfig={installed.kubeconfig}",
            "auth",
            "can-i",
            f"--as={subject}",
            "delete",
            "pods",
            "-n",
            JOBS,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.stdout.strip() == "no"
    assert installed.succeeded("hello") >= 1


def test_the_kubelet_probes_pass_from_the_node_address(installed: Cluster) -> None:
    pod = installed.pods()[0]
    statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
    # started: the sidecar's startup probe passed; ready: both readiness probes; no
    # restart: liveness has never failed.
    assert statuses["sidecar"]["started"] is True
    assert all(s["ready"] and s["restartCount"] == 0 for s in statuses.values())
    # As the kubelet calls them, from the node: the probe port answers every address.
    ip = pod["status"]["podIP"]
    curl = ("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5")
    assert installed.on_node(*curl, f"http://{ip}:8081/healthz") == "200"
    assert installed.on_node(*curl, f"http://{ip}:8081/readyz") == "200"
    assert installed.on_node(*curl, f"http://{ip}:9090/readyz") == "200"


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
    exposition = installed.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{SYSTEM}/services/{RELEASE}:metrics/proxy/metrics"
    )
    runs = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "podcron_job_runs_total"
    }
    labels = {"namespace": JOBS, "name": "hello", "trigger": "scheduled", "status": "success"}
    assert runs.get(tuple(sorted(labels.items())), 0) >= 1, runs


def test_helm_upgrade_allowing_a_module_reaches_the_new_pod(installed: Cluster) -> None:
    installed.kubectl("apply", "-n", JOBS, "-f", "-", input=HOLDING)
    wait_for(
        lambda: installed.condition("holding", "Ready").get("status") == "False",
        timeout=60,
        interval=1,
        what="the job of a module not allowed refused in status",
    )
    before = installed.pods()[0]["metadata"]["name"]
    installed.helm.run(
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM,
        "--reuse-values",
        "--set",
        "allowedModules={e2e_jobs}",
        "--wait",
        "--timeout=5m",
        kubeconfig=installed.kubeconfig,
    )
    pods = installed.pods()
    assert [pod["metadata"]["name"] for pod in pods] != [before]
    wait_for(
        functools.partial(installed.ready, "holding"),
        timeout=60,
        interval=1,
        what="the job of the allowed module Ready",
    )


def test_kubectl_delete_pod_records_the_interrupted_run(installed: Cluster) -> None:
    installed.kubectl(
        "annotate", "scheduledjob", "holding", "-n", JOBS, "podcron.dev/run-now=e2e", "--overwrite"
    )
    wait_for(
        lambda: installed.status("holding").get("running") is True,
        timeout=60,
        interval=1,
        what="the holding run active in status",
    )
    pod = installed.pods()[0]["metadata"]["name"]
    # Returns once the pod is gone: the kubelet sent SIGTERM and the operator exited.
    installed.kubectl("delete", "pod", pod, "-n", SYSTEM, f"--timeout={GRACE_PERIOD_SECONDS + 30}s")
    found = installed.status("holding")
    assert found["running"] is False
    assert found["lastRunStatus"] == "failure"
    assert found["lastError"].startswith("Interrupted: the operator shut down")
    assert found["runs"]["failed"] == 1
    # The Deployment's next pod takes over, and the examples keep running.
    installed.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", SYSTEM, "--timeout=180s")
    before = installed.succeeded("hello")
    wait_for(
        lambda: installed.succeeded("hello") > before,
        timeout=60,
        interval=1,
        what="hello running under the next pod",
    )


def test_helm_uninstall_leaves_only_the_crd(installed: Cluster) -> None:
    installed.helm.run(
        "uninstall", RELEASE, "--namespace", SYSTEM, "--wait", kubeconfig=installed.kubeconfig
    )
    # With the operator gone, nothing may hold a ScheduledJob or its namespace.
    installed.kubectl("delete", "-n", JOBS, "-f", str(ROOT / "examples"), "--timeout=60s")
    installed.kubectl("delete", "namespace", JOBS, "--timeout=120s")
    left = installed.kubectl("get", "scheduledjobs", "--all-namespaces", "-o", "name")
    assert left.strip() == ""
    kinds = (
        "all,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies,"
        "clusterroles,clusterrolebindings"
    )
    labelled = installed.kubectl(
        "get", kinds, "--all-namespaces", "-l", RELEASE_SELECTOR, "-o", "name"
    )
    assert labelled.strip() == ""
    crd = installed.kubectl("get", "crd", "-o", "name")
    assert "customresourcedefinition.apiextensions.k8s.io/scheduledjobs.podcron.dev" in crd
