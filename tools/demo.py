"""``make demo``: a local control plane, the CRD, the operator and the example jobs.

Shows ``kubectl get sj`` every two seconds until Ctrl-C, then stops and
removes everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from controlplane import ControlPlane, ensure_binaries

ROOT = Path(__file__).resolve().parents[1]
REFRESH_SECONDS = 2.0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run the demo; returns the exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    binaries = ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="podcron-demo-"))
    with ControlPlane.start(binaries) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/scheduledjobs.podcron.dev",
        )
        log_path = workdir / "operator.log"
        with log_path.open("w") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "podcron", "operator"],
                env=cluster.env()
                | {
                    "PODCRON_LOG_FORMAT": "text",
                    "PODCRON_CONTROL_SOCKET": str(workdir / "control.sock"),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                # Ctrl-C is for this script; it stops the operator itself, in order.
                start_new_session=True,
            )
        try:
            cluster.kubectl("apply", "-f", str(ROOT / "examples"))
            print(
                f"\nThe control plane is up. In another shell:\n"
                f"  export KUBECONFIG={cluster.kubeconfig}\n"
                f"  export PATH={binaries.kubectl.parent}:$PATH\n"
                f"  kubectl get sj -o wide; kubectl describe sj hello\n"
                f"The operator logs to {log_path}. Ctrl-C stops everything.\n"
            )
            while operator.poll() is None:
                table = cluster.kubectl("get", "sj", "-A", check=False)
                print(time.strftime("%H:%M:%S"), "kubectl get sj -A", flush=True)
                print(table.stdout or table.stderr, flush=True)
                time.sleep(REFRESH_SECONDS)
            print(f"the operator exited with {operator.returncode}; see {log_path}")
            return 1
        except KeyboardInterrupt:
            print("\nstopping the operator and the control plane …")
            return 0
        finally:
            if operator.poll() is None:
                os.killpg(operator.pid, signal.SIGTERM)
                try:
                    operator.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(operator.pid, signal.SIGKILL)
                    operator.wait()


if __name__ == "__main__":
    sys.exit(main())
