"""Drift detectors side by side: false alarms on clean windows and power on injected shifts of known size.

    .mlstack/tools/bin/uv run python -m benchmarks.drift            # ~15 min on 2 shared cores

Population: the synthetic generator's latest snapshots (`mlstack data generate` world, 5,000
customers), applications drawn the way `mlstack traffic --scenario normal` draws them, the on-demand
ratios, and the default probability of the generator's own risk model as the prediction column: the
19 model inputs plus `default_probability`. The reference is 20,000 rows of it (what a training
profile holds); every window is drawn from the same population, clean or with one injected shift:

- mean: `bureau_score` moved by 0.25 / 0.5 / 1 reference standard deviation;
- scale: `credit_utilisation` spread about its mean by x1.25 / x1.5;
- category: `loan_purpose`'s `medical` share raised by 5 / 10 / 20 points (other values thinned);
- missing: `employment_length_years` missing in 5 / 10 % more rows;
- joint: `loan_amount` re-paired with incomes in 50 / 100 % of the rows (marginals of both unchanged;
  the ratios `loan_to_income`, `payment_to_income` recomputed, so they carry the shift).

Detectors, all on the same windows:
- `whylogs (before)`: the monitor's previous rule, whylogs' Hellinger distance (10 buckets) >= 0.4 or
  chi-square p < 0.001, per column, any column drifted;
- `sketch tests + Holm (monitor)`: the monitor's rule now (`mlstack.monitoring.drift`);
- `raw KS/chi2 + BH`, `raw KS/chi2 + Holm`: scipy's two-sample tests on the rows, non-null values,
  Benjamini-Hochberg or Holm over the columns at 0.05;
- `Evidently default (dataset)` / `Evidently default (any column)`: Evidently's DataDriftPreset
  defaults (per-column method chosen by Evidently from the data, dataset drift when >= 50 % of the
  columns drift), run by `benchmarks/drift_evidently.py` in its own environment (`uv run --with
  evidently`), never in the project's lock. "any column" is the same per-column verdicts read as
  "alarm if any column drifted".

Writes `<out>/report.md` (the tables) and `<out>/results.parquet` (one row per window and detector).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.common import BENCH_ROOT
from mlstack.data import generator, profiles
from mlstack.data.profiles import WhylogsProfile
from mlstack.monitoring import drift
from mlstack.monitoring.drift import DriftThresholds, GatheredProfiles
from mlstack.monitoring.performance import wilson
from mlstack.settings import PROJECT_ROOT
from mlstack.simulation import traffic
from mlstack.simulation.scenarios import SCENARIOS
from mlstack.training import model_input

COLUMNS = list(model_input.PROFILE_COLUMNS)
SIZES = (200, 400, 1000, 5000)
MONITOR_SIZE = 400  # the window the probe used; the demo's hourly look-back held 804 rows
REFERENCE_ROWS = 20_000
EVIDENTLY = ("evidently==0.7.23", "pandas<3", "pyarrow")  # pandas 3 breaks evidently 0.7.23's imports
PURPOSE = "medical"
DATA_END = datetime(2026, 1, 1, tzinfo=UTC)  # pinned: the same world on any day


@dataclass(frozen=True)
class Shift:
    """One injected shift: its kind, size, the column(s) it moves, and the function that applies it."""

    kind: str
    size: str
    targets: tuple[str, ...]
    apply: Callable[[pd.DataFrame, pd.DataFrame, np.random.Generator], pd.DataFrame]

    @property
    def name(self) -> str:
        """`kind size`, e.g. `mean 0.5 sd`."""
        return f"{self.kind} {self.size}"


def population(rows: int, seed: int, data_dir: Path) -> pd.DataFrame:
    """`rows` applications with the model's inputs and the generator's default probability (PROFILE_COLUMNS)."""
    if not (data_dir / "loan_applications.parquet").is_file():
        generator.generate_data(data_dir, customers=5_000, months=18, end=DATA_END, seed=7)
    snapshots = traffic.latest_snapshots(data_dir)
    normal = SCENARIOS["normal"]
    applications = traffic.draw_applications(snapshots, normal, rows, seed)
    logit = traffic.default_logit(applications, snapshots, normal)
    frame = applications.merge(
        snapshots.customers.drop(columns=["zipcode", "event_timestamp", "created_timestamp"]),
        on="customer_id",
        how="left",
    ).merge(snapshots.zipcodes.drop(columns=["event_timestamp", "created_timestamp"]), on="zipcode", how="left")
    frame = with_ratios(frame)
    frame[model_input.PREDICTION] = 1 / (1 + np.exp(-logit))
    return frame[COLUMNS].reset_index(drop=True)


def with_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """The on-demand ratios as feature_store/on_demand_features.py computes them (NaN for a missing input)."""
    income = frame["annual_income"].where(frame["annual_income"] > 0)
    frame = frame.copy()
    frame["loan_to_income"] = frame["loan_amount"] / income
    frame["payment_to_income"] = (frame["loan_amount"] / frame["loan_term_months"] + frame["monthly_debt_payments"]) / (
        income / 12.0
    )
    return frame


def shifts() -> list[Shift]:
    """Every injected shift, in report order."""

    def mean(k: float) -> Shift:
        def apply(w: pd.DataFrame, ref: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
            w["bureau_score"] = w["bureau_score"] + k * ref["bureau_score"].std()
            return w

        return Shift("mean", f"{k:g} sd", ("bureau_score",), apply)

    def scale(factor: float) -> Shift:
        def apply(w: pd.DataFrame, ref: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
            centre = ref["credit_utilisation"].mean()
            w["credit_utilisation"] = centre + (w["credit_utilisation"] - centre) * factor
            return w

        return Shift("scale", f"x{factor:g}", ("credit_utilisation",), apply)

    def category(points: int) -> Shift:
        def apply(w: pd.DataFrame, ref: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
            share = (ref["loan_purpose"] == PURPOSE).mean()
            others = np.flatnonzero(w["loan_purpose"].to_numpy() != PURPOSE)
            moved = rng.random(len(others)) < (points / 100) / (1 - share)
            w.loc[w.index[others[moved]], "loan_purpose"] = PURPOSE
            return w

        return Shift("category", f"+{points} pts", ("loan_purpose",), apply)

    def missing(points: int) -> Shift:
        def apply(w: pd.DataFrame, ref: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
            w.loc[rng.random(len(w)) < points / 100, "employment_length_years"] = np.nan
            return w

        return Shift("missing", f"+{points} %", ("employment_length_years",), apply)

    def joint(percent: int) -> Shift:
        def apply(w: pd.DataFrame, ref: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
            chosen = np.flatnonzero(rng.random(len(w)) < percent / 100)
            amounts = w["loan_amount"].to_numpy().copy()
            amounts[chosen] = amounts[rng.permutation(chosen)]
            w["loan_amount"] = amounts
            return with_ratios(w)

        targets = ("loan_amount", "annual_income", "loan_to_income", "payment_to_income")
        return Shift("joint", f"{percent} %", targets, apply)

    return [
        *(mean(k) for k in (0.25, 0.5, 1.0)),
        *(scale(f) for f in (1.25, 1.5)),
        *(category(p) for p in (5, 10, 20)),
        *(missing(p) for p in (5, 10)),
        *(joint(p) for p in (50, 100)),
    ]


# --- detectors on the rows or the profiles -------------------------------------------------------


def before_rule(current: WhylogsProfile, reference: WhylogsProfile) -> list[str]:
    """The monitor's previous rule (whylogs Hellinger >= 0.4 with 10 buckets, chi-square p < 0.001): drifted columns."""
    profiles._whylogs()
    from whylogs.viz.drift.column_drift_algorithms import ChiSquare, Hellinger
    from whylogs.viz.drift.configs import HellingerConfig

    hellinger = Hellinger(HellingerConfig(max_hist_buckets=10))
    drifted = []
    for name in COLUMNS:
        target, base = current.view.get_column(name), reference.view.get_column(name)
        if target is None or base is None:
            continue
        if name not in model_input.CATEGORICAL and current.numeric(name) and reference.numeric(name):
            result = hellinger.calculate(target, base)
            if result is not None:
                if float(result.statistic) >= 0.4:
                    drifted.append(name)
                continue
        result = ChiSquare().calculate(target, base)
        if result is not None and float(result.pvalue) < 0.001:
            drifted.append(name)
    return drifted


