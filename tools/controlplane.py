"""A real Kubernetes control plane (etcd and kube-apiserver) on loopback, for tests and the demo.

The binaries are built once from the Go modules next to this file (``tools/kube`` and
``tools/etcd``, fetched through the Go module proxy) and cached per version. A control plane
is started the way controller-runtime's envtest starts one: fresh certificates, etcd and
kube-apiserver on free loopback ports, RBAC on, no kubelet, scheduler or controller-manager.

    python tools/controlplane.py binaries                 # build if missing, print their dir
    python tools/controlplane.py up [--kubeconfig-out P]  # run until Ctrl-C
    python tools/controlplane.py run -- CMD ARGS...       # run CMD against a fresh one
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from types import FrameType, TracebackType

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import gobuild
from gobuild import BinariesUnavailable

# Must match tools/kube/go.mod and tools/etcd/go.mod (tests/unit/test_controlplane_versions.py).
KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The first address of the range: the ClusterIP the API server gives Service `kubernetes`.
KUBERNETES_SERVICE_IP = "10.0.0.1"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ControlPlaneError(RuntimeError):
    """etcd or kube-apiserver failed to start, to become ready, or to keep running."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message includes what kubectl said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


@dataclass(frozen=True)
class Binaries:
    """Paths of the three executables a control plane needs."""

    kube_apiserver: Path
    kubectl: Path
    etcd: Path

    @classmethod
    def in_dir(cls, directory: Path) -> Binaries:
        """The binaries under their usual names in ``directory``."""
        return cls(directory / "kube-apiserver", directory / "kubectl", directory / "etcd")

    def present(self) -> bool:
        """Whether every binary exists and is executable."""
        return all(os.access(path, os.X_OK) for path in astuple(self))


def ensure_binaries() -> Binaries:
    """The cached binaries, built first if missing; raises ``BinariesUnavailable``."""
    directory = gobuild.ensure_built(
        f"controlplane/kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}",
        f"kube-apiserver and kubectl {KUBERNETES_VERSION}, etcd {ETCD_VERSION}",
        [
            gobuild.GoBuild(
                "kube",
                ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"],
                _kubernetes_ldflags(),
            ),
            gobuild.GoBuild("etcd", ["."]),
        ],
        ["kube-apiserver", "kubectl", "etcd"],
    )
    return Binaries.in_dir(directory)


