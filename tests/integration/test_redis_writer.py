"""The Arrow online-store writer against Feast's own, in a real Redis: same bytes, same windows, same reads.

Every comparison writes the same rows through stock Feast (``type: redis``, Feast's materialisation
engine) into one logical DB and through ``ArrowRedisOnlineStore`` into another, then compares every
key, every field and every value byte for byte, in the order Redis stores the fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Array, Bool, Bytes, Float32, Float64, Int32, Int64, String, UnixTimestamp

from mlstack.features import redis_writer
from mlstack.features.materialization import MaterializationError, arrow_writer, materialize_arrow
from mlstack.features.online_store import EmbeddedRedis, RedisTarget, feast_connection_string, make_client
from mlstack.features.redis_writer import STORE_TYPE, EncodingMismatchError
from mlstack.features.store import BATCH_VIEWS, get_online_features, materialize_view
from mlstack.settings import Settings
from tests.support.factories import fresh_db
from tests.support.feast_repo import differences, dump, generated_data_dir, project_store

pytestmark = pytest.mark.usefixtures("restore_feast_environment")


# --------------------------------------------------------------------------- a repo of every scalar type

TYPED_ROWS = 600
TYPED_FEATURES = [
    Field(name="f_int64", dtype=Int64),
    Field(name="f_int32", dtype=Int32),
    Field(name="f_float64", dtype=Float64),
    Field(name="f_float32", dtype=Float32),
    Field(name="f_string", dtype=String),
    Field(name="f_bool", dtype=Bool),
    Field(name="f_bytes", dtype=Bytes),
    Field(name="f_unix_ts", dtype=UnixTimestamp),
    Field(name="f_int64_list", dtype=Array(Int64)),  # no vectorised encoder: Feast's converter
]


def typed_snapshots(path: Path, now: datetime) -> None:
    """3 snapshots per (account_id, region) with nulls, NaN, -0.0, empty strings, and event-time ties."""
    rng = np.random.default_rng(5)
    n = TYPED_ROWS

    def with_nulls(values: object, kind: pa.DataType | None = None) -> pa.Array:
        return pa.array(values, type=kind, mask=rng.random(n) < 0.15)

    accounts = rng.integers(-(2**40), 2**40, n // 3).repeat(3)  # three snapshots per account
    micros = int(now.timestamp() * 1_000_000) - rng.integers(0, 6 * 86_400_000_000, n)  # within the 7-day ttl
    tied = np.flatnonzero((np.arange(n) % 3 == 2) & (rng.random(n) < 0.3))
    micros[tied] = micros[tied - 1]  # same event time as the account's previous snapshot ...
    created = micros + (np.arange(n) % 3) * 3_600_000_000  # ... so the created time decides
    floats = rng.normal(size=n) * 1e4
    floats[rng.random(n) < 0.1] = np.nan
    floats[rng.random(n) < 0.05] = -0.0
    table = pa.table(
        {
            "account_id": pa.array(accounts),
            "region": pa.array([f"r{a % 7}-é" for a in accounts]),
            "event_timestamp": pa.array(micros, pa.timestamp("us", tz="UTC")),
            "created": pa.array(created, pa.timestamp("us", tz="UTC")),
            "f_int64": with_nulls(rng.integers(-(2**50), 2**50, n)),
            "f_int32": with_nulls(rng.integers(-(2**31), 2**31, n).astype(np.int32)),
            "f_float64": with_nulls(floats),
            "f_float32": with_nulls(rng.normal(size=n).astype(np.float32)),
            "f_string": with_nulls(["" if i % 11 == 0 else "ü" * (i % 40) + str(i) for i in range(n)]),
            "f_bool": with_nulls(rng.random(n) < 0.5),
            "f_bytes": with_nulls([bytes(rng.integers(0, 256, i % 30).astype(np.uint8)) for i in range(n)]),
            "f_unix_ts": with_nulls(rng.integers(-(2**36), 2**36, n), pa.timestamp("us", tz="UTC")),
            "f_int64_list": pa.array([list(range(i % 4)) if i % 5 else None for i in range(n)], pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, path)


def typed_objects(path: Path) -> list:
    source = FileSource(
        name="typed_source", path=str(path), timestamp_field="event_timestamp", created_timestamp_column="created"
    )
    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
    region = Entity(name="region", join_keys=["region"], value_type=ValueType.STRING)
    by_pair = FeatureView(  # two join keys: Feast sorts them by name in the key
        name="typed_by_pair",
        entities=[region, account],
        ttl=timedelta(days=7),
        schema=[Field(name="account_id", dtype=Int64), Field(name="region", dtype=String), *TYPED_FEATURES],
        source=source,
    )
    by_region = FeatureView(  # a string key alone
        name="typed_by_region",
        entities=[region],
        ttl=timedelta(days=7),
        schema=[Field(name="region", dtype=String), *TYPED_FEATURES[:5]],
        source=source,
    )
    return [source, account, region, by_pair, by_region]


def typed_store(directory: Path, target: RedisTarget, store_type: str, data: Path, **online: object) -> FeatureStore:
    """A programmatic Feast repo over the typed data, with its own registry, on ``target``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project="typed",
        provider="local",
        registry=str(directory / "registry.db"),
        offline_store={"type": "duckdb"},
        online_store={
            "type": store_type,
            "connection_string": feast_connection_string(target, Settings(redis_socket_timeout=10.0)),
            **online,
        },
        materialization={"online_write_batch_size": 64, "pull_latest_features": True},
        entity_key_serialization_version=3,
        repo_path=directory,
    )
    store = FeatureStore(config=config)
    store.apply(typed_objects(data))
    return store