def monitor_rule(current: WhylogsProfile, reference: WhylogsProfile, rows: int) -> list[str]:
    """The monitor's rule (`drift.assess_drift`): drifted columns, the prediction included."""
    report = drift.assess_drift(
        GatheredProfiles(current, 1, rows),
        reference,
        model_name="bench",
        model_version="0",
        window=(DATA_END, DATA_END),
        thresholds=DriftThresholds(min_rows=1),  # the monitor's default alpha
    )
    return [c.column for c in report.ranked() if c.drifted]


def raw_tests(window: pd.DataFrame, reference: pd.DataFrame) -> list[float]:
    """Per column, scipy's two-sample KS (numeric) or chi-square (categorical) p-value on the non-null values."""
    p_values = []
    for name in COLUMNS:
        current, base = window[name].dropna(), reference[name].dropna()
        if name in model_input.CATEGORICAL:
            table = pd.crosstab(
                np.r_[np.zeros(len(current)), np.ones(len(base))], np.r_[current.to_numpy(), base.to_numpy()]
            ).to_numpy()
            p_values.append(float(stats.chi2_contingency(table, correction=False).pvalue))
        else:
            p_values.append(float(stats.ks_2samp(current, base).pvalue))
    return p_values


def benjamini_hochberg(p_values: list[float], q: float) -> list[bool]:
    """Rejections of the Benjamini-Hochberg step-up procedure at false-discovery rate `q`."""
    order = np.argsort(p_values)
    k = len(p_values)
    passed = [rank for rank, index in enumerate(order, start=1) if p_values[index] <= q * rank / k]
    cutoff = max(passed, default=0)
    rejected = [False] * k
    for rank, index in enumerate(order, start=1):
        rejected[index] = rank <= cutoff
    return rejected


