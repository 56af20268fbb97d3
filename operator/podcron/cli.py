"""The ``podcron`` command: the operator and its sidecar, and a local loop for job authors.

``podcron operator`` and ``podcron sidecar`` serve in the cluster. ``podcron run``
runs one job once on this machine, and ``podcron validate`` checks
ScheduledJob manifests offline, both with the operator's own rules.

A configuration that cannot work (a bad setting, a port in use, no
Kubernetes credentials, a control socket another operator serves), a bad
option or an entry point that may not run ends the command with one line on
stderr, naming the file, setting or option and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from podcron import config, entrypoints
from podcron.context import Trigger
from podcron.entrypoints import JobTarget
from podcron.errors import EntryPointError, EntryPointNotAllowed
from podcron.telemetry.logs import configure_logging

if TYPE_CHECKING:
    from podcron.engine import JobSpec

log = logging.getLogger("podcron.config")

#: Exit codes: the run failed; bad input (options, configuration, manifests); interrupted.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other refusal of ``podcron``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _Parser(prog="podcron", description=__doc__.splitlines()[0].replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("operator", help="run the operator (kopf handlers and the engine)")
    commands.add_parser("sidecar", help="serve /_sys/job for the operator in the same pod")
    run = commands.add_parser("run", help="run one job once on this machine, no cluster")
    validate = commands.add_parser("validate", help="check ScheduledJob manifests offline")
    _add_run(run)
    _add_validate(validate)
    arguments = parser.parse_args(argv)
    if arguments.command == "run":
        return _run(run, arguments)
    if arguments.command == "validate":
        return _validate(validate, arguments)
    return _serve(parser, arguments)


def _settings(parser: argparse.ArgumentParser) -> tuple[config.Settings, list[str]]:
    warnings: list[str] = []
    try:
        return config.load(warn=warnings.append), warnings
    except ValueError as error:
        parser.exit(EXIT_USAGE, f"podcron: bad configuration: {error}\n")


def _serve(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    settings, warnings = _settings(parser)
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


# -- podcron run -----------------------------------------------------------


def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run one job once on this machine with a real JobContext: its log on stderr, its "
        "deadline, Ctrl-C to cancel it. Exit code 0 when it succeeds, 1 when it fails, "
        "2 for bad input, 130 when interrupted."
    )
    parser.add_argument(
        "entry_point",
        metavar="ENTRY_POINT",
        nargs="?",
        help='a name in entry-point group podcron.jobs, or "pkg.mod:func"; with --manifest, '
        "the ScheduledJob's name (or namespace/name)",
    )
    parser.add_argument(
        "-f",
        "--manifest",
        type=Path,
        action="append",
        metavar="FILE",
        help="run a ScheduledJob of FILE: its entry point, args and timeout, checked as "
        "podcron validate checks them (the options below override them)",
    )
    given = parser.add_mutually_exclusive_group()
    given.add_argument(
        "--args", type=_json_object, metavar="JSON", help="ctx.args as a JSON object"
    )
    given.add_argument(
        "--args-file",
        type=_object_file,
        dest="args",
        metavar="FILE",
        help="ctx.args from a JSON or YAML file",
    )
    parser.add_argument(
        "--timeout", type=_timeout, metavar="SECONDS", help="cancel and fail the run after this"
    )
    parser.add_argument(
        "--scheduled-time",
        type=_aware_time,
        metavar="TIME",
        help="ctx.scheduled_time, RFC 3339 with an offset (default: now)",
    )
    parser.add_argument(
        "--trigger",
        choices=[trigger.value for trigger in Trigger],
        default="manual",
        help="ctx.trigger (default: manual)",
    )
    parser.add_argument("--namespace", help="ctx.namespace (default: local)")
    parser.add_argument("--name", help="ctx.name (default: the entry point's function name)")
    parser.add_argument(
        "--allowed-modules",
        type=_patterns,
        metavar="PATTERNS",
        help='comma-separated allowedModules, e.g. "myjobs.*" (default: the configuration\'s)',
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=config.LOG_LEVELS,
        help="the least level logged (default: logLevel of the configuration, INFO)",
    )


def _run(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    from podcron.testing import harness

    settings, warnings = _settings(parser)
    configure_logging(
        log_format=arguments.log_format, level=arguments.log_level or settings.log_level
    )
    for warning in warnings:
        log.warning("%s", warning)
    allowed = arguments.allowed_modules
    allowed_modules = settings.allowed_modules if allowed is None else allowed
    if arguments.manifest:
        job = _job_of_manifests(parser, arguments.manifest, arguments.entry_point, allowed_modules)
        target, args, timeout = job.target, job.args, job.timeout_seconds
        namespace, name = job.namespace, job.name
    elif arguments.entry_point is None:
        parser.error("give an ENTRY_POINT, or a ScheduledJob with --manifest FILE")
    else:
        target = _resolve(parser, arguments.entry_point, allowed_modules)
        args, timeout, namespace = {}, None, "local"
        name = arguments.entry_point.rpartition(":")[2].rpartition(".")[2]
    run = harness(
        args=args if arguments.args is None else arguments.args,
        scheduled_time=arguments.scheduled_time,
        timeout=timeout if arguments.timeout is None else arguments.timeout,
        trigger=Trigger(arguments.trigger),
        namespace=arguments.namespace or namespace,
        name=arguments.name or name,
        capture_logs=False,
    )
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        # A second signal ends the process at once, whatever the job does.
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        print(
            "podcron run: cancelling the run (Ctrl-C again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        run.cancel("Interrupted: Ctrl-C")

    async def run_once() -> Any:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, interrupt)
        loop.add_signal_handler(signal.SIGTERM, interrupt)
        return await run.run_async(target)

    try:
        outcome = asyncio.run(run_once())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    seconds = f"{outcome.duration_seconds:.3f}s"
    if outcome.succeeded:
        print(f"podcron run: {run.ctx.job_id} succeeded in {seconds}", file=sys.stderr)
        return 0
    print(f"podcron run: {run.ctx.job_id} failed after {seconds}: {outcome.error}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_FAILED


def _resolve(
    parser: argparse.ArgumentParser, reference: str, allowed_modules: Sequence[str]
) -> JobTarget:
    try:
        return entrypoints.resolve(reference, allowed_modules=allowed_modules)
    except EntryPointError as error:
        hint = ""
        if isinstance(error, EntryPointNotAllowed):
            package = reference.partition(":")[0].partition(".")[0]
            hint = f"; to allow it: --allowed-modules '{package}.*'"
        parser.exit(EXIT_USAGE, f"podcron run: {error}{hint}\n")


def _job_of_manifests(
    parser: argparse.ArgumentParser,
    paths: Sequence[Path],
    wanted: str | None,
    allowed_modules: Sequence[str],
) -> JobSpec:
    """The ScheduledJob called ``wanted`` (the only one, if None), as the operator would run it."""
    from podcron.manifests import CheckedJob, Problem, check_file

    found = [item for path in paths for item in check_file(path, allowed_modules=allowed_modules)]
    unreadable = [
        item for item in found if isinstance(item, Problem) and item.where in map(str, paths)
    ]

    def job_id(item: CheckedJob | Problem) -> str | None:
        return item.job_id if isinstance(item, Problem) else item.spec.job_id

    names = sorted({name for item in found if (name := job_id(item)) is not None})
    if unreadable:
        parser.exit(EXIT_USAGE, f"podcron run: {unreadable[0]}\n")
    if wanted is None and len(names) != 1:
        listed = ", ".join(names) or "none"
        parser.error(f"name the ScheduledJob to run: {' '.join(map(str, paths))} hold {listed}")
    matches = [
        item
        for item in found
        if (name := job_id(item)) is not None
        and (wanted is None or wanted in (name, name.partition("/")[2]))
    ]
    if len({job_id(item) for item in matches}) > 1:
        parser.error(f"several ScheduledJobs are called {wanted}: give namespace/name")
    for item in matches:
        if isinstance(item, Problem):
            parser.exit(EXIT_USAGE, f"podcron run: {item}\n")
    if not matches:
        listed = ", ".join(names) or "none"
        parser.error(
            f"no ScheduledJob called {wanted} in {' '.join(map(str, paths))} (there: {listed})"
        )
    # The same object twice: kubectl would apply both, and the last would stay.
    return [item for item in matches if isinstance(item, CheckedJob)][-1].spec


def _json_object(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    return _object(value, "must be a JSON object, such as '{\"retentionDays\": 7}'")


def _object_file(name: str) -> Mapping[str, Any]:
    try:
        value = yaml.safe_load(Path(name).read_text())  # YAML is a superset of JSON
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {name}: {error.strerror}") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise argparse.ArgumentTypeError(f"{name} is not valid JSON or YAML: {problem}") from None
    return _object(value, f"{name} must hold an object (a mapping of names to values)")


def _object(value: object, problem: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(problem)
    return value


def _timeout(text: str) -> float:
    from podcron.controller.jobspecs import MAX_TIMEOUT_SECONDS

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:  # also NaN
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_TIMEOUT_SECONDS} seconds, got {text}"
        )
    return seconds


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time such as 2026-01-31T02:30:00Z: {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"needs a UTC offset, such as {text}Z or {text}+01:00: {text!r}"
        )
    return moment


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(pattern.strip() for pattern in text.split(",") if pattern.strip())


# -- podcron validate ------------------------------------------------------


def _add_validate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check ScheduledJob manifests as the API server and the operator would: the CRD's "
        "schema, the schedule and time zone, the policies and timeouts, and the entry point "
        "resolved in this Python environment. Prints one line per problem and exits 2 if "
        "there is any; else prints each job's next run times. Other kinds are skipped."
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--allowed-modules",
        type=_patterns,
        metavar="PATTERNS",
        help='comma-separated allowedModules, e.g. "myjobs.*" (default: a "pkg.mod:func" '
        "entry point may run from its own top-level package)",
    )
    parser.add_argument(
        "--next",
        type=_count,
        default=5,
        metavar="N",
        help="how many next run times to print per job (default 5; 0 for none)",
    )
    parser.add_argument(
        "--now", type=_aware_time, metavar="TIME", help="count run times from TIME (default: now)"
    )


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 1000, got {text!r}")
    return int(text)


def _validate(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    from podcron.manifests import Problem, check_file
    from podcron.runrecord import format_time
    from podcron.schedules.zones import time_zone
    from podcron.testing import next_runs

    now = arguments.now or datetime.now(UTC)
    failed = False
    for path in arguments.files:
        found = check_file(path, allowed_modules=arguments.allowed_modules)
        if not found:
            print(f"{path}: no ScheduledJob")
        for item in found:
            if isinstance(item, Problem):
                print(item)
                failed = True
                continue
            schedule = item.spec.schedule
            print(f"{item.where}: {item.spec.job_id}: ok, {schedule.human_readable}")
            zone = time_zone(schedule.time_zone)
            for moment in next_runs(schedule, now, arguments.next):
                wall = (
                    ""
                    if zone.key == "UTC"
                    else f"  ({moment.astimezone(zone):%a %Y-%m-%d %H:%M:%S %Z})"
                )
                print(f"  {format_time(moment)}{wall}")
    return EXIT_USAGE if failed else 0


if __name__ == "__main__":
    sys.exit(main())
