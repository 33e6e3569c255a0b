"""Online scoring latency and throughput: `/predict` against the framework floor, an in-process floor and a peer.

    uv run python -m benchmarks.serving            # ~7 minutes; markdown on stdout, progress on stderr

Variants, all in one run on loopback, every BentoML service with the same settings (one worker, the
service's own traffic config and middlewares) and driven by the same `wrk` script (POST bodies cycling
through 500 known customers, benchmarks/serving_wrk.lua):

- S0: `POST /noop` of the benchmark service (benchmarks/serving_service.py): the same request and
  validation and a constant answer: what BentoML costs on its own (the framework floor);
- S1: `POST /predict` of the same service process: the real path (Feast online read from Redis,
  Booster, metrics, whylogs profiling);
- S1 without profiling, S1 with the MLflow pyfunc instead of the Booster: ablations, each in its own
  service process started with the ablation's environment;
- S1 with shadow mode on (`MLSTACK_SHADOW_ENABLED=true`): the same path, and @challenger scored on the
  same model inputs in a child process, both scores logged (the cost of shadow mode);
- peer: `feast serve` (Feast's feature server) plus a model-only BentoML service that asks it for
  the features over HTTP: two hops;
- F0: in this process, no HTTP: one pipelined Redis read of the same keys (built with Feast's own
  key helpers), decode, `Booster.predict`: the floor of the work itself.

Every server runs at once; the variants are measured in rotating order, `--rounds` times each, with
one client (`wrk -t1 -c1`: latency) and `--connections` clients (one wrk thread per connection:
throughput and tail latency), each run after `--settle` idle seconds; F0 runs once per round too.
Medians over rounds are reported. Latencies are timed by the Lua script with CLOCK_MONOTONIC (wrk's
own histogram was inconsistent with its request counts on this VM). Rows per Feast read come from
the service's own metrics. The machine is shared: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import BENCH_ROOT
from benchmarks.serving_setup import BenchStack, prepare_serving
from mlstack import processes
from mlstack.features.store import feast_environment
from mlstack.processes import ProcessRecord, free_port
from mlstack.settings import PROJECT_ROOT, TELEMETRY_OFF, stack_environment

LUA = Path(__file__).with_name("serving_wrk.lua")
BENCH_SERVICE = "benchmarks.serving_service:CreditRiskBench"
PEER_SERVICE = "benchmarks.serving_service:CreditRiskPeer"


@dataclass
class Server:
    """A background server process of this run."""

    name: str
    process: ProcessRecord
    url: str
    ready_path: str
    log: Path


@dataclass
class Run:
    """One wrk run's summary (latencies in ms)."""

    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50: float
    p90: float
    p99: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class Variant:
    """A measured path: which server, which route; runs by client count."""

    label: str
    what: str
    server: str
    path: str
    runs: dict[int, list[Run]] = field(default_factory=dict)
    batch_rows: dict[int, list[float]] = field(default_factory=dict)  # rows per Feast read, from /metrics

    def median(self, clients: int, metric: Callable[[Run], float]) -> float:
        return statistics.median(metric(run) for run in self.runs[clients])


def start_server(
    name: str, command: list[str], env: dict[str, str], cwd: Path, port: int, ready: str, logs: Path
) -> Server:
    """Start a server in its own process group (the stack's supervisor), logging to `logs/<name>.log`."""
    log = logs / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    process = processes.launch(name, command, log=log, env={**os.environ, **env}, cwd=cwd, url=url)
    return Server(name, process, url, ready, log)


def wait_ready(servers: list[Server], timeout: float = 300) -> None:
    """Wait until every server answers 2xx on its readiness path (they start in parallel: one deadline)."""
    deadline = time.monotonic() + timeout
    for server in servers:

        def ready(_: ProcessRecord, server: Server = server) -> bool:
            return processes.http_ok(server.url + server.ready_path)

        left = max(0.0, deadline - time.monotonic())
        processes.wait_healthy(server.process, ready, left, error=RuntimeError)


