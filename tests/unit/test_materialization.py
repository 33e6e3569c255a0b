"""Materialisation failures as users read them: one line, the view, the rows written, no command bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
import redis

from mlstack.features.materialization import (
    MaterializationError,
    _duckdb_memory_cap,
    failed_views_error,
    shortfall_message,
    write_failure,
)
from mlstack.features.redis_writer import ReadBack, RedisWriteError, describe_redis_error

START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
REPLY = "command not allowed when used memory > 'maxmemory'."
# What redis-py's pipeline makes of Redis's reply: the failing command, binary key bytes and all.
PIPELINE_ERROR = redis.exceptions.OutOfMemoryError(
    "Command # 1 (HSET \x02\x00\x00\x00customer_id\x04\x00\x00\x00\x08\x00\x00\x00\xd4\xad mlstack "
    f"_ts:customer_profile \x08\xb4\xfe\x8c\xc9\x06...) of pipeline caused error: {REPLY}"
)


def test_describe_redis_error_drops_the_pipeline_command_and_its_bytes():
    assert describe_redis_error(PIPELINE_ERROR) == f"OutOfMemoryError: {REPLY}"
    assert describe_redis_error(redis.ConnectionError("Connection refused")) == "ConnectionError: Connection refused"
    assert describe_redis_error(redis.ResponseError("bad\x00reply")) == "ResponseError: bad reply"


def test_refused_write_is_one_line_naming_the_view_and_is_not_retried():
    failure = write_failure("customer_profile", START, END, 1_234, PIPELINE_ERROR, unconfirmed=2_000)
    message = str(failure)
    assert isinstance(failure, MaterializationError) and not failure.retryable
    assert message.startswith("materialising 'customer_profile' failed after 1,234 rows were written to Redis")
    assert "a batch of 2,000 rows in flight" in message and f"OutOfMemoryError: {REPLY}" in message
    assert "was not recorded" in message and "\n" not in message
    assert all(char.isprintable() for char in message)
    cause = failure.__cause__
    assert isinstance(cause, RedisWriteError) and cause.refused and cause.__context__ is None  # no binary chain
    assert "Command #" not in str(cause)


def test_failed_views_error_names_each_failed_view_and_the_recorded_ones():
    refused = write_failure("credit_history", START, END, 5, PIPELINE_ERROR)
    lost = write_failure("zipcode_stats", START, END, 0, redis.ConnectionError("Connection reset by peer"))
    error = failed_views_error({"credit_history": refused, "zipcode_stats": lost}, ["customer_profile"])
    message = str(error)
    assert message.startswith("2 of 3 feature views failed (credit_history: materialising 'credit_history' failed")
    assert "; zipcode_stats: materialising 'zipcode_stats' failed" in message
    assert message.endswith("The windows of customer_profile were recorded.")
    assert not error.retryable  # one refused write: a retry of the run would meet the same answer
    assert failed_views_error({"zipcode_stats": lost}, []).retryable
    assert "were recorded" not in str(failed_views_error({"zipcode_stats": KeyError("x")}, []))


def test_lost_connection_is_retried_and_stack_errors_are_chained_as_they_are():
    lost = write_failure("zipcode_stats", START, END, 0, redis.ConnectionError("Connection reset by peer"))
    assert lost.retryable and isinstance(lost.__cause__, RedisWriteError) and not lost.__cause__.refused
    refused = RedisWriteError("Redis refused 5 of a chunk's 10 rows (OutOfMemoryError: ...)", 5, refused=True)
    failure = write_failure("credit_history", START, END, 5, refused)
    assert failure.__cause__ is refused and not failure.retryable
    assert "failed after 5 rows were written to Redis (Redis refused 5 of a chunk's 10 rows" in str(failure)


def test_memory_cap_spills_a_latest_row_query_to_the_same_answer_and_resets_after(tmp_path):
    connection = duckdb.connect()
    snapshots = tmp_path / "snapshots.parquet"  # 1.5M snapshots of 300k entities: ~20 MB of hash table
    connection.execute(
        f"COPY (SELECT i % 300000 AS k, i AS ts, hash(i) AS v FROM range(1500000) r(i)) TO '{snapshots}'"
    )
    latest = (
        "SELECT k, ts, v FROM (SELECT *, row_number() OVER (PARTITION BY k ORDER BY ts DESC) AS rn "
        f"FROM read_parquet('{snapshots}')) WHERE rn = 1"
    )
    default_limit = connection.execute("SELECT current_setting('memory_limit')").fetchone()
    uncapped = sorted(connection.execute(latest).fetchall())

    with _duckdb_memory_cap(connection, 64):
        limit, spill = connection.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
        capped = sorted(connection.execute(latest).fetchall())

    assert limit == "61.0 MiB"  # 64 MB as DuckDB prints it
    assert "mlstack-duckdb-" in spill and Path(spill).is_dir()  # not .tmp in the working directory
    assert capped == uncapped and len(capped) == 300_000
    assert connection.execute("SELECT current_setting('memory_limit')").fetchone() == default_limit


def test_memory_cap_is_enforced_while_the_query_runs(tmp_path):
    connection = duckdb.connect()
    with _duckdb_memory_cap(connection, 16), pytest.raises(duckdb.OutOfMemoryException):
        connection.execute("SELECT list(range) FROM range(10000000)").fetchall()  # no spilling for one list


def test_memory_cap_none_leaves_the_connection_alone():
    connection = duckdb.connect()
    connection.execute("SET memory_limit = '1GB'")
    with _duckdb_memory_cap(connection, None):
        pass
    assert connection.execute("SELECT current_setting('memory_limit')").fetchone() == ("953.6 MiB",)


# --------------------------------------------------------------------------- read-back verification


def test_shortfall_message_names_the_view_expected_and_found_and_that_no_window_was_recorded():
    message = shortfall_message("credit_history", START, END, ReadBack(1_500, 1_000, 2, 0))
    assert message.startswith("materialising 'credit_history': Redis holds 498 of the 1,500 rows written")
    assert "1,000 keys missing, 2 with another or no timestamp, 0 missing feature fields" in message
    assert "_ts:credit_history" in message and "was not recorded" in message and "\n" not in message
    assert ReadBack(5, 1, 2, 1).found == 1 and ReadBack(5, 1, 2, 1) + ReadBack(3) == ReadBack(8, 1, 2, 1)
