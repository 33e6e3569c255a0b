"""A servable state dir for the serving benchmark: data ending today, features in Redis, a champion in MLflow.

Lives under `.mlstack/bench/serving-<customers>` (never the user's state). Built once per day and reused:
the data ends today, so materialised features are fresh for the whole day.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from benchmarks.common import BENCH_ROOT
from mlstack.data.generator import generate_data
from mlstack.features.online_store import RedisTarget, make_client, resolve_redis
from mlstack.features.store import BATCH_VIEWS, apply_features, get_store, materialize_view
from mlstack.settings import Settings
from mlstack.training import registry
from mlstack.training import steps as training_steps

MARKER = "serving-bench.json"


@dataclass(frozen=True)
class BenchStack:
    """Settings of the benchmark's state dir, its Redis, and the applications the load generator cycles through."""

    settings: Settings
    target: RedisTarget
    applications: list[dict]

    def environment(self) -> dict[str, str]:
        """What a service process needs to see this stack through `get_settings()`."""
        return {
            "MLSTACK_STATE_DIR": str(self.settings.state_dir),
            "MLSTACK_DATA_END": self.settings.data_end.isoformat() if self.settings.data_end else "",
            "MLSTACK_PROFILE_WINDOW_SECONDS": "3600",
        }


def prepare_serving(customers: int, root: Path = BENCH_ROOT, sample: int = 500) -> BenchStack:
    """The benchmark's stack (rebuilt when it is from another day or Redis lost it), and `sample` known applications."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    state = root / f"serving-{customers}"
    settings = Settings(state_dir=state, customers=customers, data_end=today.date(), profile_window_seconds=3600)
    marker = state / MARKER
    built = json.loads(marker.read_text()) if marker.is_file() else {}
    target = resolve_redis(settings)  # the embedded Redis of this state dir
    fresh = built.get("date") == today.date().isoformat() and make_client(target, settings).dbsize() > 0
    if not fresh or not _has_champion(settings) or not _has_challenger(settings):
        print(f"building the serving benchmark stack ({customers:,} customers) in {state} ...", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress: stdout is the report
            _build(settings, target, customers, today)
        marker.write_text(json.dumps({"date": today.date().isoformat(), "customers": customers}))
    return BenchStack(settings, target, known_applications(settings, sample))


def _build(settings: Settings, target: RedisTarget, customers: int, today: datetime) -> None:
    """Fresh data, features and champion in the benchmark's state dir."""
    for directory in (
        settings.data_dir,
        settings.feast_dir,
        settings.mlflow_dir,
        settings.profiles_dir,
        settings.runs_dir,
    ):
        shutil.rmtree(directory, ignore_errors=True)
    make_client(target, settings).flushdb()
    generate_data(settings.data_dir, customers=customers, months=settings.months, end=today, seed=settings.seed)
    store = get_store(settings, target)
    apply_features(store, settings.feature_repo)
    for view in BATCH_VIEWS:
        materialize_view(store, view, datetime.now(UTC))
    if not training_steps.run_training(settings, progress=lambda _: None).promoted:
        raise RuntimeError("the benchmark's first model was not promoted; see the MLflow run")
    # A second version for shadow mode: @challenger beside @champion (a weaker model, so the gate keeps v1).
    weaker = settings.model_copy(update={"learning_rate": 0.3, "num_boost_round": 3})
    if training_steps.run_training(weaker, progress=lambda _: None).promoted:
        raise RuntimeError("the benchmark's challenger was promoted; shadow mode would have nothing to shadow")


def known_applications(settings: Settings, n: int) -> list[dict]:
    """`n` applications of customers with current features (latest zipcode), deterministic order."""
    query = """
        SELECT customer_id, arg_max(zipcode, event_timestamp) AS zipcode
        FROM read_parquet(?) GROUP BY customer_id ORDER BY hash(customer_id), customer_id LIMIT ?
    """
    rows = duckdb.execute(query, [str(settings.data_dir / "customer_profile.parquet"), n]).fetchall()
    purposes = ("debt_consolidation", "credit_card", "home_improvement", "car", "medical", "small_business", "other")
    return [
        {
            "customer_id": int(customer_id),
            "zipcode": str(zipcode),
            "loan_amount": float(1_000 + (i * 7_919) % 60_000),
            "loan_term_months": (36, 60)[i % 2],
            "loan_purpose": purposes[i % len(purposes)],
        }
        for i, (customer_id, zipcode) in enumerate(rows)
    ]


def _has_challenger(settings: Settings) -> bool:
    """A @challenger that is not the champion (shadow mode's second model)."""
    try:
        challenger = registry.alias_version(settings, registry.CHALLENGER)
        return challenger is not None and challenger != registry.alias_version(settings, registry.CHAMPION)
    except Exception:
        return False


def _has_champion(settings: Settings) -> bool:
    try:
        registry.load_booster(settings, "@champion")
    except Exception:
        return False
    return True
