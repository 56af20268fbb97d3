"""The chart against a real API server, and its RBAC proven by use.

The rendered objects pass a server-side dry run (default and custom values), and a real
``helm install`` is accepted. There is no kubelet here, so the pod never starts: the
operator and the sidecar run as local processes in its stead, with the chart's ConfigMap
as their settings and a token of the chart's ServiceAccount (TokenRequest API) as their only
credential. They then do what they do in the pod: register jobs, run them, write status,
post Events, take triggers from the sidecar and from kubectl, and read Nodes for pod CIDRs.
Any grant the chart lacks shows up as a refused request; a verb it must not grant is
refused too.

One release serves the whole module: it watches one namespace, so the chart grants
ScheduledJobs and Events through a Role there. The default values (every namespace, a
ClusterRole) get a control plane of their own in the last test: an operator watching every
namespace of the shared one would run the jobs other modules left behind.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import requests
import yaml

from controlplane import ControlPlane
from helmtool import Helm
from podcron.errors import StoreUnavailable
from podcron.ha.leases import KubeLeaseStore

from ..chart import CHART, CUSTOM_VALUES, VALUE_SETS, render, values_file
from ..ports import free_port
from ..waiting import wait_for
from .conftest import OperatorProcess
from .scheduledjobs import (
    annotate,
    apply,
    event_counts,
    events,
    manifest,
    namespace_for_module,
    started_operator,
    status,
    wait_event,
    wait_ready,
)
from .sidecar_process import SidecarProcess, client

RELEASE = "podcron"
SERVICE_ACCOUNT = "podcron"  # the release's full name
POD_CIDR = "127.0.11.0/24"
IN_POD_NETWORK = "127.0.11.5"
OUTSIDE = "127.0.12.5"
# What a refused request looks like in the two logs: kopf's own warnings about missing
# permissions, the Kubernetes client's "(403)", and the sidecar's failed Node listing. A bare
# "403" would also match a log line's milliseconds (",403") or a time ("12:00:00.403Z").
REFUSALS = ("(403)", "Forbidden", "forbidden", "Not enough permissions", "cannot read Nodes")


@dataclass(frozen=True)
class Release:
    """The installed chart: where it lives, what it watches, and the ServiceAccount's view."""

    plane: ControlPlane
    namespace: str
    watched: str  # "" when it watches every namespace
    kubeconfig: Path  # the ServiceAccount's token, nothing else
    config_dir: Path  # the chart's ConfigMap, as the pod would mount it
    notes: str

    def as_account(self, *args: str) -> tuple[int, str]:
        """kubectl as the ServiceAccount: exit code and everything it printed."""
        result = self.plane.kubectl(f"--kubeconfig={self.kubeconfig}", *args, check=False)
        return result.returncode, result.stdout + result.stderr

    def env(self, workdir: Path) -> dict[str, str]:
        """What the pod's containers have: the ConfigMap's settings, the ServiceAccount's
        credentials and the downward API's pod name and namespace. Only the socket differs
        (a temporary directory, not the emptyDir)."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PODCRON_CONFIG_DIR": str(self.config_dir),
            "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
            "POD_NAME": f"{RELEASE}-{os.getpid()}",
            "POD_NAMESPACE": self.namespace,
        }

    def lease_store(self, namespace: str) -> KubeLeaseStore:
        """The replicas' Lease store in ``namespace``, with the ServiceAccount's token only."""
        user = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]
        configuration = kubernetes.client.Configuration(host=self.plane.server)
        configuration.ssl_ca_cert = str(self.plane.ca_file)
        configuration.api_key = {"authorization": f"Bearer {user['token']}"}
        configuration.retries = 0
        return KubeLeaseStore(namespace, kubernetes.client.ApiClient(configuration))


def refusals(*logs: str) -> list[str]:
    """The log lines that show a refused request."""
    return [
        line
        for log in logs
        for line in log.splitlines()
        if any(refusal in line for refusal in REFUSALS)
    ]


@dataclass(frozen=True)
class Pod:
    """The two containers of the chart's pod, as local processes."""

    operator: OperatorProcess
    sidecar: SidecarProcess


