"""Materialisation throughput: the stack's Feast path vs a plain pipelined redis-py HSET.

Both write the same rows (latest snapshot per customer within each view's TTL, customer_profile +
credit_history = 10 features per customer) into the same Redis server, on different logical DBs.

    uv run python -m benchmarks.materialize --customers 100000 --customers 1000000

Variants, all in one process run:
- stack (tuned): `mlstack.features.materialize_view` per view with the stack's settings: what the
  `materialize-features` flow's tasks call (Prefect's own orchestration is not in the timing);
- stack (Feast defaults): the same with Feast's stock options (full pull, timestamp dedup, one batch);
- baseline: DuckDB reads the same latest rows, then pipelined `HSET` of plain values, 10k per batch.
Ratios are rows/s of a stack variant ÷ rows/s of the baseline's write alone (the issue's yardstick)
and ÷ the baseline's read + write (the same whole job).
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import redis

from benchmarks.common import BENCH_ROOT, prepare
from mlstack.features.online_store import RedisTarget, make_client, resolve_redis
from mlstack.features.store import apply_features, get_online_features, get_store, materialize_view
from mlstack.settings import Settings

VIEWS = {"customer_profile": 90, "credit_history": 45}  # view -> TTL days (as in feature_store/)
BATCH = 10_000


@dataclass
class Timing:
    """One variant's result."""

    variant: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def run_stack(settings: Settings, target: RedisTarget, end: datetime, label: str) -> Timing:
    """Fresh registry and empty DB, apply (untimed), then time materialising both customer views."""
    shutil.rmtree(settings.feast_dir, ignore_errors=True)
    admin_client(target, settings).flushdb()
    store = get_store(settings, target)
    apply_features(store, settings.feature_repo)
    rows, seconds = 0, 0.0
    for view in VIEWS:
        result = materialize_view(store, view, end)
        rows += result.rows
        seconds += result.seconds
    return Timing(label, rows, seconds)


def admin_client(target: RedisTarget, settings: Settings) -> redis.Redis:
    """A client for bulk work: FLUSHDB of a million keys takes longer than the serving timeouts."""
    return make_client(target, settings.model_copy(update={"redis_socket_timeout": 120.0}))


def read_latest(settings: Settings, view: str, ttl_days: int, end: datetime) -> pd.DataFrame:
    """The rows a materialisation writes: latest snapshot per customer in [end - ttl, end]."""
    query = """
        SELECT * EXCLUDE (rn, event_timestamp, created_timestamp) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY customer_id ORDER BY event_timestamp DESC, created_timestamp DESC) AS rn
            FROM read_parquet(?) WHERE event_timestamp >= ? AND event_timestamp <= ?
        ) WHERE rn = 1
    """
    path = str(settings.data_dir / f"{view}.parquet")
    frame = duckdb.execute(query, [path, end - timedelta(days=ttl_days), end]).df()
    return frame.drop(columns=["zipcode"], errors="ignore")


def run_baseline(settings: Settings, target: RedisTarget, end: datetime) -> tuple[Timing, Timing]:
    """Plain redis-py: read with DuckDB, then pipelined HSET of {feature: value} per customer."""
    client = admin_client(target, settings)
    client.flushdb()
    read_s = write_s = 0.0
    rows = 0
    for view, ttl in VIEWS.items():
        started = time.perf_counter()
        frame = read_latest(settings, view, ttl, end)
        records = frame.to_dict("records")
        read_s += time.perf_counter() - started
        started = time.perf_counter()
        for i in range(0, len(records), BATCH):
            with client.pipeline(transaction=False) as pipe:
                for record in records[i : i + BATCH]:
                    key = f"{view}:{record.pop('customer_id')}"
                    pipe.hset(key, mapping={k: v for k, v in record.items() if v is not None})
                pipe.execute()
        write_s += time.perf_counter() - started
        rows += len(records)
    return Timing("baseline: HSET only", rows, write_s), Timing("baseline: read + HSET", rows, read_s + write_s)


def verify_online(settings: Settings, target: RedisTarget, end: datetime, sample: int = 2000) -> int:
    """Read a sample through the stock Feast SDK and compare with the offline latest values."""
    latest = read_latest(settings, "credit_history", VIEWS["credit_history"], end).set_index("customer_id")
    ids = latest.index.to_series().sample(min(sample, len(latest)), random_state=0).tolist()
    rows = [
        {
            "customer_id": int(c),
            "zipcode": "00000",
            "loan_amount": 1.0,
            "loan_term_months": 36,
            "loan_purpose": "other",
        }
        for c in ids
    ]
    online = get_online_features(get_store(settings, target), rows).set_index("customer_id")
    mismatches = 0
    for column in latest.columns:
        expected = latest.loc[ids, column].to_numpy()
        got = online.loc[ids, column].to_numpy()
        mismatches += int((expected != got).sum())
    return mismatches


def report(customers: int, timing: Timing, hset_only: Timing, read_hset: Timing) -> None:
    """One markdown row, printed as soon as the variant is done."""
    print(
        f"| {customers:,} | {timing.variant} | {timing.rows:,} | {timing.seconds:.2f} | {timing.rate:,.0f} "
        f"| {timing.rate / hset_only.rate:.2f} | {timing.rate / read_hset.rate:.2f} |",
        flush=True,
    )


def main() -> None:
    """Run every variant for each size and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="sizes (repeatable); default 100000")
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    args = parser.parse_args()
    print("| customers | variant | rows | seconds | rows/s | ÷ HSET only | ÷ read + HSET |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for customers in args.customers or [100_000]:
        settings = prepare(customers, args.root)
        base_target = resolve_redis(settings)
        stack_target, plain_target = base_target.with_db(1), base_target.with_db(2)
        end = datetime.now(UTC)
        hset_only, read_hset = run_baseline(settings, plain_target, end)
        for timing in (hset_only, read_hset, run_stack(settings, stack_target, end, "stack (tuned)")):
            report(customers, timing, hset_only, read_hset)
        mismatches = verify_online(settings, stack_target, end)
        stock = {"materialize_pull_latest": False, "materialize_skip_dedup": False, "materialize_batch_size": None}
        report(
            customers,
            run_stack(settings.model_copy(update=stock), stack_target, end, "stack (Feast defaults)"),
            hset_only,
            read_hset,
        )
        print(
            f"\nonline check ({customers:,}): {mismatches} mismatching values in a 2,000-customer sample "
            "read through the Feast SDK\n",
            flush=True,
        )
        for target in (stack_target, plain_target):
            admin_client(target, settings).flushdb()


if __name__ == "__main__":
    main()
