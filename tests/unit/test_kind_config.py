"""The kind config of tools/kindcluster.py: kind-config.yaml, plus only what this host needs."""

from __future__ import annotations

import pytest
import yaml

import kindcluster


def test_on_a_cgroup_v2_host_it_is_kind_config_yaml_renamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kindcluster, "cgroup_v1_only", lambda: False)
    made = kindcluster.config("e2e", host_port=41234)
    original = yaml.safe_load(kindcluster.CONFIG.read_text())
    assert made["name"] == "e2e"
    assert made["nodes"][0]["extraPortMappings"][0]["hostPort"] == 41234
    assert "kubeadmConfigPatches" not in made
    assert made["networking"] == original["networking"]


def test_on_a_cgroup_v1_host_kubelet_is_let_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kindcluster, "cgroup_v1_only", lambda: True)
    patches = [yaml.safe_load(p) for p in kindcluster.config("e2e")["kubeadmConfigPatches"]]
    assert patches == [
        {
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "failCgroupV1": False,
        }
    ]
