"""One Feast online read of the feature service, the on-demand view in python mode vs the former pandas mode.

The same store, Redis rows and entity rows; only the mode of `loan_ratios` differs (the pandas variant is
the view's former definition, applied over it between rounds). Every answer is compared across modes.
Then, with the repo's view, the response turned into columns by Feast's `to_dict` vs the service's
`scoring.online_columns` (numbers taken from the protobuf as they are), answers compared exactly.

    uv run python -m benchmarks.online_read
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from feast import FeatureService, FeatureStore, Field
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Float64

from benchmarks.common import BENCH_ROOT
from benchmarks.serving_setup import known_applications
from mlstack.data.generator import generate_data
from mlstack.features.store import BATCH_VIEWS, FEATURE_SERVICE, apply_features, get_store, materialize_view
from mlstack.serving.scoring import online_columns
from mlstack.settings import Settings

VIEW = "loan_ratios"


def loan_ratios(inputs: pd.DataFrame) -> pd.DataFrame:
    """The view's former pandas UDF, verbatim (the baseline)."""
    income = inputs["annual_income"].astype("float64")
    income = income.where(income > 0)
    monthly_payment = inputs["loan_amount"] / inputs["loan_term_months"] + inputs["monthly_debt_payments"]
    return pd.DataFrame(
        {
            "loan_to_income": inputs["loan_amount"] / income,
            "payment_to_income": monthly_payment / (income / 12.0),
        }
    )


def pandas_view(store: FeatureStore) -> OnDemandFeatureView:
    """The view as it was before python mode: same name, sources and schema, `mode="pandas"`."""
    current = store.get_on_demand_feature_view(VIEW)
    return on_demand_feature_view(
        sources=[
            store.get_feature_view("customer_profile"),
            store.get_feature_view("credit_history"),
            store.get_data_source("loan_request"),
        ],
        schema=[Field(name="loan_to_income", dtype=Float64), Field(name="payment_to_income", dtype=Float64)],
        mode="pandas",
        description=current.description,
        owner=current.owner,
        tags=current.tags,
    )(loan_ratios)


def prepare_store(customers: int) -> tuple[FeatureStore, list[dict]]:
    """A state dir with data ending today, materialised into its embedded Redis (built once a day)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    settings = Settings(state_dir=BENCH_ROOT / f"online-read-{customers}", customers=customers, data_end=today.date())
    marker = settings.state_dir / f"built-{today.date().isoformat()}"
    store = get_store(settings)
    if not marker.is_file():
        print(f"building {customers:,} customers in {settings.state_dir} ...", file=sys.stderr)
        with contextlib.redirect_stdout(sys.stderr):
            generate_data(settings.data_dir, customers=customers, months=settings.months, end=today, seed=settings.seed)
            apply_features(store, settings.feature_repo)
            for view in BATCH_VIEWS:
                materialize_view(store, view, datetime.now(UTC))
        marker.touch()
    with contextlib.redirect_stdout(sys.stderr):
        apply_features(store, settings.feature_repo)  # the repo's own (python-mode) view
    return store, known_applications(settings, 500)


Columns = Callable[[Any], dict[str, list[Any]]]


def to_dict(response: Any) -> dict[str, list[Any]]:
    """Feast's own accessor: every value through Feast's converter (what the service used before `online_columns`)."""
    return response.to_dict(include_event_timestamps=True)


def read(store: FeatureStore, service: FeatureService, rows: list[dict], columns: Columns = online_columns) -> dict:
    """What the service's scoring does per request: one Feast call, the response as column lists."""
    return columns(store.get_online_features(features=service, entity_rows=rows))


def time_reads(
    store: FeatureStore,
    service: FeatureService,
    batches: list[list[dict]],
    iterations: int,
    columns: Columns = online_columns,
) -> list[float]:
    """Seconds per online read, cycling through `batches`."""
    seconds = []
    for i in range(iterations):
        started = time.perf_counter()
        read(store, service, batches[i % len(batches)], columns)
        seconds.append(time.perf_counter() - started)
    return seconds


