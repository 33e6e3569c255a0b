"""CPU cost of shadow mode per scored application, in process: the serving runtime with shadow mode off and on.

    uv run python -m benchmarks.shadow_cpu        # ~2 minutes on the serving benchmark's stack

Why beside `benchmarks/serving.py`'s `S1, shadow on` variant: on a loaded shared machine the HTTP
throughput of one service varies by tens of percent from run to run, far more than the 5% it is
meant to resolve. CPU time consumed by the process (`time.process_time`, every thread, including
the shadow thread that scores the challenger and writes the log) varies much less with other
processes' load. Both runtimes are the real `ServingRuntime.from_settings` on the same stack
(Feast online read from Redis, champion Booster; profiling off in both, so only shadow mode
differs), fed the same batches of 16 applications (what 32 clients produce, docs/benchmarks.md),
alternating in rounds; medians over rounds. The ratio leaves out BentoML's per-request work, which
both pay alike in the service, so it overstates the service's relative cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime

from benchmarks.common import BENCH_ROOT
from benchmarks.serving_setup import prepare_serving
from mlstack.monitoring.shadow_log import read_shadow_log
from mlstack.serving.runtime import ServingRuntime


def cpu_per_application(runtime: ServingRuntime, batches: list[list[dict]]) -> float:
    """Process CPU seconds per application to score `batches`, including the shadow thread's work on them."""
    started = time.process_time()
    for batch in batches:
        runtime.predict(batch)
    if runtime.shadow is not None:
        deadline = time.monotonic() + 120
        while runtime.shadow.pending_rows and time.monotonic() < deadline:
            time.sleep(0.05)  # sleeping costs no CPU: only the thread's work is counted
        runtime.shadow.drain()
    return (time.process_time() - started) / sum(len(batch) for batch in batches)


def main() -> None:
    """Build both runtimes on the serving benchmark's stack, measure in alternating rounds, print markdown."""
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
    on = ServingRuntime.from_settings(settings.model_copy(update={"shadow_enabled": True}), profile=False)
    if on.shadow is None:
        raise SystemExit("shadow mode loaded no challenger: the stack needs @challenger beside @champion")
    before = len(read_shadow_log(settings.shadow_dir).records)
    applications = stack.applications
    batches = [
        [applications[(b * args.rows + i) % len(applications)] for i in range(args.rows)] for b in range(args.batches)
    ]
    cpu_per_application(off, batches[:20])  # warm up both
    cpu_per_application(on, batches[:20])
    results: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        order = [("off", off), ("on", on)] if round_ % 2 == 0 else [("on", on), ("off", off)]
        for name, runtime in order:
            results[name].append(cpu_per_application(runtime, batches))
    on.close()
    logged = len(read_shadow_log(settings.shadow_dir).records) - before
    scored = (args.rounds * args.batches + 20) * args.rows
    off_ms, on_ms = (statistics.median(results[name]) * 1000 for name in ("off", "on"))
    print(
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (shared; load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after); {args.rounds} rounds of {args.batches} "
        f"batches of {args.rows} applications per runtime (medians).\n"
    )
    print("| runtime | CPU ms per application (median) | rounds (min - max) |\n|---|---:|---|")
    for name, ms in (("shadow off", off_ms), ("shadow on", on_ms)):
        values = results[name.split()[-1]]
        print(f"| {name} | {ms:.3f} | {min(values) * 1000:.3f} - {max(values) * 1000:.3f} |")
    print(
        f"\nShadow on ÷ off: {on_ms / off_ms:.3f} (+{on_ms - off_ms:.3f} ms of CPU per application). "
        f"Checks: {logged:,} of {scored:,} applications scored with shadow on were logged with both scores."
    )


if __name__ == "__main__":
    main()
