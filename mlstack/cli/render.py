"""How the CLI shows things: rich tables, progress bars and one-line outcomes; no logic, no I/O but the console."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

    from mlstack.data.validation import ValidationReport
    from mlstack.features.store import ApplyResult, FreshData, MaterializeResult
    from mlstack.monitoring.drift import DriftReport
    from mlstack.monitoring.shadow import ShadowEvidence
    from mlstack.serving.bento import BuiltBento
    from mlstack.serving.client import ScoredApplication
    from mlstack.settings import Settings
    from mlstack.simulation.demo import DemoSummary
    from mlstack.simulation.scenarios import Scenario
    from mlstack.simulation.traffic import TrafficRun
    from mlstack.stack.local import ComponentStatus
    from mlstack.stack.service import LocalService
    from mlstack.training.champion_history import Tenure
    from mlstack.training.mlflow_ui import MlflowUi
    from mlstack.training.promotion import Decision
    from mlstack.training.steps import CandidateKind, CandidateResult, TrainingOutcome

console = Console()
err_console = Console(stderr=True)

DATA_TABLES = ("customer_profile", "credit_history", "zipcode_stats", "loan_applications")
EXAMPLE_REQUEST = (
    '{"customer_id": 1, "zipcode": "10001", "loan_amount": 12000, "loan_term_months": 36, '
    '"loan_purpose": "debt_consolidation"}'
)
DRIFT_COLOURS = {"drift": "red", "no_drift": "green"}
STACK_URLS = (
    ("prefect-server", "Prefect UI"),
    ("mlflow-server", "MLflow UI (registered model)"),
    ("service", "service (Swagger UI; POST /predict)"),
    ("redis", "Redis"),
)


def error(message: str) -> None:
    """A known failure: one line on stderr (not wrapped, so logs and grep see it whole), no traceback."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def line(text: str) -> None:
    """One plain line on stdout."""
    console.print(text)


def chapter(title: str) -> None:
    """A rule with the title of a new step."""
    console.rule(f"[bold]{title}")


@contextmanager
def waiting(text: str) -> Iterator[Callable[[str], None]]:
    """A spinner while something runs; yields a callable that replaces its text."""
    with console.status(text) as status:
        yield lambda new: status.update(new)