@pytest.fixture(scope="module")
def typed_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    now = datetime.now(UTC)
    path = tmp_path_factory.mktemp("typed") / "typed.parquet"
    typed_snapshots(path, now)
    return path, now


@pytest.mark.parametrize(
    "online",
    [{"skip_dedup": True}, {"skip_dedup": False}, {"skip_dedup": True, "key_ttl_seconds": 3600}],
    ids=["skip-dedup", "dedup", "key-ttl"],
)
def test_arrow_writer_matches_feast_bytes_for_every_scalar_type(tmp_path, redis_server, typed_data, online):
    data, _ = typed_data
    stock_db, arrow_db = fresh_db(redis_server), fresh_db(redis_server)
    stock = typed_store(tmp_path / "stock", stock_db, "redis", data, **online)
    arrow = typed_store(tmp_path / "arrow", arrow_db, STORE_TYPE, data, **online)
    end = datetime.now(UTC)
    written = {}
    for view in ("typed_by_pair", "typed_by_region"):
        stock.materialize_incremental(end_date=end, feature_views=[view])
        written[view] = materialize_arrow(arrow, view, end).rows_written
    assert written["typed_by_pair"] > TYPED_ROWS // 4 and written["typed_by_region"] == 7

    expected, actual = dump(stock_db), dump(arrow_db)
    assert len(expected) == written["typed_by_pair"] + written["typed_by_region"]
    assert differences(expected, actual) == []
    assert all(expires == ("key_ttl_seconds" in online) for _, expires in actual.values())
    # The data really holds what the test claims to cover.
    stored = [value for fields, _ in actual.values() for _, value in fields]
    assert b"" in stored  # nulls and NaN
    assert ValueProto(double_val=-0.0).SerializeToString() in stored
    assert ValueProto(string_val="").SerializeToString() in stored

    for view in ("typed_by_pair", "typed_by_region"):
        ours = arrow.get_feature_view(view).materialization_intervals
        theirs = stock.get_feature_view(view).materialization_intervals
        assert [stop for _, stop in ours] == [stop for _, stop in theirs] == [end]
        assert abs(ours[0][0] - theirs[0][0]) < timedelta(seconds=5)  # both now - ttl, a moment apart


def test_feast_online_read_returns_the_arrow_writers_rows(tmp_path, redis_server, typed_data):
    data, _ = typed_data
    stock_db, arrow_db = fresh_db(redis_server), fresh_db(redis_server)
    stock = typed_store(tmp_path / "stock", stock_db, "redis", data, skip_dedup=True)
    arrow = typed_store(tmp_path / "arrow", arrow_db, STORE_TYPE, data, skip_dedup=True)
    end = datetime.now(UTC)
    stock.materialize_incremental(end_date=end, feature_views=["typed_by_pair"])
    materialize_arrow(arrow, "typed_by_pair", end)

    keys = pq.read_table(data, columns=["account_id", "region"]).to_pandas().drop_duplicates()
    rows = [*keys.head(100).to_dict("records"), {"account_id": 12345, "region": "nowhere"}]
    features = [f"typed_by_pair:{field.name}" for field in TYPED_FEATURES]
    ours = arrow.get_online_features(features=features, entity_rows=rows).to_dict()
    theirs = stock.get_online_features(features=features, entity_rows=rows).to_dict()
    assert ours == theirs
    assert sum(value is not None for value in ours["f_string"]) > 50  # most of the 100 rows were found
    assert ours["f_int64"][-1] is None  # the unknown key reads as missing