def succeeded(plane: ControlPlane, namespace: str, name: str) -> int:
    """The job's successful runs, as its status counts them."""
    runs: dict[str, int] = status(plane, namespace, name).get("runs") or {}
    return runs.get("succeeded", 0)


def _token_kubeconfig(plane: ControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig for the admin's server and CA, with a token of the ServiceAccount."""
    token = plane.kubectl("create", "token", SERVICE_ACCOUNT, "-n", namespace).stdout.strip()
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "podcron", "context": {"cluster": cluster["name"], "user": user}}],
        "current-context": "podcron",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def install(
    plane: ControlPlane, helm: Helm, namespace: str, values: dict[str, Any], workdir: Path
) -> Release:
    """``helm install`` the chart into ``namespace``, as an administrator would."""
    installed = helm.run(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "-f",
        str(values_file(workdir, values)),
        kubeconfig=plane.kubeconfig,
    )
    config_dir = workdir / "config"
    config_dir.mkdir()
    config = plane.kubectl(
        "get", "configmap", RELEASE, "-n", namespace, "-o", "jsonpath={.data.config\\.yaml}"
    ).stdout
    (config_dir / "config.yaml").write_text(config)
    watched: list[str] = values.get("watchNamespaces", [])
    return Release(
        plane=plane,
        namespace=namespace,
        watched=",".join(watched),
        kubeconfig=_token_kubeconfig(plane, namespace, workdir / "kubeconfig.yaml"),
        config_dir=config_dir,
        notes=installed.stdout,
    )


def start_operator(release: Release, workdir: Path) -> OperatorProcess:
    """The operator container as a local process, once it has started."""
    return started_operator(
        release.plane,
        workdir,
        **release.env(workdir),
        PODCRON_METRICS_HOST="127.0.0.1",
        PODCRON_METRICS_PORT=str(free_port()),
    )


@pytest.fixture(scope="module")
def release(
    crd: ControlPlane, helm: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    with (
        namespace_for_module(crd, "podcron-system") as namespace,
        namespace_for_module(crd, "chart-jobs") as watched,
    ):
        values = {"watchNamespaces": [watched], "cidrRefreshSeconds": 0.3}
        yield install(crd, helm, namespace, values, tmp_path_factory.mktemp("release"))
        # Usually the last test has uninstalled it already.
        helm.run(
            "uninstall", RELEASE, "--namespace", namespace, kubeconfig=crd.kubeconfig, check=False
        )


@pytest.fixture(scope="module")
def pod(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    workdir = tmp_path_factory.mktemp("pod")
    operator = start_operator(release, workdir)
    try:
        sidecar = SidecarProcess(dict(os.environ) | release.env(workdir), workdir / "sidecar.log")
    except BaseException:
        operator.stop(signal.SIGKILL)
        raise
    yield Pod(operator, sidecar)
    sidecar.stop()
    operator.stop()


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_rendered_objects_pass_a_server_side_dry_run(
    crd: ControlPlane, helm: Helm, tmp_path: Path, namespace: str, values: dict[str, Any]
) -> None:
    if values:
        # Roles go into the watched namespaces, which must exist. The CRDs of ServiceMonitor
        # and PrometheusRule (Prometheus Operator) are not installed here: their rendering is
        # the unit tests' job.
        values = values | {
            "watchNamespaces": [namespace, "default"],
            "serviceMonitor": CUSTOM_VALUES["serviceMonitor"] | {"enabled": False},
            "prometheusRule": CUSTOM_VALUES["prometheusRule"] | {"enabled": False},
        }
    objects = render(helm, tmp_path, values, namespace=namespace, include_crds=True)
    result = crd.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=podcron-chart-test",
        # The CRD is the crd fixture's, applied by another manager; ownership is not the point.
        "--force-conflicts",
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
    )
    applied = result.stdout.splitlines()
    assert len(applied) == len(objects)
    assert all(line.endswith("serverside-applied (server dry run)") for line in applied)
    kinds = {o["kind"] for o in objects}
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "ConfigMap",
        "NetworkPolicy",
    } <= kinds


