"""CPU cost of shadow mode per scored application, in process: shadow off, the challenger in a thread, in a child.

    uv run python -m benchmarks.shadow_cpu        # ~3 minutes on the serving benchmark's stack

Why beside `benchmarks/serving.py`'s `S1, shadow on` variant: on a loaded shared machine the HTTP
throughput of one service varies by tens of percent from run to run, far more than the 5% it is
meant to resolve. CPU time consumed by a process varies much less with other processes' load. Three
runtimes on the same stack (Feast online read from Redis, champion Booster; profiling off in all, so
only shadow mode differs), fed the same batches of 16 applications (what 32 clients produce,
docs/benchmarks.md), alternating in rounds; medians over rounds:

- shadow off: `ServingRuntime.from_settings` without shadow mode;
- shadow on, thread: the challenger scored and logged by a thread of the serving process (the
  former design, `ShadowScorer(process=False)`);
- shadow on, child: `ServingRuntime.from_settings` with shadow mode on, as the service runs it (the
  challenger scored and logged in a spawned child process, `process=True`).

CPU is reported where it was spent: the serving process (`time.process_time`, every thread; what
competes with the request path for its GIL), the child process (psutil's user + system time of it),
and their total. A round ends when every queued batch is scored and logged. The ratios leave out
BentoML's per-request work, which every variant pays alike in the service, so they overstate the
service's relative cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

from benchmarks.common import BENCH_ROOT
from benchmarks.serving_setup import prepare_serving
from mlstack.features.store import FEATURE_SERVICE
from mlstack.monitoring.shadow_log import ShadowLog, read_shadow_log
from mlstack.serving.runtime import ServingRuntime
from mlstack.serving.shadow import ShadowScorer


@dataclass(frozen=True)
class Cpu:
    """CPU seconds per application: in the serving process and in the shadow child process."""

    serving: float
    child: float

    @property
    def total(self) -> float:
        """Both processes together."""
        return self.serving + self.child


def child_cpu(runtime: ServingRuntime) -> float:
    """User + system CPU seconds used so far by the runtime's shadow child process (0 without one)."""
    pid = runtime.shadow.process_id if runtime.shadow is not None else None
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def cpu_per_application(runtime: ServingRuntime, batches: list[list[dict]]) -> Cpu:
    """CPU seconds per application to score `batches`, including the shadow's work on them (thread or child)."""
    started, child_started = time.process_time(), child_cpu(runtime)
    for batch in batches:
        runtime.predict(batch)
    if runtime.shadow is not None:
        deadline = time.monotonic() + 120
        while runtime.shadow.pending_rows and time.monotonic() < deadline:
            time.sleep(0.05)  # sleeping costs no CPU: only the shadow's work is counted
        runtime.shadow.drain()  # waits for the batch in flight too (one drainer at a time)
    applications = sum(len(batch) for batch in batches)
    serving = time.process_time() - started
    return Cpu(serving / applications, (child_cpu(runtime) - child_started) / applications)


def main() -> None:
    """Build the three runtimes on the serving benchmark's stack, measure in alternating rounds, print markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=150, help="batches of --rows applications per round")
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()
    stack = prepare_serving(args.customers, BENCH_ROOT)
    load_before = os.getloadavg()
    settings = stack.settings
    off = ServingRuntime.from_settings(settings, profile=False)
    child = ServingRuntime.from_settings(settings.model_copy(update={"shadow_enabled": True}), profile=False)
    if child.shadow is None:
        raise SystemExit("shadow mode loaded no challenger: the stack needs @challenger beside @champion")
    in_thread = ShadowScorer(child.shadow.challenger, ShadowLog(settings.shadow_dir), FEATURE_SERVICE)
    in_thread.start()
    thread = ServingRuntime(off.scorer, off.store, None, feature_service=off.feature_service, shadow=in_thread)
    runtimes = {"shadow off": off, "shadow on, thread": thread, "shadow on, child": child}
    before = len(read_shadow_log(settings.shadow_dir).records)
    applications = stack.applications
    batches = [
        [applications[(b * args.rows + i) % len(applications)] for i in range(args.rows)] for b in range(args.batches)
    ]
    for runtime in runtimes.values():  # warm up
        cpu_per_application(runtime, batches[:20])
    results: dict[str, list[Cpu]] = {name: [] for name in runtimes}
    for round_ in range(args.rounds):
        order = list(runtimes.items())
        for name, runtime in order[round_ % 3 :] + order[: round_ % 3]:
            results[name].append(cpu_per_application(runtime, batches))
    for runtime in (thread, child):
        runtime.close()
    logged = len(read_shadow_log(settings.shadow_dir).records) - before
    scored = 2 * (args.rounds * args.batches + 20) * args.rows
    load_after = os.getloadavg()
    print(
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (shared; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after); {args.rounds} rounds of {args.batches} "
        f"batches of {args.rows} applications per runtime (medians of CPU ms per application).\n"
    )
    print(
        "| runtime | serving process | child process | total | serving process, rounds (min - max) |\n"
        "|---|---:|---:|---:|---|"
    )
    medians: dict[str, Cpu] = {}
    for name, values in results.items():
        median = Cpu(statistics.median(v.serving for v in values), statistics.median(v.child for v in values))
        medians[name] = median
        low, high = min(v.serving for v in values), max(v.serving for v in values)
        print(
            f"| {name} | {median.serving * 1000:.3f} | {median.child * 1000:.3f} | {median.total * 1000:.3f} "
            f"| {low * 1000:.3f} - {high * 1000:.3f} |"
        )
    base = medians["shadow off"]
    print()
    for name in ("shadow on, thread", "shadow on, child"):
        cpu = medians[name]
        print(
            f"- {name} ÷ off, serving process: {cpu.serving / base.serving:.3f} "
            f"({(cpu.serving - base.serving) * 1000:+.3f} ms per application); in total: "
            f"{cpu.total / base.total:.3f} ({(cpu.total - base.total) * 1000:+.3f} ms)"
        )
    print(f"\nChecks: {logged:,} of {scored:,} applications scored with shadow on were logged with both scores.")


if __name__ == "__main__":
    main()
