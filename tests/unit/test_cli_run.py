"""``podcron run``: one job, once, on this machine, as a job author runs it.

Each case runs the real command (``python -m podcron run``) as a subprocess,
with the test jobs of ``tests/jobs`` importable and no configuration file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from . import cli_support

JOBS = Path(__file__).parents[1] / "jobs"
EXAMPLES = Path(__file__).parents[2] / "examples"
LOCAL = "podcron_testjobs.local"


def environment(workdir: Path) -> dict[str, str]:
    """A clean environment: no PODCRON_ settings, the test jobs importable, no config file."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PODCRON_")}
    path = os.pathsep.join(filter(None, [str(JOBS), clean.get("PYTHONPATH")]))
    return clean | {"PYTHONPATH": path, "PODCRON_CONFIG_DIR": str(workdir)}


def podcron_run(workdir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podcron", "run", *arguments],
        env=environment(workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def echoed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The context the echo job logged."""
    (line,) = [line for line in result.stderr.splitlines() if " context {" in line]
    context: dict[str, Any] = json.loads(line.partition(" context ")[2])
    return context


def test_an_example_job_by_its_entry_point_name(tmp_path: Path) -> None:
    result = podcron_run(tmp_path, "hello", "--args", '{"greeting": "good morning"}')
    assert result.returncode == 0, result.stderr
    assert "[local/hello] good morning from local/hello (manual run due " in result.stderr
    assert result.stderr.splitlines()[-1].startswith("podcron run: local/hello succeeded in ")


def test_a_module_function_with_its_arguments_trigger_and_time(tmp_path: Path) -> None:
    (tmp_path / "args.yaml").write_text("retentionDays: 7\nnested: {list: [1, two]}\n")
    result = podcron_run(
        tmp_path,
        f"{LOCAL}:echo",
        "--allowed-modules",
        "podcron_testjobs.*",
        "--args-file",
        str(tmp_path / "args.yaml"),
        "--trigger",
        "scheduled",
        "--scheduled-time",
        "2026-03-29T02:30:00+02:00",
        "--namespace",
        "shop",
        "--timeout",
        "30",
    )
    assert result.returncode == 0, result.stderr
    context = echoed(result)
    assert context["job_id"] == "shop/echo"
    assert context["trigger"] == "scheduled"
    assert context["scheduled_time"] == "2026-03-29T02:30:00+02:00"
    assert context["args"] == {"retentionDays": 7, "nested": {"list": [1, "two"]}}
    # The deadline counts from the run's start, as the operator's does.
    assert context["deadline"] is not None


def test_a_failing_job_exits_1_with_its_traceback_and_one_line(tmp_path: Path) -> None:
    result = podcron_run(tmp_path, f"{LOCAL}:fails", "--allowed-modules", LOCAL)
    assert result.returncode == 1, result.stderr
    error = "ValueError: invalid literal for int() with base 10: 'not a number'"
    assert f"run failed: {error}" in result.stderr
    # The author's own frames, down to the line that raised.
    assert "Traceback (most recent call last)" in result.stderr
    assert 'podcron_testjobs/local.py", line' in result.stderr
    assert "in _parse_row" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("podcron run: local/fails failed after ")
    assert last.endswith(f": {error}")


def test_a_job_past_its_timeout_is_cancelled_and_fails(tmp_path: Path) -> None:
    result = podcron_run(
        tmp_path, f"{LOCAL}:waits_for_cancel", "--allowed-modules", LOCAL, "--timeout", "0.2"
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].endswith(": TimeoutError: run exceeded 0.2s")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("job", ["waits_for_cancel", "polls_for_cancel"])
def test_ctrl_c_cancels_the_run_and_exits_130(tmp_path: Path, job: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "podcron", "run", f"{LOCAL}:{job}", "--allowed-modules", LOCAL],
        env=environment(tmp_path),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # the job says it waits before the signal is sent
        seen.append(line)
        if "waiting to be cancelled" in line:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=30) == 130, "".join(seen) + rest
    assert "podcron run: cancelling the run (Ctrl-C again to exit at once)" in rest
    assert rest.splitlines()[-1].endswith(": Interrupted: Ctrl-C")
    if job == "polls_for_cancel":  # a thread job sees ctx.cancelled and returns
        assert "saw the cancellation" in rest


def test_the_log_level_and_format(tmp_path: Path) -> None:
    quiet = podcron_run(tmp_path, "hello", "--log-level", "warning")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines() == [quiet.stderr.splitlines()[-1]]
    structured = podcron_run(tmp_path, "hello", "--log-format", "json")
    line = json.loads(structured.stderr.splitlines()[0])
    assert (line["level"], line["logger"], line["job_id"]) == ("INFO", "podcron.job", "local/hello")


def test_an_unknown_entry_point(tmp_path: Path) -> None:
    line = one_line(podcron_run(tmp_path, "no-such-job"))
    assert "no entry point of that name in group podcron.jobs (got 'no-such-job')" in line


def test_a_module_outside_the_allowlist_is_refused_before_import(tmp_path: Path) -> None:
    line = one_line(podcron_run(tmp_path, f"{LOCAL}:echo"))
    assert "module 'podcron_testjobs.local' matches none of allowedModules []" in line
    assert "to allow it: --allowed-modules 'podcron_testjobs.*'" in line


def test_the_allowlist_comes_from_the_configuration_too(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("allowedModules: [podcron_testjobs.*]\n")
    result = podcron_run(tmp_path, f"{LOCAL}:echo")
    assert result.returncode == 0, result.stderr


def test_a_path_out_of_an_allowed_module_is_refused(tmp_path: Path) -> None:
    line = one_line(
        podcron_run(
            tmp_path,
            "podcron_testjobs.allowed:os.system",
            "--allowed-modules",
            "podcron_testjobs.*",
        )
    )
    assert "goes through module 'os'" in line


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--args", "{retentionDays: 7}"], "argument --args: not valid JSON: Expecting property"),
        (["--args", "[1, 2]"], "argument --args: must be a JSON object"),
        (["--args-file", "missing.json"], "argument --args-file: cannot read missing.json"),
        (["--args", "{}", "--args-file", "config.yaml"], "not allowed with argument --args"),
        (["--timeout", "0"], "argument --timeout: must be more than 0 and at most 604800"),
        (["--timeout", "soon"], "argument --timeout: not a number of seconds: 'soon'"),
        (["--scheduled-time", "2026-01-01T02:30"], "argument --scheduled-time: needs a UTC"),
        (["--trigger", "cron"], "argument --trigger: invalid choice: 'cron'"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    (tmp_path / "config.yaml").write_text("logLevel: INFO\n")
    line = one_line(podcron_run(tmp_path, "hello", *arguments))
    assert message in line
    assert line.endswith("(see podcron run --help)")


def test_a_bad_configuration_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("allowedModules: [x\n")
    result = podcron_run(tmp_path, "hello")
    assert result.returncode == 2
    assert result.stderr.startswith("podcron: bad configuration: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_scheduledjob_of_a_manifest_with_its_args_and_timeout(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        (EXAMPLES / "hello.yaml").read_text()
        + "---\n"
        + "apiVersion: podcron.dev/v1alpha1\nkind: ScheduledJob\n"
        + "metadata: {name: echo, namespace: shop}\n"
        + f"spec: {{entryPoint: '{LOCAL}:echo', schedule: {{every: 5s}}, timeoutSeconds: 60,"
        + " args: {retentionDays: 7, dryRun: true}}\n"
    )
    result = podcron_run(tmp_path, "shop/echo", "-f", str(manifest), "--allowed-modules", LOCAL)
    assert result.returncode == 0, result.stderr
    context = echoed(result)
    assert context["job_id"] == "shop/echo"
    assert context["args"] == {"retentionDays": 7, "dryRun": True}
    assert context["deadline"] is not None
    # Options win over the manifest.
    result = podcron_run(
        tmp_path, "echo", "-f", str(manifest), "--allowed-modules", LOCAL, "--args", '{"n": 1}'
    )
    assert echoed(result)["args"] == {"n": 1}


def test_the_only_scheduledjob_of_a_manifest_needs_no_name(tmp_path: Path) -> None:
    result = podcron_run(tmp_path, "-f", str(EXAMPLES / "hello.yaml"))
    assert result.returncode == 0, result.stderr
    assert "[default/hello] hello from default/hello (manual run due " in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give an ENTRY_POINT, or a ScheduledJob with --manifest FILE (see podcron run"),
        (["-f", "hello.yaml", "-f", "cleanup.yaml"], "name the ScheduledJob to run: "),
        (["nope", "-f", "hello.yaml"], "no ScheduledJob called nope in hello.yaml (there: "),
        (["-f", "missing.yaml"], "missing.yaml: cannot read: No such file or directory"),
        (["-f", "report.yaml", "--allowed-modules", "other"], "report.yaml:1: spec.entryPoint: "),
    ],
)
def test_a_manifest_that_names_no_runnable_job(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    for example in EXAMPLES.glob("*.yaml"):
        (tmp_path / example.name).write_text(example.read_text())
    (tmp_path / "report.yaml").write_text(
        (EXAMPLES / "report.yaml")
        .read_text()
        .replace("entryPoint: report", f"entryPoint: '{LOCAL}:echo'")
    )
    line = one_line(podcron_run(tmp_path, *arguments))
    assert message in line


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line this command writes for bad input."""
    return cli_support.one_line(result, "podcron run: ")
