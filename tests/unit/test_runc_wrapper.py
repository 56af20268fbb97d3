"""The runc wrapper drops CAP_SYS_RESOURCE from the spec runc is about to use, and only that."""

from __future__ import annotations

import json
from pathlib import Path

from runc_without_sys_resource import drop_capability

CAPABILITIES = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"]


def _process() -> dict[str, object]:
    return {
        "args": ["sh"],
        "capabilities": {k: list(CAPABILITIES) for k in ("bounding", "effective")},
    }


def test_create_edits_the_bundle_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"process": _process(), "root": {}}))
    drop_capability(["--root", "/run/x", "create", "--bundle", str(tmp_path), "id"])
    spec = json.loads((tmp_path / "config.json").read_text())
    for names in spec["process"]["capabilities"].values():
        assert names == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
    assert spec["root"] == {}


def test_exec_edits_the_process_file(tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text(json.dumps(_process()))
    drop_capability(["--log", "/l", "exec", f"--process={process}", "--detach", "id"])
    assert "CAP_SYS_RESOURCE" not in process.read_text()


def test_other_commands_touch_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"process": _process()}))
    before = config.read_text()
    drop_capability(["--root", "/run/x", "start", "id"])
    drop_capability(["state", "--bundle", str(tmp_path)])
    assert config.read_text() == before
