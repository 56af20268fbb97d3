"""The Helm chart through the real helm, without a cluster: lint, the schema's refusals, and
the rendered objects agreeing with podcron itself (its settings loader, its console script,
its image). tests/integration/test_helm_rbac.py puts the same objects to a real API server.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmtool import HELM_VERSION, Helm
from podcron.config import Settings, load

from ..chart import CHART, CUSTOM_VALUES, ROOT, VALUE_SETS, find, one, render, values_file

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPT = "podcron"
UID = 65532
JOB_RULES = {("podcron.dev", "scheduledjobs", verb) for verb in ("list", "watch", "patch")} | {
    ("podcron.dev", "scheduledjobs/status", "get"),
    ("podcron.dev", "scheduledjobs/status", "patch"),
    ("", "events", "create"),
    ("", "events", "patch"),
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
# The replicas' Leases: read, watch, create, compare-and-swap by patch, delete; never update.
LEASE_RULES = {
    ("coordination.k8s.io", "leases", verb)
    for verb in ("get", "list", "watch", "create", "patch", "delete")
}


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """A Role's or ClusterRole's rules as (apiGroup, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


JOB_CONFIG_DIR = "/etc/podcron-jobs/config"
JOB_SECRETS_DIR = "/etc/podcron-jobs/secrets"


def _fullname(values: dict[str, Any]) -> str:
    return str(values.get("fullnameOverride") or "podcron")


def _containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    return {container["name"]: container for container in spec["containers"]}


@pytest.fixture(params=list(VALUE_SETS), ids=list(VALUE_SETS))
def values(request: pytest.FixtureRequest) -> dict[str, Any]:
    chosen: dict[str, Any] = VALUE_SETS[request.param]
    return chosen


@pytest.fixture
def objects(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    return render(helm, tmp_path, values)


def test_helm_is_the_version_tools_helm_builds() -> None:
    go_mod = (ROOT / "tools" / "helm" / "go.mod").read_text()
    assert re.search(rf"^require helm\.sh/helm/v3 {re.escape(HELM_VERSION)}$", go_mod, re.M)


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]


def test_lint_is_clean(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> None:
    # --strict fails on warnings too; what remains is helm's INFO that the chart has no icon.
    result = helm.run("lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, values)))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"logFormat": "xml"}, "at '/logFormat': value must be one of 'json', 'text'"),
        ({"logLevel": "TRACE"}, "at '/logLevel': value must be one of"),
        ({"allowedCIDRs": "10.0.0.0/8"}, "at '/allowedCIDRs': got string, want array"),
        ({"allowedCIDRs": ["10.0.0.0/33"]}, "at '/allowedCIDRs/0': 'anyOf' failed"),
        ({"trustedProxies": ["proxy.local"]}, "at '/trustedProxies/0': 'anyOf' failed"),
        ({"watchNamespaces": ["Shop"]}, "at '/watchNamespaces/0': 'Shop' does not match"),
        ({"allowedCidrs": []}, "additional properties 'allowedCidrs' not allowed"),
        ({"workerThreads": 0}, "at '/workerThreads': minimum: got 0, want 1"),
        ({"maxConcurrentRuns": 2.5}, "at '/maxConcurrentRuns': got number, want integer"),
        ({"shutdownTimeoutSeconds": -1}, "at '/shutdownTimeoutSeconds': minimum: got -1"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        ({"service": {"port": 70000}}, "at '/service/port': maximum: got 70,000, want 65,535"),
        ({"otlp": {"endpoint": "otel:4317"}}, "at '/otlp/endpoint': 'otel:4317' does not match"),
        (
            {"terminationGracePeriodSeconds": 20},
            "terminationGracePeriodSeconds (20) must be greater than shutdownTimeoutSeconds (25)",
        ),
        ({"service": {"port": 9090}}, "service.port and service.metricsPort must differ"),
        ({"sidecarProbePort": 8080}, "sidecarProbePort (8080) must differ from service.port"),
        ({"sidecarProbePort": 9090}, "sidecarProbePort (9090) must differ from service.port"),
        ({"podCIDRsMinPrefixV4": 33}, "at '/podCIDRsMinPrefixV4': maximum: got 33, want 32"),
        ({"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
        ({"leaseRenewSeconds": 0}, "at '/leaseRenewSeconds': exclusiveMinimum: got 0, want 0"),
        (
            {"fireBoundSeconds": 1},
            "fireBoundSeconds (1) must be greater than leaseRenewSeconds (1)",
        ),
        (
            {"leaseStaleSeconds": 2},
            "leaseStaleSeconds (2) must be greater than fireBoundSeconds (2)",
        ),
        ({"podCIDRsMinPrefixV6": -1}, "at '/podCIDRsMinPrefixV6': minimum: got -1, want 0"),
        ({"networkPolicy": {"enabled": "yes"}}, "at '/networkPolicy/enabled': got string"),
        (
            {"prometheusRule": {"failuresInARow": 0}},
            "at '/prometheusRule/failuresInARow': minimum: got 0, want 1",
        ),
        (
            {"prometheusRule": {"for": {"operatorDown": "5 minutes"}}},
            "at '/prometheusRule/for/operatorDown': '5 minutes' does not match",
        ),
        ({"grafanaDashboard": {"enable": True}}, "additional properties 'enable' not allowed"),
        (
            {"networkPolicy": {"metrics": {"podSelector": {"app": "prometheus"}}}},
            "additional properties 'app' not allowed",
        ),
    ],
    ids=lambda case: next(iter(case)) if isinstance(case, dict) else "",
)
def test_bad_values_are_refused_with_a_clear_message(
    helm: Helm, tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    result = helm.run(
        "template", "podcron", str(CHART), "-f", str(values_file(tmp_path, bad)), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_config_map_holds_the_settings_podcron_reads(
    objects: list[dict[str, Any]], values: dict[str, Any], tmp_path: Path
) -> None:
    config = find(objects, "ConfigMap", _fullname(values))[0]["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(config)
    # POD_NAMESPACE as the pod's containers have it (the Leases' namespace).
    environ = {"PODCRON_CONFIG_DIR": str(tmp_path), "POD_NAMESPACE": "podcron"}
    settings = load(environ)  # raises on a setting it lacks
    # The replicas' ring is the release: its name, in its namespace.
    assert (settings.ha_ring, settings.lease_namespace) == (_fullname(values), "podcron")
    if not values:
        # The chart's defaults are podcron's documented defaults.
        assert dataclasses.replace(settings, ha_ring="", lease_namespace="") == Settings()
        return
    assert settings.lease_renew_seconds == values["leaseRenewSeconds"]
    assert settings.fire_bound_seconds == values["fireBoundSeconds"]
    assert settings.lease_stale_seconds == values["leaseStaleSeconds"]
    assert settings.allowed_modules == tuple(values["allowedModules"])
    assert settings.allowed_cidrs == tuple(values["allowedCIDRs"])
    assert settings.trusted_proxies == tuple(values["trustedProxies"])
    assert settings.namespaces == tuple(values["watchNamespaces"])
    assert settings.cidr_refresh_seconds == values["cidrRefreshSeconds"]
    assert settings.pod_cidrs_min_prefix_v4 == values["podCIDRsMinPrefixV4"]
    assert settings.pod_cidrs_min_prefix_v6 == values["podCIDRsMinPrefixV6"]
    assert settings.sidecar_probe_port == values["sidecarProbePort"]
    assert settings.shutdown_timeout_seconds == values["shutdownTimeoutSeconds"]
    assert settings.worker_threads == values["workerThreads"]
    assert settings.max_concurrent_runs == values["maxConcurrentRuns"]
    assert settings.status_patches_per_second == values["statusPatchesPerSecond"]
    assert settings.log_format == values["logFormat"]
    assert settings.log_level == values["logLevel"]
    assert settings.sidecar_port == values["service"]["port"]
    assert settings.metrics_port == values["service"]["metricsPort"]
    assert settings.job_config_dir == JOB_CONFIG_DIR
    assert settings.job_secrets_dir == JOB_SECRETS_DIR


def test_containers_run_the_console_script_from_one_image(
    objects: list[dict[str, Any]], values: dict[str, Any]
) -> None:
    containers = _containers(objects)
    assert set(containers) == {"operator", "sidecar"}
    assert PYPROJECT["project"]["scripts"][SCRIPT] == "podcron.cli:main"
    image = values.get("image", {})
    expected = f"{image.get('repository', 'podcron')}:{image.get('tag') or '0.1.0'}"
    for name, container in containers.items():
        assert container["image"] == expected
        assert container["command"] == [SCRIPT]
        assert container["args"] == [name]
        # The subcommand exists: the console script is `python -m podcron`.
        run = subprocess.run(
            [sys.executable, "-m", "podcron", *container["args"], "--help"],
            capture_output=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr


def test_the_image_runs_the_console_script_as_the_charts_user(
    objects: list[dict[str, Any]],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["{SCRIPT}"]' in dockerfile
    assert re.search(rf"^USER {UID}:{UID}$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", dockerfile, re.M)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == UID


def test_pod_is_locked_down_and_probed(
    objects: list[dict[str, Any]], values: dict[str, Any]
) -> None:
    deployment = one(objects, "Deployment")
    replicas = values.get("replicas", 2)
    assert deployment["spec"]["replicas"] == replicas
    if replicas == 1:
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    else:  # a new replica joins the ring before an old one leaves it
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > values.get("shutdownTimeoutSeconds", Settings().shutdown_timeout_seconds)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["control"] == {"name": "control", "emptyDir": {}}
    for container in _containers(objects).values():
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]
        # The sidecar's probes have a port of their own: its API port refuses the node.
        probe_port = "probes" if container["name"] == "sidecar" else "metrics"
        assert probe_port in {port["name"] for port in container["ports"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": probe_port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": probe_port}
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        # The socket's directory is shared, and is where the settings put the socket.
        assert mounts["control"] == "/var/run/podcron"
        assert Path(Settings().control_socket).parent == Path(mounts["control"])


def test_service_exposes_the_system_api_and_metrics(
    objects: list[dict[str, Any]], values: dict[str, Any]
) -> None:
    service = one(objects, "Service")
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert ports["http"]["port"] == values.get("service", {}).get("port", 8080)
    assert ports["metrics"]["port"] == values.get("service", {}).get("metricsPort", 9090)
    containers = _containers(objects)
    sidecar_ports = {p["name"]: p["containerPort"] for p in containers["sidecar"]["ports"]}
    assert sidecar_ports == {
        "http": values.get("service", {}).get("port", 8080),
        "probes": values.get("sidecarProbePort", 8081),
    }
    assert "probes" not in ports, "the probe port is for the kubelet only"
    assert [p["name"] for p in containers["operator"]["ports"]] == ["metrics"]
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    monitors = find(objects, "ServiceMonitor")
    if values.get("serviceMonitor", {}).get("enabled"):
        endpoints = one(monitors, "ServiceMonitor")["spec"]["endpoints"]
        assert endpoints == [
            {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
        ]
    else:
        assert monitors == []


def test_otlp_endpoint_reaches_both_containers_only_when_set(
    objects: list[dict[str, Any]], values: dict[str, Any]
) -> None:
    for container in _containers(objects).values():
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        assert env["PODCRON_CONFIG_DIR"] == "/etc/podcron"
        otlp = values.get("otlp")
        if otlp:
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == otlp["endpoint"]
            assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == otlp["protocol"]
            assert env["OTEL_SERVICE_NAME"] == otlp["serviceName"]
        else:
            assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


def test_cluster_wide_rbac_by_default(helm: Helm, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, {})
    cluster_role = one(objects, "ClusterRole")
    nodes = {("", "nodes", "list")}
    assert _grants(cluster_role) == CRD_RULES | nodes | JOB_RULES
    assert [role["metadata"]["name"] for role in find(objects, "Role")] == ["podcron-leases"]
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]


def test_watched_namespaces_get_roles_and_fixed_cidrs_no_nodes(helm: Helm, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, CUSTOM_VALUES, namespace="jobs-system")
    namespaces = {("", "namespaces", verb) for verb in ("list", "watch")}
    assert _grants(one(objects, "ClusterRole")) == CRD_RULES | namespaces
    roles = [role for role in find(objects, "Role") if role["metadata"]["name"] != "jobs-leases"]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["billing", "shop"]
    for role in roles:
        assert _grants(role) == JOB_RULES
    subject = {"kind": "ServiceAccount", "name": "jobs-runner", "namespace": "jobs-system"}
    bindings = find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding")
    assert len(bindings) == 4  # the watched namespaces', the cluster's and the Leases'
    assert all(binding["subjects"] == [subject] for binding in bindings)


def test_rbac_and_service_account_can_be_left_to_the_user(helm: Helm, tmp_path: Path) -> None:
    objects = render(
        helm,
        tmp_path,
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}},
    )
    kinds = {o["kind"] for o in objects}
    assert kinds == {"ConfigMap", "Service", "Deployment", "NetworkPolicy", "PodDisruptionBudget"}
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "mine"


def test_two_releases_in_two_namespaces_make_distinct_cluster_objects(
    helm: Helm, tmp_path: Path
) -> None:
    names = {
        o["metadata"]["name"]
        for namespace in ("team-a", "team-b")
        for o in render(helm, tmp_path, {}, namespace=namespace)
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding")
    }
    assert names == {"podcron-team-a", "podcron-team-b"}


@pytest.mark.parametrize(("container", "port"), [("sidecar", "probes"), ("operator", "metrics")])
def test_each_container_has_a_startup_probe_on_its_probe_port(
    objects: list[dict[str, Any]], container: str, port: str
) -> None:
    startup = _containers(objects)[container]["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": port}
    # A minute for a slow node before liveness counts.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def _ingress(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The NetworkPolicy's peers by the port (name) they may reach."""
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open (the API server)"
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            rules[port["port"]] = rule["from"]
    return rules


def test_the_network_policy_admits_the_pod_network_and_prometheus_by_default(
    helm: Helm, tmp_path: Path
) -> None:
    rules = _ingress(render(helm, tmp_path, {}))
    assert set(rules) == {"http", "metrics"}, "probes come from the node, never blocked"
    assert rules["http"] == [{"namespaceSelector": {}}]
    assert rules["metrics"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]


def test_the_network_policy_admits_exactly_the_allowed_cidrs_and_proxies(
    helm: Helm, tmp_path: Path
) -> None:
    rules = _ingress(render(helm, tmp_path, CUSTOM_VALUES))
    assert rules["http"] == [
        {"ipBlock": {"cidr": "10.244.0.0/16"}},
        {"ipBlock": {"cidr": "fd00:10:244::/56"}},
        {"ipBlock": {"cidr": "192.168.7.1/32"}},
        {"ipBlock": {"cidr": "10.244.3.7/32"}},  # the trusted proxy
    ]
    metrics = CUSTOM_VALUES["networkPolicy"]["metrics"]
    assert rules["metrics"] == [
        {"namespaceSelector": metrics["namespaceSelector"], "podSelector": metrics["podSelector"]}
    ]


def test_the_network_policy_can_be_left_out(helm: Helm, tmp_path: Path) -> None:
    assert (
        find(render(helm, tmp_path, {"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []
    )


# -- the jobs' configuration and secrets (ctx.config) ---------------------------------------


def test_job_config_and_secrets_are_mounted_read_only_into_the_operator_only(
    helm: Helm, tmp_path: Path
) -> None:
    objects = render(helm, tmp_path, CUSTOM_VALUES)
    job_config = one(
        [o for o in objects if o["metadata"]["name"] == "jobs-job-config"], "ConfigMap"
    )
    assert job_config["data"] == CUSTOM_VALUES["jobConfig"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["job-config"]["configMap"] == {"name": "jobs-job-config"}
    assert volumes["job-secrets"]["secret"] == {
        "secretName": "shop-jobs.credentials",
        # Group-readable: the files belong to root, the pod's group is its fsGroup.
        "defaultMode": 0o440,
    }
    containers = _containers(objects)
    mounts = {mount["name"]: mount for mount in containers["operator"]["volumeMounts"]}
    assert mounts["job-config"] == {
        "name": "job-config",
        "mountPath": JOB_CONFIG_DIR,
        "readOnly": True,
    }
    assert mounts["job-secrets"] == {
        "name": "job-secrets",
        "mountPath": JOB_SECRETS_DIR,
        "readOnly": True,
    }
    assert not any("subPath" in mount for mount in mounts.values()), "subPath is never updated"
    sidecar = {mount["name"] for mount in containers["sidecar"]["volumeMounts"]}
    assert not sidecar & {"job-config", "job-secrets"}, "the sidecar never sees them"


def test_without_job_config_nothing_is_mounted_and_the_settings_say_none(
    helm: Helm, tmp_path: Path
) -> None:
    objects = render(helm, tmp_path, {})
    assert [o["metadata"]["name"] for o in find(objects, "ConfigMap")] == ["podcron"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert not {volume["name"] for volume in pod["volumes"]} & {"job-config", "job-secrets"}
    (tmp_path / "config.yaml").write_text(find(objects, "ConfigMap")[0]["data"]["config.yaml"])
    settings = load({"PODCRON_CONFIG_DIR": str(tmp_path), "POD_NAMESPACE": "podcron"})
    assert (settings.job_config_dir, settings.job_secrets_dir) == ("", "")


def test_a_changed_job_config_does_not_restart_the_pod(helm: Helm, tmp_path: Path) -> None:
    def checksum(job_config: dict[str, str]) -> str:
        objects = render(helm, tmp_path, {"jobConfig": job_config})
        annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    # The kubelet updates the mounted files in place and the next run reads them.
    assert checksum({"uptimeUrl": "http://a"}) == checksum({"uptimeUrl": "http://b"})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"jobConfig": {"retries": 3}}, "at '/jobConfig/retries': got number, want string"),
        ({"jobConfig": {"..data": "x"}}, 'jobConfig: "..data" is not a ConfigMap key'),
        ({"jobConfig": {"a/b": "x"}}, 'jobConfig: "a/b" is not a ConfigMap key'),
        (
            {"jobSecrets": {"existingSecret": "Shop_Jobs"}},
            "at '/jobSecrets/existingSecret': 'Shop_Jobs' does not match",
        ),
        ({"jobSecrets": {"name": "x"}}, "additional properties 'name' not allowed"),
    ],
    ids=["not-a-string", "kubelets-name", "slash", "bad-secret-name", "unknown-field"],
)
def test_bad_job_config_values_are_refused(
    helm: Helm, tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    result = helm.run(
        "template", "podcron", str(CHART), "-f", str(values_file(tmp_path, bad)), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_the_replicas_use_leases_in_the_release_namespace_only(
    objects: list[dict[str, Any]], values: dict[str, Any]
) -> None:
    name = f"{_fullname(values)}-leases"
    role = find(objects, "Role", name)[0]
    assert role["metadata"]["namespace"] == "podcron"  # the release's
    assert _grants(role) == LEASE_RULES
    binding = find(objects, "RoleBinding", name)[0]
    assert binding["metadata"]["namespace"] == "podcron"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    account = one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": "podcron"}
    ]
    lease_grants = [
        rule
        for kind in ("ClusterRole", "Role")
        for other in find(objects, kind)
        if other is not role
        for rule in _grants(other)
        if rule[1] == "leases"
    ]
    assert lease_grants == []


def test_both_containers_know_their_pod_from_the_downward_api(
    objects: list[dict[str, Any]],
) -> None:
    for container in _containers(objects).values():
        env = {variable["name"]: variable for variable in container["env"]}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["POD_NAMESPACE"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.namespace"}
        }


def test_a_disruption_budget_takes_one_replica_at_a_time(helm: Helm, tmp_path: Path) -> None:
    assert find(render(helm, tmp_path, {"replicas": 1}), "PodDisruptionBudget") == []
    for replicas in (2, 3):
        budget = one(render(helm, tmp_path, {"replicas": replicas}), "PodDisruptionBudget")
        assert budget["spec"] == budget["spec"] | {"maxUnavailable": 1}
        assert "minAvailable" not in budget["spec"]
    objects = render(helm, tmp_path, {})  # two replicas by default
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
