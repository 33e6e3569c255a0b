"""Compute engines: materialisation and training-set build, local process vs Ray (1 and 2 CPUs), side by side.

    uv run --extra ray python -m benchmarks.compute_engines --customers 100000 --customers 1000000

Variants, each in its own child process (so each memory figure is its own):
- local: the stack's default engine (`MLSTACK_COMPUTE_ENGINE=local`): DuckDB and the Arrow writer in
  the process, no read-back (the local default, `MLSTACK_MATERIALIZE_VERIFY` unset): the baseline;
- local, read-back: the same with every written row read back before the window is recorded, to show
  the verification's cost (the Ray engine always pays it);
- ray, N CPU: `MLSTACK_COMPUTE_ENGINE=ray` with a local Ray of N CPUs (`MLSTACK_RAY_NUM_CPUS`): one
  task per shard (materialisation: N shards of entity keys; join: N shards of entity rows), Feast's
  DuckDB store and the Arrow writer in each task, read-back in the driver.

Work timed: materialising customer_profile + credit_history over the same window [end - ttl, end]
(the registry seeded as in benchmarks/materialize.py), and joining every labelled application with
the feature service (`get_historical_features`, on-demand views included). Ray's start-up
(`ensure_ray`) is timed apart and not in the rows/s; the first task of each kind also pays the
workers' imports (Feast, DuckDB), which is in the rows/s, as a flow run would pay it.

Memory: peak RSS, sampled every 50 ms, of the child and every process under it: for Ray, that is the
driver, the GCS, the raylet, the workers and Ray's agents (the whole local Ray), not only the workers.

Checks: each Ray variant's Redis DB against the local one, every key and field byte for byte; each
training set against the local one (same rows, values, nulls and dtypes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil

from benchmarks.common import BENCH_ROOT, prepare, seed_windows
from benchmarks.materialize import admin_client, compare_dbs
from benchmarks.training_set import ENTITY_COLUMNS
from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.features import ray_engine
from mlstack.features.materialization import materialize_arrow, write_latest_rows
from mlstack.features.online_store import resolve_redis
from mlstack.features.store import apply_features, get_historical_features, get_store
from mlstack.settings import PROJECT_ROOT, Settings

VIEWS = ("customer_profile", "credit_history")
VARIANTS = {  # name -> (settings overrides, read back?)
    "local": ({"compute_engine": "local"}, False),
    "local-read-back": ({"compute_engine": "local"}, True),
    "ray-1cpu": ({"compute_engine": "ray", "ray_num_cpus": 1}, True),
    "ray-2cpu": ({"compute_engine": "ray", "ray_num_cpus": 2}, True),
}
DBS = {"local": 5, "local-read-back": 6, "ray-1cpu": 7, "ray-2cpu": 8}
JOIN_VARIANTS = ("local", "ray-1cpu", "ray-2cpu")  # the join has no read-back to leave out


@dataclass
class Timing:
    """One variant's result for one task, as its child process reports it."""

    task: str  # "materialise" or "training set"
    variant: str
    rows: int
    seconds: float
    peak_rss_mb: float
    ray_start_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


