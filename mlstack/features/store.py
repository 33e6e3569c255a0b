"""Feature access through Feast: configure, apply the repo, materialise into Redis, read online."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import redis
from feast import FeatureStore
from feast.repo_operations import apply_total_with_repo_instance, parse_repo

from mlstack.compute import FEAST_ENGINES, ensure_ray
from mlstack.data.generator import DataSummary, generate_data
from mlstack.data.schema import CUSTOMER_PROFILE_FILE, DATA_FILES, LOAN_APPLICATIONS_FILE
from mlstack.errors import StackError
from mlstack.features import ray_engine
from mlstack.features.materialization import arrow_writer, incremental_start, materialize_arrow, write_failure
from mlstack.features.online_store import RedisTarget, feast_connection_string, resolve_redis
from mlstack.features.redis_writer import STORE_TYPE as ARROW_STORE_TYPE
from mlstack.settings import Settings

log = logging.getLogger(__name__)

FEATURE_SERVICE = "credit_risk_v1"
FEATURE_SERVICE_VERSION = FEATURE_SERVICE.rsplit("_v", 1)[-1]  # recorded on model versions and batch scores
BATCH_VIEWS = ("customer_profile", "credit_history", "zipcode_stats")


class FeatureRepoError(StackError):
    """The Feast repository or its data is not in a usable state; the message says what to run."""


def feast_environment(settings: Settings, target: RedisTarget) -> dict[str, str]:
    """The ``FEAST_MLSTACK_*`` variables that ``feature_store.yaml`` and the data sources expand.

    Not ``MLSTACK_*``: settings would read them back as their own fields in the next Settings().
    """
    return {
        "FEAST_MLSTACK_REGISTRY_URL": settings.feast_registry(),
        "FEAST_MLSTACK_DATA_DIR": str(settings.data_dir),
        "FEAST_MLSTACK_REDIS_CONNECTION": feast_connection_string(target, settings),
        "FEAST_MLSTACK_SKIP_DEDUP": "true" if settings.materialize_skip_dedup else "false",
        "FEAST_MLSTACK_BATCH_SIZE": str(settings.materialize_batch_size or "null"),
        "FEAST_MLSTACK_PULL_LATEST": "true" if settings.materialize_pull_latest else "false",
        "FEAST_MLSTACK_ONLINE_STORE_TYPE": ARROW_STORE_TYPE if settings.materialize_writer == "arrow" else "redis",
        "FEAST_MLSTACK_OFFLINE_STORE": FEAST_ENGINES[settings.compute_engine].offline_store,
        "FEAST_MLSTACK_BATCH_ENGINE": FEAST_ENGINES[settings.compute_engine].batch_engine,
    }


def get_store(settings: Settings, target: RedisTarget | None = None) -> FeatureStore:
    """A FeatureStore for the repo, its Redis connection resolved (embedded Redis started if needed).

    Feast reads its configuration from environment variables, so they are set for this process.
    """
    target = target or resolve_redis(settings)
    os.environ.update(feast_environment(settings, target))
    if settings.compute_engine == "ray":
        ensure_ray(settings)  # before Feast's initialiser, which would start a Ray on every CPU
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo))


def require_data(settings: Settings) -> None:
    """Raise FeatureRepoError when the offline parquet files have not been generated yet."""
    missing = [name for name in DATA_FILES if not (settings.data_dir / name).is_file()]
    if missing:
        raise FeatureRepoError(
            f"offline data missing in {settings.data_dir}: {', '.join(missing)}. Run `mlstack data generate` first."
        )


@dataclass(frozen=True)
class ApplyResult:
    """What `apply_features` registered."""

    feature_views: list[str]
    on_demand_feature_views: list[str]
    feature_services: list[str]
    seconds: float


def apply_features(store: FeatureStore, repo_path: Path) -> ApplyResult:
    """Register every object of the Feast repo (what ``feast apply`` does), without chdir or exit."""
    started = time.perf_counter()
    with _quiet_stdout(), _importable_repo(repo_path):
        repo = parse_repo(repo_path)
        apply_total_with_repo_instance(store, store.project, store.registry, repo, skip_source_validation=False)
    return ApplyResult(
        feature_views=sorted(fv.name for fv in repo.feature_views),
        on_demand_feature_views=sorted(fv.name for fv in repo.on_demand_feature_views),
        feature_services=sorted(fs.name for fs in repo.feature_services),
        seconds=time.perf_counter() - started,
    )


def reset_feature_state(settings: Settings) -> bool:
    """Forget what was materialised: remove the project's online rows and the registry (True if any).

    Needed when the offline data is regenerated: incremental windows recorded for the old data would
    otherwise skip the new data's history, and Redis would keep the old data's vectors.
    """
    registry_file = settings.feast_registry_path
    if settings.feast_registry_url is None and not registry_file.exists():
        return False
    store = get_store(settings)
    with _quiet_stdout():
        store.teardown()  # deletes this project's keys from Redis and the registry's objects
    registry_file.unlink(missing_ok=True)
    return True


@dataclass(frozen=True)
class MaterializeResult:
    """One feature view's materialisation: the window, rows written and duration."""

    feature_view: str
    start: datetime | None
    end: datetime
    rows: int
    seconds: float


