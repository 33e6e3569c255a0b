"""Prefect task runners for the materialise flow's views: one after another vs concurrently, on both engines.

    uv run --frozen --extra ray --with prefect-ray==0.6.0 python -m benchmarks.task_runners --customers 100000

Work timed: the `materialize-features` flow's own task (`flows.materialize.materialize_view_task`) for
the three batch views (`BATCH_VIEWS`) over the same window [end - ttl, end] (the registry seeded as in
benchmarks/materialize.py), inside a Prefect flow run against one Prefect server (a temporary one,
started by this script and shared by every variant). Variants, each in its own child process (so each
memory figure is its own), each engine with its own sequential baseline:

- sequential: the tasks called one after another in the flow, as the flow does today;
- threads: the three views submitted at once to Prefect's `ThreadPoolTaskRunner` (one thread per view);
- processes (local engine only): the same to Prefect's `ProcessPoolTaskRunner` (one process per view;
  on the Ray engine each process would start a Ray of its own);
- ray-runner: the same to prefect-ray's `RayTaskRunner`, pointed at the Ray `mlstack.compute.ensure_ray`
  started (so the tasks run on that Ray, not a second one). On the local engine each view's task runs
  in a Ray worker with the local engine inside; on the Ray engine the view's task runs in a Ray worker
  and its shards in further Ray tasks. Needs `prefect-ray` (`--with prefect-ray==0.6.0`); skipped
  without it.

Engines: `local` (the default: DuckDB and the Arrow writer in the process, no read-back) and `ray`
(`MLSTACK_COMPUTE_ENGINE=ray`, a local Ray of `MLSTACK_RAY_NUM_CPUS` CPUs, one shard per CPU, read-back on).
Ray's start-up (`ensure_ray`) is timed apart; "views s" is the three views, "flow s" the whole flow
call (flow run, task runner start and stop). Memory: peak RSS, sampled every 50 ms, of the child and
every process under it (a local Ray's processes and workers, the process pool), not the Prefect server.

Checks: each variant's Redis DB against its engine's sequential one and against the local sequential
one, every key's fields and values byte for byte (the order of a hash's fields aside: the views of one
entity share a hash, and concurrent views add their fields in either order; how many keys differ only
in that order is printed); each variant's recorded windows (every view's materialisation intervals in
its SQL registry) against the local sequential one's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from benchmarks.common import BENCH_ROOT, prepare, seed_windows
from benchmarks.compute_engines import TreeMemory
from benchmarks.materialize import admin_client, compare_dbs
from mlstack.features.online_store import resolve_redis
from mlstack.features.store import BATCH_VIEWS, apply_features, get_store
from mlstack.settings import PROJECT_ROOT, TELEMETRY_OFF, Settings

Runner = Literal["sequential", "threads", "processes", "ray-runner"]


@dataclass(frozen=True)
class Variant:
    """An engine and a way to run the views; its own Redis DB."""

    engine: Literal["local", "ray"]
    runner: Runner
    db: int


VARIANTS = {
    "local-sequential": Variant("local", "sequential", 9),
    "local-threads": Variant("local", "threads", 10),
    "local-processes": Variant("local", "processes", 11),
    "local-ray-runner": Variant("local", "ray-runner", 12),
    "ray-sequential": Variant("ray", "sequential", 13),
    "ray-threads": Variant("ray", "threads", 14),
    "ray-ray-runner": Variant("ray", "ray-runner", 15),
}
BASELINE = "local-sequential"


@dataclass
class Timing:
    """One variant's result, as its child process reports it."""

    variant: str
    rows: int
    views_seconds: float
    flow_seconds: float
    peak_rss_mb: float
    ray_start_seconds: float = 0.0
    windows: dict[str, list[list[str]]] = field(default_factory=dict)  # view -> [[start, end], ...] recorded

    @property
    def rate(self) -> float:
        return self.rows / self.views_seconds


def has_prefect_ray() -> bool:
    return importlib.util.find_spec("prefect_ray") is not None


