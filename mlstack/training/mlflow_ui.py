"""Where a browser finds the MLflow server, and the deep links into its UI that matter.

The UI is a single-page app with hash routes (MLflow 3.17): opened at its root it lands on its GenAI
home, so the stack prints links to the registered model, the version, the run and its plots instead
(the routes were read from the UI bundle of the installed MLflow and opened in Chromium by
tests/browser). Artifacts (the training plots, the drift chart) are served over HTTP by
the server's ``/get-artifact`` route, which reads through the server's artifact repository: a local
``file://`` artifact root as `mlstack up` configures it, or the ``mlflow-artifacts`` proxy of a shared
server. A Markdown artifact in the Prefect UI shows them as ``![](…)`` images.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlparse

from mlstack import processes
from mlstack.settings import Settings
from mlstack.training import registry

# The name under which `mlstack up` records its MLflow server (`mlstack.stack.mlflow` starts it).
MLFLOW_SERVER = "mlflow-server"


@dataclass(frozen=True)
class MlflowUi:
    """Deep links into one MLflow server's UI and its artifact download route; `base` has no trailing slash."""

    base: str

    def model(self, name: str) -> str:
        """The registered model's page: its versions and aliases (@champion)."""
        return f"{self.base}/#/models/{quote(name, safe='')}"

    def model_version(self, name: str, version: str) -> str:
        """One registered version's page: its aliases, tags and source run."""
        return f"{self.model(name)}/versions/{quote(str(version), safe='')}"

    def run(self, run_id: str) -> str:
        """A run's page (the UI redirects to it within its experiment)."""
        return f"{self.base}/#/runs/{quote(run_id, safe='')}"

    def artifact_page(self, experiment_id: str, run_id: str, path: str) -> str:
        """A run's Artifacts tab with the file at `path` open (a plot is shown full size)."""
        return (
            f"{self.base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}/artifacts/{path}"
        )

    def artifact(self, run_id: str, path: str) -> str:
        """The raw bytes of a run's artifact at `path` (e.g. ``plots/roc.png``), as the UI itself downloads them."""
        return f"{self.base}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"


def mlflow_ui(settings: Settings) -> MlflowUi | None:
    """The MLflow server a browser can open, or None when nothing serves the store over HTTP.

    In order: the `mlflow_ui_url` setting; the tracking URI when it is a server; the server that
    `mlstack up` runs on this state dir (its record, if the process still runs).
    """
    if settings.mlflow_ui_url:
        return MlflowUi(settings.mlflow_ui_url.rstrip("/"))
    uri = settings.tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        return MlflowUi(uri.rstrip("/"))
    record = processes.running_record(settings.stack_record(MLFLOW_SERVER))
    return MlflowUi(record.url.rstrip("/")) if record is not None and record.url else None


def run_plots(settings: Settings, run_id: str) -> list[str]:
    """Artifact paths of the PNG plots a training run logged (``plots/*.png``), by name."""
    client = registry.tracking(settings)
    paths = [item.path for item in client.list_artifacts(run_id, registry.PLOTS_DIR) if item.path.endswith(".png")]
    return sorted(paths)


def plots_markdown(settings: Settings, name: str, version: str, run_id: str) -> str:
    """Markdown for a training report: deep links, then the run's plots as images from the MLflow server.

    Without a server serving the store (no `mlstack up`, no http tracking URI), the plots are named
    with the run that holds them instead.
    """
    ui = mlflow_ui(settings)
    plots = run_plots(settings, run_id)
    if ui is None:
        names = ", ".join(f"`{path}`" for path in plots) or "none"
        return (
            f"Plots of run `{run_id}` (MLflow at {settings.tracking_uri()}): {names}. "
            "Run `mlstack up` (or set MLSTACK_MLFLOW_UI_URL) to see them here."
        )
    lines = [
        "## Holdout plots",
        "",
        f"MLflow: [registered model {name}]({ui.model(name)}) · [version {version}]({ui.model_version(name, version)})"
        f" · [run {run_id}]({ui.run(run_id)})",
        "",
    ]
    # One per paragraph: the UI shows an image at its own width, and a table of them overflows the page.
    for path in plots:
        lines += [f"![{path.rsplit('/', 1)[-1]}]({ui.artifact(run_id, path)})", ""]
    return "\n".join(lines).rstrip()


def run_artifact_page(settings: Settings, run_id: str, path: str) -> str | None:
    """The UI page showing artifact `path` of run `run_id`, or None without a server serving the store."""
    ui = mlflow_ui(settings)
    if ui is None:
        return None
    experiment_id = registry.tracking(settings).get_run(run_id).info.experiment_id
    return ui.artifact_page(experiment_id, run_id, path)


def last_drift_run(settings: Settings, version: str) -> str | None:
    """The id of the last monitoring run of `version` (its `last_drift_run_id` tag), None if it was never judged."""
    tags = registry.tracking(settings).get_model_version(settings.model_name, str(version)).tags
    return tags.get("last_drift_run_id") or None


def plots_page(settings: Settings, run_id: str) -> str | None:
    """The UI page of a training run's first plot (by name: the calibration plot), None without a server or plots."""
    if mlflow_ui(settings) is None:
        return None
    plots = run_plots(settings, run_id)
    return run_artifact_page(settings, run_id, plots[0]) if plots else None
