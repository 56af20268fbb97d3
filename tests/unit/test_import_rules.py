"""The layers' import rules (docs/architecture.md), checked on what Python really imports.

Each rule imports a layer, every module of it, in a fresh interpreter and
lists what came in with it: an import that only happens inside a function
would slip past a reading of the source, not past this.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

# layer: (the modules it is made of, what it may import of podcron, what it must not import)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None, tuple[str, ...]]] = {
    # Schedules are pure: parsing and arithmetic on times, nothing else of podcron.
    "schedules": (("podcron.schedules",), ("podcron.schedules", "podcron.errors"), ()),
    # Telemetry serves the engine and the controller, and knows neither them nor the sidecar.
    "telemetry": (
        ("podcron.telemetry",),
        None,
        ("podcron.controller", "podcron.sidecar", "kopf"),
    ),
    # The engine runs jobs; Kubernetes is the controller's business.
    "engine": (("podcron.engine",), None, ("podcron.controller", "podcron.sidecar", "kopf")),
    # The replica protocol answers the engine's gate; Kubernetes comes in through its store.
    # (Importing podcron.engine.gate brings the engine package along, so which of the
    # engine it uses is checked on its source, below.)
    "ha": (("podcron.ha",), None, ("podcron.controller", "podcron.sidecar", "kopf")),
    # The controller and the sidecar meet only through podcron.wire, on the control socket.
    "controller": (("podcron.controller",), None, ("podcron.sidecar",)),
    # The sidecar must start whatever state the operator is in.
    "sidecar": (
        ("podcron.sidecar", "podcron.cli"),
        None,
        ("podcron.engine", "podcron.controller", "kopf"),
    ),
}

#: Imports the modules named and, with --walk, every module of each package among them.
IMPORT = """
import importlib, json, pkgutil, sys
walk = sys.argv[1] == "--walk"
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    for found in pkgutil.walk_packages(getattr(module, "__path__", []) if walk else [], name + "."):
        importlib.import_module(found.name)
print(json.dumps(sorted(sys.modules)))
"""


def _imported(layer: tuple[str, ...], *, walk: bool = True) -> list[str]:
    command = [sys.executable, "-c", IMPORT, "--walk" if walk else "--no-walk", *layer]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    modules: list[str] = json.loads(result.stdout)
    return modules


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_layer_imports_only_what_its_rule_allows(name: str) -> None:
    layer, allowed, forbidden = RULES[name]
    modules = _imported(layer)
    assert all(m in modules for m in layer), "the check must see the whole layer"
    assert [m for m in modules if _within(m, forbidden)] == []
    if allowed is not None:
        # What `import podcron` brings (JobContext, for job authors) comes with any layer.
        package = set(_imported(("podcron",), walk=False))
        ours = [m for m in modules if _within(m, ("podcron",)) and m not in package]
        assert [m for m in ours if not _within(m, allowed)] == []


def test_the_sidecar_check_sees_the_whole_sidecar() -> None:
    assert "podcron.sidecar.discovery" in _imported(RULES["sidecar"][0])


def test_the_replica_protocol_uses_only_the_gate_of_the_engine() -> None:
    package = Path(__file__).parents[2] / "operator" / "podcron" / "ha"
    seen, engine_imports = [], []
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            seen += [n for n in names if _within(n, ("podcron",))]
            engine_imports += [(source.name, n) for n in names if _within(n, ("podcron.engine",))]
    assert "podcron.errors" in seen, "the check must see the package's imports"
    assert [i for i in engine_imports if i[1] != "podcron.engine.gate"] == []
