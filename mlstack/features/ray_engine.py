"""The Ray engine's feature work: point-in-time joins and materialisation as Ray tasks, Feast's DuckDB store in each.

Feast 0.67's own Ray engine does neither correctly here (measured; tests/integration/test_ray_features.py
keeps the evidence as negative controls):

- its offline store's point-in-time join ignores feature view TTLs (a snapshot months old is joined
  where DuckDB and the reference return null) and truncates entity timestamps to whole seconds;
- its ``ray.engine`` materialisation catches and logs every write error, then records the window;
- its latest-row read is right but ran 134 s for 1,500 customers on 2 CPUs (a Ray Data groupby shuffle).

So the work is cut into shards and each Ray task runs Feast's DuckDB offline store on its shard:
entity rows for a join (a row's features depend on that row alone), entity keys for materialisation
(a hash of the join key, filtered after Feast's latest-row query). The shards' answers concatenated
are Feast's DuckDB answer, row for row. Workers read the FileSources' paths and the SQL registry
themselves: on a multi-node cluster both must be reachable from every node (shared storage, a
PostgreSQL registry).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView, RepoConfig

from mlstack.compute import FEAST_ENGINES, ComputeEngineError
from mlstack.errors import StackError
from mlstack.features.materialization import PartialWrite, Shard, WritePass, WrittenRows, write_latest_rows
from mlstack.features.redis_writer import RedisWriteError

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)

LOCAL_ENGINE = FEAST_ENGINES["local"]
MIN_JOIN_SHARD_ROWS = 5_000  # below this a shard's fixed cost (a worker's Feast store, ~1 s) outweighs the join


def on_ray(store: FeatureStore) -> bool:
    """Whether the store was configured for the Ray engine (``MLSTACK_COMPUTE_ENGINE=ray``)."""
    return bool(store.config.offline_store.type == FEAST_ENGINES["ray"].offline_store)


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time features of ``entity_df`` joined on Ray: one task per shard of rows, DuckDB's join in each.

    The same frame as Feast's DuckDB store returns (one output row per input row, same dtypes): each shard
    returns Arrow, converted once, as ``RetrievalJob.to_df`` does.
    """
    import ray

    shards = _shard_count(len(entity_df), MIN_JOIN_SHARD_ROWS)
    config = ray.put(worker_config(store.config))
    bounds = [len(entity_df) * i // shards for i in range(shards + 1)]
    tasks = [
        _remote(_join_shard).remote(config, feature_service, entity_df.iloc[low:high])
        for low, high in itertools.pairwise(bounds)
    ]
    tables = ray.get(tasks)
    return pa.concat_tables(tables).to_pandas().reset_index(drop=True)


def write_pass(shards: int | None = None) -> WritePass:
    """A materialisation write pass on Ray: one task per shard of entity keys (default: one per Ray CPU).

    Every task runs to its end; if any failed, PartialWrite carries the rows all of them had written and
    the first failure as its cause (a RedisWriteError, refused or not, with the task's message).
    """

    def run(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> WrittenRows:
        import ray

        count = shards or _shard_count(None, 1)
        config = ray.put(worker_config(store.config))
        refs: list[ObjectRef[ShardOutcome]] = [
            _remote(_write_shard).remote(config, view.name, start, end, Shard(i, count)) for i in range(count)
        ]
        outcomes: list[ShardOutcome] = ray.get(refs)
        nodes = sorted({outcome.node for outcome in outcomes})
        log.info("%s: %d shard(s) written on %d Ray node(s): %s", view.name, count, len(nodes), ", ".join(nodes))
        failed = [outcome for outcome in outcomes if outcome.error is not None]
        written = WrittenRows.combine([outcome.rows for outcome in outcomes])
        if failed:
            first = failed[0]
            shards_failed = f"{len(failed)} of {count} Ray shards failed; first: " if count > 1 else ""
            cause = RedisWriteError(f"{shards_failed}{first.error}", written.written, refused=first.refused)
            raise PartialWrite(f"{view.name}: failed after {written.written:,} rows", written.written) from cause
        return written

    return run


@dataclass(frozen=True)
class ShardOutcome:
    """One shard's write pass as it returns from Ray: the rows acknowledged, and its failure if it failed.

    Failures travel as text (not exceptions): Ray re-raises a worker's exception as a RayTaskError, whose
    own message and traceback would bury Redis's answer.
    """

    rows: WrittenRows
    node: str  # the Ray node id of the worker that ran the shard
    error: str | None = None
    refused: bool = False


def worker_config(config: RepoConfig) -> RepoConfig:
    """The repo's configuration for a Ray worker: Feast's DuckDB offline store and local batch engine."""
    local = copy.deepcopy(config)
    local.offline_config = {"type": LOCAL_ENGINE.offline_store}
    local._offline_store = None  # RepoConfig builds the store config from offline_config lazily
    local.batch_engine_config = LOCAL_ENGINE.batch_engine
    local._batch_engine = None
    return local


def _join_shard(config: RepoConfig, feature_service: str, entity_df: pd.DataFrame) -> pa.Table:
    """DuckDB's point-in-time join of one shard of entity rows (the on-demand views applied), as Arrow."""
    store = FeatureStore(config=config)
    service = store.get_feature_service(feature_service)
    return store.get_historical_features(entity_df=entity_df, features=service).to_arrow()


def _write_shard(config: RepoConfig, view_name: str, start: datetime, end: datetime, shard: Shard) -> ShardOutcome:
    """The write pass of one shard of the view's entity keys, in a Ray worker."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    store = FeatureStore(config=config)
    view = store.registry.get_feature_view(view_name, store.project)
    try:
        return ShardOutcome(write_latest_rows(store, view, start, end, shard=shard), node)
    except PartialWrite as exc:
        cause = exc.__cause__
        refused = isinstance(cause, RedisWriteError) and cause.refused
        reason = str(cause) if isinstance(cause, StackError) else f"{type(cause).__name__}: {cause}"
        empty = pa.array([], pa.binary())
        return ShardOutcome(WrittenRows(0, exc.rows_written, empty, empty), node, reason, refused)


def _shard_count(rows: int | None, min_rows: int) -> int:
    """Shards for the Ray CPUs this process sees: one per CPU, fewer if a shard would hold under ``min_rows``."""
    import ray

    if not ray.is_initialized():
        raise ComputeEngineError("the Ray engine's feature work needs Ray: call mlstack.compute.ensure_ray first")
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return cpus if rows is None else max(1, min(cpus, rows // min_rows))


@functools.cache
def _remote(function: Any) -> Any:
    """``ray.remote(function)``, made once per process (Ray exports a function each time it is wrapped)."""
    import ray

    return ray.remote(max_retries=0)(function)  # a retried write would double-count rows; the flow retries
