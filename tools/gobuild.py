"""Go programs built once from the Go module proxy and cached per version, for tests and tools.

Every binary the project needs (kube-apiserver, kubectl, etcd, helm, ...) is built from a Go
module under ``tools/`` with a pinned version, into ``~/.cache/podcron/<name>/`` (or under
``$XDG_CACHE_HOME``). A build takes minutes on a cold machine, so it happens once per
version: concurrent runs wait for each other on a lock, and a build lands in the cache by
one rename, so the cache never holds half a build.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


class BinariesUnavailable(RuntimeError):
    """The binaries are not cached and cannot be built here (no Go toolchain, or build failed)."""


def cache_root() -> Path:
    """The directory under which every podcron build is cached."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "podcron"


def find_go() -> str | None:
    """The ``go`` command, on PATH or where the official tarball installs it."""
    return shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")


@dataclass(frozen=True)
class GoBuild:
    """One ``go build`` of ``packages`` in the module ``module`` (a directory under tools/)."""

    module: str
    packages: Sequence[str]
    ldflags: str = "-s -w"
    #: Extra environment, e.g. ``{"CGO_ENABLED": "1"}``; CGO is off unless set here.
    env: dict[str, str] = field(default_factory=dict)


def ensure_built(name: str, what: str, builds: Sequence[GoBuild], outputs: Sequence[str]) -> Path:
    """The cache directory ``name`` holding ``outputs``, built first if any is missing.

    ``what`` names the build in messages ("kube-apiserver v1.37.2"). Raises
    :class:`BinariesUnavailable` when Go is missing or a build fails.
    """
    target = cache_root() / name
    if _present(target, outputs):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(f"{target.name}.lock")):
        if _present(target, outputs):  # another run built them while we waited for the lock
            return target
        go = find_go()
        if go is None:
            raise BinariesUnavailable(
                f"the Go toolchain (`go`) is not installed: it is needed once, to build "
                f"{what} into {target}. Install Go >= 1.26."
            )
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            for build in builds:
                go_build(go, build, staging, what)
            missing = [output for output in outputs if not (staging / output).exists()]
            if missing:
                raise BinariesUnavailable(f"building {what} produced no {', '.join(missing)}")
            if target.exists():  # incomplete (a binary deleted by hand): rename needs it gone
                shutil.rmtree(target)
            staging.chmod(0o755)  # mkdtemp made it private; the binaries need not be
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _present(target: Path, outputs: Sequence[str]) -> bool:
    return all(os.access(target / output, os.X_OK) for output in outputs)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the kernel drops it if this process dies."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another run that holds {path.name}…", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def go_build(go: str, build: GoBuild, out: Path, what: str) -> None:
    """Run one ``go build`` into ``out``; raises :class:`BinariesUnavailable` on failure."""
    print(f"building {what} (first run only, takes minutes)…", file=sys.stderr, flush=True)
    started = time.monotonic()
    command = [go, "build", "-trimpath", "-buildvcs=false", f"-ldflags={build.ldflags}"]
    # CGO off by default: static binaries, as Kubernetes releases them, no C compiler needed.
    result = subprocess.run(
        [*command, "-o", f"{out}{os.sep}", *build.packages],
        cwd=TOOLS / build.module,
        env=os.environ | {"CGO_ENABLED": "0"} | build.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = tail(result.stdout + result.stderr)
        raise BinariesUnavailable(
            f"building {what} failed (`go build` in tools/{build.module}):\n{output}"
        )
    print(f"built {what} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])
