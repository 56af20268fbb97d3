"""The sidecar must start whatever state the operator is in: it never imports kopf or the engine."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("kopf", "podcron.engine", "podcron.controller")


def test_the_sidecar_imports_neither_kopf_nor_the_engine() -> None:
    code = (
        "import json, sys\n"
        "import podcron.cli, podcron.sidecar.server, podcron.sidecar.app\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    modules = json.loads(result.stdout)
    assert "podcron.sidecar.discovery" in modules, "the check must see the whole sidecar"
    leaked = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert leaked == []
