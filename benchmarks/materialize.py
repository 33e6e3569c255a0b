"""Materialisation throughput and memory: Feast's writer vs the Arrow writer vs a plain pipelined redis-py HSET.

All variants write the same rows (latest snapshot per customer within each view's TTL,
customer_profile + credit_history = 10 features per customer) into the same Redis server, on
different logical DBs, over the same window [end - ttl, end]: the stack variants' registries are
seeded with a run that ended at end - ttl, so their incremental windows do not drift with the time
each variant starts (a fresh registry would start at *its* now - ttl).

    uv run python -m benchmarks.materialize --customers 100000 --customers 1000000

Variants, all in one run, each in its own child process, so each peak RSS is its own (the child's
VmHWM after the work; "RSS before" is the same mark when the timed work starts: imports, apply):
- baseline: DuckDB reads the same latest rows, then pipelined `HSET` of plain values, 10k per batch;
  reported as the write alone ("HSET only", the issue's yardstick) and as read + write;
- stack, arrow writer: `mlstack.features.store.materialize_view` per view with the stack's default
  settings (`MLSTACK_MATERIALIZE_WRITER=arrow`): what the `materialize-features` flow's tasks call;
- stack, Feast writer: the same with `MLSTACK_MATERIALIZE_WRITER=feast` (Feast's engine and Redis
  writer, the stack's tuned options: pull-latest, skip-dedup, 10k-row batches);
- stack, arrow writer with DuckDB uncapped (`--variant arrow-uncapped`): the same without
  `MLSTACK_MATERIALIZE_OFFLINE_MEMORY_MB` (DuckDB's default memory limit), to show the cap's cost;
- stack, Feast defaults (`--variant feast-defaults`): Feast's stock options (full pull, timestamp
  dedup, one batch).
Ratios are rows/s of a variant ÷ rows/s of the baseline's write alone and ÷ the baseline's read +
write (the same whole job). Prefect's orchestration and `feast apply` are not timed.

Checks: the Feast writer's DB and the arrow writer's DB are compared key by key, field by field,
byte for byte (every key, streamed); 2,000 random customers are read back from the arrow writer's
DB through the stock Feast SDK and compared with the offline latest values; the baseline DB holds
one key per row.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import duckdb
import pandas as pd
import redis

from benchmarks.common import BENCH_ROOT, prepare, seed_windows
from mlstack.features.online_store import RedisTarget, make_client, resolve_redis
from mlstack.features.store import apply_features, get_online_features, get_store, materialize_view
from mlstack.settings import PROJECT_ROOT, Settings

VIEWS = {"customer_profile": 90, "credit_history": 45}  # view -> TTL days (as in feature_store/)
BATCH = 10_000
DBS = {"feast": 1, "feast-defaults": 1, "arrow": 2, "baseline": 3, "arrow-uncapped": 4}
STOCK_OPTIONS = {"materialize_pull_latest": False, "materialize_skip_dedup": False, "materialize_batch_size": None}
VARIANT_SETTINGS: dict[str, dict[str, object]] = {
    "arrow": {"materialize_writer": "arrow"},
    "arrow-uncapped": {"materialize_writer": "arrow", "materialize_offline_memory_mb": None},
    "feast": {"materialize_writer": "feast"},
    "feast-defaults": {"materialize_writer": "feast", **STOCK_OPTIONS},
}
VARIANT_ORDER = ["arrow", "arrow-uncapped", "feast", "feast-defaults"]  # arrow first: the others are compared to it
LABELS = {
    "arrow": "stack, arrow writer (default)",
    "arrow-uncapped": "stack, arrow writer, DuckDB uncapped",
    "feast": "stack, Feast writer (tuned)",
    "feast-defaults": "stack, Feast writer (Feast defaults)",
}


@dataclass
class Timing:
    """One variant's result, as its child process reports it."""

    variant: str
    rows: int
    seconds: float
    peak_rss_mb: float = 0.0
    rss_before_mb: float = 0.0  # peak RSS when the timed work started (imports, apply)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's VmHWM (the high-water mark of this program image) where available: ``ru_maxrss`` of a
    child also counts the RSS its parent had when it forked (the pre-exec image), which would give
    every variant the parent's footprint.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- variants (child side)


def run_stack(settings: Settings, target: RedisTarget, end: datetime, label: str) -> Timing:
    """Fresh registry and empty DB, apply (untimed), then time materialising both customer views."""
    shutil.rmtree(settings.feast_dir, ignore_errors=True)
    admin_client(target, settings).flushdb()
    store = get_store(settings, target)
    apply_features(store, settings.feature_repo)
    seed_windows(store, VIEWS, end)
    before = peak_rss_mb()
    rows, seconds = 0, 0.0
    for view in VIEWS:
        result = materialize_view(store, view, end, settings.materialize_offline_memory_mb)
        rows += result.rows
        seconds += result.seconds
    return Timing(label, rows, seconds, peak_rss_mb(), before)


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


def run_baseline(settings: Settings, target: RedisTarget, end: datetime) -> list[Timing]:
    """Plain redis-py: read with DuckDB, then pipelined HSET of {feature: value} per customer."""
    client = admin_client(target, settings)
    client.flushdb()
    before = peak_rss_mb()
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
    peak = peak_rss_mb()
    return [
        Timing("baseline: HSET only", rows, write_s, peak, before),
        Timing("baseline: read + HSET", rows, read_s + write_s, peak, before),
    ]


