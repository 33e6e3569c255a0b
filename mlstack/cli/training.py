"""`mlstack train` and `mlstack model`: the training flow, and registered versions in MLflow."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render

if TYPE_CHECKING:
    from mlstack.settings import Settings
    from mlstack.training.steps import TrainingOutcome

model_app = typer.Typer(help="Registered models in MLflow: lineage, champion rollback.", no_args_is_help=True)


def train(
    start: Annotated[datetime | None, typer.Option(help="First application time of the window (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Last application time of the window (UTC).")] = None,
    tune: Annotated[
        bool,
        typer.Option(help="Search hyperparameters (Optuna, time-ordered folds) instead of reusing the champion's."),
    ] = False,
) -> None:
    """Run the Prefect flow `train-model`: train, log to MLflow, register, and gate against @champion."""
    settings = context.settings()
    show_training(settings, run_train(context.utc(start), context.utc(end), tune=tune))


def run_train(start: datetime | None = None, end: datetime | None = None, tune: bool = False) -> TrainingOutcome:
    """Run the flow `train-model` in this process (call after `context.settings()`)."""
    from flows.train import train_model_flow

    return train_model_flow(start=start, end=end, tune=tune)


def champion(settings: Settings) -> str | None:
    """The version @champion points at, if any."""
    from mlstack.training.registry import champion_version

    current = champion_version(settings)
    return str(current.version) if current is not None else None


def show_training(settings: Settings, outcome: TrainingOutcome) -> None:
    """Render a training run with the @champion it left behind."""
    render.training(settings, outcome, champion(settings))


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="Version number or @alias.")] = "@champion") -> None:
    """Print a model version's lineage (feature service, window, fingerprint, commit, metrics) and its gate decision."""
    settings = context.settings()
    from mlstack.training.promotion import Decision
    from mlstack.training.registry import describe

    info = describe(settings, ref)
    render.model_info(f"{settings.model_name} {ref}", info)
    if "promotion_decision" in info:
        try:
            decision = Decision.from_tags(info)
        except ValueError as exc:  # recorded by an older gate: the raw tags above are all there is
            render.line(f"gate decision not shown: {exc}")
            return
        render.gate(decision, f"v{info['version']}")


@model_app.command("rollback")
def model_rollback(reason: Annotated[str, typer.Option(help="Why; recorded on both versions.")]) -> None:
    """Move @champion back to the previous champion and record why."""
    settings = context.settings()
    from mlstack.training.registry import rollback

    moved = rollback(settings, reason)
    render.line(f"@champion moved from version {moved.previous} back to version {moved.restored}")
