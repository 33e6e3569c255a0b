"""The Grafana dashboards and the metric names they query (shared by the static and the live checks)."""

from __future__ import annotations

import json
import re

from tests.support.compose_native import REPO

DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))
# Metrics on the dashboard that nothing exports yet: the drift monitor will (gauge, label `feature`).
DASHBOARD_FUTURE_METRICS = frozenset({"mlstack_drift_score"})


def dashboard_metric_names() -> set[str]:
    """Every metric the dashboards query (histogram suffixes _bucket/_count/_sum removed)."""
    names: set[str] = set()
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                for name in re.findall(r"\b((?:mlstack|bentoml)_[a-zA-Z0-9_]+)\b", target["expr"]):
                    names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names
