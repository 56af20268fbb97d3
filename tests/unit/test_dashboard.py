"""The Grafana dashboard the chart ships: valid JSON in its ConfigMap, every query valid PromQL
(promtool parses each as a recording rule), and only podcron metrics that exist (the names a
real operator exports are checked in tests/integration/test_telemetry.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from helmtool import Helm

from ..alerting import DASHBOARD, dashboard, dashboard_queries, used_metrics
from ..chart import CUSTOM_VALUES, find, render


def test_the_chart_ships_the_dashboard_only_when_asked(helm: Helm, tmp_path: Path) -> None:
    assert not [
        o
        for o in render(helm, tmp_path, {})
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    (config_map,) = find(render(helm, tmp_path, CUSTOM_VALUES), "ConfigMap", "jobs-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "podcron"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Jobs"}
    assert json.loads(config_map["data"]["podcron.json"]) == dashboard()


def test_the_default_label_is_the_one_grafanas_sidecar_looks_for(
    helm: Helm, tmp_path: Path
) -> None:
    (config_map,) = find(
        render(helm, tmp_path, {"grafanaDashboard": {"enabled": True}}),
        "ConfigMap",
        "podcron-dashboard",
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_dashboard_has_the_panels_on_call_needs() -> None:
    board = dashboard()
    assert board["uid"] == "podcron"
    titles = {panel["title"] for panel in board["panels"]}
    assert {
        "Runs by status",
        "Schedule lateness",
        "Duration p95 by job",
        "Running and queued runs",
        "Failing jobs",
    } <= titles
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    # Lateness and duration show exemplars: a slow bucket leads to its run's trace.
    exemplars = {p["title"] for p in board["panels"] for t in p["targets"] if t.get("exemplar")}
    assert exemplars == {"Schedule lateness", "Duration p95 by job"}


def test_every_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": query}
                    for index, query in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_and_alerts_read_podcrons_metrics() -> None:
    # A sanity check of the extraction the integration test relies on.
    names = used_metrics()
    assert "podcron_job_runs_total" in names
    assert "podcron_job_schedule_lateness_seconds_bucket" in names
    assert "podcron_job_failures_in_a_row" in names
    assert DASHBOARD.is_file()
