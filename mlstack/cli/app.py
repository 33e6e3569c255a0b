"""The `mlstack` Typer app: every command group registered in one place, and known failures as one line."""

from __future__ import annotations

import warnings
from typing import Any

import typer
from typer.core import TyperGroup

from mlstack.cli import data, demo, features, monitoring, render, serving, stack, training
from mlstack.errors import StackError


class _Commands(TyperGroup):
    """The root group: a `StackError` from any command prints one line on stderr and exits 1 (no traceback)."""

    def invoke(self, ctx: Any) -> Any:  # a typer.Context; Any as TyperGroup types it with its vendored click
        try:
            return super().invoke(ctx)
        except StackError as exc:
            render.error(str(exc))
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


app = typer.Typer(
    name="mlstack",
    cls=_Commands,
    help="mlstack: a credit-risk MLOps stack (Feast + Redis, Prefect, LightGBM + MLflow, BentoML, whylogs).\n\n"
    "Everything runs on embedded defaults: local state lives in .mlstack/ (MLSTACK_STATE_DIR), "
    "Redis is embedded unless MLSTACK_REDIS_URL is set.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
# The order here is the order of `mlstack --help`: commands, then groups.
app.command()(training.train)
app.command()(monitoring.traffic)
app.command()(monitoring.monitor)
app.command()(serving.serve)
app.command()(serving.score)
app.command()(demo.demo)
app.command()(stack.bootstrap)
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.status)
app.command()(stack.env)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(stack.feast)
app.add_typer(data.app, name="data")
app.add_typer(features.app, name="features")
app.add_typer(training.model_app, name="model")
app.add_typer(serving.bento_app, name="bento")


def main() -> None:
    """Console entry point (`mlstack`, `python -m mlstack`)."""
    # Library chatter that says nothing to a user of this CLI.
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    app()
