"""Training core without Feast: model input encoding, labelled applications, splits, fingerprints, LightGBM."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlstack.data.schema import HOME_OWNERSHIP, LOAN_APPLICATIONS_FILE, LOAN_PURPOSES, REQUEST_FIELDS
from mlstack.training import dataset, model_input
from mlstack.training.dataset import (
    Split,
    TrainingDataError,
    fingerprint_frame,
    labelled_applications,
    split_by_time,
    train_booster,
    training_params,
)
from mlstack.training.model_input import CATEGORICAL, FEATURES, ModelInputError, categorical_indices, encode, encode_row
from tests.support.factories import make_settings
from tests.support.training_data import FAST_PARAMS, START, synthetic_applications

# --------------------------------------------------------------------------- model input


def test_features_cover_the_service_and_request_fields_in_a_fixed_order() -> None:
    assert len(FEATURES) == len(set(FEATURES)) == 19
    assert FEATURES[:4] == ("age", "annual_income", "employment_length_years", "home_ownership")
    assert FEATURES[-3:] == ("loan_amount", "loan_term_months", "loan_purpose")
    assert CATEGORICAL == {"home_ownership": HOME_OWNERSHIP, "loan_purpose": LOAN_PURPOSES}
    assert [FEATURES[i] for i in categorical_indices()] == ["home_ownership", "loan_purpose"]


def test_encode_gives_float_matrix_with_vocabulary_indices() -> None:
    frame = synthetic_applications(50)
    matrix = encode(frame)
    assert matrix.dtype == np.float64
    assert matrix.shape == (50, len(FEATURES))
    purpose = FEATURES.index("loan_purpose")
    assert matrix[:, purpose].tolist() == [float(LOAN_PURPOSES.index(p)) for p in frame["loan_purpose"]]
    np.testing.assert_array_equal(matrix[:, FEATURES.index("bureau_score")], frame["bureau_score"])


def test_encode_maps_unknown_and_missing_values_to_nan() -> None:
    frame = synthetic_applications(4)
    frame["home_ownership"] = frame["home_ownership"].astype(object)
    frame.loc[0, "home_ownership"] = "rent"  # case matters: not in the vocabulary
    frame.loc[1, "home_ownership"] = None
    frame["age"] = frame["age"].astype("Int64")
    frame.loc[2, "age"] = pd.NA
    frame.loc[3, "annual_income"] = np.nan
    matrix = encode(frame)
    home, age, income = (FEATURES.index(name) for name in ("home_ownership", "age", "annual_income"))
    assert np.isnan(matrix[[0, 1], home]).all()
    assert not np.isnan(matrix[[2, 3], home]).any()
    assert np.isnan(matrix[2, age]) and np.isnan(matrix[3, income])


def test_encode_row_matches_encode_for_the_same_row() -> None:
    frame = synthetic_applications(6).astype({"home_ownership": object, "loan_purpose": object, "age": object})
    frame.loc[0, "loan_purpose"] = "yacht"
    frame.loc[1, "home_ownership"] = None
    frame.loc[2, "age"] = None
    frame.loc[3, "delinquencies_2y"] = 7
    frame.loc[4, "loan_purpose"] = np.nan
    matrix = encode(frame)
    for i, record in enumerate(frame.to_dict(orient="records")):
        row = encode_row(record)
        assert row.shape == (1, len(FEATURES))
        np.testing.assert_array_equal(row[0], matrix[i])
    assert np.isnan(encode_row(frame.iloc[0].to_dict())[0, FEATURES.index("loan_purpose")])


def test_encode_row_accepts_plain_python_values() -> None:
    values = {name: 1 for name in FEATURES} | {"home_ownership": "OWN", "loan_purpose": "car", "age": None}
    row = encode_row(values)
    assert row[0, FEATURES.index("home_ownership")] == HOME_OWNERSHIP.index("OWN")
    assert row[0, FEATURES.index("loan_purpose")] == LOAN_PURPOSES.index("car")
    assert np.isnan(row[0, FEATURES.index("age")])
    np.testing.assert_array_equal(row, encode(pd.DataFrame([values])))


def test_encode_raises_naming_missing_columns() -> None:
    frame = synthetic_applications(3).drop(columns=["bureau_score", "loan_purpose"])
    with pytest.raises(ModelInputError, match=r"bureau_score.*loan_purpose"):
        encode(frame)
    with pytest.raises(ModelInputError, match="bureau_score"):
        encode_row(frame.iloc[0].to_dict())


def test_encode_raises_naming_a_non_numeric_value() -> None:
    frame = synthetic_applications(2).astype({"open_accounts": object})
    frame.loc[1, "open_accounts"] = "many"
    with pytest.raises(ModelInputError, match="open_accounts"):
        encode(frame)
    with pytest.raises(ModelInputError, match="open_accounts"):
        encode_row(frame.iloc[1].to_dict())


# --------------------------------------------------------------------------- labelled applications


def write_applications(settings_dir: Path, frame: pd.DataFrame) -> None:
    data_dir = settings_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(data_dir / LOAN_APPLICATIONS_FILE, index=False)


@pytest.fixture
def applications_dir(tmp_path: Path) -> Path:
    frame = synthetic_applications(200)[[*dataset.ENTITY_COLUMNS, *REQUEST_FIELDS, "defaulted"]].sample(
        frac=1, random_state=1
    )
    frame["default_timestamp"] = frame["event_timestamp"] + pd.Timedelta(days=90)
    write_applications(tmp_path, frame)
    return tmp_path


def test_labelled_applications_default_to_all_before_data_end(applications_dir: Path) -> None:
    settings = make_settings(applications_dir, data_end=date(2026, 1, 1))
    frame = labelled_applications(settings)
    assert len(frame) == 200
    assert list(frame.columns) == [*dataset.ENTITY_COLUMNS, *REQUEST_FIELDS, "defaulted"]
    assert frame["event_timestamp"].is_monotonic_increasing


def test_labelled_applications_keep_the_last_train_window_days(applications_dir: Path) -> None:
    settings = make_settings(applications_dir, data_end=date(2025, 12, 1), train_window_days=60)
    frame = labelled_applications(settings)
    end = datetime(2025, 12, 1, tzinfo=UTC)
    assert frame["event_timestamp"].min() >= end - timedelta(days=60)
    assert frame["event_timestamp"].max() < end
    assert 0 < len(frame) < 200


def test_labelled_applications_use_explicit_half_open_window(applications_dir: Path) -> None:
    settings = make_settings(applications_dir, data_end=date(2026, 1, 1), train_window_days=5)
    everything = labelled_applications(settings, start=START.to_pydatetime())
    start, end = everything["event_timestamp"].iloc[[50, 150]]
    frame = labelled_applications(settings, start=start, end=end)
    assert frame["event_timestamp"].min() == start
    assert frame["event_timestamp"].max() < end
    assert len(frame) == 100


def test_labelled_applications_raise_on_empty_window(applications_dir: Path) -> None:
    settings = make_settings(applications_dir, data_end=date(2024, 1, 1))
    with pytest.raises(TrainingDataError, match="no labelled applications"):
        labelled_applications(settings)


def test_labelled_applications_raise_on_bad_window_or_missing_file(applications_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(applications_dir, data_end=date(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        labelled_applications(settings, start=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="before end"):
        labelled_applications(settings, start=datetime(2025, 6, 1, tzinfo=UTC), end=datetime(2025, 5, 1, tzinfo=UTC))
    with pytest.raises(TrainingDataError, match="mlstack data generate"):
        labelled_applications(make_settings(tmp_path / "empty"))


def test_labelled_applications_raise_on_repeated_application_id(tmp_path: Path) -> None:
    frame = synthetic_applications(10)[[*dataset.ENTITY_COLUMNS, *REQUEST_FIELDS, "defaulted"]]
    write_applications(tmp_path, pd.concat([frame, frame.head(1)]))
    with pytest.raises(TrainingDataError, match="application_id must be unique"):
        labelled_applications(make_settings(tmp_path, data_end=date(2026, 1, 1)))


def test_labelled_applications_raise_naming_a_missing_column(tmp_path: Path) -> None:
    frame = synthetic_applications(10)[[*dataset.ENTITY_COLUMNS, *REQUEST_FIELDS]]
    write_applications(tmp_path, frame)
    with pytest.raises(TrainingDataError, match=r"lack column\(s\) \['defaulted'\]"):
        labelled_applications(make_settings(tmp_path, data_end=date(2026, 1, 1)))


def test_one_row_per_application_guard_rejects_repeated_or_lost_rows() -> None:
    frame = synthetic_applications(10)
    applications = frame[[*dataset.ENTITY_COLUMNS, *REQUEST_FIELDS, "defaulted"]]
    joined = frame.sample(frac=1, random_state=2)
    ordered = dataset._one_row_per_application(applications, joined, "svc")
    assert ordered["application_id"].tolist() == applications["application_id"].tolist()
    assert ordered.columns[-1] == "defaulted"
    with pytest.raises(TrainingDataError, match=r"one row per application: got 11 rows for 10.*repeated.*\[1\]"):
        dataset._one_row_per_application(applications, pd.concat([frame, frame.head(1)]), "svc")
    with pytest.raises(TrainingDataError, match=r"got 9 rows for 10.*missing: \[10\]"):
        dataset._one_row_per_application(applications, frame.head(9), "svc")
    with pytest.raises(TrainingDataError, match="did not return model input"):
        dataset._one_row_per_application(applications, frame.drop(columns=["age"]), "svc")


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_ignores_row_order_and_sees_one_changed_value() -> None:
    frame = synthetic_applications(100)
    fingerprint = fingerprint_frame(frame)
    assert re.fullmatch(r"100:[0-9a-f]{16}", fingerprint)
    assert fingerprint_frame(frame.sample(frac=1, random_state=4).reset_index(drop=True)) == fingerprint
    changed = frame.copy()
    changed.loc[42, "loan_amount"] += 1
    assert fingerprint_frame(changed) != fingerprint
    assert fingerprint_frame(frame.head(99)).startswith("99:")


# --------------------------------------------------------------------------- split


def assert_time_ordered(split: Split) -> None:
    train, validation, holdout = (part["event_timestamp"] for part in (split.train, split.validation, split.holdout))
    assert train.max() < validation.min()
    assert validation.max() < holdout.min()


def test_split_by_time_orders_parts_without_overlap() -> None:
    frame = synthetic_applications(1000).sample(frac=1, random_state=5)
    split = split_by_time(frame, 0.15, 0.15)
    assert_time_ordered(split)
    assert (len(split.train), len(split.validation), len(split.holdout)) == (700, 150, 150)
    ids = pd.concat([split.train, split.validation, split.holdout])["application_id"]
    assert sorted(ids) == sorted(frame["application_id"])


def test_split_by_time_keeps_tied_timestamps_together_when_ties_straddle_a_cut() -> None:
    frame = synthetic_applications(100)
    # Groups of 10 equal timestamps; both cuts (rows 75 and 88) fall inside a group.
    frame["event_timestamp"] = START + pd.to_timedelta(np.arange(100) // 10, unit="D")
    split = split_by_time(frame, 0.13, 0.12)
    assert_time_ordered(split)
    assert (len(split.train), len(split.validation), len(split.holdout)) == (70, 10, 20)
    days = [set(part["event_timestamp"]) for part in (split.train, split.validation, split.holdout)]
    assert not (days[0] & days[1]) and not (days[1] & days[2]) and not (days[0] & days[2])


def test_split_by_time_does_not_depend_on_input_order() -> None:
    frame = synthetic_applications(300)
    first = split_by_time(frame, 0.2, 0.1)
    second = split_by_time(frame.sample(frac=1, random_state=6), 0.2, 0.1)
    for name in ("train", "validation", "holdout"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))


@pytest.mark.parametrize(
    ("timestamps", "empty"),
    [
        ([START] * 50, "train and validation"),  # one timestamp: everything lands in the holdout
        ([START, START + pd.Timedelta(days=1)], "validation"),
        ([], "train and validation and holdout"),
    ],
)
def test_split_by_time_raises_naming_the_empty_part(timestamps: list[pd.Timestamp], empty: str) -> None:
    frame = pd.DataFrame({"event_timestamp": pd.Series(timestamps, dtype="datetime64[us, UTC]")})
    frame["application_id"] = np.arange(len(frame))
    with pytest.raises(ValueError, match=f"the {empty} part"):
        split_by_time(frame, 0.15, 0.15)


@pytest.mark.parametrize(("validation", "holdout"), [(0.0, 0.2), (0.2, 0.0), (0.6, 0.5), (-0.1, 0.2)])
def test_split_by_time_rejects_bad_fractions(validation: float, holdout: float) -> None:
    with pytest.raises(ValueError, match="validation_fraction and holdout_fraction"):
        split_by_time(synthetic_applications(100), validation, holdout)


def test_split_by_time_rejects_missing_timestamps() -> None:
    frame = synthetic_applications(10)
    frame.loc[3, "event_timestamp"] = pd.NaT
    with pytest.raises(ValueError, match="event_timestamp has 1 missing"):
        split_by_time(frame, 0.15, 0.15)


# --------------------------------------------------------------------------- LightGBM


def test_training_params_come_from_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, learning_rate=0.07, num_leaves=9, seed=11, early_stopping_rounds=5)
    params = training_params(settings)
    assert (params.learning_rate, params.num_leaves, params.seed, params.early_stopping_rounds) == (0.07, 9, 11, 5)
    native = params.lightgbm_params()
    assert native["objective"] == "binary" and native["deterministic"] is True
    assert native["num_threads"] == 2 and native["verbose"] == -1 and native["seed"] == 11


def test_train_booster_learns_and_stops_early() -> None:
    split = split_by_time(synthetic_applications(3000), 0.15, 0.15)
    booster = train_booster(split, FAST_PARAMS)
    # Early stopping ends training `early_stopping_rounds` after the best iteration; the kept model is cut there.
    assert 0 < booster.best_iteration + FAST_PARAMS.early_stopping_rounds < FAST_PARAMS.num_boost_round
    assert booster.current_iteration() == booster.best_iteration
    assert booster.feature_name() == list(FEATURES)
    auc = roc_auc_score(split.holdout["defaulted"], booster.predict(model_input.encode(split.holdout)))
    assert auc > 0.7


def test_train_booster_is_deterministic() -> None:
    split = split_by_time(synthetic_applications(1500, seed=1), 0.15, 0.15)
    first, second = (train_booster(split, FAST_PARAMS) for _ in range(2))
    matrix = model_input.encode(split.holdout)
    np.testing.assert_array_equal(first.predict(matrix), second.predict(matrix))


def test_train_booster_rejects_a_part_with_one_class() -> None:
    split = split_by_time(synthetic_applications(500), 0.15, 0.15)
    one_class = Split(split.train.assign(defaulted=0), split.validation, split.holdout)
    with pytest.raises(ValueError, match="train frame needs both classes"):
        train_booster(one_class, FAST_PARAMS)
    no_label = Split(split.train, split.validation.drop(columns=["defaulted"]), split.holdout)
    with pytest.raises(ValueError, match="validation frame has no 'defaulted'"):
        train_booster(no_label, FAST_PARAMS)


def test_requested_window_recent_and_window_days_end_now_and_plain_bounds_pass_through(tmp_path):
    from mlstack.settings import Settings

    settings = Settings(state_dir=tmp_path, retrain_window_days=14)
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert dataset.requested_window(settings, None, None, now=now) == (None, None)
    assert dataset.requested_window(settings, None, None, recent=True, now=now) == (now - timedelta(days=14), now)
    assert dataset.requested_window(settings, None, None, 30, recent=True, now=now) == (now - timedelta(days=30), now)
    end = datetime(2026, 1, 10, tzinfo=UTC)
    assert dataset.requested_window(settings, None, end, 5, now=now) == (end - timedelta(days=5), end)
