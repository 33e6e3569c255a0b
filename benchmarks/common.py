"""Shared setup of the benchmarks: a state dir per size with generated data."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from feast import FeatureStore

from mlstack.data.generator import generate_data
from mlstack.settings import PROJECT_ROOT, Settings

BENCH_ROOT = PROJECT_ROOT / ".mlstack" / "bench"


def prepare(customers: int, root: Path = BENCH_ROOT) -> Settings:
    """Settings for a benchmark state dir holding `customers` customers of data (generated once, reused)."""
    settings = Settings(state_dir=root / f"materialize-{customers}", customers=customers)
    if not (settings.data_dir / "loan_applications.parquet").is_file():
        print(f"generating {customers:,} customers ...", flush=True)
        generate_data(
            settings.data_dir,
            customers=customers,
            months=settings.months,
            end=settings.data_end_datetime(),
            seed=settings.seed,
        )
    return settings


def seed_windows(store: FeatureStore, views: Iterable[str], end: datetime) -> None:
    """Record a run that ended at ``end - ttl`` for each view: every variant then writes the same [end - ttl, end].

    A fresh registry would start each variant's incremental window at *its* now - ttl instead.
    """
    for view in views:
        feature_view = store.get_feature_view(view)
        start = end - feature_view.ttl
        store.registry.apply_materialization(feature_view, store.project, start, start)