def test_bad_values_fail_helm_install_and_leave_nothing(
    crd: ControlPlane, helm: Helm, namespace: str
) -> None:
    result = helm.run(
        "install",
        "refused",
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "logFormat=xml",
        kubeconfig=crd.kubeconfig,
        check=False,
    )
    assert result.returncode != 0
    assert "at '/logFormat': value must be one of 'json', 'text'" in result.stderr
    listed = helm.run("list", "--namespace", namespace, "-q", kubeconfig=crd.kubeconfig)
    assert listed.stdout.strip() == ""
    assert crd.kubectl("get", "all", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_helm_install_is_accepted(release: Release, helm: Helm) -> None:
    plane = release.plane
    shown = helm.run("status", RELEASE, "-n", release.namespace, kubeconfig=plane.kubeconfig)
    assert "STATUS: deployed" in shown.stdout
    names = plane.kubectl(
        "get",
        "deployment,service,serviceaccount,configmap,role,rolebinding",
        "-n",
        release.namespace,
        "-o",
        "name",
    ).stdout.split()
    assert {
        "deployment.apps/podcron",
        "service/podcron",
        "serviceaccount/podcron",
        "configmap/podcron",
    } <= set(names)
    # In its own namespace, only the replicas' Leases: ScheduledJobs are not watched here.
    assert [name for name in names if name.startswith("role")] == [
        f"role.rbac.authorization.k8s.io/{RELEASE}-leases",
        f"rolebinding.rbac.authorization.k8s.io/{RELEASE}-leases",
    ]
    cluster_wide = f"{RELEASE}-{release.namespace}"
    plane.kubectl("get", f"clusterrole/{cluster_wide}", f"clusterrolebinding/{cluster_wide}")
    plane.kubectl(
        "get", f"role/{cluster_wide}", f"rolebinding/{cluster_wide}", "-n", release.watched
    )
    # NOTES.txt: how to list and trigger jobs.
    assert "kubectl get scheduledjobs -n NAMESPACE" in release.notes
    assert "podcron.dev/run-now" in release.notes
    assert f"http://podcron.{release.namespace}.svc:8080/_sys/job" in release.notes


def test_jobs_run_with_status_and_events_under_the_charts_grants(
    release: Release, pod: Pod
) -> None:
    plane, watched = release.plane, release.watched
    # cleanup reads int(args.retentionDays): a ValueError on every run.
    failing = {"entryPoint": "cleanup", "schedule": {"every": "1s"}, "args": {"retentionDays": "x"}}
    apply(
        plane,
        watched,
        manifest("tick", {"entryPoint": "hello", "schedule": {"every": "1s"}}),
        manifest("shell", {"entryPoint": "os:system", "schedule": {"every": "1s"}}),
        manifest("failing", failing),
    )
    wait_for(
        lambda: succeeded(plane, watched, "tick") >= 2,
        timeout=30,
        what="two successful runs of tick in status",
    )
    assert status(plane, watched, "tick")["lastRunStatus"] == "success"
    wait_event(plane, watched, "tick", reason="Scheduled")
    wait_ready(plane, watched, "shell", reason="EntryPointNotAllowed")
    wait_event(plane, watched, "shell", reason="EntryPointNotAllowed")
    # Each failed run after the first patches the one RunFailed Event (patch on events).
    wait_for(
        lambda: event_counts(plane, watched, "failing").get("RunFailed", 0) >= 3,
        timeout=30,
        what="the RunFailed Event counted three times",
    )
    assert [e["reason"] for e in events(plane, watched, "failing")].count("RunFailed") == 1
    plane.kubectl("delete", "sj", "failing", "-n", watched)


def test_triggers_from_the_sidecar_and_from_kubectl_under_the_charts_grants(
    release: Release, pod: Pod
) -> None:
    plane, watched = release.plane, release.watched
    spec = {"entryPoint": "hello", "schedule": {"daily": {"at": "02:30"}}, "suspend": True}
    apply(plane, watched, manifest("on-demand", spec))
    wait_ready(plane, watched, "on-demand", reason="Suspended")

    session = client()
    listed = session.get(f"{pod.sidecar.url}/_sys/job").json()["data"]
    assert f"{watched}/on-demand" in {job["jobId"] for job in listed}
    posted = session.post(f"{pod.sidecar.url}/_sys/job/{watched}/on-demand")
    assert posted.status_code == 200, posted.text
    assert posted.json()["data"]["triggered"] is True
    wait_for(
        lambda: succeeded(plane, watched, "on-demand") == 1,
        timeout=15,
        what="the run the sidecar asked for",
    )

    annotate(plane, watched, "on-demand", "podcron.dev/run-now", "1")
    wait_for(
        lambda: succeeded(plane, watched, "on-demand") == 2,
        timeout=15,
        what="the run the annotation asked for",
    )
    wait_event(plane, watched, "on-demand", reason="RunNow")


def test_sidecar_reads_pod_cidrs_from_nodes_under_the_charts_grants(
    release: Release, pod: Pod
) -> None:
    node = f"chart-node-{os.getpid()}"
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node},
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
    }
    release.plane.kubectl("apply", "-f", "-", input=json.dumps(body))

    def answer(source: str) -> int:
        try:
            return client(source).get(f"{pod.sidecar.url}/_sys/job", timeout=5).status_code
        except requests.ConnectionError:
            return 0

    try:
        wait_for(
            lambda: answer(IN_POD_NETWORK) == 200,
            timeout=15,
            what="the Node's pod CIDR to be allowed",
        )
        assert answer(OUTSIDE) == 0, "disconnected at accept"
    finally:
        release.plane.kubectl("delete", "node", node, "--wait=false")


