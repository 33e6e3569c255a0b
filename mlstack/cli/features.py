"""`mlstack features`: the Feast feature repository and the Redis online store."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render

if TYPE_CHECKING:
    from mlstack.features.store import MaterializeResult

app = typer.Typer(help="The Feast feature repository and the Redis online store.", no_args_is_help=True)


@app.command("apply")
def features_apply() -> None:
    """Register the Feast repo (entities, views, feature services): `feast apply` for this stack."""
    settings = context.settings()
    from mlstack.features.store import apply_repo

    render.applied(apply_repo(settings))


@app.command("materialize")
def features_materialize(
    end: Annotated[datetime | None, typer.Option(help="Window end (UTC ISO time); default now.")] = None,
    view: Annotated[
        list[str] | None, typer.Option(help="Feature view to materialise (repeatable); default all.")
    ] = None,
) -> None:
    """Run the Prefect flow `materialize-features`: validate the offline data, apply the repo, load new rows."""
    context.settings()
    render.materialized(run_materialize(context.utc(end), view))


def run_materialize(end: datetime | None = None, views: list[str] | None = None) -> list[MaterializeResult]:
    """Run the flow `materialize-features` in this process (call after `context.settings()`)."""
    from flows.materialize import materialize_features_flow

    return materialize_features_flow(end=end, feature_views=views)


@app.command("show")
def features_show(
    customer_id: Annotated[list[int], typer.Option("--customer-id", help="Customer id (repeatable).")],
    zipcode: Annotated[str | None, typer.Option(help="Zipcode; default the customer's from the offline data.")] = None,
    loan_amount: Annotated[float, typer.Option(min=1)] = 10_000.0,
    loan_term_months: Annotated[int, typer.Option()] = 36,
    loan_purpose: Annotated[str, typer.Option()] = "debt_consolidation",
) -> None:
    """Read online feature vectors (credit_risk_v1) from Redis for some customers."""
    settings = context.settings()
    from mlstack.features.store import get_online_features, get_store, sample_entity_rows

    rows = sample_entity_rows(settings, customer_ids=customer_id)
    for row in rows:
        row.update(loan_amount=loan_amount, loan_term_months=loan_term_months, loan_purpose=loan_purpose)
        if zipcode:
            row["zipcode"] = zipcode
    render.vectors(get_online_features(get_store(settings), rows))
