"""`mlstack demo`: parse the options, tell the story of `mlstack.simulation.demo`, render it as it goes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from mlstack.cli import context, render
from mlstack.cli.features import run_materialize
from mlstack.cli.monitoring import run_monitor
from mlstack.cli.training import run_train

if TYPE_CHECKING:
    from mlstack.features.store import FreshData, MaterializeResult
    from mlstack.monitoring.drift import DriftReport
    from mlstack.serving.bento import BuiltBento
    from mlstack.serving.client import ScoredApplication
    from mlstack.settings import Settings
    from mlstack.simulation.scenarios import Scenario
    from mlstack.simulation.traffic import TrafficRun
    from mlstack.training.steps import TrainingOutcome


def demo(
    customers: Annotated[int | None, typer.Option(min=1, help="Customers to simulate.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the synthetic data and the traffic (default MLSTACK_SEED).")
    ] = None,
    reuse_data: Annotated[bool, typer.Option(help="Keep the offline data of an earlier run (default: fresh).")] = False,
) -> None:
    """The whole loop as a story: data, features, train, bento, serve, traffic, drift, event, retrain, new champion."""
    settings = context.settings(customers=customers, seed=seed)
    from mlstack.stack.prefect import begin_prefect_server

    begin_prefect_server(settings)  # it boots while the story's libraries (Feast, MLflow...) import
    from mlstack.simulation.demo import DemoFlows, run_demo

    flows = DemoFlows(materialize=run_materialize, train=run_train, monitor=_monitor_window)
    render.demo_summary(run_demo(settings, flows, ConsoleDemoView(), reuse_data=reuse_data))


def _monitor_window(start: datetime, end: datetime) -> DriftReport:
    return run_monitor(start=start, end=end)


class ConsoleDemoView:
    """The demo's `DemoView` on the terminal: each beat rendered as the other commands render it."""

    def chapter(self, title: str) -> None:
        """A rule with the step's title."""
        render.chapter(title)

    def say(self, text: str) -> None:
        """One line."""
        render.line(text)

    def waiting(self, text: str) -> AbstractContextManager[Callable[[str], None]]:
        """A spinner."""
        return render.waiting(text)

    def generating(self, total: int) -> AbstractContextManager[Callable[[int, int], None]]:
        """A progress bar over customers."""
        return render.generation_progress(total)

    def data_generated(self, data: FreshData) -> None:
        """The generated tables."""
        render.data_generated(data)

    def materialized(self, results: Sequence[MaterializeResult]) -> None:
        """The materialised views."""
        render.materialized(results)

    def trained(self, settings: Settings, outcome: TrainingOutcome, champion: str | None) -> None:
        """The training run, its verdict and its MLflow pages."""
        from mlstack.training.mlflow_ui import mlflow_ui, plots_page

        render.training(settings, outcome, champion, mlflow_ui(settings), plots_page(settings, outcome.run_id))

    def bento_built(self, built: BuiltBento) -> None:
        """The new bento."""
        render.bento_built(built)

    def scored(self, url: str, answers: Sequence[ScoredApplication]) -> None:
        """The service's answers."""
        render.scored(url, answers)

    def sending(self, scenario: Scenario, url: str) -> AbstractContextManager[Callable[[str, int, int], None]]:
        """The scenario and its progress bars."""
        return render.traffic_progress(scenario, url)

    def traffic_sent(self, run: TrafficRun) -> None:
        """What the traffic sent and wrote."""
        render.traffic_sent(run)

    def drift_judged(self, report: DriftReport) -> None:
        """The monitor's verdict."""
        render.drift(report)