class TreeMemory:
    """Peak RSS of this process and all its descendants (a local Ray's processes included), sampled."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)

    def _sample(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue  # ended between listing and reading
            self.peak = max(self.peak, total)
            self._stop.wait(interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def child(task: str, variant: str, customers: int, root: Path, end: datetime) -> None:
    """Run one variant of one task; print its Timing as one JSON line."""
    from mlstack.compute import ensure_ray, shutdown_ray

    base = prepare(customers, root)
    overrides, read_back = VARIANTS[variant]
    settings = base.model_copy(update=overrides)
    with TreeMemory() as memory:
        ray_start = 0.0
        if settings.compute_engine == "ray":
            started = time.perf_counter()
            ensure_ray(settings)
            ray_start = time.perf_counter() - started
        if task == "materialise":
            rows, seconds = materialise(settings, variant, end, read_back)
        else:
            rows, seconds = training_set(settings, root / f"training-set-{customers}-{variant}.parquet")
    shutdown_ray()
    print(json.dumps(asdict(Timing(task, variant, rows, seconds, memory.peak_mb, ray_start))), flush=True)


def materialise(settings: Settings, variant: str, end: datetime, read_back: bool) -> tuple[int, float]:
    """Fresh registry (own dir per variant) and empty DB, apply (untimed), then time both customer views."""
    target = resolve_redis(settings).with_db(DBS[variant])
    admin_client(target, settings).flushdb()
    registry_dir = settings.feast_dir / variant
    shutil.rmtree(registry_dir, ignore_errors=True)
    registry_dir.mkdir(parents=True)
    store = get_store(settings.model_copy(update={"feast_registry_url": f"sqlite:///{registry_dir}/r.db"}), target)
    apply_features(store, settings.feature_repo)
    seed_windows(store, VIEWS, end)
    write = ray_engine.write_pass() if ray_engine.on_ray(store) else None
    rows, seconds = 0, 0.0
    for view in VIEWS:
        started = time.perf_counter()
        memory_mb = settings.materialize_offline_memory_mb
        result = materialize_arrow(store, view, end, memory_mb, write=write or write_latest_rows, verify=read_back)
        seconds += time.perf_counter() - started
        rows += result.rows
    return rows, seconds


def training_set(settings: Settings, output: Path) -> tuple[int, float]:
    """Time the feature service's point-in-time join of every labelled application; keep the frame for the check."""
    entities = pd.read_parquet(settings.data_dir / LOAN_APPLICATIONS_FILE, columns=ENTITY_COLUMNS)
    store = get_store(settings)
    apply_features(store, settings.feature_repo)
    started = time.perf_counter()
    frame = get_historical_features(store, entities)
    seconds = time.perf_counter() - started
    frame.sort_values("application_id").reset_index(drop=True).to_parquet(output)
    return len(frame), seconds


def run_child(task: str, variant: str, customers: int, root: Path, end: datetime) -> Timing:
    """One variant in a fresh interpreter."""
    command = [sys.executable, "-m", "benchmarks.compute_engines", "--child", task, "--variant", variant]
    command += ["--customers", str(customers), "--root", str(root), "--end", end.isoformat()]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{task} / {variant} failed:\n{done.stderr[-4000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return Timing(**json.loads(line))


def report(customers: int, timing: Timing, baseline: Timing) -> None:
    print(
        f"| {customers:,} | {timing.task} | {timing.variant} | {timing.rows:,} | {timing.seconds:.2f} "
        f"| {timing.rate:,.0f} | {timing.rate / baseline.rate:.2f} | {timing.peak_rss_mb:,.0f} "
        f"| {timing.ray_start_seconds:.1f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="sizes (repeatable); default 100000 and 1000000")
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    parser.add_argument("--child", choices=["materialise", "training set"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--end", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.customers or [100_000, 1_000_000]
    if args.child:
        child(args.child, args.variant, sizes[0], args.root, datetime.fromisoformat(args.end))
        return
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, revision {revision}, {psutil.cpu_count()} CPUs\n")
    print("| customers | task | variant | rows | seconds | rows/s | ÷ local | peak RSS MB (tree) | Ray start s |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for customers in sizes:
        settings = prepare(customers, args.root)
        base_target = resolve_redis(settings)
        end = datetime.now(UTC)
        checks = []
        baseline = run_child("materialise", "local", customers, args.root, end)
        report(customers, baseline, baseline)
        for variant in [name for name in VARIANTS if name != "local"]:
            timing = run_child("materialise", variant, customers, args.root, end)
            report(customers, timing, baseline)
            keys, differences = compare_dbs(
                base_target.with_db(DBS["local"]), base_target.with_db(DBS[variant]), settings
            )
            checks.append(f"materialise, {variant} DB vs local DB: {keys:,} keys byte for byte, {differences} differ")
        joined = {}
        for variant in JOIN_VARIANTS:
            timing = run_child("training set", variant, customers, args.root, end)
            if variant == "local":
                baseline = timing
            report(customers, timing, baseline)
            joined[variant] = pd.read_parquet(args.root / f"training-set-{customers}-{variant}.parquet")
        for variant in JOIN_VARIANTS[1:]:
            try:
                pd.testing.assert_frame_equal(joined[variant], joined["local"], check_exact=True)
                verdict = "equal (rows, values, nulls, dtypes)"
            except AssertionError as exc:
                verdict = f"DIFFERS: {str(exc).splitlines()[0]}"
            checks.append(f"training set, {variant} vs local ({len(joined['local']):,} rows): {verdict}")
        print(f"\nchecks ({customers:,} customers):")
        for line in checks:
            print(f"- {line}")
        print(flush=True)
        for db in DBS.values():
            admin_client(base_target.with_db(db), settings).flushdb()


if __name__ == "__main__":
    main()