def start_services(stack: BenchStack, logs: Path) -> dict[str, Server]:
    """The three benchmark services, feast serve and the peer, started together; waits until all are ready."""
    settings = stack.settings
    base = {
        **stack_environment(settings),
        **stack.environment(),
        **TELEMETRY_OFF,
    }
    ports = {name: free_port() for name in ("main", "noprof", "pyfunc", "shadow", "feast", "peer")}
    feast_bin = str(Path(sys.executable).with_name("feast"))

    def bentoml(name: str, target: str, extra: dict[str, str]) -> Server:
        profiles = {"MLSTACK_PROFILE_STORE": str(settings.profiles_dir / name)}
        command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(ports[name])]
        return start_server(name, command, {**base, **profiles, **extra}, PROJECT_ROOT, ports[name], "/readyz", logs)

    feast_command = [feast_bin, "serve", "-h", "127.0.0.1", "-p", str(ports["feast"]), "--workers", "1"]
    # Feast's defaults except: no access log, and no worker recycling every 1,000 requests.
    feast_command += ["--no-access-log", "--max-requests", "1000000000"]
    servers = [
        bentoml("main", BENCH_SERVICE, {}),
        bentoml("noprof", BENCH_SERVICE, {"SERVING_BENCH_PROFILE": "0"}),
        bentoml("pyfunc", BENCH_SERVICE, {"SERVING_BENCH_MODEL": "pyfunc"}),
        bentoml("shadow", BENCH_SERVICE, {"MLSTACK_SHADOW_ENABLED": "true"}),
        start_server(
            "feast",
            feast_command,
            {**base, **feast_environment(settings, stack.target)},
            settings.feature_repo,
            ports["feast"],
            "/health",
            logs,
        ),
        bentoml("peer", PEER_SERVICE, {"SERVING_BENCH_FEAST_URL": f"http://127.0.0.1:{ports['feast']}"}),
    ]
    try:
        wait_ready(servers)
    except BaseException:
        stop_servers(servers)
        raise
    return {server.name: server for server in servers}


def stop_servers(servers: list[Server]) -> None:
    for server in servers:
        processes.stop(server.process, timeout=20)


