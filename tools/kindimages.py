"""A kind node image, and a Python base for podcron's image, built here with no registry.

Where no container registry is reachable, neither ``kind create cluster`` (it pulls
kindest/node) nor ``kind build node-image`` (it pulls etcd, CoreDNS, kindnetd) works. This
builds what they would pull, from sources this machine can reach, Debian's mirror and the Go
module proxy:

- the Kubernetes binaries of a node, from the pinned ``k8s.io/kubernetes`` (``tools/kube``,
  the same module, flags and Go build cache as the local control plane's); CoreDNS
  (``tools/coredns``); a tiny pause (``tools/pause``); kind itself (``tools/kind``);
- a Debian base (``debootstrap --variant=minbase``, then ``docker import``);
- kind's base image, from kind's own base-image files (in the kind module) on Debian's
  systemd, containerd, runc and CNI plugins;
- an image per control-plane component, named as kubeadm expects it, etcd from the
  project's build;
- the node image: the base plus kubelet, kubeadm and kubectl, the component images imported
  into its containerd (``ctr images import --no-unpack``, pinned), and a static bridge CNI
  in place of kindnetd (one node);
- a Python base (Debian's python3) from which the project's Dockerfile builds unchanged.

Go builds and image builds run concurrently where independent. Images are cached in the
engine by version-named tags, binaries under ``~/.cache/podcron/``.

    python tools/kindimages.py      # build what is missing; print the node image's name
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

import gobuild
import kindengine
from controlplane import KUBERNETES_VERSION, _kubernetes_ldflags, ensure_binaries
from gobuild import BinariesUnavailable

# Must match tools/kind/go.mod and tools/coredns/go.mod (tests/unit/test_kind_versions.py).
KIND_VERSION = "v0.33.0"
COREDNS_VERSION = "v1.14.6"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("PODCRON_DEBIAN_MIRROR", "http://deb.debian.org/debian")

PREFIX = "podcron-kind"
DEBIAN_IMAGE = f"{PREFIX}/debian:{DEBIAN_SUITE}"
BASE_IMAGE = f"{PREFIX}/base:{KIND_VERSION}"
NODE_IMAGE = f"{PREFIX}/node:{KUBERNETES_VERSION}"
PYTHON_IMAGE = f"{PREFIX}/python:{DEBIAN_SUITE}"
# The kube-proxy image needs iptables and conntrack, unlike the other components.
IPTABLES_IMAGE = f"{PREFIX}/iptables:{DEBIAN_SUITE}"

NODE_COMMANDS = ("kubelet", "kubeadm", "kube-controller-manager", "kube-scheduler", "kube-proxy")
# Extra CA certificates of this machine (a TLS-intercepting proxy's): pip inside
# `docker build` must trust them too. Only copied into the local Python base, never into
# the podcron image by default.
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# One node: a bridge on the node, its addresses from the node's pod CIDR (the first /24 of
# kind-config.yaml's podSubnet), as kindnetd would give them.
BRIDGE_CNI = """{
  "cniVersion": "1.0.0",
  "name": "podcron-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.0.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"""
# kind applies this manifest as the cluster's CNI unless the config disables it; the bridge
# above is already in place, so there is nothing to run.
NO_CNI_MANIFEST = """apiVersion: v1
kind: ConfigMap
metadata:
  name: podcron-kind-cni
  namespace: kube-system
data:
  note: "Pod network: a static bridge in /etc/cni/net.d of the node image (no kindnetd)."
"""

T = TypeVar("T")


class ImagesUnavailable(RuntimeError):
    """An image could not be built here."""


def _run(
    *command: str,
    what: str,
    input: bytes | None = None,
    stdin: IO[bytes] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run ``command``; its output, or :class:`ImagesUnavailable` saying ``what`` failed."""
    result = subprocess.run(
        command, input=input, stdin=stdin, cwd=cwd, capture_output=True, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise ImagesUnavailable(
            f"{what} failed ({' '.join(command[:3])}…):\n{gobuild.tail(output)}"
        )
    return result.stdout.decode(errors="replace")


def _timed(what: str, step: Callable[[], T]) -> T:
    print(f"{what}…", file=sys.stderr, flush=True)
    started = time.monotonic()
    value = step()
    print(f"{what}: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return value


def ensure_kind() -> Path:
    """The kind CLI, built once from ``tools/kind``."""
    directory = gobuild.ensure_built(
        f"kind-{KIND_VERSION}",
        f"kind {KIND_VERSION}",
        [gobuild.GoBuild("kind", ["sigs.k8s.io/kind"])],
        ["kind"],
    )
    return directory / "kind"


def ensure_node_binaries() -> Path:
    """kubelet, kubeadm, controller-manager, scheduler and kube-proxy; CoreDNS; pause.

    One ``go build`` for the Kubernetes commands, in the control plane's module with its
    flags: every package they share with kube-apiserver comes from the Go build cache.
    """
    return gobuild.ensure_built(
        f"kind-node/kubernetes-{KUBERNETES_VERSION}-coredns-{COREDNS_VERSION}",
        f"the kind node's Kubernetes {KUBERNETES_VERSION} commands, CoreDNS {COREDNS_VERSION}",
        [
            gobuild.GoBuild(
                "kube", [f"k8s.io/kubernetes/cmd/{c}" for c in NODE_COMMANDS], _kubernetes_ldflags()
            ),
            gobuild.GoBuild("coredns", ["github.com/coredns/coredns"]),
            gobuild.GoBuild("pause", ["."]),
        ],
        [*NODE_COMMANDS, "coredns", "pause"],
    )


def kind_module() -> Path:
    """The kind module's source (downloaded by the build of kind), for its base-image files."""
    go = gobuild.find_go()
    if go is None:
        raise BinariesUnavailable("the Go toolchain (`go`) is not installed")
    found = _run(
        go,
        "list",
        "-m",
        "-f",
        "{{.Dir}}",
        "sigs.k8s.io/kind",
        what="locating the kind module",
        cwd=gobuild.TOOLS / "kind",
    ).strip()
    if not found:  # listed but not downloaded yet
        _run(
            go,
            "mod",
            "download",
            "sigs.k8s.io/kind",
            what="downloading kind",
            cwd=gobuild.TOOLS / "kind",
        )
        return kind_module()
    return Path(found)


class Builder:
    """Builds the images with the docker CLI ``docker``; skips each one already present."""

    def __init__(self, docker: str) -> None:
        self.docker = docker

    def has(self, image: str) -> bool:
        """Whether the engine holds ``image``."""
        result = subprocess.run(
            [self.docker, "image", "inspect", image], capture_output=True, check=False
        )
        return result.returncode == 0

    def build(self, image: str, context: Path, dockerfile: str) -> None:
        """``docker build`` of ``dockerfile`` in ``context``, tagged ``image``."""
        (context / "Dockerfile").write_text(dockerfile)
        _run(
            self.docker,
            "build",
            "--network=host",  # apt and pip reach the mirrors as this machine does
            "--tag",
            image,
            str(context),
            what=f"building {image}",
        )

    def debian(self) -> None:
        """A minimal Debian from its mirror, imported as an image."""
        if self.has(DEBIAN_IMAGE):
            return
        debootstrap = shutil.which("debootstrap") or _install("debootstrap")
        with tempfile.TemporaryDirectory(prefix="podcron-debootstrap-") as root:
            _run(
                debootstrap,
                "--variant=minbase",
                DEBIAN_SUITE,
                root,
                DEBIAN_MIRROR,
                what="debootstrap",
            )
            archive = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            try:
                _run(
                    self.docker,
                    "import",
                    "-",
                    DEBIAN_IMAGE,
                    what="docker import",
                    stdin=archive.stdout,
                )
            finally:
                archive.wait()

    def base(self, kind_source: Path) -> None:
        """kind's base image, from its own files, on Debian's packages."""
        if self.has(BASE_IMAGE):
            return
        restrict_oom = kindengine.bounding_set_lacks_sys_resource()
        with tempfile.TemporaryDirectory(prefix="podcron-kind-base-") as context:
            files = Path(context) / "files"
            shutil.copytree(kind_source / "images" / "base" / "files", files)
            for path in [files, *files.rglob("*")]:  # the module cache is read-only
                executable = path.is_dir() or "/bin/" in str(path)
                path.chmod(0o755 if executable else 0o644)
            self.build(BASE_IMAGE, Path(context), _base_dockerfile(restrict_oom))

    def iptables(self) -> None:
        """Debian with iptables and conntrack, for kube-proxy."""
        if self.has(IPTABLES_IMAGE):
            return
        with tempfile.TemporaryDirectory(prefix="podcron-kind-iptables-") as context:
            self.build(
                IPTABLES_IMAGE,
                Path(context),
                f"FROM {DEBIAN_IMAGE}\n"
                "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends"
                " iptables conntrack && rm -rf /var/lib/apt/lists/*\n",
            )

    def python(self) -> None:
        """Debian's python3 and venv: the base podcron's Dockerfile builds on here."""
        if self.has(PYTHON_IMAGE):
            return
        with tempfile.TemporaryDirectory(prefix="podcron-python-") as context:
            trust = ""
            if EXTRA_CA_DIR.is_dir() and any(EXTRA_CA_DIR.iterdir()):
                shutil.copyfile(HOST_CA_BUNDLE, Path(context) / "host-ca.crt")
                trust = (
                    "COPY host-ca.crt /etc/ssl/certs/podcron-host-ca.crt\n"
                    "ENV PIP_CERT=/etc/ssl/certs/podcron-host-ca.crt\n"
                )
            self.build(
                PYTHON_IMAGE,
                Path(context),
                f"FROM {DEBIAN_IMAGE}\n"
                "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends"
                " python3 python3-venv python-is-python3 ca-certificates"
                " && rm -rf /var/lib/apt/lists/*\n" + trust,
            )

    def components(self, binaries: Path, kubeadm_images: Sequence[str], sandbox: str) -> Path:
        """One archive of the images kubeadm deploys (and the sandbox image), for the node."""
        with tempfile.TemporaryDirectory(prefix="podcron-kind-images-") as context:
            built: dict[str, str] = {}  # the first image per program
            for image in [*kubeadm_images, sandbox]:
                name = image.rsplit(":", 1)[0].rsplit("/", 1)[-1]
                if name in built:  # the same program under a second name (pause)
                    _run(self.docker, "tag", built[name], image, what="docker tag")
                    continue
                built[name] = image
                directory = Path(context) / name
                directory.mkdir()
                binary, base, entrypoint = _component(name, binaries)
                shutil.copy(binary, directory / binary.name)
                self.build(
                    image,
                    directory,
                    f"FROM {base}\n"
                    f"COPY {binary.name} /usr/local/bin/{binary.name}\n"
                    "ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                    f"ENTRYPOINT {entrypoint}\n",
                )
            archive = Path(tempfile.mkdtemp(prefix="podcron-kind-")) / "images.tar"
            images = [*kubeadm_images, sandbox]
            _run(self.docker, "save", "--output", str(archive), *images, what="docker save")
            return archive

    def node(self, binaries: Path, kubectl: Path) -> None:
        """The node image: kind's base, the node's binaries and images, the bridge CNI."""
        kubeadm = binaries / "kubeadm"
        listed = _run(
            str(kubeadm),
            "config",
            "images",
            "list",
            f"--kubernetes-version={KUBERNETES_VERSION}",
            what="kubeadm config images list",
        ).split()
        sandbox = _sandbox_image(
            _run(
                self.docker,
                "run",
                "--rm",
                "--entrypoint=cat",
                BASE_IMAGE,
                "/etc/containerd/config.toml",
                what="reading containerd's config",
            )
        )
        kubeadm_images = [image for image in listed if "/pause:" not in image] + [
            image for image in listed if "/pause:" in image and image != sandbox
        ]
        archive = self.components(binaries, kubeadm_images, sandbox)
        container = f"podcron-kind-build-{os.getpid()}"
        _run(
            self.docker,
            "run",
            "-d",
            f"--name={container}",
            "--entrypoint=sleep",
            "--security-opt=seccomp=unconfined",
            BASE_IMAGE,
            "infinity",
            what="starting the build container",
        )
        try:
            for path in (binaries / "kubelet", kubeadm, kubectl):
                _run(
                    self.docker,
                    "cp",
                    str(path),
                    f"{container}:/usr/bin/{path.name}",
                    what="docker cp",
                )
            _run(self.docker, "cp", str(archive), f"{container}:/kind/images.tar", what="docker cp")
            script = _NODE_SCRIPT.format(
                version=KUBERNETES_VERSION, cni=BRIDGE_CNI, manifest=NO_CNI_MANIFEST
            )
            _run(
                self.docker,
                "exec",
                "-i",
                container,
                "bash",
                "-e",
                what="preparing the node",
                input=script.encode(),
            )
            _run(
                self.docker,
                "commit",
                "--change",
                'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]',
                container,
                NODE_IMAGE,
                what="docker commit",
            )
        finally:
            subprocess.run(
                [self.docker, "rm", "-f", "-v", container], capture_output=True, check=False
            )
            shutil.rmtree(archive.parent, ignore_errors=True)


# Run in the build container: the version kind reads, the CNI, the images in containerd.
_NODE_SCRIPT = """
chown root:root /usr/bin/kubelet /usr/bin/kubeadm /usr/bin/kubectl
chmod 755 /usr/bin/kubelet /usr/bin/kubeadm /usr/bin/kubectl
echo -n {version} > /kind/version
mkdir -p /kind/manifests /etc/cni/net.d
cat > /kind/manifests/default-cni.yaml <<'MANIFEST'
{manifest}MANIFEST
cat > /etc/cni/net.d/10-podcron-bridge.conflist <<'CNI'
{cni}CNI
(containerd > /tmp/containerd.log 2>&1 &)
for attempt in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \\
    --all-platforms --no-unpack --digests /kind/images.tar
rm /kind/images.tar
pkill containerd
for attempt in $(seq 100); do pgrep containerd >/dev/null || break; sleep 0.1; done
"""


def _base_dockerfile(restrict_oom_score_adj: bool) -> str:
    oom = (
        # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE: containerd must not ask.
        " && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/'"
        " /etc/containerd/config.toml"
        if restrict_oom_score_adj
        else ""
    )
    # Packages first: kind's files include containerd's config, which dpkg would ask about.
    return f"""FROM {DEBIAN_IMAGE}
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod \\
      libseccomp2 pigz bash ca-certificates curl jq procps \\
      containerd runc containernetworking-plugins \\
    && rm -rf /var/lib/apt/lists/*
COPY files/ /
RUN true \\
    && rm -f /lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service \\
    && rm -f /lib/systemd/system/multi-user.target.wants/* \\
    && rm -f /etc/systemd/system/*.wants/* \\
    && rm -f /lib/systemd/system/local-fs.target.wants/* \\
    && rm -f /lib/systemd/system/sockets.target.wants/*udev* \\
    && rm -f /lib/systemd/system/sockets.target.wants/*initctl* \\
    && rm -f /lib/systemd/system/basic.target.wants/* \\
    && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
    && ln -sf /usr/lib/systemd/systemd /sbin/init \\
    && ln -s /usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 /usr/local/bin/ \\
    && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \\
    && ctr oci spec \\
        | jq '.hooks.createContainer += [{{"path": "/kind/bin/mount-product-files.sh"}}]' \\
        | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json{oom} \\
    && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
    && systemctl mask systemd-binfmt.service \\
    && mkdir -p /etc/kubernetes/manifests
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]
"""


def _sandbox_image(containerd_config: str) -> str:
    for line in containerd_config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "sandbox_image":
            return value.strip().strip('"')
    raise ImagesUnavailable("kind's containerd config names no sandbox_image")


def _component(name: str, binaries: Path) -> tuple[Path, str, str]:
    """The program, base image and entrypoint of the image kubeadm calls ``name``."""
    if name == "etcd":
        return ensure_binaries().etcd, "scratch", '["etcd"]'
    if name == "coredns":
        return binaries / "coredns", "scratch", '["/usr/local/bin/coredns"]'
    if name == "pause":
        return binaries / "pause", "scratch", '["/usr/local/bin/pause"]'
    if name == "kube-proxy":
        return binaries / name, IPTABLES_IMAGE, '["kube-proxy"]'
    if name in ("kube-apiserver",):
        return ensure_binaries().kube_apiserver, "scratch", '["kube-apiserver"]'
    if name in NODE_COMMANDS:
        return binaries / name, "scratch", f'["{name}"]'
    raise ImagesUnavailable(f"kubeadm lists an image this build cannot make: {name}")


def _install(package: str) -> str:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImagesUnavailable(f"`{package}` is missing; installing it needs root and apt-get")
    print(f"installing {package} with apt-get (first run only)…", file=sys.stderr, flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        if subprocess.run(command, env=env, capture_output=True, check=False).returncode:
            raise ImagesUnavailable(f"`{' '.join(command)}` failed")
    found = shutil.which(package) or shutil.which(package, path="/usr/sbin")
    if found is None:
        raise ImagesUnavailable(f"apt-get installed {package} but it is not on PATH")
    return found


def ensure_images(docker: str) -> str:
    """The node image and the Python base, built where missing; returns the node image.

    The Go builds and the Debian-based images need nothing from each other: they run side
    by side, and the node image is assembled once both are done.
    """
    builder = Builder(docker)
    if builder.has(NODE_IMAGE) and builder.has(PYTHON_IMAGE):
        return NODE_IMAGE
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        go = pool.submit(_go_builds)
        images = pool.submit(_debian_images, builder)
        binaries, kubectl, _kind = go.result()
        images.result()
    if not builder.has(NODE_IMAGE):
        _timed("building the node image", lambda: builder.node(binaries, kubectl))
    return NODE_IMAGE


def _go_builds() -> tuple[Path, Path, Path]:
    # The node's commands first: the longest build, and it needs no lock another run holds.
    binaries = _timed("Go builds of the node", ensure_node_binaries)
    kind = ensure_kind()
    return binaries, ensure_binaries().kubectl, kind


def _debian_images(builder: Builder) -> None:
    _timed("Debian base", builder.debian)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        source = kind_module()
        steps = [
            pool.submit(_timed, "kind base image", lambda: builder.base(source)),
            pool.submit(_timed, "Python base image", builder.python),
            pool.submit(_timed, "iptables image", builder.iptables),
        ]
        for step in steps:
            step.result()


def main() -> int:
    """Build what is missing; print the node image's name."""
    try:
        with kindengine.docker_engine() as docker:
            print(ensure_images(docker))
    except (kindengine.EngineUnavailable, BinariesUnavailable, ImagesUnavailable) as error:
        print(f"kindimages: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