def task_runner(runner: Runner, views: int, ray_address: str | None) -> Any:
    """The Prefect task runner of a variant (None: the flow calls its tasks one after another)."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=views)
    if runner == "processes":
        return ProcessPoolTaskRunner(max_workers=views)
    if runner == "ray-runner":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=ray_address)  # Ray is up already: the runner uses it and leaves it running
    return None


def run_views(runner: Runner, views: list[str], end: datetime, ray_address: str | None) -> tuple[list[Any], float]:
    """The flow's view task for each view inside one flow run; (results, seconds of the views)."""
    from prefect import flow

    from flows.materialize import materialize_view_task

    @flow(name="materialize-views-benchmark", log_prints=False)
    def views_flow() -> tuple[list[Any], float]:
        started = time.perf_counter()
        if runner == "sequential":
            results = [materialize_view_task(view, end) for view in views]
        else:
            futures = [materialize_view_task.submit(view, end) for view in views]
            results = [future.result() for future in futures]
        return results, time.perf_counter() - started

    configured = views_flow.with_options(task_runner=task_runner(runner, len(views), ray_address))
    return configured()


def child(name: str, customers: int, root: Path, end: datetime) -> None:
    """Run one variant; print its Timing as one JSON line."""
    from mlstack.compute import ensure_ray, shutdown_ray
    from mlstack.settings import get_settings

    variant = VARIANTS[name]
    base = prepare(customers, root)
    registry_dir = base.feast_dir / f"task-runners-{name}"
    shutil.rmtree(registry_dir, ignore_errors=True)
    registry_dir.mkdir(parents=True)
    target = resolve_redis(base).with_db(variant.db)
    settings = base.model_copy(
        update={
            "compute_engine": variant.engine,
            "redis_url": target.url(),
            "feast_registry_url": f"sqlite:///{registry_dir}/registry.db",
        }
    )
    # The tasks read their settings with get_settings(), in this process, a pool's or a Ray worker's:
    # set before Ray starts, so that its workers inherit them.
    for key in ("state_dir", "redis_url", "feast_registry_url", "compute_engine", "ray_num_cpus"):
        os.environ[f"MLSTACK_{key.upper()}"] = str(getattr(settings, key))
    get_settings.cache_clear()
    ray_start, address = 0.0, None
    if variant.engine == "ray" or variant.runner == "ray-runner":
        started = time.perf_counter()
        address = ensure_ray(settings).address  # before get_store, which would start it on the Ray engine
        ray_start = time.perf_counter() - started
    admin_client(target, settings).flushdb()
    store = get_store(settings, target)
    apply_features(store, settings.feature_repo)
    seed_windows(store, BATCH_VIEWS, end)
    with TreeMemory() as memory:  # the flow run, with a local Ray's processes already running
        started = time.perf_counter()
        results, views_seconds = run_views(variant.runner, list(BATCH_VIEWS), end, address)
        flow_seconds = time.perf_counter() - started
    shutdown_ray()
    registry = get_store(settings, target).registry
    windows = {
        view: [
            [interval[0].isoformat(), interval[1].isoformat()]
            for interval in registry.get_feature_view(view, store.project).materialization_intervals
        ]
        for view in BATCH_VIEWS
    }
    rows = sum(result.rows for result in results)
    timing = Timing(name, rows, views_seconds, flow_seconds, memory.peak_mb, ray_start, windows)
    print(json.dumps(asdict(timing)), flush=True)


def run_child(name: str, customers: int, root: Path, end: datetime, prefect_env: dict[str, str]) -> Timing | str:
    """One variant in a fresh interpreter, against the shared Prefect server; its error's last line if it failed."""
    command = [sys.executable, "-m", "benchmarks.task_runners", "--child", name]
    command += ["--customers", str(customers), "--root", str(root), "--end", end.isoformat()]
    environment = {**os.environ, **prefect_env}
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, env=environment)
    if done.returncode:
        if name == BASELINE:
            raise SystemExit(f"{name} failed:\n{done.stderr[-6000:]}")
        return done.stderr.strip().splitlines()[-1]  # a variant that fails is a result: reported, not fatal
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return Timing(**json.loads(line))