def materialize_view(
    store: FeatureStore,
    feature_view: str,
    end: datetime,
    offline_memory_mb: int | None = None,
    verify: bool | None = None,
) -> MaterializeResult:
    """Materialise one batch view incrementally up to ``end``; Feast records the window on success.

    A run interrupted before success leaves the recorded window unchanged, so the next run
    rewrites the same rows (same bytes) and completes the window. The Arrow writer runs as Ray tasks on
    the Ray engine; with ``verify`` (None: on the Ray engine only) it reads every row back before the
    window is recorded. A Redis error, with either writer, is a MaterializationError naming the view and
    the rows written. ``offline_memory_mb`` caps DuckDB's memory for the Arrow writer's offline read
    (None: DuckDB's default).
    """
    view = store.get_feature_view(feature_view)
    start = view.most_recent_end_time
    started = time.perf_counter()
    if arrow_writer(store) is not None:  # the repo's online store is mlstack's Arrow writer
        on_ray = ray_engine.on_ray(store)
        write = ray_engine.write_pass() if on_ray else None
        verify = on_ray if verify is None else verify
        rows = materialize_arrow(store, feature_view, end, offline_memory_mb, write=write, verify=verify).rows
        return MaterializeResult(feature_view, start, end, rows, time.perf_counter() - started)
    if ray_engine.on_ray(store):
        raise FeatureRepoError(
            "MLSTACK_MATERIALIZE_WRITER=feast is not supported on the Ray engine: Feast's ray.engine logs and "
            "swallows Redis errors and records the window anyway. Use the default writer (arrow) on Ray."
        )
    counter = _RowCounter()
    try:
        with counter.counting(store):
            store.materialize_incremental(end_date=end, feature_views=[feature_view])
    except redis.RedisError as exc:  # Feast records the window only after every batch was written
        failure = write_failure(feature_view, incremental_start(view), end, counter.rows, exc, counter.in_flight)
        raise failure from failure.__cause__
    return MaterializeResult(
        feature_view=feature_view,
        start=start,
        end=end,
        rows=counter.rows,
        seconds=time.perf_counter() - started,
    )


def apply_repo(settings: Settings) -> ApplyResult:
    """Check the offline data exists and register the Feast repo."""
    require_data(settings)
    return apply_features(get_store(settings), settings.feature_repo)


def materialize_feature_view(settings: Settings, feature_view: str, end: datetime) -> MaterializeResult:
    """Materialise one batch view of the repo into Redis up to ``end``."""
    store = get_store(settings)
    return materialize_view(
        store, feature_view, end, settings.materialize_offline_memory_mb, settings.materialize_verify
    )


def views_in_parallel(settings: Settings) -> bool:
    """Whether the materialise flow runs its views at once (the Ray engine) or one after another (local).

    On Ray a view's shards run in Ray's workers and the flow's process mostly waits: the three views at
    once took 0.42-0.50x the time at 100k customers on a local Ray of 2 CPUs (the views' fixed costs
    overlap), and about the same time at 1M (0.95x: the shards fill both CPUs either way). Locally every
    view streams through Feast's one process-wide DuckDB connection (ibis's default backend), which
    refuses a second query while a stream is open ("connection is busy": a threaded run at 1M customers
    failed so), and the Arrow writer's memory cap on it is set for one stream at a time. See
    docs/benchmarks.md, "Task runners".
    """
    return settings.compute_engine == "ray"


