"""A kind cluster with podcron's image loaded: stock kind images where a registry answers,
else the images ``kindimages.py`` builds here.

    python tools/kindcluster.py up     # until Ctrl-C: cluster, image; then all removed

The cluster is made from kind-config.yaml. Where this machine has only cgroup v1, a kubeadm
patch lets kubelet run there (``failCgroupV1: false``); nowhere else is anything added.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

import kindengine
import kindimages
from gobuild import BinariesUnavailable

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "kind-config.yaml"
IMAGE = "podcron:kind"
PULL_TIMEOUT_SECONDS = 300
# Only where the host has no unified cgroup hierarchy: kubelet >= 1.35 refuses cgroup v1.
CGROUP_V1_PATCH = (
    "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nfailCgroupV1: false\n"
)
# The base the Dockerfile starts from (its PYTHON_IMAGE default), pulled to learn whether
# a registry answers.
STOCK_PYTHON = "python:3.11-slim"


class ClusterError(RuntimeError):
    """The cluster or podcron's image could not be made."""


@dataclass(frozen=True)
class Images:
    """What the cluster and podcron's image are built from; None: the stock default."""

    node: str | None
    python: str | None


@dataclass(frozen=True)
class KindCluster:
    """A running cluster: its name and kubeconfig; podcron's image, built but not loaded."""

    kind: str
    name: str
    kubeconfig: Path
    image: str

    def load(self, image: str) -> None:
        """Copy ``image`` from the engine into the node's containerd."""
        _timed(
            "kind load", lambda: run(self.kind, "load", "docker-image", image, "--name", self.name)
        )


def run(*command: str, timeout: float = 1200) -> str:
    """Run ``command``; its output, or :class:`ClusterError` with what it said."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(command[:4])}… failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def cgroup_v1_only() -> bool:
    """Whether this machine lacks the unified (v2) cgroup hierarchy."""
    return not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def config(name: str, host_port: int | None = None) -> dict[str, Any]:
    """kind-config.yaml for cluster ``name``, its NodePort mapped to ``host_port`` if given."""
    found: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    found["name"] = name
    if host_port is not None:
        found["nodes"][0]["extraPortMappings"][0]["hostPort"] = host_port
    if cgroup_v1_only():
        found.setdefault("kubeadmConfigPatches", []).append(CGROUP_V1_PATCH)
    return found


def registry_answers(docker: str) -> bool:
    """Whether images can be pulled here (tried with the Dockerfile's base)."""
    try:
        result = subprocess.run(
            [docker, "pull", "--quiet", STOCK_PYTHON],
            capture_output=True,
            timeout=PULL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def prepare(docker: str) -> Images:
    """Stock images where a registry answers; else the ones built here (the fallback)."""
    if registry_answers(docker):
        return Images(None, None)
    print(
        f"no registry answers (`docker pull {STOCK_PYTHON}` fails): building kind's node "
        "image here",
        file=sys.stderr,
        flush=True,
    )
    return Images(kindimages.ensure_images(docker), kindimages.PYTHON_IMAGE)


def kind_binary() -> str:
    """kind from PATH, else the one built from tools/kind."""
    return shutil.which("kind") or str(kindimages.ensure_kind())


@contextlib.contextmanager
def kind_cluster(
    docker: str, name: str, host_port: int | None = None, keep: bool = False
) -> Iterator[KindCluster]:
    """A new cluster ``name``, podcron's image built; deleted on leaving unless ``keep``."""
    kind = kind_binary()
    images = prepare(docker)
    with tempfile.TemporaryDirectory(prefix="podcron-kind-") as workdir:
        config_file = Path(workdir) / "kind-config.yaml"
        config_file.write_text(yaml.safe_dump(config(name, host_port)))
        kubeconfig = Path(workdir) / "kubeconfig"
        if name in run(kind, "get", "clusters").split():  # left by an interrupted run
            run(kind, "delete", "cluster", "--name", name)
        node = [f"--image={images.node}"] if images.node else []
        build = [f"--build-arg=PYTHON_IMAGE={images.python}"] if images.python else []
        try:
            _timed(
                "kind create cluster",
                lambda: run(
                    kind,
                    "create",
                    "cluster",
                    f"--config={config_file}",
                    f"--kubeconfig={kubeconfig}",
                    "--wait=180s",
                    *node,
                ),
            )
            _timed(
                "docker build",
                lambda: run(docker, "build", "--network=host", *build, "--tag", IMAGE, str(ROOT)),
            )
            yield KindCluster(kind, name, kubeconfig, IMAGE)
        finally:
            if not keep:
                run(kind, "delete", "cluster", "--name", name)


def _timed(what: str, step: Callable[[], object]) -> None:
    started = time.monotonic()
    step()
    print(f"{what}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="kindcluster.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="a cluster named podcron with podcron:kind, until Ctrl-C")
    parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with kindengine.docker_engine() as docker, kind_cluster(docker, "podcron") as cluster:
            cluster.load(cluster.image)
            print(
                f"KUBECONFIG={cluster.kubeconfig}\nimage: {cluster.image}\n"
                "helm install podcron helm/podcron -n podcron-system --create-namespace "
                "--set image.repository=podcron,image.tag=kind,image.pullPolicy=Never",
                flush=True,
            )
            print("Ctrl-C deletes the cluster.", file=sys.stderr)
            signal.pause()
    except KeyboardInterrupt:
        return 130
    except (
        kindengine.EngineUnavailable,
        kindimages.ImagesUnavailable,
        BinariesUnavailable,
        ClusterError,
    ) as error:
        print(f"kindcluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