def wrk(url: str, path: str, bodies: Path, clients: int, seconds: int) -> Run:
    """One wrk run: `clients` connections for `seconds`, one wrk thread each (see serving_wrk.lua)."""
    command = ["wrk", f"-t{clients}", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    result = subprocess.run([*command, "--", str(bodies), path], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return Run(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non_2xx=data["non_2xx"],
        socket_errors=data["socket_errors"] + data["timeouts"],
        p50=data["p50_us"] / 1000,
        p90=data["p90_us"] / 1000,
        p99=data["p99_us"] / 1000,
    )


def scoring_counts(url: str) -> tuple[float, float]:
    """(Feast reads, scored applications) of a service so far, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    reads = rows = 0.0
    for line in text.splitlines():
        if line.startswith("mlstack_feature_fetch_seconds_count"):
            reads += float(line.split()[-1])
        elif line.startswith("mlstack_predictions_total{"):
            rows += float(line.split()[-1])
    return reads, rows


def check_answers(stack: BenchStack, servers: dict[str, Server], n: int = 25) -> str:
    """Every /predict variant gives the same probability for the same application (pyfunc: within 1e-9)."""
    import httpx

    disagreements = 0
    with httpx.Client(timeout=10) as http:
        for application in stack.applications[:n]:
            answers = {
                name: http.post(f"{servers[name].url}/predict", json=application).json()["default_probability"]
                for name in ("main", "noprof", "pyfunc", "shadow", "peer")
            }
            if max(answers.values()) - min(answers.values()) > 1e-9:
                disagreements += 1
    return f"{n - disagreements} of {n} applications scored identically by S1, the ablations, shadow on and the peer"


# --- F0: the in-process floor -------------------------------------------------------------------


def build_floor(stack: BenchStack) -> tuple[Callable[[dict], float], str]:
    """F0: (score one application: one pipelined HMGET per (entity key, view), decode, Booster.predict; a note).

    Keys and fields are built with Feast's own helpers (entity-key serialisation, murmur3 field names),
    as its Redis store does; features are decoded from Feast's protobuf values.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    from mlstack.features.online_store import make_client
    from mlstack.features.store import BATCH_VIEWS, get_store
    from mlstack.serving.runtime import ServingRuntime, load_model
    from mlstack.training.calibration import default_probabilities
    from mlstack.training.model_input import encode_row

    settings = stack.settings
    store = get_store(settings, stack.target)
    model = load_model(settings)  # "booster + calibrator", applied as the service applies it
    client = make_client(stack.target, settings)
    version = store.config.entity_key_serialization_version
    project = store.project.encode()
    views = []
    for view in store.list_feature_views():
        if view.name in BATCH_VIEWS:
            names = [feature.name for feature in view.features]
            fields = [_mmh3(f"{view.name}:{name}") for name in names] + [f"_ts:{view.name}"]
            views.append((view.join_keys[0], names, fields))

    def key(join_key: str, value: object) -> bytes:
        proto = Value(int64_val=value) if isinstance(value, int) else Value(string_val=str(value))
        return serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[proto]), version) + project

    def score(application: dict) -> float:
        with client.pipeline(transaction=False) as pipe:
            for join_key, _, fields in views:
                pipe.hmget(key(join_key, application[join_key]), fields)
            replies = pipe.execute()
        inputs: dict[str, object] = {}
        for (_, names, _), reply in zip(views, replies, strict=True):
            stamp = Timestamp()
            if reply[-1]:
                stamp.ParseFromString(reply[-1])
            for name, raw in zip(names, reply[:-1], strict=True):
                value = Value()
                if raw:
                    value.ParseFromString(raw)
                kind = value.WhichOneof("val")
                inputs[name] = getattr(value, kind) if kind else None
        for name in ("loan_amount", "loan_term_months", "loan_purpose"):
            inputs[name] = application[name]
        income, debt = inputs.get("annual_income"), inputs.get("monthly_debt_payments")
        amount, term = application["loan_amount"], application["loan_term_months"]
        good = isinstance(income, float | int) and income > 0
        inputs["loan_to_income"] = amount / income if good else None
        monthly = amount / term + debt if good and debt is not None else None
        inputs["payment_to_income"] = monthly / (income / 12) if monthly is not None else None
        return float(default_probabilities(model.booster, model.calibrator, encode_row(inputs), num_threads=1)[0])

    applications = stack.applications
    for application in applications[:200]:
        score(application)  # warm up
    runtime = ServingRuntime.from_settings(settings, profile=False)
    sample = applications[:100]
    served = [prediction for application in sample for prediction in runtime.predict([application])]
    fresh = [(a, p) for a, p in zip(sample, served, strict=True) if not p.stale_features]
    agree = sum(abs(score(application) - prediction.default_probability) < 1e-9 for application, prediction in fresh)
    return (
        score,
        f"F0 gives /predict's probability for {agree} of {len(fresh)} sampled applications without stale features",
    )


def measure_floor(score: Callable[[dict], float], applications: list[dict], iterations: int) -> list[float]:
    """F0 latencies in ms, cycling through `applications` (one process, no HTTP)."""
    latencies = []
    for i in range(iterations):
        started = time.perf_counter()
        score(applications[i % len(applications)])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


