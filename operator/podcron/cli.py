"""The ``podcron`` command: ``podcron operator`` and ``podcron sidecar``.

A configuration that cannot work (a bad setting, a port in use, no
Kubernetes credentials, a control socket another operator serves) ends the
command with one line on stderr, naming the file or setting and the fix, and
exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from podcron import config
from podcron.telemetry.logs import configure_logging

log = logging.getLogger("podcron.config")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="podcron", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("operator", help="run the operator (kopf handlers and the engine)")
    commands.add_parser("sidecar", help="serve /_sys/job for the operator in the same pod")
    arguments = parser.parse_args(argv)
    warnings: list[str] = []
    try:
        settings = config.load(warn=warnings.append)
    except ValueError as error:
        parser.exit(2, f"podcron: bad configuration: {error}\n")
    operator = arguments.command == "operator"
    # The operator's event loop must never wait for its log's reader; the
    # sidecar forks gunicorn workers, which a writer thread would not survive.
    configure_logging(log_format=settings.log_format, level=settings.log_level, background=operator)
    for warning in warnings:
        log.warning("%s", warning)
    if operator:
        from podcron.controller import main as operator_main

        return operator_main.main(settings)
    from podcron.sidecar import server as sidecar_server

    return sidecar_server.main(settings)


if __name__ == "__main__":
    sys.exit(main())
