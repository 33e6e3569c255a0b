"""`mlstack demo`: the whole loop as a story, on embedded defaults (no Docker, no system services).

data -> features -> train -> bento -> serve -> normal traffic -> monitor (no drift) -> recession
traffic -> monitor (drift) -> Prefect event -> retraining deployment (on a real local Prefect server
and process worker) -> new champion -> the service answers with the new model version.

The steps print as they go; `DemoStory` collects the numbers for the closing summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlstack.errors import StackError
from mlstack.settings import Settings
from mlstack.stack.local import request_json
from mlstack.training import registry

RETRAIN_DEPLOYMENT = "weekly-and-on-drift"
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class DemoError(StackError):
    """A demo step failed; the message says which and where its log is."""


@dataclass
class DemoStory:
    """The numbers the closing summary prints."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        """Remember one line of the story."""
        self.lines.append(line)


def demo_settings(base: Settings) -> Settings:
    """The demo's settings: short profile windows (15 s) and a retraining window that the new labels dominate."""
    return base.model_copy(update={"profile_window_seconds": 15.0, "retrain_window_days": 14})


def wait_for_window_close(settings: Settings, finished: datetime) -> None:
    """Sleep until the profile window holding `finished` has closed and been written (+3 s of slack)."""
    window = settings.profile_window_seconds
    closes = (int(finished.timestamp() // window) + 1) * window + 3
    time.sleep(max(0.0, closes - time.time()))


def _api(method: str, url: str, body: object | None = None) -> Any:
    status, answer = request_json(method, url, body, timeout=10)
    if status != 200:
        raise DemoError(f"Prefect at {url} answered {status}")
    return answer


def deployment_runs(api_url: str, deployment: str, since: datetime) -> list[dict[str, Any]]:
    """Flow runs of the deployment named `deployment` created after `since` (dicts from Prefect's API)."""
    deployments = _api("POST", f"{api_url}/deployments/filter", {"deployments": {"name": {"any_": [deployment]}}})
    if not deployments:
        raise DemoError(f"no deployment named {deployment!r} on {api_url}: were the deployments registered?")
    runs = _api(
        "POST",
        f"{api_url}/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [d["id"] for d in deployments]}}, "limit": 50},
    )
    return [run for run in runs if datetime.fromisoformat(run["created"]) >= since]


def wait_for_triggered_run(
    api_url: str,
    deployment: str,
    since: datetime,
    timeout: float,
    on_state: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Wait for the first run of `deployment` created after `since` to finish; return it (its state is in it)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        runs = deployment_runs(api_url, deployment, since)
        if runs:
            run = min(runs, key=lambda r: r["created"])
            state = run["state_type"]
            if state != seen and on_state is not None:
                on_state(f"{run['name']}: {state.lower()}")
            seen = state
            if state in TERMINAL_STATES:
                return run
        time.sleep(2)
    raise DemoError(f"no run of {deployment!r} finished within {timeout:.0f}s (see the worker's log)")


def version_decision(settings: Settings, version: str) -> dict[str, str]:
    """The gate's record on a version: decision, AUCs, compared-with version, outcome (from its MLflow tags)."""
    info = registry.describe(settings, version)
    keys = ("promotion_outcome", "challenger_roc_auc", "champion_roc_auc", "compared_with_version")
    return {key: info.get(key, "-") for key in keys}


def latest_version(settings: Settings) -> str:
    """The newest registered version of the model."""
    client = registry.tracking(settings)
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    return str(max(int(v.version) for v in versions))


def since_now() -> datetime:
    """Now, a second early (Prefect's `created` and ours come from different clocks' roundings)."""
    return datetime.now(UTC) - timedelta(seconds=1)
