"""The Helm chart as the tests see it: its path, a set of values that changes every default,
and rendering through the real helm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from helmtool import Helm

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "podcron"

#: Every value the chart has, set to something other than its default.
CUSTOM_VALUES: dict[str, Any] = {
    "image": {
        "repository": "registry.example.com/shop/podcron-jobs",
        "tag": "1.2.3",
        "pullPolicy": "Always",
    },
    "imagePullSecrets": [{"name": "registry-credentials"}],
    "fullnameOverride": "jobs",
    "replicas": 3,
    "leaseRenewSeconds": 0.5,
    "fireBoundSeconds": 1.5,
    "leaseStaleSeconds": 4,
    "watchNamespaces": ["shop", "billing"],
    "allowedModules": ["myjobs.*", "reports.monthly"],
    "allowedCIDRs": ["10.244.0.0/16", "fd00:10:244::/56", "192.168.7.1"],
    "trustedProxies": ["10.244.3.7"],
    "cidrRefreshSeconds": 15,
    "podCIDRsMinPrefixV4": 12,
    "podCIDRsMinPrefixV6": 48,
    "otlp": {
        "endpoint": "http://otel-collector.observability:4317",
        "protocol": "http/protobuf",
        "serviceName": "shop-jobs",
    },
    "logFormat": "text",
    "logLevel": "DEBUG",
    "shutdownTimeoutSeconds": 50,
    "terminationGracePeriodSeconds": 75,
    "jobConfig": {"uptimeUrl": "http://reports.shop.svc/health", ".env": "MODE=live\n"},
    "jobSecrets": {"existingSecret": "shop-jobs.credentials"},
    "workerThreads": 4,
    "maxConcurrentRuns": 20,
    "statusPatchesPerSecond": 25.5,
    "service": {"type": "NodePort", "port": 8181, "metricsPort": 9191},
    "sidecarProbePort": 8282,
    "networkPolicy": {
        "enabled": True,
        "metrics": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
            "podSelector": {
                "matchExpressions": [
                    {"key": "app.kubernetes.io/name", "operator": "In", "values": ["prometheus"]}
                ]
            },
        },
    },
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "prometheus"},
        "scrapeJob": "podcron-operator",
        "runbookURL": "https://docs.example.com/podcron/alerts",
        "failuresInARow": 2,
        "missedIntervals": 4,
        "latenessP99Seconds": 0.5,
        "for": {
            "notSucceeding": "10m",
            "scheduleLate": "30m",
            "operatorDown": "2m",
            "operatorNotReady": "15m",
            "runsQueued": "30m",
            "threadsAbandoned": "1m",
        },
    },
    "grafanaDashboard": {
        "enabled": True,
        "labels": {"grafana_dashboard": "podcron"},
        "annotations": {"grafana_folder": "Jobs"},
    },
    "serviceAccount": {
        "create": True,
        "name": "jobs-runner",
        "annotations": {"example.com/owner": "shop"},
    },
    "resources": {
        "operator": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "sidecar": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    },
    "podAnnotations": {"example.com/team": "shop"},
    "podLabels": {"team": "shop"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "jobs", "effect": "NoSchedule"}
    ],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                        ]
                    },
                }
            ]
        }
    },
}

#: The two value sets most chart tests run with, by test id.
VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}, "custom": CUSTOM_VALUES}


def values_file(directory: Path, values: dict[str, Any]) -> Path:
    """``values`` as a file for ``helm -f`` (JSON is YAML, and keeps the types exact)."""
    path = directory / "values.json"
    path.write_text(json.dumps(values))
    return path


def render(
    helm: Helm,
    directory: Path,
    values: dict[str, Any],
    *,
    namespace: str = "podcron",
    release: str = "podcron",
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The objects ``helm template`` makes of the chart with ``values``."""
    result = helm.run(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "-f",
        str(values_file(directory, values)),
        *(["--include-crds"] if include_crds else []),
    )
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The objects of ``kind`` (named ``name``, if given)."""
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The only object of ``kind``."""
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
