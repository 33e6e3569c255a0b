"""Where the MLflow UI is (mlstack.training.mlflow_ui) and the deep links into it."""

from __future__ import annotations

import dataclasses
import os
from urllib.parse import parse_qs, urlparse

import psutil

from mlstack import processes
from mlstack.settings import Settings
from mlstack.training.mlflow_ui import MLFLOW_SERVER, MlflowUi, mlflow_ui


def test_links_use_the_ui_hash_routes_and_the_artifact_route():
    ui = MlflowUi("http://127.0.0.1:5000")
    assert ui.model("credit risk") == "http://127.0.0.1:5000/#/models/credit%20risk"
    assert ui.model_version("credit-risk", "3") == "http://127.0.0.1:5000/#/models/credit-risk/versions/3"
    assert ui.run("abc123") == "http://127.0.0.1:5000/#/runs/abc123"
    artifact = urlparse(ui.artifact("abc123", "plots/roc.png"))
    assert artifact.path == "/get-artifact"
    assert parse_qs(artifact.query) == {"path": ["plots/roc.png"], "run_uuid": ["abc123"]}


def test_mlflow_ui_prefers_the_setting_then_an_http_tracking_uri(tmp_path):
    both = Settings(
        state_dir=tmp_path, mlflow_ui_url="http://localhost:5000/", mlflow_tracking_uri="http://mlflow:5000"
    )
    assert mlflow_ui(both) == MlflowUi("http://localhost:5000")
    remote = Settings(state_dir=tmp_path, mlflow_tracking_uri="https://mlflow.example.com/")
    assert mlflow_ui(remote) == MlflowUi("https://mlflow.example.com")


def test_mlflow_ui_is_none_for_a_local_store_without_a_running_server(tmp_path):
    assert mlflow_ui(Settings(state_dir=tmp_path)) is None


def test_mlflow_ui_finds_the_server_recorded_by_the_stack_while_it_runs(tmp_path):
    settings = Settings(state_dir=tmp_path)
    running = processes.ProcessRecord(
        name=MLFLOW_SERVER,
        pid=os.getpid(),  # this process stands in for the server: it is alive and started when recorded
        create_time=psutil.Process().create_time(),
        command=("mlflow", "server"),
        log=tmp_path / "log",
        started_at="2026-01-01T00:00:00+00:00",
        url="http://127.0.0.1:5123",
    )
    processes.write_record(settings.stack_record(MLFLOW_SERVER), running)
    assert mlflow_ui(settings) == MlflowUi("http://127.0.0.1:5123")
    gone = dataclasses.replace(running, create_time=running.create_time - 1000)  # the pid was reused
    processes.write_record(settings.stack_record(MLFLOW_SERVER), gone)
    assert mlflow_ui(settings) is None


def test_drift_chart_artifact_is_the_served_png_with_a_server_and_text_bars_without(tmp_path):
    from mlstack.monitoring.steps import DRIFT_CHART, RecordedDrift, chart_markdown
    from tests.support.reports import INCOME, UNEMPLOYMENT, drift_report

    report = drift_report((UNEMPLOYMENT, INCOME))
    recorded = RecordedDrift("run42", tmp_path / DRIFT_CHART)
    served = chart_markdown(Settings(state_dir=tmp_path, mlflow_ui_url="http://127.0.0.1:5000"), report, recorded)
    image = MlflowUi("http://127.0.0.1:5000").artifact("run42", DRIFT_CHART)
    assert f"]({image})" in served and "![" in served
    assert "█" not in served  # no text bars beside the picture

    local = chart_markdown(Settings(state_dir=tmp_path), report, recorded)
    assert "![" not in local and "█" in local and "unemployment_rate" in local
    assert "run42" in local  # says where the PNG is