# --- the run ------------------------------------------------------------------------------------------


def draw_windows(
    pool: pd.DataFrame, reference: pd.DataFrame, size: int, shift: Shift | None, count: int, seed: int
) -> list[pd.DataFrame]:
    """`count` windows of `size` rows drawn from `pool`, each with `shift` applied (None: clean)."""
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        window = pool.iloc[rng.integers(0, len(pool), size)].reset_index(drop=True)
        windows.append(shift.apply(window, reference, rng) if shift else window)
    return windows


def run(out: Path, clean_windows: int, shifted_windows: int, seed: int, sizes: tuple[int, ...]) -> pd.DataFrame:
    """Judge every window with every in-process detector, then Evidently in its own environment; one row per verdict."""
    out.mkdir(parents=True, exist_ok=True)
    data = population(200_000, seed, BENCH_ROOT / "drift-data")
    reference = data.iloc[:REFERENCE_ROWS].reset_index(drop=True)
    pool = data.iloc[REFERENCE_ROWS:].reset_index(drop=True)
    reference_profile = profiles.profile_frame(reference)
    assert isinstance(reference_profile, WhylogsProfile)
    reference.to_parquet(out / "reference.parquet")
    cells: list[tuple[int, Shift | None]] = [(size, cell) for size in sizes for cell in (None, *shifts())]
    rows, frames, timings = [], [], {"profile": 0.0, "before": 0.0, "monitor": 0.0, "raw": 0.0}
    for index, (size, shift) in enumerate(cells):
        count = clean_windows if shift is None else shifted_windows
        name = "clean" if shift is None else shift.name
        print(f"[{index + 1}/{len(cells)}] {size} rows, {name}: {count} windows", flush=True)
        for number, window in enumerate(draw_windows(pool, reference, size, shift, count, seed + 1000 * index)):
            key = {"size": size, "cell": name, "kind": shift.kind if shift else "clean", "window": number}
            targets = list(shift.targets) if shift else []
            started = time.perf_counter()
            profile = profiles.profile_frame(window)
            assert isinstance(profile, WhylogsProfile)
            timings["profile"] += time.perf_counter() - started
            started = time.perf_counter()
            named = {"whylogs (before)": before_rule(profile, reference_profile)}
            timings["before"] += time.perf_counter() - started
            started = time.perf_counter()
            named["sketch tests + Holm (monitor)"] = monitor_rule(profile, reference_profile, size)
            timings["monitor"] += time.perf_counter() - started
            started = time.perf_counter()
            p_values = raw_tests(window, reference)
            holm = drift.holm(p_values)
            named["raw KS/chi2 + BH"] = [
                c for c, r in zip(COLUMNS, benjamini_hochberg(p_values, 0.05), strict=True) if r
            ]
            named["raw KS/chi2 + Holm"] = [c for c, p in zip(COLUMNS, holm, strict=True) if p < 0.05]
            timings["raw"] += time.perf_counter() - started
            for detector, columns in named.items():
                rows.append(
                    {**key, "detector": detector, "alarm": bool(columns), "columns": columns, "targets": targets}
                )
            frames.append(window.assign(size=size, cell=name, window=number))
    pd.concat(frames, ignore_index=True).to_parquet(out / "windows.parquet")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)
    results = pd.DataFrame(rows)
    store(results, out / "results-in-process.parquet")  # kept if the Evidently run fails
    evidently = run_evidently(out)
    targets = results.drop_duplicates(["size", "cell", "window"]).set_index(["size", "cell", "window"])["targets"]
    evidently["targets"] = [targets[(s, c, w)] for s, c, w in evidently[["size", "cell", "window"]].itertuples(False)]
    evidently["kind"] = (
        results.drop_duplicates(["size", "cell"])
        .set_index(["size", "cell"])
        .loc[list(zip(evidently["size"], evidently["cell"], strict=True)), "kind"]
        .to_numpy()
    )
    return pd.concat([results, evidently], ignore_index=True)


