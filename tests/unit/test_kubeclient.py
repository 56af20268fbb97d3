"""Every API client podcron makes has its own configuration; the global default stays as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

SERVER = "https://127.0.0.1:6443"
# In a process of its own: the client reads KUBECONFIG when it is imported.
PROBE = """
import json
from kubernetes import client
from podcron import kubeclient

before = client.Configuration.get_default_copy()
made = kubeclient.api_client(pool_size=7, retries=0).configuration
after = client.Configuration.get_default_copy()
print(json.dumps({
    "made": [made.host, made.connection_pool_maxsize, made.retries],
    "default": [[c.host, c.retries] for c in (before, after)],
}))
"""


def test_a_client_takes_the_kubeconfig_without_changing_the_global_default(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": SERVER}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    environment = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=environment | {"KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(result.stdout)
    assert seen["made"] == [SERVER, 7, 0]
    before, after = seen["default"]
    assert after == before
    assert SERVER not in before