def _kubernetes_ldflags() -> str:
    """Strip symbols and stamp the version, as Kubernetes' own build does (go build alone
    would report v0.0.0, which clients such as kubectl and kopf read)."""
    major, minor, _ = KUBERNETES_VERSION.removeprefix("v").split(".")
    stamps = [
        f"-X '{package}.{key}={value}'"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in (
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", major),
            ("gitMinor", minor),
        )
    ]
    return " ".join(["-s -w", *stamps])


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *extensions: x509.ExtensionType,
) -> x509.Certificate:
    """A certificate valid for ten years; self-signed CA when ``issuer`` is None."""
    now = datetime.datetime.now(datetime.UTC)
    ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Key identifiers: strict verifiers (OpenSSL's X509_STRICT, Python >= 3.13) want them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(value: x509.Certificate | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    if isinstance(value, x509.Certificate):
        return value.public_bytes(serialization.Encoding.PEM)
    return value.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_pki(directory: Path) -> None:
    """CA, API-server serving cert, admin client cert, service-account key pair."""
    ca_key = ec.generate_private_key(ec.SECP256R1())  # ECDSA: much faster to make than RSA
    ca = _certificate(_name("podcron-controlplane-ca"), ca_key, None, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
    addresses = [ipaddress.ip_address(a) for a in ("127.0.0.1", KUBERNETES_SERVICE_IP)]
    server = _certificate(
        _name("kube-apiserver"),
        server_key,
        ca,
        ca_key,
        x509.SubjectAlternativeName([*map(x509.DNSName, names), *map(x509.IPAddress, addresses)]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    # The API server takes the user from CN and groups from O: system:masters bypasses RBAC.
    admin = _certificate(
        _name("podcron-admin", "system:masters"),
        admin_key,
        ca,
        ca_key,
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
    )
    # Service-account tokens are signed with RS256 by default, hence an RSA key here.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name, content in {
        "ca.crt": _pem(ca),
        "apiserver.crt": _pem(server),
        "apiserver.key": _pem(server_key),
        "admin.crt": _pem(admin),
        "admin.key": _pem(admin_key),
        "sa.key": _pem(sa_key),
        "sa.pub": sa_public,
    }.items():
        (directory / name).write_bytes(content)


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (sockets stay open until all are picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` making the kernel SIGKILL the child when its parent dies.

    The kernel fires on the death of the parent *thread*: start control planes from a thread
    that outlives them (pytest and the CLI use the main thread).
    """
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls it

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class ControlPlane:
    """etcd and kube-apiserver on loopback; create with ``ControlPlane.start``.

    Use as a context manager; leaving it stops both processes and, unless the caller gave
    ``workdir``, removes the working directory (certificates, etcd data, logs, kubeconfig).
    """

    def __init__(self, binaries: Binaries, workdir: Path | None = None) -> None:
        self.binaries = binaries
        self.etcd_port, self._peer_port, self.port = _free_ports(3)
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="podcron-controlplane-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = f"https://127.0.0.1:{self.port}"
        self.ca_file = self.workdir / "ca.crt"
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, tuple[str, ...]] = {}

    @classmethod
    def start(cls, binaries: Binaries, workdir: Path | None = None) -> ControlPlane:
        """Start etcd and kube-apiserver; return once the API is ready and serves `default`."""
        plane = cls(binaries, workdir)
        try:
            plane._start()
        except BaseException:
            plane.stop()
            raise
        return plane

    def _start(self) -> None:
        _write_pki(self.workdir)
        self._write_kubeconfig()
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self._peer_port}"
        self._spawn(
            "etcd",
            str(self.binaries.etcd),
            "--name=podcron",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=podcron={peer_url}",
            "--unsafe-no-fsync",  # throwaway data: durability is not worth the fsync latency
            f"--quota-backend-bytes={512 * 2**20}",
        )
        self._wait("etcd", "healthy", lambda: self._etcd_healthy(etcd_url))
        w = self.workdir
        self._spawn(
            "kube-apiserver",
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",  # else it looks for a default route
            # Since 1.37 the endpoint reconcilers refuse a loopback advertise address (it
            # cannot be a Service endpoint). Nothing here routes to Service `kubernetes`.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--cert-dir={w / 'apiserver-certs'}",
            f"--tls-cert-file={w / 'apiserver.crt'}",
            f"--tls-private-key-file={w / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            # As envtest: no controller-manager creates `default` ServiceAccounts, and this
            # plugin would reject every Pod for lack of one.
            "--disable-admission-plugins=ServiceAccount",
        )
        self._wait("kube-apiserver", "ready", lambda: self._status("/readyz") == 200)
        self._wait(
            "kube-apiserver",
            "serving namespace default",
            lambda: self._status("/api/v1/namespaces/default") == 200,
        )

    def _write_kubeconfig(self) -> None:
        # Certificates are embedded, so a copy of the file works anywhere while this runs.
        def data(name: str) -> str:
            return base64.b64encode((self.workdir / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "podcron",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": data("ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "podcron-admin",
                    "user": {
                        "client-certificate-data": data("admin.crt"),
                        "client-key-data": data("admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "podcron",
                    "context": {
                        "cluster": "podcron",
                        "user": "podcron-admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "podcron",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    def _spawn(self, name: str, *command: str) -> None:
        self._commands[name] = command
        # Appended to: a restarted process (restart()) keeps its predecessor's log.
        with (self.workdir / f"{name}.log").open("ab") as log:
            # A session of their own: Ctrl-C in a terminal reaches only Python, which then
            # stops them in order, and killpg() reaches anything they might spawn.
            self._processes[name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def _wait(self, name: str, state: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not condition():
            self.check_running()
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not {state} after {START_TIMEOUT_SECONDS:.0f} s; "
                    f"its log ends:\n{self.log_tail(name)}"
                )
            time.sleep(0.1)

    def _etcd_healthy(self, url: str) -> bool:
        # No proxy: HTTP(S)_PROXY in the environment must not capture loopback requests.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _status(self, path: str) -> int:
        """HTTP status of an admin GET on the API server; 0 when it cannot be reached."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.workdir / "admin.crt", self.workdir / "admin.key")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(f"{self.server}{path}", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    @property
    def pids(self) -> dict[str, int]:
        """Process ids by name (``etcd``, ``kube-apiserver``) of the running children."""
        return {name: process.pid for name, process in self._processes.items()}

    def restart(self, name: str) -> None:
        """Start ``etcd`` or ``kube-apiserver`` again as before (same ports and data), once the
        old process has exited (the chaos run kills it); return once it is ready again."""
        old = self._processes[name]
        if old.poll() is None:
            os.killpg(old.pid, signal.SIGKILL)
        old.wait()
        self._spawn(name, *self._commands[name])
        if name == "kube-apiserver":
            self._wait(name, "ready", lambda: self._status("/readyz") == 200)
        else:
            self._wait(
                name, "healthy", lambda: self._etcd_healthy(f"http://127.0.0.1:{self.etcd_port}")
            )

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last ``lines`` lines that ``etcd`` or ``kube-apiserver`` logged."""
        path = self.workdir / f"{name}.log"
        return gobuild.tail(path.read_text(errors="replace"), lines) if path.exists() else ""

    def check_running(self) -> None:
        """Raise ``ControlPlaneError`` (with the log tail) if a process has exited."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {process.returncode}; "
                    f"its log ends:\n{self.log_tail(name)}"
                )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin user; raise ``KubectlError`` on failure if ``check``."""
        result = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def env(self) -> dict[str, str]:
        """``os.environ`` plus KUBECONFIG, and PATH starting with the kubectl directory."""
        path = os.pathsep.join([str(self.binaries.kubectl.parent), os.environ.get("PATH", "")])
        return os.environ | {"KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def stop(self) -> None:
        """Stop both processes (SIGTERM, then SIGKILL after 10 s); remove an owned workdir."""
        # The API server first: stopped after etcd, it would keep retrying a dead store.
        for process in reversed(self._processes.values()):
            if process.poll() is None:
                # The process group is theirs alone (own session); the unreaped leader keeps
                # the group id from being reused.
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self._processes.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so ``with`` blocks stop the control plane."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="controlplane.py", description="A local etcd + kube-apiserver for podcron."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("binaries", help="build the binaries if missing; print their directory")
    up = commands.add_parser("up", help="start a control plane; stop it on Ctrl-C or SIGTERM")
    up.add_argument("--kubeconfig-out", type=Path, help="also write the kubeconfig here")
    run = commands.add_parser("run", help="start a control plane, run CMD against it, stop it")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    if args.command == "run":
        cmd: list[str] = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run: a command is required after --")

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        binaries = ensure_binaries()
        if args.command == "binaries":
            print(binaries.kubectl.parent)
            return 0
        started = time.monotonic()
        with ControlPlane.start(binaries) as plane:
            print(f"control plane ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
            if args.command == "run":
                return subprocess.run(cmd, env=plane.env(), check=False).returncode
            kubeconfig = plane.kubeconfig
            if args.kubeconfig_out:
                kubeconfig = args.kubeconfig_out.resolve()
                kubeconfig.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(plane.kubeconfig, kubeconfig)
            print(f"KUBECONFIG={kubeconfig}\nserver: {plane.server}", flush=True)
            print("Ctrl-C stops it.", file=sys.stderr)
            while True:
                plane.check_running()
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 130
    except (BinariesUnavailable, ControlPlaneError) as error:
        print(f"controlplane: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
