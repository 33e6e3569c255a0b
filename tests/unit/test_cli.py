"""The `mlstack` command in process (typer's CliRunner), on an empty state dir: no Redis, no servers.

Help must work whatever the MLSTACK_* environment holds, and a user's mistake ends in one line on
stderr with exit status 1 (click's usage errors: 2), never a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mlstack.cli import context
from mlstack.cli.app import app
from mlstack.serving.client import ScoredApplication, ServiceClientError, predict
from mlstack.settings import get_settings
from mlstack.simulation.scenarios import SCENARIOS

COMMANDS = [
    [],
    ["data"],
    ["data", "generate"],
    ["data", "validate"],
    ["features"],
    ["features", "apply"],
    ["features", "materialize"],
    ["features", "show"],
    ["train"],
    ["model"],
    ["model", "show"],
    ["model", "rollback"],
    ["model", "shadow-report"],
    ["bento"],
    ["bento", "build"],
    ["serve"],
    ["score"],
    ["traffic"],
    ["monitor"],
    ["demo"],
    ["bootstrap"],
    ["up"],
    ["down"],
    ["status"],
]
TOP_LEVEL = ("train", "traffic", "monitor", "serve", "score", "demo", "bootstrap", "up", "down", "status")
GROUPS = ("data", "features", "model", "bento")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty state dir as MLSTACK_STATE_DIR, no other MLSTACK_* variable; the environment restored after."""
    saved = dict(os.environ)  # commands export the stack's environment (Prefect, MLflow) into this process
    for name in [name for name in os.environ if name.startswith("MLSTACK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLSTACK_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _one_error_line(result: Result) -> str:
    """The one `error:` line on stderr (libraries may log above it, e.g. MLflow creating its store)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().endswith(lines[0])
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "mlstack")
def test_help_shows_usage_for_every_command_when_a_setting_is_invalid(
    command: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSTACK_CUSTOMERS", "many")  # would fail any command that builds the settings
    result = _run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert not list(state_dir.iterdir())  # help writes nothing


def test_help_builds_no_settings(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**overrides: object) -> None:
        raise AssertionError("settings built outside a command body")

    monkeypatch.setattr(context, "settings", refuse)
    for command in COMMANDS:
        assert _run(*command, "--help").exit_code == 0, command


def test_help_lists_every_command_and_group(state_dir: Path) -> None:
    result = _run("--help")
    for name in (*TOP_LEVEL, *GROUPS):
        assert f" {name} " in result.stdout, name


def test_invalid_setting_fails_in_one_line_naming_the_variable(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSTACK_CUSTOMERS", "many")
    result = _run("down")
    assert result.exit_code == 1
    assert "MLSTACK_CUSTOMERS (expected int)" in _one_error_line(result)
    assert "many" not in result.stderr  # values are not echoed: some settings are secrets


def test_invalid_setting_in_dotenv_keeps_help_and_fails_naming_variable_and_type(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: `MLSTACK_PROMOTION_MARGIN=abc` in `.env` ended even `mlstack train --help` in a traceback.

    That setting is now `MLSTACK_GATE_AUC_MARGIN` (the statistical gate); any float setting shows the same.
    """
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text("MLSTACK_GATE_AUC_MARGIN=abc\n")
    monkeypatch.chdir(work)  # pydantic-settings reads .env from the working directory
    help_result = _run("train", "--help")
    assert help_result.exit_code == 0, help_result.output
    assert "Usage:" in help_result.stdout
    result = _run("train")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "MLSTACK_GATE_AUC_MARGIN (expected float)" in line, line
    assert "abc" not in result.stderr
    assert list(work.iterdir()) == [work / ".env"]


def test_bad_date_is_a_usage_error_naming_the_option(state_dir: Path) -> None:
    result = _run("data", "generate", "--end", "2026-13-01")
    assert result.exit_code == 2
    assert "--end" in result.stderr
    assert "Traceback" not in result.output
    assert not (state_dir / "data").exists()


def test_out_of_range_option_is_a_usage_error(state_dir: Path) -> None:
    result = _run("data", "generate", "--months", "6")
    assert result.exit_code == 2
    assert "--months" in result.stderr


def test_traffic_help_lists_the_scenarios(state_dir: Path) -> None:
    result = _run("traffic", "--help")
    assert result.exit_code == 0, result.output
    assert f"<{'|'.join(SCENARIOS)}>" in result.stdout


def test_unknown_scenario_is_a_usage_error_listing_the_choices(state_dir: Path) -> None:
    result = _run("traffic", "--scenario", "boom")
    assert result.exit_code == 2
    assert "--scenario" in result.stderr
    assert all(repr(name) in result.stderr for name in SCENARIOS), result.stderr
    assert "Traceback" not in result.output


def test_traffic_without_a_service_says_how_to_start_one(state_dir: Path) -> None:
    result = _run("traffic")
    assert result.exit_code == 1
    assert "mlstack serve" in _one_error_line(result)


def test_features_show_without_data_names_the_missing_step(state_dir: Path) -> None:
    result = _run("features", "show", "--customer-id", "1")
    assert result.exit_code == 1
    assert "mlstack data generate" in _one_error_line(result)


def test_unknown_model_version_fails_in_one_line(state_dir: Path) -> None:
    result = _run("model", "show", "999")  # an empty local MLflow store under the state dir
    assert result.exit_code == 1
    assert "no version '999'" in _one_error_line(result)


def _recorded_decision() -> dict[str, str]:
    """The tags a gate decision leaves on a version: a challenger clearly better than a shifted champion."""
    import numpy as np

    from mlstack.training.evaluation import score_predictions
    from mlstack.training.promotion import Floors, GateRule, decide

    rng = np.random.default_rng(0)
    logit = rng.normal(-1.5, 1.0, 3000)
    labels = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(int)
    challenger = score_predictions(labels, 1 / (1 + np.exp(-logit)), 0.2)
    champion = score_predictions(labels, 1 / (1 + np.exp(-(logit - 0.8))), 0.2)
    decision = decide(challenger, champion, GateRule(0.95, 0.01, 30, 300, 0), Floors(0.6, 0.1), champion_version="1")
    return {"name": "credit-risk", "version": "2", **decision.to_tags()}


def test_model_show_renders_the_gate_decision(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlstack.training import registry

    info = _recorded_decision()
    monkeypatch.setattr(registry, "describe", lambda settings, ref: info)
    monkeypatch.setenv("COLUMNS", "200")  # table cells unwrapped
    result = _run("model", "show", "2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "verdict: promote" in text
    assert "log loss (decides)" in text and "ROC AUC (harm guard)" in text
    assert f"{float(info['diff_log_loss']):+.4f}" in text
    assert f"{float(info['champion_calibration_intercept']):.4f}" in text
    assert "95% confidence" in text


def test_model_show_of_a_version_from_an_older_gate_shows_its_tags(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlstack.training import registry

    info = {key: value for key, value in _recorded_decision().items() if key != "promotion_verdict"}
    monkeypatch.setattr(registry, "describe", lambda settings, ref: info)
    result = _run("model", "show", "2")
    assert result.exit_code == 0, result.output
    assert "gate decision not shown" in result.stdout and "promotion_verdict" in result.stdout


def test_model_shadow_report_renders_the_evidence_and_its_population(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlstack.cli import training
    from mlstack.monitoring.shadow import evaluate
    from tests.support.shadow_evidence import AS_OF, FLOORS, PAIR, RULE, simulated

    records, book = simulated(3000, 0, "better")
    evidence = evaluate(records, book, PAIR, as_of=AS_OF, rule=RULE, floors=FLOORS, threshold=0.5)
    monkeypatch.setattr(training, "run_shadow_report", lambda *args: evidence)
    monkeypatch.setenv("COLUMNS", "200")
    result = _run("model", "shadow-report", "--as-of", "2025-06-01")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "challenger v2 vs champion v1" in text and "3,000 matured" in text
    assert "the same matured live applications" in text and "verdict: promote" in text
    assert "reject inference" in text


def test_down_on_an_empty_state_dir_reports_nothing_running(state_dir: Path) -> None:
    result = _run("down")
    assert result.exit_code == 0, result.output
    for name in ("service", "prefect-worker", "prefect-server", "mlflow-server", "redis"):
        assert f"{name}: was not running" in result.stdout


def test_interrupt_exits_130_without_traceback(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(**overrides: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(context, "settings", interrupted)
    result = _run("down")
    assert result.exit_code == 130
    assert "Traceback" not in result.output


def test_main_is_the_console_entry_point() -> None:
    from mlstack.cli import main

    assert main.__module__ == "mlstack.cli.app"


# --- the scoring service's HTTP client (mlstack.serving.client), against a stub server ---------

PREDICTION = {
    "default_probability": 0.12,
    "decision": "approve",
    "threshold": 0.3,
    "model_name": "credit-risk",
    "model_version": "3",
    "features_found": True,
    "missing_features": [],
    "stale_features": [],
    "freshest_feature_age_seconds": 10.0,
    "stalest_feature_age_seconds": 86400.0,
}
APPLICATION = {
    "customer_id": 1,
    "zipcode": "10001",
    "loan_amount": 5000.0,
    "loan_term_months": 36,
    "loan_purpose": "car",
}


class _Stub(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]] = {}  # noqa: RUF012 - the stub's fixed table
    seen: list[tuple[str, str | None]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.seen.append((self.path, self.headers.get("authorization")))
        token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        status, body = self.answers[token]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub_service() -> Iterator[str]:
    _Stub.answers = {
        "good": (200, json.dumps(PREDICTION).encode()),
        "": (401, b'{"error": "missing bearer token"}'),
        "odd": (200, b'{"hello": 1}'),
    }
    _Stub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_predict_parses_the_prediction_and_sends_the_token(stub_service: str) -> None:
    answer = predict(stub_service, APPLICATION, token="good")
    assert answer.status == 200
    assert answer.prediction is not None
    assert answer.prediction.model_version == "3"
    assert answer.prediction.stalest_feature_age_seconds == 86400.0
    assert _Stub.seen == [("/predict", "Bearer good")]


def test_predict_returns_http_errors_as_answers(stub_service: str) -> None:
    answer = predict(stub_service, APPLICATION)
    assert answer == ScoredApplication(APPLICATION, 401, None, '{"error": "missing bearer token"}')


def test_predict_rejects_a_200_that_is_not_a_prediction(stub_service: str) -> None:
    with pytest.raises(ServiceClientError, match="without a prediction"):
        predict(stub_service, APPLICATION, token="odd")


def test_predict_reports_an_unreachable_service() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServiceClientError, match="not reachable"):
        predict(f"http://127.0.0.1:{port}", APPLICATION, timeout=2)


def _candidates_recorded() -> dict[str, str]:
    """The candidates table a retrain leaves on a version (the continued candidate chosen)."""
    from mlstack.training.steps import CandidateResult, candidate_tags

    results = [
        CandidateResult("retrained", 0.5193, 0.1746, 0.7556, 0.054, 1.12, "Platt a=-0.93, b=-0.03 on 591 rows"),
        CandidateResult("recalibrated", 0.5392, 0.1809, 0.7287, 0.013, 1.19, "Platt a=-0.64, b=-0.30 on 591 rows"),
        CandidateResult("continued", 0.5101, 0.1701, 0.7577, 0.057, 1.20, "Platt a=-0.69, b=0.03 on 591 rows"),
    ]
    return candidate_tags(results, "continued")


def test_model_show_renders_the_candidates_table(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlstack.training import registry

    info = {**_recorded_decision(), **_candidates_recorded()}
    monkeypatch.setattr(registry, "describe", lambda settings, ref: info)
    monkeypatch.setenv("COLUMNS", "200")
    result = _run("model", "show", "2")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "candidates on the same holdout" in text
    assert "continued (challenger)" in text and "0.5392" in text and "0.7287" in text


def test_demo_summary_shows_candidates_log_loss_interval_and_decision() -> None:
    from mlstack.simulation.demo import Retraining

    info = {**_recorded_decision(), **_candidates_recorded(), "promotion_outcome": "promoted"}
    text = "\n".join(Retraining("run", "COMPLETED", "2", info).lines(14))
    assert "retrained 0.5193, recalibrated 0.5392, continued 0.5101 -> continued" in text
    lower, upper = float(info["diff_log_loss_lower"]), float(info["diff_log_loss_upper"])
    assert f"difference {float(info['diff_log_loss']):+.4f} (95% interval [{lower:+.4f}, {upper:+.4f}])" in text
    assert "decision: promote -> promoted" in text


def test_demo_summary_says_why_a_retrain_was_rejected() -> None:
    from mlstack.simulation.demo import Retraining

    info = _recorded_decision()
    info.update({"promotion_verdict": "not_better", "promotion_reasons": "not better on log loss: interval reaches 0"})
    lines = Retraining("run", "COMPLETED", "2", {**info, "promotion_outcome": "rejected"}).lines(14)
    assert lines[-1] == "decision: not better -> rejected (not better on log loss: interval reaches 0)"
