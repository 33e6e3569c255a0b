"""The UIs as a person sees them: headless Chromium against a running local stack (`mlstack up`).

The stack runs on a temp state dir and free ports: `mlstack up`, `mlstack bootstrap` (data, features,
the first model), then a drifted window of live-traffic profiles at fixed instants and `mlstack
monitor` over it. The worker is stopped before the monitor runs: the drift event would otherwise
start a retraining on it, and this test looks at the pictures, not at the loop (tests/e2e does).

Pages are opened at the URLs the CLI printed. Each check reads the DOM Chromium rendered (after the
page's scripts and fetches ran) and takes a screenshot; with MLSTACK_SCREENSHOTS_DIR set, the
screenshots are also written there (that is how the ones in docs/images/ were made).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from mlstack.processes import free_port
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.stack.local import stop_stack
from mlstack.stack.prefect import stop_worker
from tests.support import browser
from tests.support.binaries import require_binary

pytestmark = pytest.mark.slow

DRIFT_START = datetime(2026, 1, 2, tzinfo=UTC)  # the live-traffic windows: fixed instants, any run date
# Nothing in the stack may read configuration from the caller's environment.
_OUTSIDE = ("PREFECT_API_URL", "PREFECT_HOME", "MLSTACK_REDIS_URL", "MLSTACK_MLFLOW_TRACKING_URI", "MLSTACK_WORK_POOL")
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Stack:
    """The running stack, and the URLs its commands printed."""

    settings: Settings
    prefect: str
    printed: dict[str, str]  # label printed by the CLI -> URL
    shots: Path


def _mlstack(args: list[str], env: dict[str, str], timeout: float = 900) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _printed_urls(output: str) -> dict[str, str]:
    """`  <label>: http://…` lines of CLI output."""
    return {label.strip(): url for label, url in re.findall(r"^\s*([^:\n]+): (https?://\S+)\s*$", output, re.M)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("chromium")
    root = tmp_path_factory.mktemp("browser")
    ports = {"prefect_port": free_port(), "mlflow_port": free_port(), "service_port": free_port()}
    settings = Settings(state_dir=root / "state", **ports)
    env = {key: value for key, value in os.environ.items() if key not in _OUTSIDE}
    env.update(
        {
            "MLSTACK_STATE_DIR": str(settings.state_dir),
            **{f"MLSTACK_{key.upper()}": str(port) for key, port in ports.items()},
            "MLSTACK_CUSTOMERS": "2000",  # a small population: the bootstrap takes a minute, not ten
            "MLSTACK_DATA_END": "2026-06-30",
            "COLUMNS": "250",  # rich must not wrap the URLs it prints
        }
    )
    try:
        printed = _printed_urls(_mlstack(["mlstack", "up", "--no-service"], env))
        printed |= _printed_urls(_mlstack(["mlstack", "bootstrap"], env))
        stop_worker(settings)
        span = _mlstack(["tests.support.profile_windows", DRIFT_START.isoformat()], env).split()
        printed |= _printed_urls(_mlstack(["mlstack", "monitor", "--start", span[0], "--end", span[1]], env))
        yield Stack(settings, f"http://127.0.0.1:{settings.prefect_port}", printed, root / "screenshots")
    finally:
        stop_stack(settings)


def _shoot(stack: Stack, name: str, url: str, window: tuple[int, int] = browser.WINDOW) -> Path:
    """A screenshot of `url` under the test's dir (and MLSTACK_SCREENSHOTS_DIR when set)."""
    path = browser.screenshot(url, stack.shots / f"{name}.png", window)
    keep = os.environ.get("MLSTACK_SCREENSHOTS_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def _latest_artifact_page(stack: Stack, key: str) -> str:
    """The Prefect UI page of the newest artifact with `key`."""
    found = httpx.post(
        f"{stack.prefect}/api/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
        timeout=30,
    ).json()
    assert found, f"no artifact {key!r}"
    return f"{stack.prefect}/artifacts/artifact/{found[0]['id']}"


def _assert_png(url: str) -> None:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("image/png") and response.content.startswith(PNG), url


def test_prefect_ui_lists_every_deployment_of_prefect_yaml(stack):
    url = stack.printed["Prefect UI"]
    page = browser.render(f"{url}/deployments")
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    assert len(declared) >= 3
    for deployment in declared:
        assert deployment["name"] in page.text, deployment["name"]
    for flow in ("materialize-features", "train-model", "monitor-drift", "monitor-performance", "score-batch"):
        assert flow in page.text, flow
    _shoot(stack, "prefect-deployments", f"{url}/deployments", (1200, 520))


def test_prefect_drift_artifact_shows_the_chart_served_by_mlflow(stack):
    url = _latest_artifact_page(stack, f"drift-{stack.settings.model_name}-chart")
    page = browser.render(url)
    charts = [image for image in page.images if image.get("alt", "").startswith("drift severity")]
    assert len(charts) == 1, page.images
    source = charts[0]["src"]
    assert source.startswith(f"http://127.0.0.1:{stack.settings.mlflow_port}/get-artifact?"), source
    _assert_png(source)  # what the browser loads into the <img>
    assert "unemployment_rate" not in page.text  # the chart is a picture now, not text bars
    _shoot(stack, "prefect-drift-chart", url, (1200, 1000))


def test_prefect_training_report_shows_the_holdout_plots(stack):
    url = _latest_artifact_page(stack, "train-model-report")
    page = browser.render(url)
    plots = {image["alt"]: image["src"] for image in page.images if image.get("alt", "").endswith(".png")}
    assert set(plots) == {"calibration.png", "feature_importance.png", "pr.png", "roc.png"}, page.images
    for source in plots.values():
        _assert_png(source)
    assert "Decision:" in page.text and "promote" in page.text
    _shoot(stack, "prefect-training-report", url, (1200, 1400))


def test_mlflow_links_open_the_registered_model_with_champion_and_its_plots(stack):
    model = stack.printed["MLflow registered model"]
    assert model.endswith(f"/#/models/{stack.settings.model_name}")
    page = browser.render(model)
    assert "Registered Models" in page.text and "Version 1" in page.text
    assert "champion" in page.text

    version = browser.render(stack.printed["MLflow version 1"])
    aliases = re.search(r"Aliases\s*:((?:\s*@\s*[\w-]+)+)", version.text)
    assert aliases and "champion" in aliases.group(1).split(), version.text[:2000]
    _shoot(stack, "mlflow-model-version", stack.printed["MLflow version 1"], (1400, 700))

    plot = stack.printed["MLflow plots (calibration)"]
    rendered = browser.render(plot)
    assert "plots/calibration.png" in rendered.text
    assert any(image.get("src", "").startswith("blob:") for image in rendered.images), rendered.images
    _shoot(stack, "mlflow-calibration-plot", plot, (1400, 900))


def test_monitor_prints_a_link_that_opens_the_drift_chart_in_mlflow(stack):
    chart = stack.printed["MLflow drift chart"]
    assert chart.endswith("/artifacts/drift.png"), chart
    page = browser.render(chart)
    assert "drift.png" in page.text
    assert any(image.get("src", "").startswith("blob:") for image in page.images), page.images
