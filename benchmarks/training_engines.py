"""The main fit on each compute engine: LightGBM in this process vs Ray Train's data-parallel LightGBM.

One point-in-time training set (Feast, local engine) split by time as a run does; the same booster
fit (the settings' parameters, early-stopped on validation log loss) by:

- **local** (the baseline): `dataset.train_booster`, `num_threads=2` as every run;
- **local, 1 thread**: the same with `num_threads=1`, what one Ray worker gets;
- **ray, N workers**: `distributed.train_booster_on_ray` with `MLSTACK_RAY_TRAIN_WORKERS=N` on a
  local Ray of `MLSTACK_RAY_NUM_CPUS` (2) CPUs, started once before the timings (its start-up is
  reported apart). A Ray fit's time includes what a run pays each time: datasets into the object
  store, worker processes, LightGBM's network set-up, the checkpoint back.

Every variant's booster is scored on the holdout (log loss and ROC AUC of the booster itself): the
time ratios are only worth reading next to equal quality.

    uv run --extra ray python -m benchmarks.training_engines --customers 100000 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import lightgbm
from sklearn.metrics import log_loss, roc_auc_score

from benchmarks.common import prepare
from mlstack.compute import ensure_ray, shutdown_ray
from mlstack.features.store import apply_features, get_store
from mlstack.settings import Settings
from mlstack.training import model_input
from mlstack.training.dataset import Split, build_training_set, split_by_time, train_booster, training_params
from mlstack.training.distributed import train_booster_on_ray


@dataclass(frozen=True)
class Measured:
    """One variant: its fit times (s), and its booster's best iteration and holdout numbers."""

    variant: str
    seconds: list[float]
    best_iteration: int
    log_loss: float
    roc_auc: float


def measure(variant: str, fit: Callable[[], lightgbm.Booster], parts: Split, repeats: int) -> Measured:
    """Time `fit` `repeats` times; score the last booster on the holdout."""
    seconds = []
    booster = None
    for _ in range(repeats):
        started = time.perf_counter()
        booster = fit()
        seconds.append(time.perf_counter() - started)
    assert booster is not None
    scores = booster.predict(model_input.encode(parts.holdout))
    labels = parts.holdout[model_input.LABEL].to_numpy()
    print(f"  {variant}: {', '.join(f'{s:.1f}' for s in seconds)} s", flush=True)
    return Measured(variant, seconds, booster.best_iteration, log_loss(labels, scores), roc_auc_score(labels, scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, action="append", help="Ray worker counts (default 1 and 2)")
    args = parser.parse_args()
    settings = prepare(args.customers)
    store = get_store(settings)
    apply_features(store, settings.feature_repo)
    frame = build_training_set(settings, store).frame
    parts = split_by_time(frame, settings.validation_fraction, settings.holdout_fraction, settings.calibration_fraction)
    params = training_params(settings)
    print(f"{len(frame):,} labelled rows, {len(parts.train):,} training rows", flush=True)

    results = [
        measure("local", lambda: train_booster(parts, params), parts, args.repeats),
        measure(
            "local, 1 thread",
            lambda: train_booster(parts, dataclasses.replace(params, num_threads=1)),
            parts,
            args.repeats,
        ),
    ]
    on_ray = settings.model_copy(update={"compute_engine": "ray"})
    started = time.perf_counter()
    connection = ensure_ray(on_ray)
    ray_start = time.perf_counter() - started
    try:
        for workers in args.workers or [1, 2]:
            engine = on_ray.model_copy(update={"ray_train_workers": workers})
            fit = lambda engine=engine: train_booster_on_ray(engine, parts, params)  # noqa: E731
            results.append(measure(f"ray, {workers} worker{'s' if workers > 1 else ''}", fit, parts, args.repeats))
    finally:
        shutdown_ray()
    report(settings, results, len(parts.train), ray_start, connection.cpus)


def report(settings: Settings, results: list[Measured], train_rows: int, ray_start: float, cpus: float) -> None:
    """The markdown table: median time, ratio to local, best iteration, holdout numbers and their differences."""
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    baseline = results[0]
    base_time = statistics.median(baseline.seconds)
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, revision {revision}, {train_rows:,} training rows, "
        f"local Ray of {cpus:g} CPUs (started in {ray_start:.1f} s, not in the times)\n"
    )
    print("| variant | fit s (median) | runs | ÷ local | best iter. | log loss | Δ log loss | ROC AUC | Δ AUC |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        median = statistics.median(result.seconds)
        print(
            f"| {result.variant} | {median:.1f} | {', '.join(f'{s:.1f}' for s in result.seconds)} | "
            f"{median / base_time:.2f} | {result.best_iteration} | {result.log_loss:.4f} | "
            f"{result.log_loss - baseline.log_loss:+.4f} | {result.roc_auc:.4f} | "
            f"{result.roc_auc - baseline.roc_auc:+.4f} |"
        )


if __name__ == "__main__":
    main()
