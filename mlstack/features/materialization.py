"""Incremental materialisation through the Arrow writer, with the semantics of Feast's own.

``FeatureStore.materialize_incremental`` (Feast 0.67, local provider) does, per feature view:
window start = the last recorded end, else now - ttl (now - 52 weeks for a zero ttl); the offline
store's ``pull_latest_from_table_or_query`` over the view's join keys, features, timestamp and
created-timestamp columns (latest row per entity, ties broken by the created timestamp); per-row
protobuf conversion and ``online_write_batch``; then ``registry.apply_materialization(view,
project, start, end)``, with the view's lifecycle state moved to MATERIALIZING and back on failure.

``materialize_arrow`` does the same steps with the same registry calls, so ``feast`` and mlstack see
the same intervals, but streams the offline result as Arrow record batches (DuckDB's cursor, one
chunk in memory at a time) into ``ArrowRedisOnlineStore.write_arrow_batches``. The window is
recorded only after every chunk was acknowledged by Redis and, read back, Redis holds every row as
written (its ``_ts:<view>`` and feature fields): a server that lost acknowledged writes (a restart
without persistence) fails the run instead of leaving a recorded window with missing vectors. The
Ray engine (``mlstack.features.ray_engine``) runs the same write pass on Ray, one task per shard.
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import duckdb
import pyarrow as pa
import redis
from feast import FeatureStore, FeatureView, utils
from feast.feature_view import FeatureViewState
from feast.infra.offline_stores.offline_store import RetrievalJob

from mlstack.errors import StackError
from mlstack.features.redis_writer import (
    DEFAULT_CHUNK_ROWS,
    ArrowRedisOnlineStore,
    EncodedRows,
    ReadBack,
    RedisWriteError,
    ViewEncoder,
    describe_redis_error,
    read_back,
)

log = logging.getLogger(__name__)


class MaterializationError(StackError):
    """A materialisation failed part-way; the message names the view and the rows already written.

    ``retryable`` is False when Redis refused the writes (out of memory, read-only): a retry would
    only meet the same answer and report fewer rows written than the first attempt.
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def write_failure(
    feature_view: str, start: datetime, end: datetime, rows_written: int, exc: BaseException, unconfirmed: int = 0
) -> MaterializationError:
    """The one-line error of a materialisation that failed after ``rows_written`` rows reached Redis.

    ``unconfirmed``: rows of a write in flight that Redis may have kept in part (Feast's writer sends a
    batch as one pipeline and reports only its first error). A Redis error is described, and chained
    as the cause (``__cause__``), without the command bytes redis-py quotes; other errors as they are.
    """
    cause = exc
    if isinstance(exc, redis.RedisError):
        cause = RedisWriteError(describe_redis_error(exc), rows_written, refused=isinstance(exc, redis.ResponseError))
    reason = str(cause) if isinstance(cause, StackError) else f"{type(cause).__name__}: {cause}"
    in_flight = f", and a batch of {unconfirmed:,} rows in flight may be written in part" if unconfirmed else ""
    failure = MaterializationError(
        f"materialising {feature_view!r} failed after {rows_written:,} rows were written to Redis{in_flight} "
        f"({reason}). The window {start.isoformat()} -> {end.isoformat()} was not recorded; a rerun rewrites it.",
        retryable=not (isinstance(cause, RedisWriteError) and cause.refused),
    )
    failure.__cause__ = cause  # raise it `from failure.__cause__`: the original (binary) context stays hidden
    return failure


def failed_views_error(failures: Mapping[str, BaseException | None], recorded: Sequence[str]) -> MaterializationError:
    """The one error of a run in which ``failures`` (view -> its error) failed and ``recorded`` views completed.

    Retryable unless one of the failures is not (Redis refused the writes): a rerun would meet the same answer.
    """
    reasons = "; ".join(f"{view}: {error}" for view, error in failures.items())
    kept = f" The windows of {', '.join(recorded)} were recorded." if recorded else ""
    retryable = all(not isinstance(error, MaterializationError) or error.retryable for error in failures.values())
    return MaterializationError(
        f"{len(failures)} of {len(failures) + len(recorded)} feature views failed ({reasons}).{kept}", retryable
    )