@contextmanager
def generation_progress(total: int) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar over customers; yields `progress(done, total)`."""
    with Progress(
        TextColumn("[bold]generating[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("customers"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("generate", total=total)
        yield lambda done, of: progress.update(bar, completed=done, total=of)


def data_generated(data: FreshData) -> None:
    """Rows per table of newly generated data, and its label rate."""
    if data.cleared_feature_state:
        console.print("existing data replaced: cleared the Feast registry and this project's online rows")
    table = Table(title=f"Synthetic data in {data.directory} ({data.seconds:.1f}s)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in DATA_TABLES:
        table.add_row(name, f"{getattr(data.summary, name + '_rows'):,}")
    console.print(table)
    console.print(f"default rate of applications: {data.summary.label_rate:.1%} (synthetic data, see docs/data.md)")


def validation_report(report: ValidationReport, failing_rows: int, quarantined: Sequence[Path] = ()) -> None:
    """Each table's rows and checks, then every failed check and the first failing rows; the verdict last."""
    table = Table(title=f"Data validation at {report.checked_at:%Y-%m-%d %H:%M:%S} UTC")
    for column in ("table", "rows", "checks", "newest window", "window before", "errors", "warnings"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for checked in report.tables:
        table.add_row(
            checked.table.removesuffix(".parquet"),
            f"{checked.rows:,}",
            str(checked.checks),
            "-" if checked.window_rows is None else f"{checked.window_rows:,}",
            "none (batch checks skipped)"
            if checked.previous_window_rows is None
            else f"{checked.previous_window_rows:,}",
            f"[red]{len(checked.errors)}[/]" if checked.errors else "0",
            f"[yellow]{len(checked.warnings)}[/]" if checked.warnings else "0",
        )
    console.print(table)
    for failure in report.errors:
        console.print(f"[red]error[/] {failure.line()}", soft_wrap=True)
    for failure in report.warnings:
        console.print(f"[yellow]warning[/] {failure.line()}", soft_wrap=True)
    for checked in report.tables:
        if not checked.bad_rows.empty:
            rows = Table(title=f"{checked.table}: first {failing_rows} of {len(checked.bad_rows):,} failing rows")
            shown = checked.bad_rows.head(failing_rows).astype(str)
            for column in shown.columns:
                rows.add_column(str(column))
            for values in shown.itertuples(index=False):
                rows.add_row(*values)
            console.print(rows)
    for path in quarantined:
        console.print(f"quarantined: {path}")
    verdict = "[green]passed[/]" if report.passed else "[bold red]FAILED[/]"
    console.print(f"data validation {verdict}: {len(report.errors)} failed checks, {len(report.warnings)} warnings")


def applied(result: ApplyResult) -> None:
    """What `feast apply` registered."""
    console.print(
        f"applied: views {', '.join(result.feature_views)}; on-demand {', '.join(result.on_demand_feature_views)}; "
        f"services {', '.join(result.feature_services)} ({result.seconds:.1f}s)"
    )


def materialized(results: Sequence[MaterializeResult]) -> None:
    """Rows, seconds and throughput per materialised feature view."""
    table = Table(title="Materialised into Redis")
    for column in ("feature view", "rows", "seconds", "rows/s"):
        table.add_column(column, justify="right" if column != "feature view" else "left")
    for r in results:
        table.add_row(
            r.feature_view,
            f"{r.rows:,}",
            f"{r.seconds:.2f}",
            f"{r.rows / r.seconds:,.0f}" if r.seconds else "-",
        )
    console.print(table)


def vectors(frame: pd.DataFrame) -> None:
    """Online feature vectors, one column per entity row."""
    table = Table(title="Online feature vectors (feature service credit_risk_v1)")
    table.add_column("feature")
    for i in range(len(frame)):
        table.add_column(f"row {i}", justify="right")
    for column in frame.columns:
        values = [frame[column].iloc[i] for i in range(len(frame))]
        table.add_row(str(column), *[f"{v:.4g}" if isinstance(v, float) else str(v) for v in values])
    console.print(table)


def training(
    settings: Settings,
    outcome: TrainingOutcome,
    champion: str | None,
    ui: MlflowUi | None = None,
    plots_page: str | None = None,
) -> None:
    """A training run: verdict, holdout metrics, leakage warnings, the @champion after, its MLflow pages."""
    metrics = outcome.metrics
    verdict = "[green]promoted to @champion[/]" if outcome.promoted else "[yellow]not promoted[/]"
    semantic = f" ({outcome.semantic_version})" if outcome.semantic_version else ""
    console.print(f"model {settings.model_name} version {outcome.version}{semantic}: {verdict}")
    console.print(f"  decision: {outcome.decision.summary()}")
    console.print(
        f"  holdout: ROC AUC {metrics.roc_auc:.4f}, PR AUC {metrics.pr_auc:.4f}, log loss {metrics.log_loss:.4f}, "
        f"Brier {metrics.brier:.4f}, calibration error {metrics.calibration_error:.4f}, "
        f"recall {metrics.recall_at_threshold:.3f} / precision {metrics.precision_at_threshold:.3f} "
        f"at threshold {metrics.threshold:.2f} ({metrics.rows:,} applications)"
    )
    console.print(f"  calibrator: {outcome.calibrator}")
    for warning in outcome.leakage:
        console.print(f"  [red]probable leakage:[/] {warning}")
    candidates(outcome.candidates, outcome.challenger_kind)
    gate(outcome.decision, f"v{outcome.version}")
    console.print(f"  @champion is now version {champion or '(none)'}")
    if ui is not None:
        name = settings.model_name
        console.print(f"  MLflow registered model: {ui.model(name)}", soft_wrap=True)
        console.print(f"  MLflow version {outcome.version}: {ui.model_version(name, outcome.version)}", soft_wrap=True)
        console.print(f"  MLflow run: {ui.run(outcome.run_id)}", soft_wrap=True)
        if plots_page:
            console.print(f"  MLflow plots (calibration): {plots_page}", soft_wrap=True)
    elif not settings.mlflow_tracking_uri:
        console.print(
            f"  MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {settings.tracking_uri()} "
            "--port 5000, then open http://127.0.0.1:5000"
        )


def candidates(results: Sequence[CandidateResult], chosen: CandidateKind) -> None:
    """The candidates of a retrain on the same holdout (nothing for a run with one candidate)."""
    if len(results) < 2:
        return
    from mlstack.training.steps import candidate_rows

    table = Table(title="candidates on the same holdout (the lowest log loss goes to the gate)")
    for column in ("candidate", "log loss", "Brier", "ROC AUC", "cal. intercept", "cal. slope"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for row in candidate_rows(results, chosen):
        table.add_row(*row)
    console.print(table)


def gate(decision: Decision, challenger: str, rows: str = "the same holdout") -> None:
    """The gate's numbers: both models side by side, the differences with their intervals, the rule, the verdict."""
    champion = f"champion v{decision.champion_version}" if decision.champion_version else "champion (none)"
    table = Table(title=f"gate: challenger {challenger} vs {champion} on {rows}")
    table.add_column("measure")
    table.add_column(f"challenger {challenger}", justify="right")
    table.add_column(champion, justify="right")
    for measure, ours, theirs in decision.metric_rows():
        table.add_row(measure, ours, theirs)
    console.print(table)
    differences = decision.difference_rows()
    if differences:
        table = Table(title="challenger minus champion (paired, same rows)")
        for column in ("measure", "difference", "interval", "gate"):
            table.add_column(column, justify="right" if column == "difference" else "left")
        for measure, value, interval, verdict in differences:
            table.add_row(measure, value, interval, verdict)
        console.print(table)
    rule = decision.rule
    console.print(
        f"  rule: {rule.confidence:.0%} confidence, ROC AUC harm margin {rule.auc_margin:.4f}, "
        f"at least {rule.min_defaults} defaults, {rule.bootstrap_rounds} bootstrap rounds (seed {rule.bootstrap_seed})"
    )
    colour = "green" if decision.promote else "yellow"
    console.print(f"  verdict: [{colour}]{decision.verdict_text}[/]")
    for reason in decision.reasons:
        console.print(f"    - {reason}", soft_wrap=True)


def model_info(title: str, info: Mapping[str, str]) -> None:
    """A model version's lineage, field by field."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, value)
    console.print(table)


def champion_tenures(title: str, held: Sequence[Tenure]) -> None:
    """One row per tenure of @champion, oldest first: version, from, until, how it got there, by whom, why."""
    table = Table(title=title)
    for column in ("version", "from (UTC)", "until (UTC)", "move", "by", "why", "recorded by"):
        table.add_column(column)
    for tenure in held:
        move = tenure.move
        table.add_row(
            f"v{tenure.version}",
            f"{tenure.start:%Y-%m-%d %H:%M:%S}",
            f"{tenure.end:%Y-%m-%d %H:%M:%S}" if tenure.end else "[green]now[/]",
            f"{move.kind} from v{move.previous}" if move.previous else move.kind,
            move.by,
            move.reason,
            move.seen_by,
        )
    console.print(table)


def bento_built(built: BuiltBento) -> None:
    """The tag, model version and path of a new bento."""
    console.print(f"built bento [bold]{built.tag}[/] (MLflow model version {built.model_version}) at {built.path}")


def bento_next_steps(built: BuiltBento) -> None:
    """How to serve and containerize a bento."""
    console.print(f"  serve it:        bentoml serve {built.tag}")
    console.print(f"  containerize it: bentoml containerize {built.tag}  (Dockerfile: {built.dockerfile})")


def service_started(service: LocalService) -> None:
    """Where the service runs, and a request to try."""
    console.print(f"credit-risk service ({service.target}) at {service.url} (pid {service.pid}, log {service.log})")
    console.print(
        f"  try: curl -s -X POST {service.url}/predict -H 'content-type: application/json' -d '{EXAMPLE_REQUEST}'"
    )


def scored(url: str, answers: Sequence[ScoredApplication]) -> None:
    """The service's answers to some applications, one row each."""
    table = Table(title=f"POST {url}/predict")
    for column in ("customer", "amount", "p(default)", "decision", "model", "features found", "stalest feature age"):
        table.add_column(column)
    for answer in answers:
        customer = str(answer.application["customer_id"])
        prediction = answer.prediction
        if prediction is None:
            table.add_row(customer, "", f"HTTP {answer.status}", answer.error[:60], "", "", "")
            continue
        age = prediction.stalest_feature_age_seconds
        table.add_row(
            customer,
            f"{answer.application['loan_amount']:,.0f}",
            f"{prediction.default_probability:.3f}",
            prediction.decision,
            f"{prediction.model_name} v{prediction.model_version}",
            str(prediction.features_found),
            f"{age / 86400:.1f} days" if age is not None else "-",
        )
    console.print(table)


@contextmanager
def traffic_progress(scenario: Scenario, url: str) -> Iterator[Callable[[str, int, int], None]]:
    """The scenario's description, then one bar per stage; yields `progress(stage, done, total)`."""
    console.print(f"scenario [bold]{scenario.name}[/]: {scenario.description}")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "materialise new snapshots" if stage == "materialise" else f"POST {url}/predict"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done)

        yield progress


def traffic_sent(run: TrafficRun) -> None:
    """What a traffic run sent and wrote."""
    console.print(run.summary())


def shadow(evidence: ShadowEvidence) -> None:
    """Shadow evidence: the counts, the gate's table when it was consulted, the A/B test, the population caveat."""
    console.print(evidence.summary().split("; ", 1)[0])
    if evidence.decision is not None:
        gate(evidence.decision, f"v{evidence.pair.challenger_version}", "the same matured live applications")
    else:
        for reason in evidence.reasons:
            console.print(f"[yellow]{reason}[/]")
    if evidence.approval is not None:
        console.print(evidence.approval.summary())
    console.print(f"[dim]{evidence.population_note}[/]")


def drift(report: DriftReport, run_page: str | None = None) -> None:
    """The monitor's verdict, where its MLflow run is, and the most drifted columns unless data was insufficient."""
    colour = DRIFT_COLOURS.get(report.verdict, "yellow")
    console.print(f"[{colour}]{report.summary()}[/]")
    if run_page:
        console.print(f"  MLflow drift chart: {run_page}", soft_wrap=True)
    if report.verdict == "insufficient_data":
        return
    table = Table(title="drift by column (severity 1.0 = threshold)")
    for column in ("column", "algorithm", "score", "severity", "verdict"):
        table.add_column(column)
    for c in report.ranked()[:8]:
        verdict = "[red]DRIFT[/]" if c.drifted else c.verdict
        table.add_row(c.column, c.algorithm, f"{c.score:.4g}", f"{c.severity:.2f}", verdict)
    console.print(table)


def components(title: str, rows: Sequence[ComponentStatus]) -> None:
    """One row per stack component: state, health, URL, pid, log or note."""
    table = Table(title=title)
    for column in ("component", "state", "health", "url", "pid", "log / note"):
        table.add_column(column)
    for row in rows:
        health = "[green]healthy[/]" if row.healthy else "[red]unhealthy[/]"
        if row.state in ("stopped", "not started"):
            health = "-"
        detail = " ".join(part for part in (str(row.log) if row.log else "", row.note) if part)
        table.add_row(row.name, row.state, health, row.url or "", str(row.pid or ""), detail)
    console.print(table)


def stack_urls(rows: Sequence[ComponentStatus], model_name: str) -> None:
    """The URL of each running component people open; MLflow's leads to the registered model, not the GenAI home."""
    from mlstack.training.mlflow_ui import MlflowUi

    urls = {row.name: row.url for row in rows if row.url and row.state in ("running", "external")}
    if "mlflow-server" in urls:
        urls["mlflow-server"] = MlflowUi(urls["mlflow-server"].rstrip("/")).model(model_name)
    for name, label in STACK_URLS:
        if name in urls:
            console.print(f"  {label}: {urls[name]}", soft_wrap=True)


def demo_summary(summary: DemoSummary) -> None:
    """The story in a few lines, and where everything still runs."""
    chapter("the story")
    for text in summary.lines():
        console.print(f"- {text}")
    demo_steps(summary)
    console.print(
        f"\n[green]done in {summary.seconds:.0f}s.[/] Everything keeps running: the Prefect UI at "
        f"{summary.prefect_ui}, `mlstack status` shows it all, `mlstack down` stops it."
    )


def demo_steps(summary: DemoSummary) -> None:
    """Where the demo's time went: wall, CPU (the demo's processes) and waited seconds per step, then the notes."""
    if not summary.steps:
        return
    load = summary.load
    title = f"where the {sum(step.wall_seconds for step in summary.steps):.0f}s went"
    if load is not None:
        title += f" (load average {load.start:.1f} at the start, {load.end:.1f} at the end, {os.cpu_count()} CPUs)"
    table = Table(title=title, title_justify="left")
    table.add_column("step")
    for column in ("wall s", "CPU s", "waited s"):
        table.add_column(column, justify="right")
    for step in summary.steps:
        table.add_row(
            short_step_title(step.title),
            f"{step.wall_seconds:.1f}",
            f"{step.cpu_seconds:.1f}",
            f"{step.waited_seconds:.1f}",
        )
    table.add_row(
        "total",
        f"{sum(step.wall_seconds for step in summary.steps):.1f}",
        f"{sum(step.cpu_seconds for step in summary.steps):.1f}",
        f"{sum(step.waited_seconds for step in summary.steps):.1f}",
    )
    console.print(table)
    for step in summary.steps:
        for note in step.notes:
            console.print(f"  {step.title.split(' ', 1)[0]} {note}")
    console.print(
        "  CPU: the demo's process tree (it, its servers, the worker's flow runs); waited: paced traffic, "
        "profile windows closing, the trigger and the worker's polling"
    )


def short_step_title(title: str, width: int = 56) -> str:
    """A step's title for a table cell: without its parenthesised detail, cut at a word with an ellipsis."""
    short = title.split(" (", 1)[0]
    if len(short) <= width:
        return short
    return short[: width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