def ratio_table(
    baseline: str, variant: str, medians: dict[tuple[str, int], list[float]], sizes: tuple[int, ...]
) -> None:
    """Markdown rows: the median p50 (ms) of `baseline` and `variant` per read size, and their ratio."""
    print(f"| rows | {baseline} p50 ms | {variant} p50 ms | {variant} / {baseline} |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        before = statistics.median(medians[(baseline, size)]) * 1e3
        after = statistics.median(medians[(variant, size)]) * 1e3
        print(f"| {size} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


def compare_columns(
    store: FeatureStore, applications: list[dict], sizes: tuple[int, ...], iterations: int, rounds: int
) -> None:
    """The repo's view, the response turned into columns by Feast's `to_dict` vs `scoring.online_columns`."""
    service = store.get_feature_service(FEATURE_SERVICE)
    readers: dict[str, Columns] = {"to_dict": to_dict, "online_columns": online_columns}
    medians: dict[tuple[str, int], list[float]] = {(name, size): [] for name in readers for size in sizes}
    for round_ in range(rounds):
        for name in list(readers) if round_ % 2 == 0 else list(readers)[::-1]:
            for size in sizes:
                batches = [applications[i : i + size] for i in range(0, len(applications) - size + 1, size)]
                read(store, service, batches[0], readers[name])  # warm
                medians[(name, size)].append(
                    statistics.median(time_reads(store, service, batches, iterations, readers[name]))
                )
    rows = applications[:64]
    answer = store.get_online_features(features=service, entity_rows=rows)
    same = repr(to_dict(answer)) == repr(online_columns(answer))  # repr: NaN equals NaN, types count
    print()
    ratio_table("to_dict", "online_columns", medians, sizes)
    print(f"answers: {'identical' if same else 'DIFFERENT'} (64 rows, every column and timestamp)")
    if not same:
        raise SystemExit("online_columns differs from to_dict")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=500, help="reads per variant, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    store, applications = prepare_store(args.customers)
    python_view, baseline_view = store.get_on_demand_feature_view(VIEW), pandas_view(store)
    variants = {"python": python_view, "pandas": baseline_view}
    sizes = (1, 32)
    batches = {
        size: [applications[i : i + size] for i in range(0, len(applications) - size + 1, size)] for size in sizes
    }
    medians: dict[tuple[str, int], list[float]] = {(mode, size): [] for mode in variants for size in sizes}
    answers: dict[str, pd.DataFrame] = {}
    for round_ in range(args.rounds):
        for mode in list(variants) if round_ % 2 == 0 else list(variants)[::-1]:
            store.apply([variants[mode]])
            store.refresh_registry()  # reads use the cached registry: make it the applied one
            assert store.get_on_demand_feature_view(VIEW, allow_registry_cache=True).mode == mode
            service = store.get_feature_service(FEATURE_SERVICE)  # once, as the service's runtime does
            answers[mode] = pd.DataFrame(read(store, service, applications[:64]))
            for size in sizes:
                read(store, service, batches[size][0])  # warm
                medians[(mode, size)].append(
                    statistics.median(time_reads(store, service, batches[size], args.iterations))
                )
    store.apply([python_view])
    features = ["loan_to_income", "payment_to_income"]
    assert answers["python"][features].notna().all().all()
    pd.testing.assert_frame_equal(answers["python"], answers["pandas"], check_exact=True)

    print(
        f"online read of {FEATURE_SERVICE}, {args.customers:,} customers,"
        f" {args.iterations} reads x {args.rounds} rounds"
    )
    ratio_table("pandas", "python", medians, sizes)
    print("answers: identical across modes (64 rows, every feature)")
    compare_columns(store, applications, (1, 16, 32), args.iterations, args.rounds)


if __name__ == "__main__":
    main()