@dataclass(frozen=True)
class ArrowMaterialization:
    """One view materialised by the Arrow writer: the recorded window, the rows read and written, the read-back."""

    feature_view: str
    start: datetime
    end: datetime
    rows: int  # rows handed to the writer (latest per entity in the window)
    rows_written: int  # rows Redis acknowledged (fewer only when Feast's timestamp dedup skipped some)
    verified: ReadBack | None = None  # what Redis held for them afterwards (None: not verified)


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` disjoint parts of a view's entities (by a hash of the first join key)."""

    index: int
    count: int


@dataclass(frozen=True)
class WrittenRows:
    """What one write pass handed to Redis, what Redis acknowledged, and the keys and ``_ts`` values acknowledged."""

    handed: int
    written: int
    keys: pa.Array  # binary: the Redis keys of the acknowledged rows
    timestamps: pa.Array  # binary: the ``_ts:<view>`` value written to each

    @staticmethod
    def combine(parts: Sequence[WrittenRows]) -> WrittenRows:
        """The passes of several shards as one."""
        keys = pa.concat_arrays([part.keys for part in parts]) if parts else pa.array([], pa.binary())
        stamps = pa.concat_arrays([part.timestamps for part in parts]) if parts else pa.array([], pa.binary())
        return WrittenRows(sum(p.handed for p in parts), sum(p.written for p in parts), keys, stamps)


class PartialWrite(StackError):
    """A write pass failed after ``rows_written`` rows were acknowledged; the cause is chained (``__cause__``)."""

    def __init__(self, message: str, rows_written: int) -> None:
        super().__init__(message)
        self.rows_written = rows_written


WritePass = Callable[[FeatureStore, FeatureView, datetime, datetime], WrittenRows]


def arrow_writer(store: FeatureStore) -> ArrowRedisOnlineStore | None:
    """The store's online store if it is the Arrow writer (``ArrowRedisOnlineStore``), else None."""
    online_store = store._get_provider().online_store  # no public accessor; the provider owns it
    return online_store if isinstance(online_store, ArrowRedisOnlineStore) else None


def materialize_arrow(
    store: FeatureStore,
    feature_view: str,
    end: datetime,
    offline_memory_mb: int | None = None,
    *,
    write: WritePass | None = None,
    verify: bool = True,
) -> ArrowMaterialization:
    """Materialise one batch view incrementally up to ``end`` through the Arrow writer; verify; record the window.

    ``write`` does the writing (default: this process, ``write_latest_rows`` with DuckDB's memory capped at
    ``offline_memory_mb``; the Ray engine passes its sharded pass). With ``verify`` every acknowledged row
    is read back (its ``_ts:<view>`` and feature fields) before the window is recorded. Raises
    MaterializationError (window not recorded, the view's state restored) if a write fails or Redis
    does not hold every row.
    """
    if arrow_writer(store) is None:
        raise StackError(f"the online store of this repo is not {ArrowRedisOnlineStore.__name__}")
    view = _batch_view(store, feature_view)
    start = incremental_start(view)
    end = utils.make_tzaware(end)
    write = write or functools.partial(write_latest_rows, memory_mb=offline_memory_mb, keep_rows=verify)
    previous_state = _enter_materializing(store, view)
    try:
        written = write(store, view, start, end)
    except Exception as exc:
        _restore_state(store, view, previous_state)
        if isinstance(exc, PartialWrite) and exc.__cause__ is not None:
            failure = write_failure(feature_view, start, end, exc.rows_written, exc.__cause__)
        else:
            failure = write_failure(feature_view, start, end, 0, exc)
        raise failure from failure.__cause__
    checked = None
    if verify:
        try:
            checked = verify_written(store, view, written)
        except Exception as exc:
            _restore_state(store, view, previous_state)
            failure = write_failure(feature_view, start, end, written.written, exc)
            raise failure from failure.__cause__
        if checked.found != written.written:
            _restore_state(store, view, previous_state)
            raise MaterializationError(shortfall_message(feature_view, start, end, checked))
    store.registry.apply_materialization(view, store.project, start, end)
    _precompute_services(store, feature_view)
    return ArrowMaterialization(feature_view, start, end, written.handed, written.written, checked)


def write_latest_rows(
    store: FeatureStore,
    view: FeatureView,
    start: datetime,
    end: datetime,
    memory_mb: int | None = None,
    shard: Shard | None = None,
    keep_rows: bool = True,
) -> WrittenRows:
    """Stream the latest row per entity in [start, end] (of ``shard``'s entities) into the Arrow writer.

    Returns the rows handed and acknowledged, with the keys and ``_ts`` acknowledged when ``keep_rows``
    (what a read-back needs; without it memory stays flat in the number of entities, the keys empty).
    Raises PartialWrite (the rows acknowledged before the failure; the original error as its cause).
    """
    writer = arrow_writer(store)
    if writer is None:
        raise StackError(f"the online store of this repo is not {ArrowRedisOnlineStore.__name__}")
    handed = acknowledged = 0
    keys: list[pa.Array] = []
    stamps: list[pa.Array] = []
    stream = _latest_batches(store, view, start, end, memory_mb, shard)

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal handed
        for batch in stream:
            handed += batch.num_rows
            yield batch

    def progress(rows: int) -> None:
        nonlocal acknowledged
        acknowledged += rows

    def keep(rows: EncodedRows) -> None:
        keys.append(rows.keys)
        stamps.append(rows.timestamps)

    try:
        written = writer.write_arrow_batches(store.config, view, counted(), progress, keep if keep_rows else None)
    except Exception as exc:
        rows = exc.rows_written if isinstance(exc, RedisWriteError) else acknowledged
        raise PartialWrite(f"{view.name}: failed after {rows:,} rows", rows) from exc
    finally:
        stream.close()  # an unfinished DuckDB result would block the connection's next query
    return WrittenRows.combine([WrittenRows(handed, written, _concat(keys), _concat(stamps))])


def verify_written(store: FeatureStore, view: FeatureView, written: WrittenRows) -> ReadBack:
    """Read every acknowledged row back from Redis: its ``_ts:<view>`` must be the value written, its fields present."""
    writer = arrow_writer(store)
    if writer is None:
        raise StackError(f"the online store of this repo is not {ArrowRedisOnlineStore.__name__}")
    client = writer._get_client(store.config.online_store)  # Feast's own (cached) client for this config
    encoder = ViewEncoder(store.config, view)
    return read_back(client, encoder.ts_field, encoder.feature_fields, written.keys, written.timestamps)


def shortfall_message(feature_view: str, start: datetime, end: datetime, checked: ReadBack) -> str:
    """The error of a materialisation whose rows Redis does not hold as written: expected vs found, and how."""
    return (
        f"materialising {feature_view!r}: Redis holds {checked.found:,} of the {checked.expected:,} rows written "
        f"with the expected _ts:{feature_view} ({checked.missing_keys:,} keys missing, {checked.wrong_timestamps:,} "
        f"with another or no timestamp, {checked.missing_fields:,} missing feature fields): Redis lost or changed "
        f"writes it had acknowledged (restarted without persistence? evicted? another writer?). The window "
        f"{start.isoformat()} -> {end.isoformat()} was not recorded; a rerun rewrites it."
    )


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.binary())


def incremental_start(view: FeatureView) -> datetime:
    """Where ``materialize_incremental`` starts: the last recorded end, else now - ttl (52 weeks if ttl is 0)."""
    start = view.most_recent_end_time
    if start is None:
        if view.ttl is None:
            raise StackError(
                f"No start time found for feature view {view.name}: incremental materialisation needs a ttl "
                "or an earlier materialisation"
            )
        start = datetime.now(UTC) - (view.ttl if view.ttl.total_seconds() > 0 else timedelta(weeks=52))
    return utils.make_tzaware(start)


def _batch_view(store: FeatureStore, name: str) -> FeatureView:
    """The registered view, refused (as Feast refuses) if it is not an enabled online batch view."""
    view = store.registry.get_feature_view(name, store.project)
    if not view.online:
        raise StackError(f"feature view {name!r} is not online: nothing to materialise")
    if hasattr(view, "enabled") and not view.enabled:
        raise StackError(f"FeatureView {name} is disabled. Enable it before materializing.")
    if getattr(view, "feature_transformation", None) or getattr(view, "aggregations", None):
        raise StackError(
            f"feature view {name!r} has a transformation or aggregations, which the Arrow writer does not "
            "apply: materialise it with MLSTACK_MATERIALIZE_WRITER=feast"
        )
    return view


def _latest_batches(
    store: FeatureStore, view: FeatureView, start: datetime, end: datetime, memory_mb: int | None, shard: Shard | None
) -> Generator[pa.RecordBatch, None, None]:
    """The offline store's latest row per entity in [start, end] (of ``shard``'s entities), as record batches."""
    if view.batch_source is None:
        raise StackError(f"feature view {view.name!r} has no batch source to materialise from")
    entities = [store.registry.get_entity(name, store.project) for name in view.entities]
    join_keys, features, timestamp, created = utils._get_column_names(view, entities)  # what Feast's engine reads
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config,
        data_source=view.batch_source,
        join_key_columns=join_keys,
        feature_name_columns=features,
        timestamp_field=timestamp,
        created_timestamp_column=created,
        start_date=start,
        end_date=end,
    )
    chunk_rows = store.config.materialization_config.online_write_batch_size or DEFAULT_CHUNK_ROWS
    yield from _stream(job, chunk_rows, view.batch_source.field_mapping, memory_mb, shard, join_keys[0])


def _stream(
    job: RetrievalJob,
    chunk_rows: int,
    mapping: dict[str, str] | None,
    memory_mb: int | None = None,
    shard: Shard | None = None,
    shard_key: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The job's result a chunk at a time: DuckDB's cursor for DuckDB (ibis) jobs, else its Arrow table.

    ibis's own ``to_pyarrow_batches`` calls a cursor method DuckDB 2 removed, so the job's query is
    compiled by its ibis backend and run on that backend's DuckDB connection; batches are cast to
    the query's schema, as ibis's ``to_pyarrow`` (what Feast's engine calls) does. Until the stream
    is exhausted or closed, that (process-wide) connection runs no other query, which is why its
    memory cap (``memory_mb``) can be set for the stream alone and reset after. A ``shard`` keeps the
    rows whose ``shard_key`` (a join key) hashes to it: the filter applies to the latest rows, so it cuts Feast's
    answer into disjoint parts without changing any row.
    """
    query: Any = getattr(job, "table", None)
    backend: Any = query.get_backend() if hasattr(query, "get_backend") else None
    connection = getattr(backend, "con", None)
    if shard is not None:
        if connection is None or not hasattr(connection, "sql"):
            raise StackError("sharded materialisation needs the DuckDB offline store (an ibis query to filter)")
        key = query[shard_key]
        query = query.filter((key.hash() % shard.count + shard.count) % shard.count == shard.index)
    if connection is None or not hasattr(connection, "sql"):
        for batch in job.to_arrow().to_batches(max_chunksize=chunk_rows):
            yield _renamed(batch, mapping)
        return
    schema = query.schema().to_pyarrow()
    with _duckdb_memory_cap(connection, memory_mb):
        reader = connection.sql(backend.compile(query)).to_arrow_reader(chunk_rows)
        try:
            for batch in reader:
                yield _renamed(batch if batch.schema == schema else batch.cast(schema), mapping)
        finally:
            reader.close()


def _renamed(batch: pa.RecordBatch, mapping: dict[str, str] | None) -> pa.RecordBatch:
    """Source columns renamed by the source's field mapping, as Feast's source-read node does."""
    if not mapping:
        return batch
    return batch.rename_columns([mapping.get(name, name) for name in batch.schema.names])


def _enter_materializing(store: FeatureStore, view: FeatureView) -> FeatureViewState | None:
    """Feast's lifecycle step before writing: move the view to MATERIALIZING; return the state to restore."""
    previous = getattr(view, "state", None)
    if previous == FeatureViewState.MATERIALIZING:
        return FeatureViewState.GENERATED
    if previous is not None and previous != FeatureViewState.STATE_UNSPECIFIED:
        if not previous.can_transition_to(FeatureViewState.MATERIALIZING):
            raise ValueError(f"FeatureView {view.name} cannot transition from {previous.name} to MATERIALIZING.")
        view.state = FeatureViewState.MATERIALIZING
        store.registry.apply_feature_view(view, store.project, commit=True)
    return previous


def _restore_state(store: FeatureStore, view: FeatureView, previous: FeatureViewState | None) -> None:
    if previous is not None and previous != FeatureViewState.STATE_UNSPECIFIED:
        view.state = previous
        store.registry.apply_feature_view(view, store.project, commit=True)


def _precompute_services(store: FeatureStore, feature_view: str) -> None:
    """Refresh precomputed vectors of services that use the view, as Feast does after materialising."""
    for service in store.registry.list_feature_services(store.project):
        if getattr(service, "precompute_online", False) and feature_view in {
            p.name for p in service.feature_view_projections
        }:
            try:
                store.precompute_feature_service(service.name)
            except Exception:
                log.warning("Failed to precompute vectors for service %r", service.name, exc_info=True)


@contextmanager
def _duckdb_memory_cap(connection: Any, memory_mb: int | None) -> Iterator[None]:
    """Cap a DuckDB connection's memory for one query (it spills beyond the cap); reset the cap after.

    The latest-row-per-entity query holds a hash table of every entity without a cap (~340 MB at 1M
    customers); capped, DuckDB spills the partitions it cannot hold, so memory stays flat. Neither
    Feast nor ibis sets a limit on their connection, so it goes back to DuckDB's default (a SET of
    the value read back would drift: DuckDB prints 18.8 GiB for what it stores as 18.75).
    """
    if memory_mb is None:
        yield
        return
    _use_private_spill_directory(connection)
    connection.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
    try:
        yield
    finally:
        connection.execute("RESET memory_limit")


def _use_private_spill_directory(connection: Any) -> None:
    """Spill into a directory of this process's own, not DuckDB's default ``.tmp`` in the working directory.

    DuckDB cannot move a temp directory it has already used; then it keeps spilling where it did.
    """
    try:
        connection.execute(f"SET temp_directory = '{_spill_directory()}'")
    except duckdb.NotImplementedException:
        log.debug("DuckDB's temp directory is in use already; spilling stays where it was")


@cache
def _spill_directory() -> str:
    """A temp directory for this process's DuckDB spill files, removed at exit."""
    path = tempfile.mkdtemp(prefix="mlstack-duckdb-")
    atexit.register(shutil.rmtree, path, True)
    return path
