"""Batch scoring: `score-batch`'s path end to end vs the bare Booster on the same prepared matrix.

Both score the same N applications (drawn with replacement, seeded, from the labelled applications of
the 100k-customer benchmark data) with the same champion:

- `score-batch`: `mlstack.serving.batch.score_applications`: read the parquet, per chunk Feast's
  historical retrieval at each row's timestamp, `model_input.encode`, `Scorer.probabilities`,
  decisions, and the parquet written (temp file + rename);
- bare Booster: `booster.predict` on the matrix prepared once beforehand (one historical retrieval of
  all rows, encoded): the model's own cost, nothing else.

The answers are compared (the batch output's probabilities against the bare Booster's, row by row).
Peak RSS is the process's high-water mark after each step (`ru_maxrss`).

    uv run python -m benchmarks.batch_scoring --rows 100000 --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from benchmarks.common import prepare
from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.features.store import apply_features, get_historical_features, get_store
from mlstack.serving import batch
from mlstack.serving.runtime import load_model
from mlstack.settings import Settings
from mlstack.training import model_input, registry
from mlstack.training import steps as training_steps

CUSTOMERS = 100_000


def peak_rss_gib() -> float:
    """The process's peak resident set so far, GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def champion_ready(settings: Settings) -> None:
    """Apply the repo and train a first champion on the benchmark data unless one exists."""
    store = get_store(settings)
    apply_features(store, settings.feature_repo)
    if registry.champion_version(settings) is None:
        print("training a champion for the benchmark ...", flush=True)
        print(training_steps.run_training(settings, progress=lambda _: None).summary(), flush=True)


def applications(settings: Settings, rows: int) -> pd.DataFrame:
    """`rows` applications drawn with replacement (seed 0) from the labelled ones, with their own timestamps."""
    source = pd.read_parquet(settings.data_dir / LOAN_APPLICATIONS_FILE, columns=list(batch.INPUT_COLUMNS))
    picked = np.random.default_rng(0).integers(0, len(source), rows)
    return source.iloc[picked].reset_index(drop=True)


def run(settings: Settings, rows: int) -> dict[str, object]:
    """Both variants on `rows` applications; their throughputs, ratio, agreement and peak RSS."""
    frame = applications(settings, rows)
    directory = settings.state_dir / "batch-bench"
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"applications-{rows}.parquet"
    frame.to_parquet(source, index=False)

    started = time.perf_counter()
    result = batch.score_applications(settings, str(source), directory / f"scores-{rows}.parquet")
    batch_seconds = time.perf_counter() - started
    rss_after_batch = peak_rss_gib()

    model = load_model(settings)
    joined = get_historical_features(get_store(settings), frame.assign(__row=range(rows)))
    matrix = model_input.encode(joined.sort_values("__row", kind="stable"))
    started = time.perf_counter()
    bare = model.booster.predict(matrix, num_threads=1)
    bare_seconds = time.perf_counter() - started

    scored = pd.read_parquet(result.output, columns=["default_probability"])["default_probability"].to_numpy()
    return {
        "rows": rows,
        "chunks": result.chunks,
        "batch_rows_per_s": rows / batch_seconds,
        "bare_rows_per_s": rows / bare_seconds,
        "ratio": (rows / batch_seconds) / (rows / bare_seconds),
        "max_abs_difference": float(np.max(np.abs(scored - bare))),
        "peak_rss_after_batch_gib": rss_after_batch,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append", help="applications to score (repeatable)")
    args = parser.parse_args()
    settings = prepare(CUSTOMERS)
    champion_ready(settings)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, revision {revision}, chunk {settings.batch_chunk_rows:,} rows")
    header = "| rows | chunks | score-batch (rows/s) | bare Booster (rows/s) | score-batch ÷ bare | max abs diff"
    print(f"{header} | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rows in args.rows or [100_000]:
        r = run(settings, rows)
        print(
            f"| {r['rows']:,} | {r['chunks']} | {r['batch_rows_per_s']:,.0f} | {r['bare_rows_per_s']:,.0f} | "
            f"{r['ratio']:.4f} | {r['max_abs_difference']:.1e} | {r['peak_rss_gib']:.2f} GiB "
            f"(after score-batch {r['peak_rss_after_batch_gib']:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
