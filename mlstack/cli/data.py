"""`mlstack data`: the synthetic offline data."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render

if TYPE_CHECKING:
    from mlstack.settings import Settings

app = typer.Typer(help="Synthetic offline data.", no_args_is_help=True)


@app.command("generate")
def data_generate(
    customers: Annotated[int | None, typer.Option(min=1, help="Customers to simulate (default from settings).")] = None,
    months: Annotated[int | None, typer.Option(min=12, max=120, help="Months of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    end: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Last day of history (UTC).")] = None,
) -> None:
    """Generate the synthetic credit-risk data (parquet) under the state directory."""
    settings = context.settings(customers=customers, months=months, seed=seed, data_end=end.date() if end else None)
    generate(settings)


def generate(settings: Settings) -> None:
    """Generate fresh offline data (clearing feature state of earlier data) with a progress bar; show its tables."""
    from mlstack.features.store import generate_fresh_data

    with render.generation_progress(settings.customers) as progress:
        fresh = generate_fresh_data(settings, progress)
    render.data_generated(fresh)


@app.command("validate")
def data_validate(
    quarantine: Annotated[
        bool, typer.Option(help="Write the failing rows under <state dir>/quarantine, as the flows do.")
    ] = False,
) -> None:
    """Run the data-validation gate on the offline tables; exit 1 if a check fails (warnings pass)."""
    from mlstack.data import validation

    settings = context.settings()
    report = validation.validate_offline_data(settings)
    written = validation.quarantine(settings, report) if quarantine and not report.passed else []
    render.validation_report(report, settings.validation_failing_rows, written)
    if not report.passed:
        raise typer.Exit(1)
