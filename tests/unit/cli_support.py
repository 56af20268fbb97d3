"""What every `podcron` command promises for bad input: exit 2 and one line, no traceback."""

from __future__ import annotations

import subprocess


def one_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The only line on stderr, starting with ``prefix``, once the command exited with 2."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = lines
    assert line.startswith(prefix)
    return line
