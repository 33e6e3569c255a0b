"""`mlstack serve` and `mlstack bento`: the credit-risk service in the background, and its bento."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render

if TYPE_CHECKING:
    from mlstack.serving.bento import BuiltBento
    from mlstack.settings import Settings

bento_app = typer.Typer(help="Packaging: the bento with the champion inside.", no_args_is_help=True)


def serve(
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    bento: Annotated[str | None, typer.Option(help="Serve this bento tag instead of the source tree.")] = None,
) -> None:
    """Start `bentoml serve` for the credit-risk service in the background (stop it with `mlstack down`)."""
    settings = context.settings()
    from mlstack.stack.service import SERVICE, start_service

    render.service_started(start_service(settings, {}, port, target=bento or SERVICE))


@bento_app.command("build")
def bento_build() -> None:
    """Build the `credit-risk` bento with @champion pulled from MLflow inside; prints its tag."""
    render.bento_next_steps(build(context.settings()))


def build(settings: Settings) -> BuiltBento:
    """Build the champion's bento behind a spinner and show what was built."""
    from mlstack.serving.bento import build_bento

    with render.waiting("bentoml build (champion pulled from MLflow by alias)..."):
        built = build_bento(settings)
    render.bento_built(built)
    return built


def score(
    input: Annotated[str, typer.Option("--input", help="Parquet file or glob of applications to score.")],
    output: Annotated[Path, typer.Option("--output", help="Parquet file to write (atomically).")],
) -> None:
    """Run the flow `score-batch`: score applications with the champion on point-in-time features."""
    context.settings()
    from flows.score import score_batch_flow

    render.line(score_batch_flow(input=input, output=str(output)).summary())