def report(customers: int, timing: Timing, same_engine: Timing, baseline: Timing) -> None:
    print(
        f"| {customers:,} | {timing.variant} | {timing.rows:,} | {timing.views_seconds:.2f} "
        f"| {timing.flow_seconds:.2f} | {timing.rate:,.0f} | {timing.rate / same_engine.rate:.2f} "
        f"| {timing.rate / baseline.rate:.2f} | {timing.peak_rss_mb:,.0f} | {timing.ray_start_seconds:.1f} |",
        flush=True,
    )


def checks(settings: Settings, timings: dict[str, Timing]) -> list[str]:
    """Every variant's Redis DB and recorded windows against the baselines'."""
    target = resolve_redis(settings)
    lines = []
    for name, timing in timings.items():
        if name == BASELINE:
            continue
        variant = VARIANTS[name]
        references = [BASELINE]
        same_engine = f"{variant.engine}-sequential"
        if same_engine != name and same_engine != BASELINE and same_engine in timings:
            references.append(same_engine)
        for reference in references:
            expected, actual = target.with_db(VARIANTS[reference].db), target.with_db(variant.db)
            keys, differences = compare_dbs(expected, actual, settings, ordered=False)
            _, reordered = compare_dbs(expected, actual, settings)
            lines.append(
                f"{name} DB vs {reference} DB: {keys:,} keys, fields and values byte for byte: {differences} differ "
                f"({reordered - differences} hold the same fields in another order)"
            )
        same = timing.windows == timings[BASELINE].windows
        verdict = "equal" if same else f"DIFFER: {timing.windows} vs {timings[BASELINE].windows}"
        lines.append(f"{name} recorded windows vs {BASELINE}: {verdict}")
    end_windows = {view: intervals[-1] for view, intervals in timings[BASELINE].windows.items()}
    lines.append(f"{BASELINE} recorded windows (last per view): {end_windows}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="sizes (repeatable); default 100000")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="variants (default: all)")
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    parser.add_argument("--keep-dbs", action="store_true", help="leave the variants' Redis DBs filled (to inspect)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--end", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.customers or [100_000]
    if args.child:
        child(args.child, sizes[0], args.root, datetime.fromisoformat(args.end))
        return
    os.environ.update(TELEMETRY_OFF)  # before Prefect's server starts: no analytics calls (no internet here)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    names = [name for name in VARIANTS if name in (args.variant or VARIANTS)]
    skipped = [name for name in names if VARIANTS[name].runner == "ray-runner"]
    if skipped and not has_prefect_ray():
        print(f"prefect-ray is not installed: skipping {', '.join(skipped)} (run with --with prefect-ray==0.6.0)")
        names = [name for name in names if name not in skipped]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, revision {revision}, {psutil.cpu_count()} CPUs, load {load}\n")
    print(
        "| customers | variant | rows | views s | flow s | rows/s | ÷ same engine sequential | ÷ local sequential "
        "| peak RSS MB (tree) | Ray start s |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with (
        tempfile.TemporaryDirectory(prefix="mlstack-bench-prefect-") as prefect_home,
        prefect_test_harness(server_startup_timeout=120),
    ):
        prefect_env = {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": prefect_home}
        for customers in sizes:
            started = time.perf_counter()
            settings = prepare(customers, args.root)
            end = datetime.now(UTC)
            timings: dict[str, Timing] = {}
            failures: dict[str, str] = {}
            for name in names:
                outcome = run_child(name, customers, args.root, end, prefect_env)
                if isinstance(outcome, str):
                    failures[name] = outcome
                    print(f"| {customers:,} | {name} | FAILED | | | | | | | |", flush=True)
                    continue
                timings[name] = outcome
                same_engine = timings.get(f"{VARIANTS[name].engine}-sequential", timings[BASELINE])
                report(customers, outcome, same_engine, timings[BASELINE])
            print(f"\nchecks ({customers:,} customers, {time.perf_counter() - started:.0f} s for this size):")
            for line in checks(settings, timings):
                print(f"- {line}")
            for name, error in failures.items():
                print(f"- {name} FAILED: {error}")
            print(f"load average after: {', '.join(f'{value:.1f}' for value in os.getloadavg())}\n", flush=True)
            target = resolve_redis(settings)
            for name in [] if args.keep_dbs else names:
                admin_client(target.with_db(VARIANTS[name].db), settings).flushdb()


if __name__ == "__main__":
    main()