# --- report -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Prepare the stack, start every server, measure every variant, print markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=8, help="duration of every measured wrk run")
    parser.add_argument("--warmup", type=int, default=4, help="warm-up seconds per variant (not measured)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before each run (no spill-over)")
    parser.add_argument("--connections", type=int, default=32, help="clients of the throughput runs")
    parser.add_argument("--floor-iterations", type=int, default=2000, help="F0 iterations per round")
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    for name, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
        os.environ.setdefault(name, value)

    started = time.monotonic()
    stack = prepare_serving(args.customers, args.root)
    load_before = os.getloadavg()
    floor_score, floor_note = build_floor(stack)
    floors: list[list[float]] = []
    logs = stack.settings.state_dir / "bench-logs"
    logs.mkdir(exist_ok=True)
    variants = [
        Variant("S0", "`/noop`, same service process (framework floor)", "main", "/noop"),
        Variant("S1", "`/predict`, the real path", "main", "/predict"),
        Variant("S1, profiling off", "`/predict`, no whylogs profiling", "noprof", "/predict"),
        Variant("S1, pyfunc", "`/predict`, MLflow pyfunc instead of the Booster", "pyfunc", "/predict"),
        Variant("S1, shadow on", "`/predict`, @challenger scored off the response path", "shadow", "/predict"),
        Variant("peer", "`feast serve` + model-only BentoML service, two hops", "peer", "/predict"),
    ]
    clients = (1, args.connections)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps(application) + "\n" for application in stack.applications))
        servers = start_services(stack, logs)
        try:
            agreement = check_answers(stack, servers)
            for variant in variants:
                wrk(servers[variant.server].url, variant.path, bodies, args.connections, args.warmup)
                wrk(servers[variant.server].url, variant.path, bodies, 1, max(1, args.warmup // 2))
            for round_ in range(args.rounds):
                order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
                time.sleep(args.settle)
                floors.append(measure_floor(floor_score, stack.applications, args.floor_iterations))
                for variant in order:
                    for n in clients:
                        time.sleep(args.settle)  # the previous run's background work (profiling) is done
                        url = servers[variant.server].url
                        before = scoring_counts(url) if variant.path == "/predict" else None
                        run = wrk(url, variant.path, bodies, n, args.seconds)
                        variant.runs.setdefault(n, []).append(run)
                        if before is not None:
                            (reads0, rows0), (reads1, rows1) = before, scoring_counts(url)
                            variant.batch_rows.setdefault(n, []).append((rows1 - rows0) / max(1.0, reads1 - reads0))
                        print(
                            f"round {round_ + 1}/{args.rounds} {variant.label:<18} {n:>2} clients: "
                            f"{run.rate:8.1f} req/s  p50 {run.p50:6.2f} ms  p99 {run.p99:7.2f} ms  "
                            f"non-2xx {run.non_2xx}",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            stop_servers(list(servers.values()))
    shadowed = shadow_note(stack, by_label(variants)["S1, shadow on"])
    load_after = os.getloadavg()
    report(
        args,
        variants,
        floors,
        f"{floor_note}; {shadowed}",
        agreement,
        load_before,
        load_after,
        time.monotonic() - started,
    )


def by_label(variants: list[Variant]) -> dict[str, Variant]:
    return {variant.label: variant for variant in variants}


def shadow_note(stack: BenchStack, variant: Variant) -> str:
    """How many applications the shadow service logged with both scores (after its shutdown flush)."""
    from mlstack.monitoring.shadow_log import read_shadow_log

    records = read_shadow_log(stack.settings.shadow_dir).records
    pairs = zip(records["champion_version"], records["challenger_version"], strict=True)
    versions = ", ".join(sorted({f"v{a} vs v{b}" for a, b in pairs})) or "no pair"
    return f"the shadow service logged {len(records):,} applications with both scores ({versions})"


def report(args, variants, floors, floor_note, agreement, load_before, load_after, elapsed) -> None:
    """The markdown tables: every variant, then the issue's targets."""
    import bentoml
    import feast
    import lightgbm

    n = args.connections
    by = by_label(variants)
    s0, s1 = by["S0"], by["S1"]
    f0_p50 = statistics.median(percentile(floor, 0.5) for floor in floors)
    f0_p99 = statistics.median(percentile(floor, 0.99) for floor in floors)
    f0_rate = statistics.median(1000 / statistics.mean(floor) for floor in floors)
    s0_rate = s0.median(n, lambda run: run.rate)
    s0_p50 = s0.median(1, lambda run: run.p50)
    print(
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (shared; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after), Python {platform.python_version()}, "
        f"BentoML {bentoml.__version__}, Feast {feast.__version__}, LightGBM {lightgbm.__version__}; "
        f"{args.customers:,} customers, {args.rounds} rounds of {args.seconds:g} s per variant and client count "
        f"(medians), {elapsed / 60:.1f} min in all.\n"
    )
    print(
        f"| variant | what | 1 client: p50 ms | p99 ms | req/s | {n} clients: req/s | p50 ms | p99 ms "
        f"| req/s ÷ S0 ({n} clients) | p50 - S0 p50 (1 client), ms | that ÷ F0 p50 | rows per Feast read "
        f"({n} clients) | non-2xx |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| F0 | in-process: pipelined HMGET + decode + Booster.predict | {f0_p50:.3f} | {f0_p99:.3f} "
        f"| {f0_rate:,.0f} | | | | | | | | |"
    )
    for variant in variants:
        rate = variant.median(n, lambda run: run.rate)
        p50_1 = variant.median(1, lambda run: run.p50)
        non_2xx = sum(run.non_2xx + run.socket_errors for runs in variant.runs.values() for run in runs)
        print(
            f"| {variant.label} | {variant.what} | {p50_1:.2f} | {variant.median(1, lambda run: run.p99):.2f} "
            f"| {variant.median(1, lambda run: run.rate):,.0f} | {rate:,.0f} "
            f"| {variant.median(n, lambda run: run.p50):.2f} "
            f"| {variant.median(n, lambda run: run.p99):.2f} | {rate / s0_rate:.2f} | {p50_1 - s0_p50:+.2f} "
            f"| {(p50_1 - s0_p50) / f0_p50:.1f} "
            f"| {f'{statistics.median(variant.batch_rows[n]):.1f}' if n in variant.batch_rows else ''} "
            f"| {non_2xx} |"
        )
    s1_rate = s1.median(n, lambda run: run.rate)
    noprof_rate = by["S1, profiling off"].median(n, lambda run: run.rate)
    peer = by["peer"]
    peer_rate = peer.median(n, lambda run: run.rate)
    s1_p99, peer_p99 = s1.median(n, lambda run: run.p99), peer.median(n, lambda run: run.p99)
    gap = s1.median(1, lambda run: run.p50) - s0_p50
    profiling_cost = 1 - s1_rate / noprof_rate
    shadow_rate = by["S1, shadow on"].median(n, lambda run: run.rate)
    shadow_cost = 1 - shadow_rate / s1_rate
    rows = [
        (f"S1 throughput ≥ 0.85 x S0 ({n} clients)", f"{s1_rate / s0_rate:.2f} x S0", s1_rate >= 0.85 * s0_rate),
        (
            "S1 p50 - S0 p50 ≤ 3 x F0 p50 (1 client)",
            f"{gap:.2f} ms = {gap / f0_p50:.1f} x F0 p50 ({f0_p50:.3f} ms)",
            gap <= 3 * f0_p50,
        ),
        (
            f"profiling costs ≤ 5% throughput ({n} clients)",
            f"{profiling_cost:+.1%} (S1 {s1_rate:,.0f} vs {noprof_rate:,.0f} req/s without)",
            profiling_cost <= 0.05,
        ),
        (
            f"shadow mode costs ≤ 5% throughput ({n} clients)",
            f"{shadow_cost:+.1%} (S1 shadow on {shadow_rate:,.0f} vs {s1_rate:,.0f} req/s off)",
            shadow_cost <= 0.05,
        ),
        (
            f"S1 beats the two-hop peer on throughput ({n} clients)",
            f"{s1_rate / peer_rate:.2f} x peer",
            s1_rate > peer_rate,
        ),
        (
            f"S1 beats the two-hop peer on p99 ({n} clients)",
            f"{s1_p99:.2f} ms vs {peer_p99:.2f} ms",
            s1_p99 < peer_p99,
        ),
    ]
    print("\n| target | measured | met |\n|---|---|---|")
    for target, measured, met in rows:
        print(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    print(f"\nChecks: {agreement}; {floor_note}.")


if __name__ == "__main__":
    main()
