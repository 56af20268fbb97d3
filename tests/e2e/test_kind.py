"""End to end on kind: the image, the chart and the examples in a real cluster, kubelet and all.

One cluster serves the module (tools/kindcluster.py): stock kind images where a registry
answers, else a node image built here (tools/kindimages.py); podcron's image built from the
Dockerfile, plus a job module of the suite's own, loaded into it; the chart installed with
two replicas and `helm install --wait`, the examples applied. Then what a cluster adds over a
bare API server: the pods' own ServiceAccount, probes as the kubelet runs them, the read-only
root file system and UID 65532, the jobs shared by the two replicas through Leases, the
System API from a pod (allowed, on either replica) and from outside (refused), a `helm
upgrade` the new pods pick up, SIGTERM from `kubectl delete pod` (the other replica takes the
pod's jobs over), and `helm uninstall` leaving nothing but the CRD. The cluster is deleted
afterwards (PODCRON_E2E_KEEP_CLUSTER=1 keeps it for a look around).

Needs a container engine (Docker; Debian's docker.io is installed and started where missing)
and Go. Skipped, with the reason, only where no engine can run. Run it with `make e2e`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
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
from ..ports import free_port
from ..waiting import wait_for

pytestmark = pytest.mark.timeout(5400)  # a cold machine builds the node image first

CLUSTER = "podcron-e2e"
IMAGE_REPOSITORY, IMAGE_TAG = "podcron", "e2e"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
RELEASE = "podcron"
RELEASE_SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
SYSTEM = "podcron-system"
# Set explicitly, whatever the chart's default: the suite checks how two replicas share jobs.
REPLICAS = 2
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
# Suspended: it runs only when triggered. Allow: the in-cluster client triggers it several
# times at once, through either replica.
ON_DEMAND = """
apiVersion: podcron.dev/v1alpha1
kind: ScheduledJob
metadata: {name: on-demand}
spec:
  entryPoint: hello
  schedule: {daily: {at: "02:30"}}
  concurrencyPolicy: Allow
  suspend: true
"""
# Jobs enough that each replica owns some (all on one of two: about 2 in 2**16), and that the
# pod deleted owns a job running every few seconds whose move can be watched.
SPREAD = [f"spread-{index:02}" for index in range(12)]
SPREAD_JOB = """
apiVersion: podcron.dev/v1alpha1
kind: ScheduledJob
metadata: {{name: {name}}}
spec:
  entryPoint: hello
  schedule: {{every: 5s}}
"""
# Scheduled jobs that succeed every few seconds: where a failover shows within seconds.
FREQUENT = ("hello", *SPREAD)
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
# Runs in a pod of the cluster, from the podcron image itself (nothing to pull): lists the
# jobs and triggers on-demand through the Service and through each pod's address (argv), a
# 307 followed by hand, as `curl -L` does (urllib never repeats a POST on a redirect).
IN_CLUSTER_CLIENT = f"""
import json, sys, urllib.error, urllib.request