def child(variant: str, customers: int, root: Path, end: datetime) -> None:
    """Run one variant and print its timings as JSON lines on stdout."""
    settings = prepare(customers, root)
    target = resolve_redis(settings).with_db(DBS[variant])
    if variant == "baseline":
        timings = run_baseline(settings, target, end)
    else:
        variant_settings = settings.model_copy(update=VARIANT_SETTINGS[variant])
        timings = [run_stack(variant_settings, target, end, LABELS[variant])]
    for timing in timings:
        print(json.dumps(asdict(timing)), flush=True)


# --------------------------------------------------------------------------- checks (parent side)


def compare_dbs(
    expected: RedisTarget, actual: RedisTarget, settings: Settings, ordered: bool = True
) -> tuple[int, int]:
    """Every key of ``expected`` against ``actual``, fields and values byte for byte; (keys, differences).

    ``ordered=False`` ignores the order of a hash's fields: views of the same entity share one hash, and
    views written concurrently add their fields in either order (Feast reads fields by name).
    """
    left, right = admin_client(expected, settings), admin_client(actual, settings)
    keys = differences = 0
    cursor = 0
    while True:
        cursor, batch = cast(tuple[int, list[Any]], left.scan(cursor, count=10_000))
        if batch:
            with left.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.hgetall(key)
                want = pipe.execute()
            with right.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.hgetall(key)
                got = pipe.execute()
            keys += len(batch)
            if ordered:
                differences += sum(list(a.items()) != list(b.items()) for a, b in zip(want, got, strict=True))
            else:
                differences += sum(a != b for a, b in zip(want, got, strict=True))
        if cursor == 0:
            break
    extra = cast(int, right.dbsize()) - cast(int, left.dbsize())
    return keys, differences + abs(extra)


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
    store = get_store(settings.model_copy(update={"materialize_writer": "arrow"}), target)
    online = get_online_features(store, rows).set_index("customer_id")
    mismatches = 0
    for column in latest.columns:
        expected = latest.loc[ids, column].to_numpy()
        got = online.loc[ids, column].to_numpy()
        mismatches += int((expected != got).sum())
    return mismatches


def run_child(variant: str, customers: int, root: Path, end: datetime) -> list[Timing]:
    """One variant in a fresh interpreter; its JSON lines back as Timings."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.materialize",
        "--child",
        variant,
        "--customers",
        str(customers),
        "--root",
        str(root),
        "--end",
        end.isoformat(),
    ]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"variant {variant} failed:\n{done.stderr[-4000:]}")
    return [Timing(**json.loads(line)) for line in done.stdout.splitlines() if line.startswith("{")]


def report(customers: int, timing: Timing, hset_only: Timing, read_hset: Timing) -> None:
    """One markdown row, printed as soon as the variant is done."""
    print(
        f"| {customers:,} | {timing.variant} | {timing.rows:,} | {timing.seconds:.2f} | {timing.rate:,.0f} "
        f"| {timing.rate / hset_only.rate:.2f} | {timing.rate / read_hset.rate:.2f} "
        f"| {timing.peak_rss_mb:,.0f} | {timing.rss_before_mb:,.0f} |",
        flush=True,
    )


def main() -> None:
    """Run every variant for each size and print a markdown table and the checks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="sizes (repeatable); default 100000")
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    parser.add_argument(
        "--variant",
        action="append",
        choices=VARIANT_ORDER,
        help="stack variants to run besides the baseline (repeatable); default: feast and arrow",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--end", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.customers[0], args.root, datetime.fromisoformat(args.end))
        return
    variants = sorted(args.variant or ["feast", "arrow"], key=VARIANT_ORDER.index)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, revision {revision}, variants {', '.join(variants)}\n")
    print(
        "| customers | variant | rows | seconds | rows/s | ÷ HSET only | ÷ read + HSET | peak RSS MB | RSS before MB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for customers in args.customers or [100_000]:
        started = time.perf_counter()
        settings = prepare(customers, args.root)
        base_target = resolve_redis(settings)
        end = datetime.now(UTC)
        hset_only, read_hset = run_child("baseline", customers, args.root, end)
        for timing in (hset_only, read_hset):
            report(customers, timing, hset_only, read_hset)
        baseline_keys = admin_client(base_target.with_db(DBS["baseline"]), settings).dbsize()
        checks = [f"baseline DB holds {baseline_keys:,} keys for {hset_only.rows:,} rows"]
        for variant in variants:  # arrow first: each Feast writer's DB is then compared with its DB
            (timing,) = run_child(variant, customers, args.root, end)
            report(customers, timing, hset_only, read_hset)
            if variant == "arrow":
                mismatches = verify_online(settings, base_target.with_db(DBS["arrow"]), end)
                checks.append(f"arrow DB, 2,000 customers read through the Feast SDK: {mismatches} mismatching values")
            elif "arrow" in variants:
                keys, differences = compare_dbs(base_target.with_db(DBS[variant]), base_target.with_db(2), settings)
                checks.append(
                    f"{LABELS[variant]} DB vs arrow DB: {keys:,} keys compared byte for byte, {differences} differ"
                )
        print(f"\nchecks ({customers:,} customers, {time.perf_counter() - started:.0f} s for this size):")
        for line in checks:
            print(f"- {line}")
        print(flush=True)
        for db in set(DBS.values()):
            admin_client(base_target.with_db(db), settings).flushdb()


if __name__ == "__main__":
    main()