def test_no_request_was_refused(pod: Pod) -> None:
    # Last of the scenario: by now both processes have made every kind of request they make.
    assert refusals(pod.operator.log(), pod.sidecar.log()) == []


def test_verbs_the_chart_does_not_grant_are_refused(release: Release) -> None:
    account = f"system:serviceaccount:{release.namespace}:{SERVICE_ACCOUNT}"
    # (verb, resource, subresource, namespace); no namespace: cluster-scoped.
    refused = [
        ("delete", "pods", "", release.watched),
        ("create", "pods", "", release.watched),
        ("get", "secrets", "", release.watched),
        ("list", "secrets", "", release.namespace),
        ("get", "scheduledjobs.podcron.dev", "", release.watched),  # kopf only lists
        ("create", "scheduledjobs.podcron.dev", "", release.watched),
        ("delete", "scheduledjobs.podcron.dev", "", release.watched),
        ("update", "scheduledjobs.podcron.dev", "", release.watched),
        ("update", "scheduledjobs.podcron.dev", "status", release.watched),
        # Events are created and patched, never read, replaced or deleted:
        ("get", "events", "", release.watched),
        ("list", "events", "", release.watched),
        ("update", "events", "", release.watched),
        ("delete", "events", "", release.watched),
        # ScheduledJobs and Events only in the watched namespace:
        ("list", "scheduledjobs.podcron.dev", "", release.namespace),
        ("create", "events", "", release.namespace),
        ("patch", "events", "", release.namespace),
        ("get", "nodes", "", ""),
        ("patch", "nodes", "", ""),
        # Leases in the release's namespace only, and never by PUT (it can re-create one):
        ("update", "leases.coordination.k8s.io", "", release.namespace),
        ("create", "leases.coordination.k8s.io", "", release.watched),
        ("list", "leases.coordination.k8s.io", "", release.watched),
        ("list", "leases.coordination.k8s.io", "", ""),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", "", ""),
    ]
    for verb, resource, subresource, namespace in refused:
        options = [f"--subresource={subresource}"] if subresource else []
        options += ["-n", namespace] if namespace else []
        answer = release.plane.kubectl(
            "auth", "can-i", verb, resource, f"--as={account}", *options, check=False
        )
        assert answer.stdout.strip() == "no", (verb, resource, subresource, namespace)
    # The same, actually tried with the ServiceAccount's own token (authorization comes
    # before the lookup, so the pod need not exist).
    code, output = release.as_account("delete", "pod", "any", "-n", release.watched)
    assert code != 0
    assert "Forbidden" in output
    assert f'User "{account}" cannot delete resource "pods"' in output


