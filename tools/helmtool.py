"""The helm CLI, built once from the Go module proxy (``tools/helm``) and cached per version.

Like kube-apiserver and kubectl (see ``controlplane.py``, whose build and lock helpers this
shares), helm is not expected on the machine: the chart's tests need only Go.

    python tools/helmtool.py        # build if missing, print the path of the binary
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controlplane import TOOLS, BinariesUnavailable, _exclusive_lock, _go_build

# Must match tools/helm/go.mod (tests/unit/test_chart.py).
HELM_VERSION = "v3.22.0"
# The Kubernetes version that helm's release build stamps in (that of its client-go,
# k8s.io/client-go v0.37 -> 1.37): `helm template` and `helm lint` assume it without a cluster.
HELM_KUBE_VERSION = ("1", "37")


def cache_dir() -> Path:
    """Where the helm binary of the pinned version is cached."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "podcron" / f"helm-{HELM_VERSION}"


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
    target = cache_dir()
    helm = target / "helm"
    if os.access(helm, os.X_OK):
        return helm
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.with_name(f"{target.name}.lock")):
        if os.access(helm, os.X_OK):  # another run built it while we waited for the lock
            return helm
        go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
        if go is None:
            raise BinariesUnavailable(
                f"the Go toolchain (`go`) is not installed: it is needed once, to build "
                f"helm {HELM_VERSION} into {target}. Install Go >= 1.26."
            )
        # Build next to the target and rename: the cache never holds half a build.
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            _go_build(
                go,
                TOOLS / "helm",
                staging,
                f"helm {HELM_VERSION}",
                _ldflags(),
                "helm.sh/helm/v3/cmd/helm",
            )
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return helm


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
