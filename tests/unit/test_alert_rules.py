"""The chart's alerts, as Prometheus users test theirs: `promtool check rules` on the
PrometheusRule the chart renders, and `promtool test rules` with synthetic series
(tests/alerts/podcron.test.yaml) for every alert. docs/alerts.md has a runbook for each.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmtool import Helm
from promtool import PROMETHEUS_MODULE_VERSION

from ..chart import CUSTOM_VALUES, ROOT, one, render

ALERT_TESTS = ROOT / "tests" / "alerts" / "podcron.test.yaml"
RUNBOOKS = ROOT / "docs" / "alerts.md"


def rule_groups(helm: Helm, directory: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The rendered PrometheusRule's spec: a Prometheus rule file's content."""
    enabled = values | {"prometheusRule": values.get("prometheusRule", {}) | {"enabled": True}}
    spec: dict[str, Any] = one(render(helm, directory, enabled), "PrometheusRule")["spec"]
    return spec


def write_rules(helm: Helm, directory: Path, values: dict[str, Any]) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(helm, directory, values)))
    return path


def alerts(groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups["groups"] for rule in group["rules"]}


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_promtool_is_the_version_tools_prometheus_builds() -> None:
    go_mod = (ROOT / "tools" / "prometheus" / "go.mod").read_text()
    version = re.escape(PROMETHEUS_MODULE_VERSION)
    assert re.search(rf"^require github\.com/prometheus/prometheus {version}$", go_mod, re.M)


def test_the_chart_makes_no_rules_unless_asked(helm: Helm, tmp_path: Path) -> None:
    assert not [o for o in render(helm, tmp_path, {}) if o["kind"] == "PrometheusRule"]


@pytest.mark.parametrize("values", [{}, CUSTOM_VALUES], ids=["default", "custom"])
def test_the_rules_pass_promtool_check(
    helm: Helm, promtool: Path, tmp_path: Path, values: dict[str, Any]
) -> None:
    rules = write_rules(helm, tmp_path, values)
    result = run(promtool, "check", "rules", rules, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_every_alert_fires_and_resolves_as_its_unit_tests_say(
    helm: Helm, promtool: Path, tmp_path: Path
) -> None:
    write_rules(helm, tmp_path, {})
    shutil.copy(ALERT_TESTS, tmp_path)
    result = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_and_a_runbook(helm: Helm, tmp_path: Path) -> None:
    names = set(alerts(rule_groups(helm, tmp_path, {})))
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == names
    runbooks = set(re.findall(r"^### (\w+)$", RUNBOOKS.read_text(), re.M))
    assert runbooks == names


def test_thresholds_scrape_job_and_runbook_links_come_from_the_values(
    helm: Helm, tmp_path: Path
) -> None:
    values = {
        "fullnameOverride": "jobs",
        "prometheusRule": {
            "scrapeJob": "kubernetes-pods",
            "runbookURL": "https://docs.example.com/podcron/alerts",
            "failuresInARow": 5,
            "missedIntervals": 2.5,
            "latenessP99Seconds": 0.25,
            "for": {"runsQueued": "1h"},
        },
    }
    rules = alerts(rule_groups(helm, tmp_path, values))
    assert rules["PodcronJobFailing"]["expr"] == (
        'podcron_job_failures_in_a_row{job="kubernetes-pods"} >= 5'
    )
    assert (
        '> 2.5 * podcron_job_interval_seconds{job="kubernetes-pods"}'
        in (rules["PodcronJobNotSucceeding"]["expr"])
    )
    assert rules["PodcronScheduleLate"]["expr"].endswith(") > 0.25")
    assert "[1h]) > 0" in rules["PodcronRunsQueued"]["expr"]
    for name, rule in rules.items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://docs.example.com/podcron/alerts#{name.lower()}"
