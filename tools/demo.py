"""``make demo``: a local control plane, the CRD, the operator, its sidecar and the example jobs.

Shows ``kubectl get sj`` every two seconds until Ctrl-C, then stops and
removes everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from controlplane import ControlPlane, ensure_binaries

ROOT = Path(__file__).resolve().parents[1]
REFRESH_SECONDS = 2.0
SIDECAR_PORT = 8080
SIDECAR_PROBE_PORT = 8081
METRICS_PORT = 9090


def _sidecar_port(preferred: int) -> int:
    """``preferred``, as in the pod, or any free port when something else already has it."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _start_podcron(command: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``podcron COMMAND`` with text logs into ``log_path``."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "podcron", command],
            env=env | {"PODCRON_LOG_FORMAT": "text"},
            stdout=log,
            stderr=subprocess.STDOUT,
            # Ctrl-C is for this script; it stops both processes itself, in order.
            start_new_session=True,
        )


def _job_config(workdir: Path, metrics_port: int) -> dict[str, str]:
    """Job configuration for the ``uptime`` example, as the chart would mount it.

    It checks the operator's own ``/healthz`` with a random token from the "Secret".
    """
    config, secrets_dir = workdir / "job-config", workdir / "job-secrets"
    config.mkdir()
    secrets_dir.mkdir(mode=0o700)
    (config / "uptimeUrl").write_text(f"http://127.0.0.1:{metrics_port}/healthz")
    (secrets_dir / "uptimeToken").write_text(secrets.token_urlsafe(24))
    return {
        "PODCRON_JOB_CONFIG_DIR": str(config),
        "PODCRON_JOB_SECRETS_DIR": str(secrets_dir),
        "PODCRON_METRICS_HOST": "127.0.0.1",
        "PODCRON_METRICS_PORT": str(metrics_port),
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run the demo; returns the exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    binaries = ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="podcron-demo-"))
    crashed = False
    try:
        with ControlPlane.start(binaries) as cluster:
            cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/scheduledjobs.podcron.dev",
            )
            socket_env = {"PODCRON_CONTROL_SOCKET": str(workdir / "control.sock")}
            log_path = workdir / "operator.log"
            job_config = _job_config(workdir, _sidecar_port(METRICS_PORT))
            operator = _start_podcron("operator", log_path, cluster.env() | socket_env | job_config)
            sidecar_log = workdir / "sidecar.log"
            port = _sidecar_port(SIDECAR_PORT)
            sidecar = _start_podcron(
                "sidecar",
                sidecar_log,
                cluster.env()
                | socket_env
                | {
                    "PODCRON_SIDECAR_HOST": "127.0.0.1",
                    "PODCRON_SIDECAR_PORT": str(port),
                    "PODCRON_SIDECAR_PROBE_PORT": str(_sidecar_port(SIDECAR_PROBE_PORT)),
                    "PODCRON_ALLOWED_CIDRS": "127.0.0.1/32",
                },
            )
            try:
                cluster.kubectl("apply", "-f", str(ROOT / "examples"))
                print(
                    f"\nThe control plane is up. In another shell:\n"
                    f"  export KUBECONFIG={cluster.kubeconfig}\n"
                    f"  export PATH={binaries.kubectl.parent}:$PATH\n"
                    f"  kubectl get sj -o wide; kubectl describe sj hello\n"
                    f"The sidecar serves the System API on 127.0.0.1:{port}:\n"
                    f"  curl -s http://127.0.0.1:{port}/_sys/job\n"
                    f"  curl -s -X POST http://127.0.0.1:{port}/_sys/job/default/cleanup\n"
                    f"The operator logs to {log_path}, the sidecar to {sidecar_log}.\n"
                    f"Ctrl-C stops everything.\n"
                )
                while operator.poll() is None:
                    table = cluster.kubectl("get", "sj", "-A", check=False)
                    print(time.strftime("%H:%M:%S"), "kubectl get sj -A", flush=True)
                    print(table.stdout or table.stderr, flush=True)
                    time.sleep(REFRESH_SECONDS)
                print(f"the operator exited with {operator.returncode}; see {log_path}")
                crashed = True
                return 1
            except KeyboardInterrupt:
                print("\nstopping the sidecar, the operator and the control plane …")
                return 0
            finally:
                _stop(sidecar, timeout=15)
                _stop(operator, timeout=40)
    finally:
        # The logs are kept only when the operator died: they are what to read then.
        if not crashed:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
