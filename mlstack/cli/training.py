"""`mlstack train` and `mlstack model`: the training flow, and registered versions in MLflow."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render

if TYPE_CHECKING:
    from mlstack.monitoring.shadow import ShadowEvidence
    from mlstack.settings import Settings
    from mlstack.training.steps import TrainingOutcome

model_app = typer.Typer(
    help="Registered models in MLflow: lineage, champion rollback, shadow evidence.", no_args_is_help=True
)


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
    """Render a training run with the @champion it left behind and its MLflow pages."""
    from mlstack.training.mlflow_ui import mlflow_ui, plots_page

    render.training(settings, outcome, champion(settings), mlflow_ui(settings), plots_page(settings, outcome.run_id))


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="Version number or @alias.")] = "@champion") -> None:
    """Print a model version's lineage (feature service, window, fingerprint, commit, metrics) and its gate decision."""
    settings = context.settings()
    from mlstack.training.promotion import Decision
    from mlstack.training.registry import describe
    from mlstack.training.steps import candidates_from_tags, chosen_candidate

    info = describe(settings, ref)
    semantic = info.get("semantic_version", "no semantic version")
    render.model_info(f"{settings.model_name} {ref}: version {info['version']} ({semantic})", info)
    render.candidates(candidates_from_tags(info), chosen_candidate(info))
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


@model_app.command("history")
def model_history() -> None:
    """Which version held @champion when, who or what moved it there, and why (from the stack's own records)."""
    settings = context.settings()
    from mlstack.training.champion_history import tenures
    from mlstack.training.registry import champion_moves

    held = tenures(champion_moves(settings))
    if not held:
        render.line(f"no @champion move of {settings.model_name} recorded yet")
        return
    render.champion_tenures(f"{settings.model_name} @champion history", held)


@model_app.command("shadow-report")
def model_shadow_report(
    as_of: Annotated[datetime | None, typer.Option(help="Outcomes known up to (UTC, default now).")] = None,
    champion_version: Annotated[str | None, typer.Option("--champion", help="Default: @champion.")] = None,
    challenger_version: Annotated[str | None, typer.Option("--challenger", help="Default: @challenger.")] = None,
    include_declined: Annotated[
        bool, typer.Option(help="Also use applications the champion declined (a simulation only has them).")
    ] = False,
    promote: Annotated[bool, typer.Option(help="Move @champion to the challenger if the gate says promote.")] = False,
) -> None:
    """Run the flow `evaluate-shadow`: logged champion/challenger scores vs matured outcomes, through the gate."""
    context.settings()
    evidence = run_shadow_report(context.utc(as_of), champion_version, challenger_version, include_declined, promote)
    render.shadow(evidence)


def run_shadow_report(
    as_of: datetime | None = None,
    champion_version: str | None = None,
    challenger_version: str | None = None,
    include_declined: bool = False,
    promote: bool = False,
) -> ShadowEvidence:
    """Run the flow `evaluate-shadow` in this process (call after `context.settings()`)."""
    from flows.shadow import evaluate_shadow_flow

    return evaluate_shadow_flow(
        as_of=as_of,
        champion_version=champion_version,
        challenger_version=challenger_version,
        include_declined=include_declined,
        promote=promote,
    )
