"""runc, minus CAP_SYS_RESOURCE: the default runtime of a dockerd whose bounding set lacks it.

    runc_without_sys_resource.py /usr/sbin/runc [runc arguments...]

Docker grants a ``--privileged`` container every capability it knows, and runc fails when
one is missing from its own bounding set. Before ``create``, ``run`` or ``exec``, this drops
CAP_SYS_RESOURCE from the spec (the bundle's config.json, or exec's process.json), then
becomes runc. Nothing else changes; only kindengine.py registers it, only where needed.
Standard library only: it runs with whatever Python started the daemon.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CAPABILITY = "CAP_SYS_RESOURCE"
# The runc option naming the file that holds the capabilities, per subcommand.
SPEC_OPTIONS = {
    "create": ("--bundle", "-b"),
    "run": ("--bundle", "-b"),
    "exec": ("--process", "-p"),
}


def _option(args: list[str], names: tuple[str, ...]) -> str | None:
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            return args[index + 1]
        for name in names:
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def _without_capability(process: dict[str, Any]) -> None:
    capabilities = process.get("capabilities") or {}
    for kind, names in capabilities.items():
        capabilities[kind] = [name for name in names if name != CAPABILITY]


def drop_capability(args: list[str]) -> None:
    """Edit, in place, the spec file the runc command line ``args`` refers to."""
    command = next((arg for arg in args if arg in SPEC_OPTIONS), None)
    if command is None:
        return
    after = args[args.index(command) + 1 :]
    value = _option(after, SPEC_OPTIONS[command])
    if command == "exec":
        if value is None:  # the command line gave the process, not a file
            return
        path = Path(value)
    else:
        path = Path(value or ".") / "config.json"
    spec = json.loads(path.read_text())
    _without_capability(spec if command == "exec" else spec.get("process") or {})
    path.write_text(json.dumps(spec))


def main() -> None:
    runc, *args = sys.argv[1:]
    drop_capability(args)
    os.execv(runc, [runc, *args])


if __name__ == "__main__":
    main()
