"""The data-validation gate: generated data and recession snapshots pass; each kind of bad data is caught."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlstack.cli.app import app
from mlstack.data import validation
from mlstack.data.generator import generate_data
from mlstack.data.schema import (
    CREDIT_HISTORY_FILE,
    CUSTOMER_PROFILE_FILE,
    DATA_FILES,
    LOAN_APPLICATIONS_FILE,
    ZIPCODE_STATS_FILE,
)
from mlstack.settings import Settings, get_settings
from mlstack.simulation.scenarios import SCENARIOS
from mlstack.simulation.traffic import append_snapshots, latest_snapshots, shift_snapshots

END = datetime(2025, 6, 15, tzinfo=UTC)
NOW = END + timedelta(days=1)  # the moment of validation: pinned, so nothing depends on today's date


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A small generated data dir (read only: tests copy it before changing anything)."""
    directory = tmp_path_factory.mktemp("validation") / "data"
    generate_data(directory, customers=800, months=12, end=END, seed=5)
    return directory


@pytest.fixture
def settings(tmp_path, generated) -> Settings:
    """Settings whose data dir is a private copy of the generated data."""
    shutil.copytree(generated, tmp_path / "state" / "data")
    return Settings(state_dir=tmp_path / "state")


def _frame(settings: Settings, table: str) -> pd.DataFrame:
    return pd.read_parquet(settings.data_dir / table)


def _newest_window(frame: pd.DataFrame) -> pd.Series:
    return frame["event_timestamp"] > frame["event_timestamp"].max() - timedelta(days=30)


def test_generated_data_passes_every_check(settings):
    report = validation.validate_offline_data(settings, NOW)

    assert report.passed, report.summary()
    assert report.warnings == []
    assert [table.table for table in report.tables] == list(DATA_FILES)
    for table in report.tables:
        assert table.rows > 0 and table.checks > 10
        assert table.previous_window_rows, f"{table.table}: the batch checks did not run"
        assert table.bad_rows.empty


def test_recession_snapshots_pass_validation_drift_is_not_bad_data(settings):
    snapshots = latest_snapshots(settings.data_dir)
    shifted = shift_snapshots(snapshots, SCENARIOS["recession"], END + timedelta(hours=6), seed=1)
    append_snapshots(settings.data_dir, shifted)

    report = validation.validate_offline_data(settings, NOW)

    assert report.passed, report.summary()
    # A snapshot of every customer lands in the newest window beside its monthly ones: more rows than
    # the window before, a warning, not a refusal.
    assert {(w.table, w.check) for w in report.warnings} == {
        (table, "row_count_band") for table in (CUSTOMER_PROFILE_FILE, CREDIT_HISTORY_FILE)
    }


def _set(column: str, value: object, rows: int = 3) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            frame[column] = frame[column].astype(object)
        frame.loc[frame.index[:rows], column] = value
        return frame

    return change


def _duplicate_key(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[5]]], ignore_index=True)


def _future_event(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.index[:2], ["event_timestamp", "created_timestamp"]] = pd.Timestamp(NOW + timedelta(days=3))
    return frame


def _created_goes_back(frame: pd.DataFrame) -> pd.DataFrame:
    """A customer's latest snapshot claims to have been created before the one before it."""
    frame = frame.copy()
    rows = frame.index[frame["customer_id"] == frame["customer_id"].iloc[0]]
    ordered = frame.loc[rows].sort_values("event_timestamp").index
    frame.loc[ordered[-1], "created_timestamp"] = frame.loc[ordered[-2], "created_timestamp"] - timedelta(hours=1)
    frame.loc[ordered[-1], "event_timestamp"] = frame.loc[ordered[-2], "event_timestamp"] + timedelta(minutes=1)
    return frame


def _duplicate_application(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[7]].assign(customer_id=1)], ignore_index=True)


