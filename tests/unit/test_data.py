"""Synthetic data generator: reproducibility, schemas, time window, labels, leakage, atomic writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlstack.data.generator import (
    PERIOD,
    PURPOSE_EFFECTS,
    DataSummary,
    generate_data,
    latent_logit,
    month_starts,
)
from mlstack.data.schema import (
    CREDIT_HISTORY_FILE,
    CUSTOMER_PROFILE_FILE,
    DATA_FILES,
    LOAN_AMOUNT_RANGE,
    LOAN_APPLICATIONS_FILE,
    LOAN_PURPOSES,
    LOAN_TERMS_MONTHS,
    PURPOSE_WEIGHTS,
    TABLE_SCHEMAS,
    ZIPCODE_STATS_FILE,
    draw_request_fields,
)

END = datetime(2025, 6, 15, tzinfo=UTC)
SMALL = {"customers": 500, "months": 12, "end": END, "seed": 7}
FILES = DATA_FILES

TS = pa.timestamp("us", tz="UTC")
EXPECTED_SCHEMAS = {
    ZIPCODE_STATS_FILE: [
        ("zipcode", pa.string()),
        ("event_timestamp", TS),
        ("created_timestamp", TS),
        ("median_income", pa.float64()),
        ("unemployment_rate", pa.float64()),
        ("population", pa.int64()),
        ("regional_default_rate", pa.float64()),
    ],
    CUSTOMER_PROFILE_FILE: [
        ("customer_id", pa.int64()),
        ("event_timestamp", TS),
        ("created_timestamp", TS),
        ("zipcode", pa.string()),
        ("age", pa.int64()),
        ("annual_income", pa.float64()),
        ("employment_length_years", pa.float64()),
        ("home_ownership", pa.string()),
    ],
    CREDIT_HISTORY_FILE: [
        ("customer_id", pa.int64()),
        ("event_timestamp", TS),
        ("created_timestamp", TS),
        ("credit_utilisation", pa.float64()),
        ("open_accounts", pa.int64()),
        ("delinquencies_2y", pa.int64()),
        ("bureau_score", pa.int64()),
        ("monthly_debt_payments", pa.float64()),
        ("accounts_in_collections", pa.int64()),
    ],
    LOAN_APPLICATIONS_FILE: [
        ("application_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("zipcode", pa.string()),
        ("event_timestamp", TS),
        ("loan_amount", pa.float64()),
        ("loan_term_months", pa.int64()),
        ("loan_purpose", pa.string()),
        ("defaulted", pa.int64()),
        ("default_timestamp", TS),
    ],
}


def _read(out_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(out_dir / name) for name in FILES}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataSummary, dict[str, pd.DataFrame]]:
    """One small data set shared by the read-only tests."""
    summary = generate_data(tmp_path_factory.mktemp("data"), **SMALL)
    return summary, _read(summary.zipcode_stats_path.parent)


def test_generate_data_same_seed_gives_identical_frames(tmp_path, small):
    _, frames = small
    again = _read(generate_data(tmp_path, **SMALL).zipcode_stats_path.parent)
    for name in FILES:
        pd.testing.assert_frame_equal(frames[name], again[name])


def test_generate_data_different_seed_gives_different_frames(tmp_path, small):
    _, frames = small
    other = _read(generate_data(tmp_path, **{**SMALL, "seed": 8}).zipcode_stats_path.parent)
    for name in FILES:
        assert not frames[name].equals(other[name]), name


def test_tables_have_the_documented_schema(small):
    summary, _ = small
    for name, expected in EXPECTED_SCHEMAS.items():
        schema = pq.read_schema(summary.zipcode_stats_path.parent / name)
        assert [(field.name, field.type) for field in schema] == expected, name
        assert [(field.name, field.type) for field in TABLE_SCHEMAS[name]] == expected, name


def test_summary_matches_files(small):
    summary, frames = small
    assert summary.zipcode_stats_rows == len(frames[ZIPCODE_STATS_FILE])
    assert summary.customer_profile_rows == len(frames[CUSTOMER_PROFILE_FILE])
    assert summary.credit_history_rows == len(frames[CREDIT_HISTORY_FILE])
    assert summary.loan_applications_rows == len(frames[LOAN_APPLICATIONS_FILE])
    assert summary.label_rate == pytest.approx(frames[LOAN_APPLICATIONS_FILE]["defaulted"].mean())
    assert summary.start == month_starts(END, 12)[0]


def test_ids_are_unique_and_well_formed(small):
    _, frames = small
    zips, profile, credit, apps = (frames[name] for name in FILES)
    assert not zips.duplicated(["zipcode", "event_timestamp"]).any()
    assert zips["zipcode"].str.fullmatch(r"\d{5}").all()
    assert zips["zipcode"].nunique() == 50  # max(50, 500 // 200)
    assert len(zips) == 50 * 12
    for snapshots in (profile, credit):
        assert not snapshots.duplicated(["customer_id", "event_timestamp"]).any()
    assert apps["application_id"].is_unique
    assert set(profile["customer_id"]) == set(range(1, 501))
    assert set(apps["customer_id"]) <= set(profile["customer_id"])
    assert set(apps["zipcode"]) <= set(zips["zipcode"])


def test_value_ranges_are_plausible(small):
    _, frames = small
    zips, profile, credit, apps = (frames[name] for name in FILES)
    assert zips["unemployment_rate"].between(0, 1).all()
    assert set(profile["home_ownership"]) == {"RENT", "OWN", "MORTGAGE"}
    assert credit["bureau_score"].between(300, 850).all()
    assert credit["credit_utilisation"].between(0, 1.25).all()
    assert (apps["loan_amount"] > 0).all()
    assert set(apps["loan_term_months"]) <= {36, 60}
    assert set(apps["loan_purpose"]) <= set(LOAN_PURPOSES)
    assert set(apps["defaulted"]) <= {0, 1}


def test_timestamps_are_utc_and_inside_the_window(small):
    summary, frames = small
    for name, frame in frames.items():
        for column in ("event_timestamp", "created_timestamp"):
            if column not in frame:
                continue
            assert str(frame[column].dt.tz) == "UTC", (name, column)
            assert frame[column].min() >= pd.Timestamp(summary.start), (name, column)
            assert frame[column].max() <= pd.Timestamp(END), (name, column)
        if "created_timestamp" in frame:
            assert (frame["created_timestamp"] >= frame["event_timestamp"]).all(), name
    zips = frames[ZIPCODE_STATS_FILE]
    assert set(zips["event_timestamp"]) == {pd.Timestamp(start) for start in month_starts(END, 12)}


def test_profile_and_credit_share_snapshot_times_with_some_long_gaps(small):
    _, frames = small
    keys = ["customer_id", "event_timestamp"]
    profile, credit = frames[CUSTOMER_PROFILE_FILE], frames[CREDIT_HISTORY_FILE]
    pd.testing.assert_frame_equal(profile[keys], credit[keys])
    gaps = profile.sort_values(keys).groupby("customer_id")["event_timestamp"].diff().dropna()
    assert (gaps > pd.Timedelta(days=45)).any()  # missing snapshots are deliberate
    assert gaps.min() >= pd.Timedelta(days=27)


def test_every_application_has_an_earlier_snapshot(small):
    _, frames = small
    apps = frames[LOAN_APPLICATIONS_FILE]
    first = frames[CREDIT_HISTORY_FILE].groupby("customer_id")["event_timestamp"].min()
    assert (apps["event_timestamp"] > apps["customer_id"].map(first)).all()
    assert (apps["event_timestamp"] >= pd.Timestamp(month_starts(END, 12)[2])).all()
    assert apps["event_timestamp"].max() < pd.Timestamp(END)


def test_label_rate_and_default_timestamps_are_consistent(small):
    _, frames = small
    apps = frames[LOAN_APPLICATIONS_FILE]
    assert 0.03 <= apps["defaulted"].mean() <= 0.30
    defaulted = apps["defaulted"] == 1
    assert apps.loc[~defaulted, "default_timestamp"].isna().all()
    delay = (apps.loc[defaulted, "default_timestamp"] - apps.loc[defaulted, "event_timestamp"]).dt.days
    assert delay.between(60, 366).all()
    counts = apps.groupby("customer_id").size().reindex(range(1, 501), fill_value=0)
    assert 0.7 <= counts.mean() <= 1.3
    assert (counts == 0).any() and (counts >= 2).any() and counts.max() <= 3


def test_collections_rise_after_default_only_for_defaulters(small):
    _, frames = small
    apps, credit = frames[LOAN_APPLICATIONS_FILE], frames[CREDIT_HISTORY_FILE]
    first_default = apps.dropna(subset=["default_timestamp"]).groupby("customer_id")["default_timestamp"].min()
    never = apps.groupby("customer_id")["defaulted"].max().loc[lambda s: s == 0].index
    split_never = apps[apps["customer_id"].isin(never)].groupby("customer_id")["event_timestamp"].min()

    def rise(split: pd.Series) -> float:
        """Mean over customers of (collections after split) - (collections before split)."""
        rows = credit[credit["customer_id"].isin(split.index)]
        after = rows["event_timestamp"] > rows["customer_id"].map(split)
        means = rows.groupby([rows["customer_id"], after])["accounts_in_collections"].mean().unstack()
        return float((means[True] - means[False]).dropna().mean())

    assert rise(first_default) >= 1.0
    assert rise(split_never) == pytest.approx(0.0)


def test_chunking_covers_every_customer_and_reports_progress(tmp_path):
    calls: list[tuple[int, int]] = []
    summary = generate_data(
        tmp_path,
        customers=1200,
        months=12,
        end=END,
        seed=1,
        chunk_customers=500,
        progress=lambda *a: calls.append(a),
    )
    profile = pd.read_parquet(summary.customer_profile_path)
    assert profile["customer_id"].nunique() == 1200
    assert pq.ParquetFile(summary.credit_history_path).num_row_groups == 3
    assert calls == [(500, 1200), (1000, 1200), (1200, 1200)]
    assert pd.read_parquet(summary.loan_applications_path)["application_id"].is_unique


def test_generate_data_leaves_no_temp_files(small):
    summary, _ = small
    folder = summary.zipcode_stats_path.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert not list(folder.glob("*.tmp"))


def test_failed_generation_leaves_neither_final_nor_temp_files(tmp_path):
    def explode(done: int, total: int) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        generate_data(tmp_path, customers=300, months=12, end=END, seed=1, chunk_customers=100, progress=explode)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"customers": 0}, "customers"),
        ({"months": 2}, "months"),
        ({"seed": -1}, "seed"),
        ({"chunk_customers": 0}, "chunk_customers"),
        ({"end": datetime(2025, 6, 15)}, "end"),
    ],
)
def test_generate_data_rejects_bad_arguments_naming_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        generate_data(tmp_path, **{**SMALL, **overrides})
    assert list(tmp_path.iterdir()) == []


def test_month_starts_are_fixed_periods_counted_back_from_end():
    starts = month_starts(datetime(2025, 1, 1, tzinfo=UTC), 3)
    assert starts == [datetime(2025, 1, 1, tzinfo=UTC) - timedelta(days=30 * k) for k in (3, 2, 1)]
    assert month_starts(END, 1) == [END - PERIOD]


@pytest.mark.parametrize("shift", [timedelta(days=1), timedelta(days=17, hours=5), timedelta(days=200)])
def test_a_seed_is_the_same_world_whatever_the_end_date(tmp_path, shift):
    """Only the timestamps move with ``end``: same rows, same values, every timestamp shifted by the same amount."""
    before = generate_data(tmp_path / "a", **SMALL)
    after = generate_data(tmp_path / "b", **{**SMALL, "end": END + shift})
    assert after.start - before.start == shift
    for name in FILES:
        expected = pd.read_parquet(before.zipcode_stats_path.parent / name)
        moved = pd.read_parquet(after.zipcode_stats_path.parent / name)
        for column in expected.columns:
            if str(expected[column].dtype).startswith("datetime64"):
                expected[column] = expected[column] + shift
        pd.testing.assert_frame_equal(moved, expected, obj=name)


def test_latent_logit_rises_with_risk_and_rejects_unknown_purpose():
    base = {
        "credit_utilisation": 0.3,
        "delinquencies_2y": 0,
        "bureau_score": 700,
        "accounts_in_collections": 0,
        "loan_amount": 10_000.0,
        "annual_income": 60_000.0,
        "unemployment_rate": 0.05,
        "loan_term_months": 36,
        "loan_purpose": "car",
    }
    riskier = {"credit_utilisation": 0.9, "delinquencies_2y": 2, "bureau_score": 600, "loan_term_months": 60}
    for field, value in riskier.items():
        assert latent_logit(**{**base, field: value}) > latent_logit(**base), field
    batch = latent_logit(**{**base, "bureau_score": np.array([650, 700, 750]), "loan_purpose": ["car"] * 3})
    assert batch.shape == (3,) and np.all(np.diff(batch) < 0)
    with pytest.raises(ValueError, match="loan_purpose"):
        latent_logit(**{**base, "loan_purpose": "yacht"})


def test_vocabularies_agree_with_the_risk_model_and_the_weights():
    assert set(PURPOSE_EFFECTS) == set(LOAN_PURPOSES)
    assert len(PURPOSE_WEIGHTS) == len(LOAN_PURPOSES) and sum(PURPOSE_WEIGHTS) == pytest.approx(1.0)
    assert LOAN_TERMS_MONTHS == (36, 60)
    assert set(TABLE_SCHEMAS) == set(DATA_FILES)


def test_request_fields_follow_the_rule():
    rng = np.random.default_rng(3)
    income = np.full((40_000, 1), 60_000.0)
    fields = draw_request_fields(rng, income, (40_000, 2))
    amount, term = fields.loan_amount, fields.loan_term_months
    assert amount.shape == term.shape == fields.purpose_index.shape == fields.loan_purpose.shape == (40_000, 2)
    low, high = LOAN_AMOUNT_RANGE
    assert amount.min() >= low and amount.max() <= high
    assert np.all(amount % 10 == 0)
    assert np.median(amount) == pytest.approx(0.25 * 60_000, rel=0.02)
    assert set(np.unique(term)) == set(LOAN_TERMS_MONTHS)
    assert (term[amount <= 25_000] == 60).mean() == pytest.approx(0.25, abs=0.01)
    assert (term[amount > 25_000] == 60).mean() == pytest.approx(0.45, abs=0.02)
    shares = np.bincount(fields.purpose_index.ravel(), minlength=len(LOAN_PURPOSES)) / amount.size
    np.testing.assert_allclose(shares, PURPOSE_WEIGHTS, atol=0.01)
    assert set(fields.loan_purpose.ravel()) == set(LOAN_PURPOSES)


def test_request_fields_amount_factor_scales_amounts_before_the_term_draw():
    income = np.full(20_000, 40_000.0)
    base = draw_request_fields(np.random.default_rng(5), income, 20_000)
    scaled = draw_request_fields(np.random.default_rng(5), income, 20_000, amount_factor=1.5)
    inside = (base.loan_amount > 2_000) & (scaled.loan_amount < 90_000)
    np.testing.assert_allclose(scaled.loan_amount[inside], 1.5 * base.loan_amount[inside], atol=10)
    assert (scaled.loan_term_months == 60).mean() > (base.loan_term_months == 60).mean()
    np.testing.assert_array_equal(scaled.purpose_index, base.purpose_index)


def test_generated_requests_are_pinned_for_a_seed(small):
    """A change in the rng's draw order (e.g. in the shared request-field rule) changes the world of every seed."""
    _, frames = small
    apps = frames[LOAN_APPLICATIONS_FILE]
    assert len(apps) == 442 and int(apps["defaulted"].sum()) == 34
    assert apps["loan_amount"].sum() == 9_769_610.0 and apps["loan_term_months"].sum() == 19_368
    assert apps["loan_purpose"].value_counts().to_dict() == {
        "debt_consolidation": 147,
        "credit_card": 104,
        "home_improvement": 53,
        "other": 51,
        "car": 49,
        "medical": 25,
        "small_business": 13,
    }