async def test_the_replicas_leases_work_in_the_release_namespace_and_nowhere_else(
    release: Release,
) -> None:
    own = release.lease_store(release.namespace)
    elsewhere = release.lease_store(release.watched)
    try:
        # A ring of its own: the release's operator runs in the release's ring meanwhile.
        ring = {"podcron.dev/ring": "rbac-probe"}
        created = await own.create("podcron-member-chart", "chart", {}, ring)
        renewed = await own.replace(created.changed(annotations={"podcron.dev/fire-bound": "1"}))
        assert await own.list("podcron.dev/ring=rbac-probe") == [renewed]
        assert await own.get(created.name) == renewed
        await own.delete(renewed)
        with pytest.raises(StoreUnavailable, match="403"):
            await elsewhere.create("podcron-member-chart", "chart", {}, ring)
        with pytest.raises(StoreUnavailable, match="403"):
            await elsewhere.list("podcron.dev/ring=rbac-probe")
    finally:
        own.close()
        elsewhere.close()


def test_helm_uninstall_removes_the_release_and_leaves_jobs_deletable(
    release: Release, pod: Pod, helm: Helm
) -> None:
    plane = release.plane
    # helm deletes the Deployment first: the pod's containers stop before their grants go.
    pod.sidecar.stop()
    assert pod.operator.stop() == 0
    helm.run("uninstall", RELEASE, "-n", release.namespace, "--wait", kubeconfig=plane.kubeconfig)
    cluster_wide = f"{RELEASE}-{release.namespace}"
    left = plane.kubectl(
        "get",
        "clusterrole,clusterrolebinding",
        "-o",
        "name",
        "--field-selector",
        f"metadata.name={cluster_wide}",
    ).stdout
    assert left.strip() == ""
    for namespace in (release.namespace, release.watched):
        names = plane.kubectl(
            "get",
            "deployment,service,serviceaccount,configmap,role,rolebinding",
            "-n",
            namespace,
            "-o",
            "name",
        ).stdout.split()
        assert not [name for name in names if "podcron" in name.split("/")[1]], names
    # No finalizer holds a ScheduledJob once the operator is gone.
    jobs = plane.kubectl("get", "scheduledjobs", "-n", release.watched, "-o", "json").stdout
    assert all(not job["metadata"].get("finalizers") for job in json.loads(jobs)["items"])
    plane.kubectl("delete", "scheduledjobs", "--all", "-n", release.watched, "--timeout=20s")
    assert plane.kubectl("get", "scheduledjobs", "-n", release.watched, "-o", "name").stdout == ""


def test_default_values_grant_enough_to_run_jobs_in_every_namespace(
    control_plane: ControlPlane, helm: Helm, tmp_path: Path
) -> None:
    # A control plane of its own: watching every namespace of the shared one, the operator
    # would run the jobs other modules left behind. helm installs the CRD here, as on a new
    # cluster. The sidecar's grant (list Nodes) is the same as above.
    with ControlPlane.start(control_plane.binaries) as plane:
        for namespace in ("podcron-system", "team-a", "team-b"):
            plane.kubectl("create", "namespace", namespace)
        release = install(plane, helm, "podcron-system", {}, tmp_path)
        plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=30s", "crd/scheduledjobs.podcron.dev"
        )
        operator = start_operator(release, tmp_path)
        try:
            every_second = {"entryPoint": "hello", "schedule": {"every": "1s"}}
            for namespace in ("team-a", "team-b"):
                apply(plane, namespace, manifest("tick", every_second))
            for namespace in ("team-a", "team-b"):
                wait_for(
                    functools.partial(succeeded, plane, namespace, "tick"),
                    timeout=30,
                    what=f"a successful run of {namespace}/tick in status",
                )
                wait_event(plane, namespace, "tick", reason="Scheduled")
            annotate(plane, "team-b", "tick", "podcron.dev/run-now", "1")
            wait_event(plane, "team-b", "tick", reason="RunNow")
        finally:
            operator.stop()
        assert refusals(operator.log()) == []