def sample_entity_rows(
    settings: Settings, *, n: int = 3, customer_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Entity rows ``{customer_id, zipcode}`` from the latest profile snapshots (given ids, or ``n`` recent ones)."""
    import duckdb

    require_data(settings)
    path = str(settings.data_dir / CUSTOMER_PROFILE_FILE)
    where = f"WHERE customer_id IN ({','.join(str(int(c)) for c in customer_ids)})" if customer_ids else ""
    query = f"""
        SELECT customer_id, arg_max(zipcode, event_timestamp) AS zipcode, max(event_timestamp) AS ts
        FROM read_parquet(?) {where}
        GROUP BY customer_id ORDER BY ts DESC, customer_id LIMIT ?
    """
    limit = len(customer_ids) if customer_ids else n
    rows = duckdb.execute(query, [path, limit]).fetchall()
    found = {row[0] for row in rows}
    missing = [c for c in customer_ids or [] if c not in found]
    if missing:
        raise FeatureRepoError(f"unknown customer_id(s) in the offline data: {missing}")
    return [{"customer_id": int(cid), "zipcode": str(zipcode)} for cid, zipcode, _ in rows]


def get_online_features(store: FeatureStore, entity_rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Online vectors of the versioned feature service: one row per entity row (join keys + features)."""
    service = store.get_feature_service(FEATURE_SERVICE)
    return store.get_online_features(features=service, entity_rows=list(entity_rows)).to_df()


def get_historical_features(store: FeatureStore, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time-correct features for ``entity_df`` (one output row per input row); on Ray when configured."""
    if ray_engine.on_ray(store):
        return ray_engine.historical_features(store, entity_df, FEATURE_SERVICE)
    service = store.get_feature_service(FEATURE_SERVICE)
    return store.get_historical_features(entity_df=entity_df, features=service).to_df()


class _RowCounter:
    """Counts rows the online store wrote during materialisation, and those of the write in flight."""

    def __init__(self) -> None:
        self.rows = 0
        self.in_flight = 0

    @contextlib.contextmanager
    def counting(self, store: FeatureStore) -> Iterator[None]:
        online_store = store._get_provider().online_store  # public hooks expose no row counts
        original = online_store.online_write_batch

        def counted(config, table, data, progress):  # type: ignore[no-untyped-def]
            self.in_flight = len(data)
            result = original(config, table, data, progress)
            self.rows, self.in_flight = self.rows + len(data), 0
            return result

        online_store.online_write_batch = counted  # type: ignore[method-assign]  # counting wrapper, undone below
        try:
            yield
        finally:
            del online_store.online_write_batch


@contextlib.contextmanager
def _importable_repo(repo_path: Path) -> Iterator[None]:
    """Import the repo's files as `feast apply` does (cwd = repo, repo on sys.path), freshly.

    Modules left from an earlier apply are dropped first: the data sources read their paths from
    the environment at import time, and another state dir may be in use now.
    """
    repo_path = repo_path.resolve()
    for file in repo_path.glob("*.py"):
        sys.modules.pop(file.stem, None)
    sys.path.insert(0, str(repo_path))
    try:
        with contextlib.chdir(repo_path):
            yield
    finally:
        sys.path.remove(str(repo_path))


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Feast prints progress bars and colour codes to stdout; keep them out of our logs."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@dataclass(frozen=True)
class FreshData:
    """Newly generated offline data: its summary, how long it took, and whether old feature state was cleared."""

    directory: Path
    summary: DataSummary
    seconds: float
    cleared_feature_state: bool


def generate_fresh_data(settings: Settings, progress: Callable[[int, int], None] | None = None) -> FreshData:
    """Generate the offline data; when it replaces earlier data, clear the Feast registry and online rows first."""
    cleared = has_data(settings) and reset_feature_state(settings)
    started = time.perf_counter()
    summary = generate_data(
        settings.data_dir,
        customers=settings.customers,
        months=settings.months,
        end=settings.data_end_datetime(),
        seed=settings.seed,
        progress=progress,
    )
    return FreshData(settings.data_dir, summary, time.perf_counter() - started, cleared)


def has_data(settings: Settings) -> bool:
    """Whether the offline data exists under the state directory."""
    return (settings.data_dir / LOAN_APPLICATIONS_FILE).is_file()
