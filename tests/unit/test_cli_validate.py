"""``podcron validate``: ScheduledJob manifests checked offline, as a job repository's CI would.

The invalid corpus and the valid edge cases are those the CRD is tested with
against the real API server (tests/integration/test_crd_validation.py): what the
API server refuses, ``podcron validate`` refuses, naming the same field.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..integration.test_crd_validation import CORPUS, HEADER, VALID_SPECS
from .test_cli_run import JOBS, environment

ROOT = Path(__file__).parents[2]
NOW = "2026-03-28T12:00:00Z"
# Where the message is the operator's (its check reaches further than the CRD's CEL rule).
OPERATOR_WORDS = {
    "schedule-empty": "must set exactly one of every, hourly, daily, weekly, monthly, cron",
    "entry-point-no-function": "not an entry-point name of group podcron.jobs",
    "entry-point-shell-command": "not an entry-point name of group podcron.jobs",
}


def validate(workdir: Path, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podcron", "validate", "--now", NOW, *map(str, arguments)],
        env=environment(workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manifests(path: Path, *specs: dict[str, object], name: str = "job") -> Path:
    """``path`` holding one ScheduledJob per spec, named ``name-1``, ``name-2``..."""
    path.write_text(
        yaml.safe_dump_all(
            {
                "apiVersion": "podcron.dev/v1alpha1",
                "kind": "ScheduledJob",
                "metadata": {"name": f"{name}-{number}"},
                "spec": spec,
            }
            for number, spec in enumerate(specs, start=1)
        )
    )
    return path


def test_the_corpus_is_at_hand() -> None:
    assert len(CORPUS) >= 30


@pytest.fixture(scope="module")
def corpus_lines(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, list[str]]:
    """What one ``podcron validate`` of the whole corpus says of each file."""
    result = validate(tmp_path_factory.mktemp("corpus"), *CORPUS)
    assert result.returncode == 2
    assert result.stderr == ""
    return {
        path: [line for line in result.stdout.splitlines() if line.startswith(f"{path}:")]
        for path in CORPUS
    }


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_what_the_api_server_refuses_is_refused_naming_the_field(
    corpus_lines: dict[Path, list[str]], path: Path
) -> None:
    header: dict[str, str] = dict(HEADER.findall(path.read_text()))
    expected = OPERATOR_WORDS.get(path.stem) or header["Message"]
    lines = corpus_lines[path]
    assert lines, f"accepted: {header['Wrong']}"
    for line in lines:
        assert line.startswith(f"{path}:1: {header['Field']}: "), line
    assert any(expected in line for line in lines), lines


def test_what_the_api_server_accepts_is_accepted(tmp_path: Path) -> None:
    path = manifests(tmp_path / "valid.yaml", *VALID_SPECS.values())
    result = validate(tmp_path, path, "--next", "1")
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(": ok, ") == len(VALID_SPECS)


def test_the_examples_with_their_next_five_runs(tmp_path: Path) -> None:
    result = validate(tmp_path, *sorted((ROOT / "examples").glob("*.yaml")))
    assert result.returncode == 0, result.stdout
    hello = result.stdout.split(f"{ROOT / 'examples' / 'hello.yaml'}:1: ")[1].splitlines()
    assert hello[:6] == [
        "default/hello: ok, every 2s",
        "  2026-03-28T12:00:02.000Z",
        "  2026-03-28T12:00:04.000Z",
        "  2026-03-28T12:00:06.000Z",
        "  2026-03-28T12:00:08.000Z",
        "  2026-03-28T12:00:10.000Z",
    ]


def test_run_times_across_a_dst_change_show_the_wall_time(tmp_path: Path) -> None:
    path = manifests(
        tmp_path / "berlin.yaml",
        {
            "entryPoint": "hello",
            "schedule": {"daily": {"at": "02:30"}},
            "timeZone": "Europe/Berlin",
        },
    )
    result = validate(tmp_path, path, "--next", "3")
    assert result.returncode == 0, result.stdout
    # 02:30 does not exist on 29 March: it runs when the clocks reach 03:00.
    assert result.stdout.splitlines()[1:] == [
        "  2026-03-29T01:00:00.000Z  (Sun 2026-03-29 03:00:00 CEST)",
        "  2026-03-30T00:30:00.000Z  (Mon 2026-03-30 02:30:00 CEST)",
        "  2026-03-31T00:30:00.000Z  (Tue 2026-03-31 02:30:00 CEST)",
    ]


def test_problems_in_several_documents_are_each_one_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n---\n"
        + manifests(
            tmp_path / "two.yaml",
            {"entryPoint": "hello", "schedule": {"every": "5s"}},
            {
                "entryPoint": "hello",
                "schedule": {"daily": {"at": "02:30"}},
                "timeZone": "Mars/Olympus",
                "timeoutSeconds": 0,
                "concurrncyPolicy": "Allow",
            },
        ).read_text()
    )
    result = validate(tmp_path, path, "--next", "0")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{path}:2: default/job-1: ok, every 5s",
        f"{path}:3: spec.concurrncyPolicy: unknown field",
        f"{path}:3: spec.timeoutSeconds: should be greater than or equal to 1",
    ]


def test_what_only_the_operator_checks(tmp_path: Path) -> None:
    path = manifests(
        tmp_path / "jobs.yaml",
        {"entryPoint": "hello", "schedule": {"daily": {"at": "02:30"}}, "timeZone": "Mars/Olympus"},
        {"entryPoint": "hello", "schedule": {"cron": "0 0 L * *"}},
        {"entryPoint": "no-such-job", "schedule": {"every": "5s"}},
    )
    lines = validate(tmp_path, path).stdout.splitlines()
    assert lines[0] == (
        f"{path}:1: spec.timeZone: not a known IANA time zone name (got 'Mars/Olympus')"
    )
    assert lines[1].startswith(f"{path}:2: spec.schedule.cron: ")
    assert lines[2] == (
        f"{path}:3: spec.entryPoint: no entry point of that name in group podcron.jobs "
        "(got 'no-such-job')"
    )


def test_module_functions_and_the_allowlist(tmp_path: Path) -> None:
    assert JOBS.is_dir()
    path = manifests(
        tmp_path / "jobs.yaml",
        {"entryPoint": "podcron_testjobs.local:echo", "schedule": {"every": "5s"}},
        {"entryPoint": "podcron_testjobs.allowed:os.system", "schedule": {"every": "5s"}},
        {"entryPoint": "podcron_testjobs.local:missing", "schedule": {"every": "5s"}},
    )
    lines = validate(tmp_path, path, "--next", "0").stdout.splitlines()
    # By default a reference may run from its own top-level package.
    assert lines[0] == f"{path}:1: default/job-1: ok, every 5s"
    assert lines[1].startswith(f"{path}:2: spec.entryPoint: ")
    assert "goes through module 'os'" in lines[1]
    assert re.match(rf"{re.escape(str(path))}:3: spec\.entryPoint: cannot import: ", lines[2])
    narrow = validate(
        tmp_path, path, "--next", "0", "--allowed-modules", "podcron_testjobs.allowed"
    )
    assert "module 'podcron_testjobs.local' matches none of allowedModules" in narrow.stdout


def test_yaml_is_read_as_kubectl_reads_it(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 12:30 as 750 (base 60); kubectl reads the string "12:30".
    path = tmp_path / "unquoted.yaml"
    path.write_text(
        "apiVersion: podcron.dev/v1alpha1\nkind: ScheduledJob\nmetadata: {name: noon}\n"
        "spec: {entryPoint: hello, schedule: {daily: {at: 12:30}}}\n"
    )
    result = validate(tmp_path, path, "--next", "1")
    assert result.returncode == 0, result.stdout
    assert "every day at 12:30 (UTC)" in result.stdout


def test_a_file_that_cannot_be_read_or_parsed(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("spec: {entryPoint: hello\n")
    result = validate(tmp_path, "missing.yaml", "broken.yaml")
    assert result.returncode == 2
    missing, broken = result.stdout.splitlines()
    assert missing == "missing.yaml: cannot read: No such file or directory"
    assert broken.startswith("broken.yaml: not valid YAML: ")
    assert "line 2" in broken


def test_names_kind_and_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "apiVersion: podcron.dev/v1\nkind: ScheduledJob\nmetadata: {name: Hello_Job}\n"
        "spec: {entryPoint: hello, schedule: {every: 5s}}\n"
    )
    lines = validate(tmp_path, path).stdout.splitlines()
    assert lines[0].startswith(f"{path}:1: apiVersion/kind: must be podcron.dev/v1alpha1 ")
    assert lines[1].startswith(f"{path}:1: metadata.name: Invalid value: 'Hello_Job': ")


def test_no_scheduled_job_is_said_but_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("apiVersion: v1\nkind: ConfigMap\n")
    result = validate(tmp_path, "other.yaml")
    assert result.returncode == 0
    assert result.stdout == "other.yaml: no ScheduledJob\n"


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    result = validate(tmp_path, "x.yaml", "--next", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "podcron validate: argument --next: must be a whole number from 0 to 1000, got '-1' "
        "(see podcron validate --help)"
    ]
