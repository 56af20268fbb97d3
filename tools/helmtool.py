"""The helm CLI, built once from the Go module proxy (``tools/helm``) and cached per version.

Like kube-apiserver and kubectl (see ``controlplane.py``; both build through ``gobuild.py``),
helm is not expected on the machine: the chart's tests need only Go.

    python tools/helmtool.py        # build if missing, print the path of the binary
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gobuild
from gobuild import BinariesUnavailable

# Must match tools/helm/go.mod (tests/unit/test_chart.py).
HELM_VERSION = "v3.22.0"
# The Kubernetes version that helm's release build stamps in (that of its client-go,
# k8s.io/client-go v0.37 -> 1.37): `helm template` and `helm lint` assume it without a cluster.
HELM_KUBE_VERSION = ("1", "37")


def _ldflags() -> str:
    major, minor = HELM_KUBE_VERSION
    stamps = [f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"] + [
        f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{key}={value}"
        for package in ("lint/rules", "chartutil")
        for key, value in (("Major", major), ("Minor", minor))
    ]
    return " ".join(["-s -w", *stamps])


def ensure_helm() -> Path:
    """The cached helm binary, built first if missing; raises ``BinariesUnavailable``."""
    directory = gobuild.ensure_built(
        f"helm-{HELM_VERSION}",
        f"helm {HELM_VERSION}",
        [gobuild.GoBuild("helm", ["helm.sh/helm/v3/cmd/helm"], _ldflags())],
        ["helm"],
    )
    return directory / "helm"


class HelmError(subprocess.CalledProcessError):
    """helm failed; unlike its base class, the message includes what helm said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


@dataclass(frozen=True)
class Helm:
    """The helm binary, with a home of its own for its cache, configuration and data: the
    user's repositories and plugins neither leak in nor get written to."""

    binary: Path
    home: Path

    def run(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run helm (against ``kubeconfig``'s cluster if given); raise ``HelmError`` on
        failure if ``check``."""
        env = os.environ | {
            f"HELM_{kind}_HOME": str(self.home / kind.lower())
            for kind in ("CACHE", "CONFIG", "DATA")
        }
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        result = subprocess.run(
            [str(self.binary), *args], env=env, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise HelmError(result.returncode, result.args, result.stdout, result.stderr)
        return result


def main() -> int:
    """Build helm if missing and print its path; returns the exit code."""
    try:
        print(ensure_helm())
    except BinariesUnavailable as error:
        print(f"helmtool: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