def test_arrow_writer_holds_one_chunk_at_a_time(tmp_path, redis_server, typed_data):
    """Bounded memory: each chunk is written and acknowledged before the next batch is even read."""
    data, _ = typed_data
    target = fresh_db(redis_server)
    arrow = typed_store(tmp_path / "arrow", target, STORE_TYPE, data, skip_dedup=True)  # 64-row chunks
    table = pq.read_table(data).to_pandas().drop_duplicates(["account_id", "region"], keep="last").head(3 * 64)
    view = arrow.get_feature_view("typed_by_pair")
    client = make_client(target, Settings())
    stored_before_each_batch = []

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(table), 64):
            stored_before_each_batch.append(client.dbsize())
            yield pa.RecordBatch.from_pandas(table.iloc[start : start + 64], preserve_index=False)

    online_store = arrow_writer(arrow)
    assert online_store is not None
    assert online_store.write_arrow_batches(arrow.config, view, batches()) == 3 * 64
    assert stored_before_each_batch == [0, 64, 128]


def test_byte_comparison_detects_a_differently_encoded_value(tmp_path, redis_server, typed_data):
    """Negative control: the comparison the contract rests on must catch a one-value difference."""
    data, _ = typed_data
    stock_db, arrow_db = fresh_db(redis_server), fresh_db(redis_server)
    stock = typed_store(tmp_path / "stock", stock_db, "redis", data, skip_dedup=True)
    arrow = typed_store(tmp_path / "arrow", arrow_db, STORE_TYPE, data, skip_dedup=True)
    end = datetime.now(UTC)
    stock.materialize_incremental(end_date=end, feature_views=["typed_by_region"])
    materialize_arrow(arrow, "typed_by_region", end)
    assert differences(dump(stock_db), dump(arrow_db)) == []

    client = make_client(arrow_db, Settings())
    key = sorted(client.scan_iter())[0]
    field = redis_writer._mmh3("typed_by_region:f_float64")
    value = ValueProto()
    value.ParseFromString(client.hget(key, field))
    assert value.WhichOneof("val") == "double_val"
    # The same number, but as a float (32-bit) value: a plausible encoding bug that a reader could miss.
    client.hset(key, field, ValueProto(float_val=value.double_val).SerializeToString())
    found = differences(dump(stock_db), dump(arrow_db))
    assert [(k, f) for k, f, _, _ in found] == [(key, field)]


def test_arrow_writer_refuses_to_write_when_its_encoding_drifts_from_feast(
    tmp_path, redis_server, typed_data, monkeypatch
):
    """If Feast's format and ours ever differ (a Feast upgrade), the cross-check stops before any write."""
    data, _ = typed_data
    target = fresh_db(redis_server)
    arrow = typed_store(tmp_path / "arrow", target, STORE_TYPE, data, skip_dedup=True)
    real = redis_writer._tagged_fixed

    def off_by_one_tag(tag: int, values: np.ndarray):
        return real(tag + 8, values)  # the next field number: what a renumbered proto would look like

    monkeypatch.setattr(redis_writer, "_tagged_fixed", off_by_one_tag)
    with pytest.raises(MaterializationError, match=r"'typed_by_region' failed after 0 rows were written") as raised:
        materialize_arrow(arrow, "typed_by_region", datetime.now(UTC))
    assert isinstance(raised.value.__cause__, EncodingMismatchError)
    assert "f_float64" in str(raised.value.__cause__)
    assert make_client(target, Settings()).dbsize() == 0
    assert arrow.get_feature_view("typed_by_region").most_recent_end_time is None


# --------------------------------------------------------------------------- the project's repo


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated data ending today, shared by this module's project-repo tests."""
    return generated_data_dir(tmp_path_factory.mktemp("redis-writer-data"), customers=2000, seed=3)


def test_project_views_written_by_the_default_writer_equal_feasts_bytes(tmp_path, redis_server, data_dir):
    stock_db, arrow_db = fresh_db(redis_server), fresh_db(redis_server)
    stock = project_store(tmp_path / "stock", stock_db, data_dir, materialize_writer="feast")
    arrow = project_store(tmp_path / "arrow", arrow_db, data_dir)  # the default writer
    assert arrow_writer(arrow) is not None and arrow_writer(stock) is None
    end = datetime.now(UTC)
    capped = Settings().materialize_offline_memory_mb  # the flow's default: DuckDB spills past it
    ours = [materialize_view(arrow, view, end, capped) for view in BATCH_VIEWS]
    theirs = [materialize_view(stock, view, end) for view in BATCH_VIEWS]
    assert [r.rows for r in ours] == [r.rows for r in theirs] and all(r.rows > 0 for r in ours)
    expected, actual = dump(stock_db), dump(arrow_db)
    assert len(expected) > 2000
    assert differences(expected, actual) == []
    for view in BATCH_VIEWS:
        assert arrow.get_feature_view(view).materialization_intervals[-1][1] == end

    rows = [
        {"customer_id": c, "zipcode": "00000", "loan_amount": 5000.0, "loan_term_months": 36, "loan_purpose": "car"}
        for c in range(1, 200)
    ]
    pd.testing.assert_frame_equal(get_online_features(arrow, rows), get_online_features(stock, rows))


