"""``make mutation``: mutmut over the scheduling core, one module group at a time.

mutmut expects the code under ``src/`` (or the project root) and runs the tests from a
copy of the project, so each group gets a staging tree under ``build/mutation/<group>``:
``src/podcron`` (a copy of ``operator/podcron``), the tests, ``tools/``, and a
``pyproject.toml`` with the group's mutmut settings. The killing suite is the group's unit
tests (``tests/unit``). A mutmut run is slow: ``python tools/mutation.py schedules`` runs
one group; with no argument, all of them in order. Survivors that no test can kill are
listed, with why, in ``tools/mutation-equivalent.txt``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGING = ROOT / "build" / "mutation"
EQUIVALENT = Path(__file__).with_name("mutation-equivalent.txt")


@dataclass(frozen=True)
class Group:
    """Modules mutated together, and the unit tests that must notice."""

    modules: tuple[str, ...]
    tests: tuple[str, ...]
    #: Environment for the killing suite.
    env: tuple[tuple[str, str], ...] = ()


# The engine's own unit tests: dispatch, overlap policies, timeouts, outcomes, manual runs,
# the history a restarted job continues, the resources a run waits for, what a run logs.
_ENGINE_TESTS = (
    "test_engine.py",
    "test_engine_resources.py",
    "test_engine_skips.py",
    "test_engine_threads.py",
    "test_engine_no_further_run.py",
    "test_run_outcomes.py",
    "test_manual_runs.py",
    "test_run_queue.py",
    "test_run_history.py",
    "test_logs.py",
)

GROUPS = {
    "schedules": Group(
        ("podcron/schedules/cron.py", "podcron/schedules/kinds.py", "podcron/schedules/zones.py"),
        ("test_schedules.py", "test_cron.py"),
        # Every mutant runs the property tests (they reach every function): with a tenth of
        # their examples, the whole group takes about half an hour on two cores.
        (("PODCRON_EXAMPLES_SCALE", "0.1"),),
    ),
    "cidr": Group(("podcron/sidecar/cidr.py",), ("test_cidr.py",)),
    "entrypoints": Group(("podcron/entrypoints.py",), ("test_entrypoints.py",)),
    # The engine in two groups, so that each run's killing suite stays small. The lifecycle
    # state machine is left out of both: it covers every function of the engine, so mutmut
    # would run its half a minute for each mutant.
    "engine-runs": Group(
        (
            "podcron/engine/runner.py",
            "podcron/engine/runs.py",
            "podcron/engine/recording.py",
            "podcron/engine/jobs.py",
        ),
        _ENGINE_TESTS,
    ),
    # The tests of the engine under HA (its gate, the API server's clock, catch-up of ticks
    # gained in a handover) and of the watchdog are the only ones that reach those functions.
    "engine-ticks": Group(
        ("podcron/engine/engine.py", "podcron/engine/duequeue.py"),
        (
            *_ENGINE_TESTS,
            "test_duequeue.py",
            "test_engine_gate.py",
            "test_engine_ha.py",
            "test_engine_clock.py",
            "test_watchdog.py",
        ),
    ),
}


def stage(group: Group, where: Path) -> None:
    """A fresh copy of the project as mutmut wants it."""
    shutil.rmtree(where, ignore_errors=True)
    (where / "src").mkdir(parents=True)
    shutil.copytree(ROOT / "operator" / "podcron", where / "src" / "podcron")
    shutil.copytree(ROOT / "tools", where / "tools")
    ignore = shutil.ignore_patterns("integration", "e2e", "__pycache__")
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    tests = ", ".join(f'"tests/unit/{name}"' for name in group.tests)
    modules = ", ".join(f'"src/{module}"' for module in group.modules)
    (where / "pyproject.toml").write_text(
        f"""[tool.mutmut]
source_paths = ["src"]
only_mutate = [{modules}]
also_copy = ["tests", "tools"]
pytest_add_cli_args_test_selection = [{tests}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-q"]

[tool.pytest.ini_options]
pythonpath = ["tools"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
timeout = 120
"""
    )


def run(name: str, group: Group, max_children: int | None, mutants: list[str]) -> Counter[str]:
    """Run mutmut for one group; mutmut's result for each mutant, counted."""
    where = STAGING / name
    stage(group, where)
    # The editable install puts operator/ on sys.path; mutmut puts the mutated src/ before it.
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"} | dict(group.env)
    mutmut = Path(sys.executable).with_name("mutmut")
    # On a shared machine one child at a time; mutmut's default is one per core.
    children = [] if max_children is None else ["--max-children", str(max_children)]
    subprocess.run([mutmut, "run", *children, *mutants], cwd=where, env=env, check=False)
    results = subprocess.run(
        [mutmut, "results", "--all", "true"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (STAGING / f"{name}.results").write_text(results)
    return Counter(line.rsplit(": ", 1)[1] for line in results.splitlines() if ": " in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", metavar="group", help=", ".join(GROUPS))
    parser.add_argument(
        "--max-children", type=int, metavar="N", help="mutants tested at once (mutmut's default)"
    )
    parser.add_argument(
        "--mutants",
        action="append",
        default=[],
        metavar="GLOB",
        help="only the mutants whose names match (e.g. 'podcron.engine.recording.*'); repeatable",
    )
    arguments = parser.parse_args()
    unknown = set(arguments.groups) - set(GROUPS)
    if unknown:
        parser.error(f"no group {', '.join(sorted(unknown))}; groups: {', '.join(GROUPS)}")
    equivalent = [line for line in EQUIVALENT.read_text().splitlines() if line[:1] not in "#"]
    for name in arguments.groups or GROUPS:
        counts = run(name, GROUPS[name], arguments.max_children, arguments.mutants)
        known = sum(1 for line in equivalent if line.startswith(f"{name} "))
        survived = counts["survived"]
        print(
            f"mutation {name}: {counts['killed']} killed, {survived} survived"
            f" ({known} listed as equivalent), {counts['timeout']} timed out,"
            f" {counts['no tests']} without tests; results in build/mutation/{name}.results"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
