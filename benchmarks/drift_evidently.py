"""Evidently's default data-drift verdicts for the windows benchmarks/drift.py wrote; run in its own environment.

    .mlstack/tools/bin/uv run --no-project --with evidently==0.7.23 --with "pandas<3" --with pyarrow \
        python benchmarks/drift_evidently.py .mlstack/bench/drift

Not part of the project (no mlstack import, not in the lock): reads `<dir>/reference.parquet` and
`<dir>/windows.parquet`, writes `<dir>/evidently.json`. Per column it calls what Evidently's
DataDriftPreset calls with its default options (`get_one_column_drift`: infinities and NaN dropped,
the stat test Evidently picks from the data, its default threshold), without building the report's
plots, which made a full report cost ~1 s per window. A sample of windows is also run through the
full legacy report (`DataDriftPreset`) and the verdicts compared: the agreement is printed and stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metric_preset import DataDriftPreset
from evidently.legacy.pipeline.column_mapping import ColumnMapping
from evidently.legacy.report import Report

CATEGORICAL = ("home_ownership", "loan_purpose")
DRIFT_SHARE = 0.5  # DataDriftPreset's default: the dataset drifts when half of its columns do
CHECKED_WINDOWS = 12


def clean(column: pd.Series) -> pd.Series:
    """What Evidently drops before a test: infinities and missing values."""
    return column.replace([-np.inf, np.inf], np.nan).dropna()


def drifted_columns(window: pd.DataFrame, reference: dict[str, pd.Series], types: dict[str, ColumnType]) -> list[str]:
    """Columns Evidently's default per-column test calls drifted."""
    drifted = []
    for name, base in reference.items():
        current = clean(window[name])
        if current.empty:
            continue
        test = get_stattest(base, current, types[name], None)
        if test(base, current, types[name], None).drifted:
            drifted.append(name)
    return drifted


def full_report(window: pd.DataFrame, reference: pd.DataFrame, mapping: ColumnMapping) -> tuple[bool, list[str]]:
    """Evidently's full legacy DataDriftPreset report: (dataset drift, drifted columns)."""
    report = Report(metrics=[DataDriftPreset()])
    report.run(reference_data=reference, current_data=window, column_mapping=mapping)
    metrics = report.as_dict()["metrics"]
    dataset = next(m["result"] for m in metrics if "dataset_drift" in m["result"])
    table = next(m["result"] for m in metrics if "drift_by_columns" in m["result"])
    columns = sorted(name for name, column in table["drift_by_columns"].items() if column["drift_detected"])
    return bool(dataset["dataset_drift"]), columns


def main(directory: Path) -> None:
    """Judge every window; write evidently.json."""
    reference = pd.read_parquet(directory / "reference.parquet")
    windows = pd.read_parquet(directory / "windows.parquet")
    columns = list(reference.columns)
    types = {name: ColumnType.Categorical if name in CATEGORICAL else ColumnType.Numerical for name in columns}
    cleaned = {name: clean(reference[name]) for name in columns}
    mapping = ColumnMapping(
        numerical_features=[c for c in columns if c not in CATEGORICAL], categorical_features=list(CATEGORICAL)
    )
    rows, agree, checked = [], 0, 0
    groups = list(windows.groupby(["size", "cell", "window"], sort=False))
    check_every = max(1, len(groups) // CHECKED_WINDOWS)
    for position, ((size, cell, number), window) in enumerate(groups):
        window = window[columns].reset_index(drop=True)
        drifted = drifted_columns(window, cleaned, types)
        dataset_drift = len(drifted) >= DRIFT_SHARE * len(columns)
        if position % check_every == 0:
            checked += 1
            agree += full_report(window, reference, mapping) == (dataset_drift, sorted(drifted))
        key = {"size": int(size), "cell": cell, "window": int(number), "columns": drifted}
        rows.append({**key, "detector": "Evidently default (dataset)", "alarm": dataset_drift})
        rows.append({**key, "detector": "Evidently default (any column)", "alarm": bool(drifted)})
        if (position + 1) % 500 == 0:
            print(f"Evidently: {position + 1}/{len(groups)} windows", flush=True)
    agreement = f"{agree}/{checked} sampled windows"
    (directory / "evidently.json").write_text(json.dumps({"agreement": agreement, "rows": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