def run_evidently(out: Path) -> pd.DataFrame:
    """Run benchmarks/drift_evidently.py under `uv run --no-project --with evidently`; its verdicts."""
    uv = PROJECT_ROOT / ".mlstack" / "tools" / "bin" / "uv"
    command = [str(uv), "run", "--no-project"]
    for requirement in EVIDENTLY:
        command += ["--with", requirement]
    command += ["python", str(PROJECT_ROOT / "benchmarks" / "drift_evidently.py"), str(out)]
    print("running Evidently: " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    verdicts = json.loads((out / "evidently.json").read_text())
    print(f"Evidently: direct calls agree with its full report on {verdicts['agreement']}", flush=True)
    return pd.DataFrame(verdicts["rows"])


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per detector, window size and cell: windows, alarm rate, its 95 % Wilson interval, share naming a target."""
    summary = []
    for (detector, size, cell), group in results.groupby(["detector", "size", "cell"], sort=False):
        alarms = int(group["alarm"].sum())
        low, high = wilson(alarms, len(group), 1.96)
        named = [
            bool(set(c) & set(t))
            for c, t, a in zip(group["columns"], group["targets"], group["alarm"], strict=True)
            if a
        ]
        summary.append(
            {
                "detector": detector,
                "size": size,
                "cell": cell,
                "windows": len(group),
                "alarm_rate": alarms / len(group),
                "low": low,
                "high": high,
                "target_named": float(np.mean(named)) if named else math.nan,
            }
        )
    return pd.DataFrame(summary)


def markdown(summary: pd.DataFrame, results: pd.DataFrame, header: str, sizes: tuple[int, ...]) -> str:
    """The report: false alarms per size, power per shift at each size, and what clean alarms named."""
    detectors = list(dict.fromkeys(summary["detector"]))
    lines = [header, "", "### False alarms: share of clean windows with any alarm (95 % Wilson interval)", ""]
    lines += ["| detector | " + " | ".join(f"{s:,} rows" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    clean = summary[summary["cell"] == "clean"].set_index(["detector", "size"])
    for detector in detectors:
        cells = [
            f"{clean.loc[(detector, s), 'alarm_rate']:.1%} ({clean.loc[(detector, s), 'low']:.1%}-"
            f"{clean.loc[(detector, s), 'high']:.1%})"
            for s in sizes
        ]
        lines.append(f"| {detector} | " + " | ".join(cells) + " |")
    shifted = summary[summary["cell"] != "clean"].set_index(["detector", "size", "cell"])
    cell_names = [c for c in dict.fromkeys(summary["cell"]) if c != "clean"]
    for size in sizes:
        lines += [
            "",
            f"### Detection rate at {size:,} rows (share of shifted windows with an alarm naming a target column)",
            "",
        ]
        lines += ["| shift | " + " | ".join(detectors) + " |", "|---|" + "---|" * len(detectors)]
        for cell in cell_names:
            values = []
            for detector in detectors:
                row = shifted.loc[(detector, size, cell)]
                named = row["target_named"]
                values.append(f"{row['alarm_rate']:.0%}" + ("" if math.isnan(named) else f" ({named:.0%})"))
            lines.append(f"| {cell} | " + " | ".join(values) + " |")
        mean_power = [
            shifted.xs((detector, size), level=("detector", "size"))["alarm_rate"].mean() for detector in detectors
        ]
        lines.append("| **mean over shifts** | " + " | ".join(f"**{p:.0%}**" for p in mean_power) + " |")
    lines += ["", "### Columns behind the false alarms (clean windows, all sizes)", ""]
    for detector in detectors:
        chosen = (results["detector"] == detector) & (results["cell"] == "clean") & results["alarm"]
        flagged = results[chosen]["columns"]
        counts = pd.Series([c for columns in flagged for c in columns]).value_counts()
        shown = ", ".join(f"{name} {count}" for name, count in counts.head(6).items()) or "none"
        lines.append(f"- {detector}: {shown}")
    return "\n".join(lines) + "\n"


def store(results: pd.DataFrame, path: Path) -> None:
    """Write one row per verdict as parquet (column lists as JSON)."""
    results.assign(columns=results["columns"].map(json.dumps), targets=results["targets"].map(json.dumps)).to_parquet(
        path
    )


def main() -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean-windows", type=int, default=200, help="clean windows per window size")
    parser.add_argument("--shifted-windows", type=int, default=25, help="windows per shift and window size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH_ROOT / "drift")
    parser.add_argument("--size", type=int, action="append", help=f"window size(s) (default: {SIZES})")
    args = parser.parse_args()
    started = time.perf_counter()
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    sizes = tuple(args.size or SIZES)
    results = run(args.out, args.clean_windows, args.shifted_windows, args.seed, sizes)
    store(results, args.out / "results.parquet")
    header = (
        f"## Drift detectors ({datetime.now(UTC):%Y-%m-%d}, git {revision.stdout.strip() or '?'}, "
        f"{args.clean_windows} clean and {args.shifted_windows} shifted windows per cell, seed {args.seed}, "
        f"{time.perf_counter() - started:.0f} s)"
    )
    report = markdown(summarise(results), results, header, sizes)
    (args.out / "report.md").write_text(report)
    print(report)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