@pytest.mark.parametrize("skip_dedup", [True, False], ids=["skip-dedup", "dedup"])
def test_arrow_rerun_of_a_window_leaves_redis_identical(tmp_path, redis_db, data_dir, skip_dedup):
    store = project_store(tmp_path / "first", redis_db, data_dir, materialize_skip_dedup=skip_dedup)
    end = datetime.now(UTC)
    first = [materialize_view(store, view, end) for view in BATCH_VIEWS]
    before = dump(redis_db)
    assert len(before) > 2000

    # The same window again, from a registry that has not recorded it: every row is rewritten (or,
    # with Feast's dedup, skipped as not newer) and Redis must not change by a byte.
    again = project_store(tmp_path / "again", redis_db, data_dir, materialize_skip_dedup=skip_dedup)
    rerun = [materialize_arrow(again, view, end) for view in BATCH_VIEWS]
    assert [r.rows for r in rerun] == [r.rows for r in first]
    assert [r.rows_written for r in rerun] == ([r.rows for r in first] if skip_dedup else [0, 0, 0])
    assert differences(before, dump(redis_db)) == []

    incremental = [materialize_view(store, view, end) for view in BATCH_VIEWS]  # nothing new
    assert [r.rows for r in incremental] == [0, 0, 0]
    assert differences(before, dump(redis_db)) == []


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[tuple[RedisTarget, redis.Redis]]:
    """A private redis-server this test may starve of memory."""
    server = EmbeddedRedis(tmp_path / "redis", Settings())
    target = server.ensure_running()
    client = make_client(target, Settings())
    try:
        yield target, client
    finally:
        client.close()
        server.stop()


def test_arrow_run_refused_half_way_records_no_window_and_says_how_far_it_got(
    tmp_path, small_redis, redis_server, data_dir
):
    target, client = small_redis
    store = project_store(tmp_path / "state", target, data_dir, materialize_batch_size=50)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 150_000)  # room for a few hundred rows
    end = datetime.now(UTC)

    with pytest.raises(MaterializationError) as raised:
        materialize_view(store, "customer_profile", end)
    message = str(raised.value)
    cause = raised.value.__cause__
    assert isinstance(cause, redis_writer.RedisWriteError)
    written = cause.rows_written
    assert 50 <= written < 1500, message  # some chunks went in, then Redis refused
    assert "'customer_profile'" in message and f"{written:,} rows were written" in message
    assert "OutOfMemoryError" in message and "was not recorded" in message
    assert client.dbsize() == written  # the count is exact: one new key per acknowledged row
    assert store.get_feature_view("customer_profile").most_recent_end_time is None

    client.config_set("maxmemory", 0)
    rerun = materialize_view(store, "customer_profile", end)
    assert rerun.rows > written
    start, stop = store.get_feature_view("customer_profile").materialization_intervals[-1]
    assert stop == end

    reference = fresh_db(redis_server)
    stock = project_store(tmp_path / "reference", reference, data_dir, materialize_writer="feast")
    stock.materialize(start_date=start, end_date=stop, feature_views=["customer_profile"])
    assert differences(dump(reference), dump(target)) == []


def test_read_back_tells_rows_as_written_from_missing_keys_timestamps_and_fields(redis_db):
    client = make_client(redis_db, Settings())
    ts, other = b"\x08\xb4\xfe\x8c\xc9\x06", b"\x08\xb5\xfe\x8c\xc9\x06"
    client.hset(b"as-written", mapping={b"_ts:v": ts, b"f1": b"\x10\x2a", b"f2": b""})  # b"": a null feature
    client.hset(b"other-ts", mapping={b"_ts:v": other, b"f1": b"", b"f2": b""})
    client.hset(b"no-ts", mapping={b"f1": b"", b"f2": b""})
    client.hset(b"no-field", mapping={b"_ts:v": ts, b"f1": b""})
    client.hset(b"other-view-only", mapping={b"_ts:w": ts})
    keys = [b"as-written", b"other-ts", b"no-ts", b"no-field", b"gone", b"other-view-only"]
    checked = redis_writer.read_back(
        client, b"_ts:v", [b"f1", b"f2"], pa.array(keys, pa.binary()), pa.array([ts] * len(keys), pa.binary())
    )
    assert checked == redis_writer.ReadBack(expected=6, missing_keys=2, wrong_timestamps=2, missing_fields=1)
    assert checked.found == 1
    with pytest.raises(ValueError, match="1 timestamps for 2 keys"):
        redis_writer.read_back(client, b"_ts:v", [], pa.array(keys[:2], pa.binary()), pa.array([ts], pa.binary()))
