"""promtool, built once from the Go module proxy (``tools/prometheus``) and cached per version.

The chart's alerting rules are checked (``promtool check rules``) and unit-tested with
synthetic series (``promtool test rules``) by the same rule evaluator Prometheus runs, so
promtool is built like helm and the control plane: only Go is needed, once.

    python tools/promtool.py        # build if missing, print the path of the binary
"""

from __future__ import annotations

import sys
from pathlib import Path

import gobuild
from gobuild import BinariesUnavailable

# The Prometheus release; its Go module is tagged v0.<major><minor>.<patch> (3.16.0 ->
# v0.316.0), which tools/prometheus/go.mod requires (tests/unit/test_alert_rules.py).
PROMETHEUS_VERSION = "3.16.0"
PROMETHEUS_MODULE_VERSION = "v0.316.0"


def _ldflags() -> str:
    # What Prometheus's release build stamps, so `promtool --version` names the release.
    return f"-s -w -X github.com/prometheus/common/version.Version={PROMETHEUS_VERSION}"


def ensure_promtool() -> Path:
    """The cached promtool binary, built first if missing; raises ``BinariesUnavailable``."""
    directory = gobuild.ensure_built(
        f"promtool-v{PROMETHEUS_VERSION}",
        f"promtool v{PROMETHEUS_VERSION}",
        [
            gobuild.GoBuild(
                "prometheus", ["github.com/prometheus/prometheus/cmd/promtool"], _ldflags()
            )
        ],
        ["promtool"],
    )
    return directory / "promtool"


def main() -> int:
    """Build promtool if missing and print its path; returns the exit code."""
    try:
        print(ensure_promtool())
    except BinariesUnavailable as error:
        print(f"promtool: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
