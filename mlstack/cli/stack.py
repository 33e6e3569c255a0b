"""`mlstack up | down | status | bootstrap`: the local stack, natively, and its one-shot bootstrap."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from mlstack.cli import context, render
from mlstack.cli.data import generate
from mlstack.cli.features import run_materialize
from mlstack.cli.training import champion, run_train, show_training


def bootstrap(
    regenerate: Annotated[bool, typer.Option(help="Regenerate data even if present.")] = False,
    skip_training_if_champion: Annotated[
        bool, typer.Option(help="Do not train when MLflow already has a @champion (idempotent restarts).")
    ] = False,
) -> None:
    """One-shot stack bootstrap: data (if missing) -> feast apply + materialise -> first training and gate.

    What the compose `bootstrap` job runs; safe to run again (each step is idempotent, training aside:
    with --skip-training-if-champion a restart does not register another version).
    """
    settings = context.settings()
    from mlstack.features.store import has_data

    if regenerate or not has_data(settings):
        generate(settings)
    else:
        render.line(f"reusing data in {settings.data_dir}")
    render.materialized(run_materialize())
    if skip_training_if_champion:
        current = champion(settings)
        if current is not None:
            render.line(f"@champion is version {current}: training skipped (--skip-training-if-champion)")
            return
    show_training(settings, run_train())


def up(
    service: Annotated[bool, typer.Option(help="Start the credit-risk service (needs a @champion in MLflow).")] = True,
    mlflow: Annotated[bool, typer.Option(help="Start the MLflow tracking server (its UI).")] = True,
) -> None:
    """Start the local stack natively: Redis, MLflow server, Prefect server + worker + deployments, the service."""
    settings = context.settings()
    from mlstack.errors import StackError
    from mlstack.stack.local import start_stack

    started = time.perf_counter()
    try:
        report = start_stack(
            settings,
            service=service,
            mlflow=mlflow,
            progress=lambda step: render.line(f"[{time.perf_counter() - started:5.1f}s] starting {step}"),
        )
    except StackError as exc:  # what started before the failure stays up: say how to see and stop it
        raise StackError(f"{exc}\n`mlstack status` shows what runs; `mlstack down` stops it.") from exc
    render.components(f"mlstack up ({time.perf_counter() - started:.0f}s)", report.components)
    render.line(f"deployments on work pool {settings.work_pool!r}: {', '.join(report.deployments) or 'none'}")
    for note in report.notes:
        render.line(note)
    render.stack_urls(report.components, settings.model_name)
    render.line("stop it all with `mlstack down`; `mlstack status` checks health.")
    if any(row.state in ("running", "external") and not row.healthy for row in report.components):
        raise typer.Exit(1)


def down() -> None:
    """Stop the local stack: the service (flushing its profiles), worker, Prefect server, MLflow server, Redis."""
    settings = context.settings()
    from mlstack.stack.local import stop_stack

    for name, was_running in stop_stack(settings):
        render.line(f"{name}: stopped" if was_running else f"{name}: was not running")
    if settings.redis_url:
        render.line("redis: external (MLSTACK_REDIS_URL), left running")


def status() -> None:
    """Show what the local stack runs and whether it is healthy; its data, Feast registry and MLflow champion."""
    settings = context.settings()
    from mlstack.features.store import has_data
    from mlstack.stack.local import stack_status

    render.line(f"state dir: {settings.state_dir}")
    render.components("local stack (`mlstack up` starts it, `mlstack down` stops it)", stack_status(settings))
    render.line(f"data: {'present' if has_data(settings) else 'missing'}")
    registry_file = settings.feast_registry_path
    if settings.feast_registry_url or registry_file.is_file():
        render.line(f"feast registry: {settings.feast_registry_url or registry_file}")
    else:
        render.line("feast registry: none yet (mlstack features apply)")
    if settings.mlflow_tracking_uri or settings.mlflow_db_path.is_file():
        from mlstack.training.registry import RegistryError

        try:
            render.line(f"mlflow: {settings.tracking_uri()}; @champion = {champion(settings) or 'none'}")
        except RegistryError as exc:
            render.line(f"mlflow: [red]{exc}[/]")
    else:
        render.line("mlflow: no local store yet (mlstack train)")


def env() -> None:
    """Print `export` lines for the resolved stack (Feast, MLflow, Prefect, Redis): `eval "$(mlstack env)"`.

    Starts the embedded Redis if needed. Then plain `feast -c feature_store plan`, `feast -c feature_store ui`,
    `mlflow` and `prefect` commands see the same stores as mlstack.
    """
    settings = context.settings()
    from mlstack.stack.environment import export_lines, shell_environment

    typer.echo(export_lines(shell_environment(settings)), nl=False)


def feast(
    arguments: Annotated[list[str] | None, typer.Argument(help="Arguments for `feast`, after `--`.")] = None,
) -> None:
    """Run `feast` with the stack's environment: `mlstack feast -- -c feature_store plan`."""
    settings = context.settings()
    from mlstack.stack.environment import feast_command, shell_environment

    command = feast_command(arguments or [])
    # exec: `feast ui` and Ctrl-C behave as if feast had been run directly; its exit code is ours
    os.execve(command[0], command, {**os.environ, **shell_environment(settings)})