class Answer(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None  # a redirect is an answer of its own here

opener = urllib.request.build_opener(Answer, urllib.request.ProxyHandler({{}}))

def call(method, url):
    request = urllib.request.Request(url, method=method)
    try:
        with opener.open(request, timeout=10) as response:
            return [response.status, None, json.load(response)]
    except urllib.error.HTTPError as error:
        body = error.read()
        return [error.code, error.headers.get("Location"), json.loads(body) if body else None]

def post_following(url):
    answers = [call("POST", url)]
    if answers[-1][0] == 307:
        answers.append(call("POST", answers[-1][1]))
    return answers

path = "/_sys/job/{JOBS}/on-demand"
print(json.dumps({{
    "list": call("GET", "{SERVICE_URL}/_sys/job"),
    "listed by pod": {{ip: call("GET", f"http://{{ip}}:8080/_sys/job") for ip in sys.argv[1:]}},
    "posted to service": post_following("{SERVICE_URL}" + path),
    "posted to pod": {{ip: post_following(f"http://{{ip}}:8080" + path) for ip in sys.argv[1:]}},
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

    def statuses(self) -> dict[str, dict[str, Any]]:
        """The status of every ScheduledJob in the jobs namespace, by name, in one read."""
        found = json.loads(self.kubectl("get", "scheduledjobs", "-n", JOBS, "-o", "json"))
        return {job["metadata"]["name"]: job.get("status") or {} for job in found["items"]}

    def pods(self) -> list[dict[str, Any]]:
        """The release's pods, not those being deleted."""
        found = json.loads(
            self.kubectl("get", "pods", "-n", SYSTEM, "-l", RELEASE_SELECTOR, "-o", "json")
        )["items"]
        return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]

    def ready_pods(self) -> list[dict[str, Any]]:
        """The release's pods once there are REPLICAS and all their containers are ready
        (empty until then).

        Ready is what the kubelet's probes last found: on a loaded machine a probe can time
        out now and then, and the pod is ready again at the next one.
        """
        pods = self.pods()
        ready = len(pods) == REPLICAS and all(
            status["ready"] for pod in pods for status in pod["status"]["containerStatuses"]
        )
        return pods if ready else []

    def pod_names(self) -> set[str]:
        return {pod["metadata"]["name"] for pod in self.pods()}

    def owners(self) -> dict[str, str]:
        """Each job's owner, as the name of its pod, once every job's owner is a pod alive now.

        Empty while some job has none yet, or still names a replica that has gone: its jobs
        are moving.
        """
        owners = {name: _pod_of(status) for name, status in self.statuses().items()}
        if not set(owners.values()) <= self.pod_names():  # None is no pod: a job without one
            return {}
        return {name: pod for name, pod in owners.items() if pod is not None}

    def on_node(self, *command: str) -> str:
        """Run ``command`` in the node's container (as the kubelet's neighbour)."""
        return _run(self.docker, "exec", self.node, *command)


def _pod_of(status: dict[str, Any]) -> str | None:
    """The pod of the replica a job's status names; a replica's identity is the pod's name,
    a dash and 8 hex digits (new for every process start)."""
    identity = status.get("replica")
    return identity.rsplit("-", 1)[0] if identity else None


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
        outside_port = free_port()
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
    f"replicas={REPLICAS},"
    f"shutdownTimeoutSeconds={SHUTDOWN_TIMEOUT_SECONDS},"
    f"terminationGracePeriodSeconds={GRACE_PERIOD_SECONDS}"
)


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    """The chart installed and ready, the examples and the spread jobs applied, and the jobs
    registered."""
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
    spread = "---".join(SPREAD_JOB.format(name=name) for name in SPREAD)
    cluster.kubectl("apply", "-n", JOBS, "-f", "-", input=spread)
    wait_for(
        lambda: cluster.succeeded("hello") >= 1,
        timeout=120,
        interval=1,
        what="the first run of the hello example",
    )
    return cluster


def _exec(
    cluster: Cluster, pod: str, container: str, *command: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            cluster.kubectl_binary,
            f"--kubeconfig={cluster.kubeconfig}",
            "exec",
            "-n",
            SYSTEM,
            pod,
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
    pods = wait_for(installed.ready_pods, timeout=60, interval=1, what="both pods ready")
    for found in pods:
        statuses = {s["name"]: s for s in found["status"]["containerStatuses"]}
        assert set(statuses) == {"operator", "sidecar"}
    # The pods are alike: one is looked into.
    pod = pods[0]["metadata"]["name"]
    for container in ("operator", "sidecar"):
        assert _exec(installed, pod, container, "id", "-u").stdout.strip() == "65532"
        written = _exec(installed, pod, container, "touch", "/opt/podcron/written")
        assert written.returncode != 0
        assert "Read-only file system" in written.stderr
        # /tmp is the one writable place (an emptyDir).
        assert _exec(installed, pod, container, "touch", "/tmp/written").returncode == 0


def test_the_operator_talks_to_the_api_as_its_service_account(installed: Cluster) -> None:
    # No kubeconfig anywhere: the in-cluster configuration, from the pod's own token.
    probe = _exec(
        installed,
        installed.pods()[0]["metadata"]["name"],
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
    # Ready: both readiness probes passed.
    pods = wait_for(installed.ready_pods, timeout=60, interval=1, what="both pods ready")
    for pod in pods:
        statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
        # started: the sidecar's startup probe passed; no restart: liveness has never failed.
        assert statuses["sidecar"]["started"] is True
        assert all(s["restartCount"] == 0 for s in statuses.values())
        # As the kubelet calls them, from the node: the probe port answers every address.
        ip = pod["status"]["podIP"]
        curl = ("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5")
        assert installed.on_node(*curl, f"http://{ip}:8081/healthz") == "200"
        assert installed.on_node(*curl, f"http://{ip}:8081/readyz") == "200"
        assert installed.on_node(*curl, f"http://{ip}:9090/readyz") == "200"


def test_the_replicas_share_the_jobs(installed: Cluster) -> None:
    # Each job names its owner in status once the replicas agree; every pod owns some.
    owners = wait_for(
        installed.owners,
        timeout=60,
        interval=1,
        what="an owner for every job, each a pod alive now",
    )
    assert set(owners) >= {*EXAMPLES, "on-demand", *SPREAD}
    assert set(owners.values()) == installed.pod_names()

    # What `kubectl get sj -o wide` shows in its REPLICA column: the owner in status, read
    # again beside it (a job may still move while the replicas settle).
    def replica_column_is_the_owner() -> bool:
        wide = installed.kubectl("get", "scheduledjob", "hello", "-n", JOBS, "-o", "wide")
        header, row = wide.splitlines()
        shown = _pod_of({"replica": row[header.index("REPLICA") :].split()[0]})
        return shown is not None and shown == _pod_of(installed.statuses()["hello"])

    wait_for(replica_column_is_the_owner, timeout=60, interval=1, what="REPLICA = the owner")


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


def test_a_pod_in_the_cluster_lists_and_triggers_jobs_on_either_replica(
    installed: Cluster,
) -> None:
    owner = wait_for(installed.owners, timeout=60, interval=1, what="every job owned")["on-demand"]
    ips = {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in installed.pods()}
    assert len(ips) == REPLICAS
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
        *ips.values(),
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
    # Every replica lists every job, whichever runs it.
    expected = {f"{JOBS}/{name}" for name in (*EXAMPLES, "on-demand", *SPREAD)}
    for code, _, listed in (answers["list"], *answers["listed by pod"].values()):
        assert code == 200
        assert expected <= {job["jobId"] for job in listed["data"]}
    # A manual run asked of the replica that does not run the job is redirected to the one
    # that does; asked of that one, or through the Service, it runs there.
    url = f"http://{ips[owner]}:8080/_sys/job/{JOBS}/on-demand"
    for ip, answered in answers["posted to pod"].items():
        if ip == ips[owner]:
            assert [code for code, _, _ in answered] == [200], answered
        else:
            assert [(code, location) for code, location, _ in answered[:1]] == [(307, url)]
            assert answered[1][0] == 200, answered
    served = answers["posted to service"]
    assert [code for code, _, _ in served][-1] == 200, served
    for answered in (served, *answers["posted to pod"].values()):
        assert answered[-1][2]["data"]["triggered"] is True
    wait_for(
        lambda: installed.succeeded("on-demand") == before + 1 + REPLICAS,
        timeout=30,
        interval=1,
        what="the runs the pod asked for",
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
    for pod in installed.pod_names():
        assert "denied GET" not in installed.kubectl("logs", "-n", SYSTEM, pod, "-c", "sidecar")


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


def _runs_counted(exposition: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "podcron_job_runs_total"
    }


def test_metrics_count_the_runs(installed: Cluster) -> None:
    # Through the Service, one replica answers: it counts the runs it started.
    exposition = installed.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{SYSTEM}/services/{RELEASE}:metrics/proxy/metrics"
    )
    assert _runs_counted(exposition)
    # The runs of hello are counted by the replica that runs it, each pod scraped on its own.
    hello = {"namespace": JOBS, "name": "hello", "trigger": "scheduled", "status": "success"}
    counted = 0.0
    for pod in installed.pod_names():
        runs = _runs_counted(
            installed.kubectl(
                "get", "--raw", f"/api/v1/namespaces/{SYSTEM}/pods/{pod}:9090/proxy/metrics"
            )
        )
        counted += runs.get(tuple(sorted(hello.items())), 0)
    assert counted >= 1


def test_helm_upgrade_allowing_a_module_reaches_the_new_pod(installed: Cluster) -> None:
    installed.kubectl("apply", "-n", JOBS, "-f", "-", input=HOLDING)
    wait_for(
        lambda: installed.condition("holding", "Ready").get("status") == "False",
        timeout=60,
        interval=1,
        what="the job of a module not allowed refused in status",
    )
    before = installed.pod_names()
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
    after = installed.pod_names()
    assert len(after) == REPLICAS
    assert not after & before
    wait_for(
        functools.partial(installed.ready, "holding"),
        timeout=60,
        interval=1,
        what="the job of the allowed module Ready",
    )


Samples = list[tuple[float, dict[str, dict[str, Any]]]]


@contextlib.contextmanager
def _sampling(cluster: Cluster) -> Iterator[Samples]:
    """Every job's status, read over and over until the block ends, each with the monotonic
    time it was read."""
    samples: Samples = []
    done = threading.Event()
    failed: list[BaseException] = []

    def sample() -> None:
        try:
            while not done.is_set():
                samples.append((time.monotonic(), cluster.statuses()))
                done.wait(0.5)
        except BaseException as error:  # pytest.fail's too: re-raised in the test's thread
            failed.append(error)

    thread = threading.Thread(target=sample, name="status-samples", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(timeout=60)
    if failed:
        raise failed[0]


def _counters_never_go_back(samples: Samples) -> None:
    highest: dict[tuple[str, str], int] = {}
    for _, statuses in samples:
        for name, status in statuses.items():
            for counter, value in (status.get("runs") or {}).items():
                key = (name, counter)
                assert value >= highest.get(key, 0), f"{name} runs.{counter} went back to {value}"
                highest[key] = value


def _first(samples: Samples, since: float, holds: Callable[[dict[str, Any]], bool]) -> float:
    """Seconds from ``since`` to the first sample where ``holds`` (inf: none)."""
    return min((at - since for at, statuses in samples if holds(statuses)), default=math.inf)


def test_kubectl_delete_pod_moves_its_jobs_to_the_other_replica(installed: Cluster) -> None:
    # Both replicas of the upgraded release are ready and share the jobs.
    wait_for(installed.ready_pods, timeout=120, interval=1, what="both pods ready")
    wait_for(
        lambda: set(installed.owners().values()) == installed.pod_names(),
        timeout=120,
        interval=1,
        what="the jobs shared by both pods of the upgrade",
    )
    installed.kubectl(
        "annotate", "scheduledjob", "holding", "-n", JOBS, "podcron.dev/run-now=e2e", "--overwrite"
    )
    wait_for(
        lambda: installed.status("holding").get("running") is True,
        timeout=60,
        interval=1,
        what="the holding run active in status",
    )
    owners = installed.owners()
    doomed = owners["holding"]
    assert len(installed.pod_names() - {doomed}) == 1  # the other replica
    moving = [name for name in FREQUENT if owners[name] == doomed]
    assert moving, f"{doomed} runs none of {FREQUENT}: {owners}"
    with _sampling(installed) as samples:
        deleting = time.monotonic()
        # Returns once the pod is gone: the kubelet sent SIGTERM and the operator exited.
        installed.kubectl(
            "delete", "pod", doomed, "-n", SYSTEM, f"--timeout={GRACE_PERIOD_SECONDS + 30}s"
        )
        gone = time.monotonic() - deleting
        # Its run of holding was interrupted by the shutdown and says so; the jobs it ran
        # go on under the other replica, their counters continued.
        before = {name: installed.succeeded(name) for name in moving}
        wait_for(
            lambda: (
                (found := installed.status("holding"))["running"] is False
                and found["lastRunStatus"] == "failure"
                and found["runs"]["failed"] == 1
                and found["lastError"].startswith("Interrupted: the operator shut down")
            ),
            timeout=30,
            interval=1,
            what="the interrupted run of holding in status",
        )

        def ran_elsewhere(name: str) -> bool:
            # On the survivor or on the Deployment's next pod, which starts as the doomed
            # one terminates and may take a job first; seen at any time, not only now.
            return any(
                _pod_of(found[name]) not in (None, doomed)
                and found[name]["runs"]["succeeded"] > before[name]
                for _, found in list(samples)
                if name in found
            )

        def last_seen() -> str:
            latest = samples[-1][1] if samples else {}
            return ", ".join(
                f"{name} on {_pod_of(latest.get(name, {}))} "
                f"succeeded {latest.get(name, {}).get('runs', {}).get('succeeded')}"
                for name in moving
            )

        wait_for(
            lambda: all(ran_elsewhere(name) for name in moving),
            timeout=60,
            interval=1,
            what=f"{', '.join(moving)} running on another pod than {doomed} (before:"
            f" {before}; last seen: {last_seen()})",
        )
    _counters_never_go_back(samples)
    moved = _first(
        samples,
        deleting,
        lambda found: all(_pod_of(found[name]) not in (None, doomed) for name in moving),
    )
    ran = _first(
        samples,
        deleting,
        lambda found: all(found[name]["runs"]["succeeded"] > before[name] for name in moving),
    )
    # Figures for docs/ha.md (`pytest tests/e2e -rP` shows them): seconds after `kubectl
    # delete pod` began, as status showed them (read every half second or so).
    print(
        f"SIGTERM failover of {len(moving)} jobs: pod gone after {gone:.1f} s, owner in status"
        f" after {moved:.1f} s, a run on the other replica after {ran:.1f} s"
    )
    # The Deployment's next pod joins the ring and takes its share of the jobs.
    installed.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", SYSTEM, "--timeout=180s")
    wait_for(
        lambda: set(installed.owners().values()) == installed.pod_names(),
        timeout=60,
        interval=1,
        what="the jobs shared with the next pod",
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
