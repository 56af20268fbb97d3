"""A directory written as the kubelet writes ConfigMap and Secret volumes (its AtomicWriter).

Each version is a directory ``..<timestamp>``; ``..data`` is a symlink to the current one,
replaced atomically by renaming a new symlink over it; each key is a top-level symlink
``key -> ..data/key``; the previous version is removed after the swap.
"""

from __future__ import annotations

import os
from pathlib import Path


class KubeletVolume:
    """A ConfigMap or Secret volume at ``path``, updated the way the kubelet does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self._versions = 0

    def write(self, files: dict[str, bytes | str], *, keep_old_version: bool = False) -> None:
        """Make ``files`` the volume's content in one atomic swap of ``..data``."""
        self._versions += 1
        version = f"..2026_11_27_03_15_{self._versions:02d}.{os.getpid()}"
        (self.path / version).mkdir()
        for key, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (self.path / version / key).write_bytes(data)
        data_link = self.path / "..data"
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        temporary = self.path / "..data_tmp"
        os.symlink(version, temporary)
        os.rename(temporary, data_link)  # the atomic swap
        for key in files:
            link = self.path / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        for entry in self.path.iterdir():
            if not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if previous is not None and not keep_old_version:
            for old in (self.path / previous).iterdir():
                old.unlink()
            (self.path / previous).rmdir()
