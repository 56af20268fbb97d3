"""What the chart's alerts and dashboard query: the metric names in their expressions, and the
dashboard's queries as PromQL. tests/unit checks the queries with promtool;
tests/integration/test_telemetry.py checks that a real operator exports every name."""

from __future__ import annotations

import json
import re
from typing import Any

from .chart import CHART

DASHBOARD = CHART / "dashboards" / "podcron.json"
RULES_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"
# podcron's own series; the rules also read `up`, which Prometheus itself makes.
_METRIC = re.compile(r"\bpodcron_[a-z0-9_]+\b")
# Grafana's variables, replaced by what makes the query plain PromQL.
_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$job": ".*", "$namespace": ".*"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    """Every panel's query, with Grafana's variables replaced: PromQL as Prometheus gets it."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            query = target["expr"]
            for variable, replacement in _VARIABLES.items():
                query = query.replace(variable, replacement)
            queries.append(query)
    return queries


def used_metrics() -> set[str]:
    """The podcron metric names the dashboard (queries and variables) and the alerts read."""
    texts = [RULES_TEMPLATE.read_text(), DASHBOARD.read_text()]
    return {name for text in texts for name in _METRIC.findall(text)}
