"""The Grafana dashboards and the metric names they query (shared by the static and the live checks)."""

from __future__ import annotations

import json
import re

from mlstack.monitoring import export
from tests.support.compose_native import REPO
from tests.support.reports import UNEMPLOYMENT, better_challenger_decision, drift_report

DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))


def dashboard_metric_names() -> set[str]:
    """Every metric the dashboards query (histogram suffixes _bucket/_count/_sum removed)."""
    names: set[str] = set()
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                for name in re.findall(r"\b((?:mlstack|bentoml)_[a-zA-Z0-9_]+)\b", target["expr"]):
                    names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def pushed_metric_names() -> set[str]:
    """Every metric the flows push to the Pushgateway (not the service's /metrics): drift and promotion gauges."""
    gauges = [
        *export.drift_gauges(drift_report((UNEMPLOYMENT,))),
        *export.promotion_gauges("2", better_challenger_decision(), True),
    ]
    return {gauge.name for gauge in gauges}


def panel_expression(metric: str) -> str:
    """The PromQL of the first dashboard panel that queries `metric`."""
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if metric in target["expr"]:
                    return str(target["expr"])
    raise AssertionError(f"no dashboard panel queries {metric}")