def _default_without_label(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    rows = frame.index[frame["defaulted"] == 0][:4]
    frame.loc[rows, "default_timestamp"] = frame.loc[rows, "event_timestamp"] + timedelta(days=90)
    return frame


CUSTOMERS, HISTORY, ZIPCODES, APPLICATIONS = (
    CUSTOMER_PROFILE_FILE,
    CREDIT_HISTORY_FILE,
    ZIPCODE_STATS_FILE,
    LOAN_APPLICATIONS_FILE,
)
# fault: (table, change, failing column (None: table-wide), check, failing rows (0: a column-level check))
FAULTS = {
    "out_of_range": (HISTORY, _set("bureau_score", 990), "bureau_score", "in_range", 3),
    "negative_income": (CUSTOMERS, _set("annual_income", -5.0), "annual_income", "greater_than_or_equal_to", 3),
    "unknown_category": (CUSTOMERS, _set("home_ownership", "CASTLE"), "home_ownership", "isin", 3),
    "bad_zipcode": (APPLICATIONS, _set("zipcode", "9410"), "zipcode", "str_matches", 3),
    "null_key": (APPLICATIONS, _set("zipcode", None, 2), "zipcode", "not_nullable", 2),
    "wrong_type": (ZIPCODES, lambda f: f.assign(population=f["population"].astype(float)), "population", "type", 0),
    "duplicate_key": (HISTORY, _duplicate_key, None, "unique_key", 2),
    "duplicate_application": (APPLICATIONS, _duplicate_application, "application_id", "unique", 2),
    "future_timestamp": (ZIPCODES, _future_event, "event_timestamp", "not_in_future", 2),
    "created_not_monotone": (CUSTOMERS, _created_goes_back, None, "created_monotone_per_entity", 1),
    "default_time_without_default": (APPLICATIONS, _default_without_label, None, "default_timestamp_iff_defaulted", 4),
    "unknown_term": (APPLICATIONS, _set("loan_term_months", 48), "loan_term_months", "isin", 3),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_bad_rows_fail_the_named_check_when_injected(settings, fault):
    table, change, column, check, rows = FAULTS[fault]
    frame = change(_frame(settings, table))

    report = validation.validate_frame(table, frame, settings, NOW)

    failed = {(failure.column, failure.check): failure for failure in report.errors}
    assert (column, check) in failed, [failure.line() for failure in report.errors]
    assert failed[column, check].rows == rows
    if rows:
        assert len(report.bad_rows) >= rows
        assert report.bad_rows["failed_checks"].str.contains(check).sum() >= rows


def test_null_rate_rise_in_newest_window_fails_one_missing_value_passes(settings):
    frame = _frame(settings, CUSTOMER_PROFILE_FILE)
    newest = frame.index[_newest_window(frame)]
    one_missing = frame.copy()
    one_missing.loc[newest[0], "annual_income"] = np.nan
    many_missing = frame.copy()
    many_missing.loc[newest[: len(newest) // 3], "annual_income"] = np.nan

    assert validation.validate_frame(CUSTOMER_PROFILE_FILE, one_missing, settings, NOW).errors == []
    errors = validation.validate_frame(CUSTOMER_PROFILE_FILE, many_missing, settings, NOW).errors
    assert [(e.column, e.check) for e in errors] == [("annual_income", "null_rate_band")]
    assert errors[0].rows == len(newest) // 3


def test_default_time_null_rate_rise_in_newest_window_passes_as_outcomes_not_bad_data(settings):
    frame = _frame(settings, LOAN_APPLICATIONS_FILE)
    newest = _newest_window(frame)
    previous = ~newest & (frame["event_timestamp"] > frame["event_timestamp"].max() - timedelta(days=60))
    no_defaults = frame.copy()  # no loan of the newest window defaulted: its default time is null
    no_defaults.loc[newest, "default_timestamp"] = pd.NaT
    no_defaults.loc[newest, "defaulted"] = 0
    rise = 1.0 - frame.loc[previous, "default_timestamp"].isna().mean()
    strict = settings.model_copy(update={"validation_null_rate_band": rise / 2})  # the rise is twice the band

    assert rise > 0
    assert validation.validate_frame(LOAN_APPLICATIONS_FILE, no_defaults, strict, NOW).errors == []


@pytest.mark.parametrize(
    ("keep", "severity"),
    [(0.1, "error"), (0.55, "warning"), (0.9, None), (8.0, "warning")],
    ids=["collapse", "dip", "normal", "surge"],
)
def test_row_count_change_in_newest_window_is_judged_by_band(settings, keep, severity):
    frame = _frame(settings, LOAN_APPLICATIONS_FILE)
    newest = frame.index[_newest_window(frame)]
    if keep <= 1:
        dropped = frame.drop(newest[int(len(newest) * keep) :])
    else:  # the newest window's applications again and again, under new ids: more traffic, valid rows
        copies = [
            frame.loc[newest].assign(application_id=frame["application_id"].max() + i * len(frame) + newest + 1)
            for i in range(int(keep) - 1)
        ]
        dropped = pd.concat([frame, *copies], ignore_index=True)

    report = validation.validate_frame(LOAN_APPLICATIONS_FILE, dropped, settings, NOW)

    found = [failure.severity for failure in report.failures if failure.check == "row_count_band"]
    assert found == ([severity] if severity else [])


def test_missing_table_fails_and_quarantine_holds_the_failing_rows(settings):
    (settings.data_dir / ZIPCODE_STATS_FILE).unlink()
    history = _set("bureau_score", 120, rows=4)(_frame(settings, CREDIT_HISTORY_FILE))
    history.to_parquet(settings.data_dir / CREDIT_HISTORY_FILE, index=False)

    report = validation.validate_offline_data(settings, NOW)
    written = validation.quarantine(settings, report)

    assert not report.passed
    assert {(f.table, f.check) for f in report.errors} == {
        (ZIPCODE_STATS_FILE, "file_present"),
        (CREDIT_HISTORY_FILE, "in_range"),
    }
    assert [path.parent for path in written] == [settings.quarantine_dir]
    quarantined = pd.read_parquet(written[0])
    assert quarantined["bureau_score"].tolist() == [120] * 4
    assert quarantined["failed_checks"].unique().tolist() == ["bureau_score:in_range"]
    assert "bureau_score: in_range (4 rows)" in report.summary()
    assert len(report.bad_row_records(limit=2)) == 2


@pytest.fixture
def cli_env(settings, monkeypatch):
    """MLSTACK_STATE_DIR of `settings` for the CLI; the environment restored after (commands export the stack's)."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if name.startswith("MLSTACK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLSTACK_STATE_DIR", str(settings.state_dir))
    get_settings.cache_clear()
    yield settings
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


def test_cli_validate_reports_failures_and_exits_1_when_data_is_bad(cli_env):
    passing = CliRunner().invoke(app, ["data", "validate"])
    assert passing.exit_code == 0, passing.output
    assert "data validation passed: 0 failed checks" in passing.stdout

    frame = _set("home_ownership", "CASTLE", rows=2)(_frame(cli_env, CUSTOMER_PROFILE_FILE))
    frame.to_parquet(cli_env.data_dir / CUSTOMER_PROFILE_FILE, index=False)
    failing = CliRunner().invoke(app, ["data", "validate", "--quarantine"])

    assert failing.exit_code == 1, failing.output
    assert "customer_profile.parquet.home_ownership: isin (2 rows)" in failing.stdout
    assert "CASTLE" in failing.stdout  # the failing rows are shown
    assert "data validation FAILED: 1 failed checks" in failing.stdout
    assert len(list(cli_env.quarantine_dir.iterdir())) == 1
