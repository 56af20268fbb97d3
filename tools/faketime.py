"""libfaketime, for the chaos run's clock faults: Debian's ``libfaketime``, installed when missing.

A process started with ``LD_PRELOAD`` pointing at the library reads its wall clock through it.
With ``FAKETIME_TIMESTAMP_FILE`` the clock can be changed while it runs, by rewriting that file
(read again at most every ``CACHE_SECONDS``, so a change applies within about two seconds).
The monotonic clock is left alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``), but libfaketime
still scales the process's sleeps (``epoll_wait``, ``select``) by the rate, and
``time.sleep()`` fails with EINVAL under it.

libfaketime 0.9.10 can do one of two things to a running process, chosen when it starts:

* steps (``continuous=False``): ``+60 x1`` and ``-60 x1`` move the clock at once; a rate,
  though, would count from the process's start, so the clock would leap.
* rates (``continuous=True``, ``FAKETIME_XRESET``): ``+0 x2`` and ``+0 x0.5`` change the
  rate from that instant, the clock continuous; offsets in the file are then ignored, and
  going back to ``x1`` leaves the clock off by what it gained or lost.

Installed the way tools/kindengine.py installs docker.io: apt-get, as root, first run only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "libfaketime"
LIBRARY = "libfaketime.so.1"
#: Where Debian puts it (multiarch directory first, then the other usual places).
CACHE_SECONDS = 1
SEARCH = ("/usr/lib/*-linux-gnu/faketime", "/usr/lib/faketime", "/usr/lib64/faketime")


class FaketimeUnavailable(RuntimeError):
    """libfaketime is missing and cannot be installed here; the message says why."""


def _find() -> Path | None:
    for pattern in SEARCH:
        for directory in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (directory / LIBRARY).is_file():
                return directory / LIBRARY
    return None


def ensure_libfaketime() -> Path:
    """The path of ``libfaketime.so.1``, installed with apt-get first if missing."""
    found = _find()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise FaketimeUnavailable(
            f"{PACKAGE} is not installed, and installing it needs root and apt-get"
        )
    print(f"installing {PACKAGE} with apt-get (first run only)…", file=sys.stderr, flush=True)
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE],
    ):
        result = subprocess.run(
            command,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-5:])
            raise FaketimeUnavailable(f"`{' '.join(command)}` failed:\n{tail}")
    found = _find()
    if found is None:
        raise FaketimeUnavailable(f"apt-get installed {PACKAGE} but {LIBRARY} was not found")
    return found


def environment(library: Path, timestamp_file: Path, *, continuous: bool) -> dict[str, str]:
    """What a process needs in its environment to read its clock through ``timestamp_file``.

    ``continuous``: rate changes (the clock never leaps) rather than steps; see above.
    """
    variables = {
        "LD_PRELOAD": str(library),
        "FAKETIME_TIMESTAMP_FILE": str(timestamp_file),
        # FAKETIME_NO_CACHE would re-read the file on every clock read: 100 us each.
        "FAKETIME_CACHE_DURATION": str(CACHE_SECONDS),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    if continuous:
        variables["FAKETIME_XRESET"] = "1"
    return variables
