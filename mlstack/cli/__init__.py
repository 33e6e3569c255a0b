"""The `mlstack` command line: one entry point for data, features, and the demo loop."""

from __future__ import annotations

import os
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlstack.settings import Settings, get_settings, stack_environment

app = typer.Typer(
    name="mlstack",
    help="mlstack: a credit-risk MLOps stack (Feast + Redis, Prefect, LightGBM + MLflow, BentoML, whylogs).\n\n"
    "Everything runs on embedded defaults: local state lives in .mlstack/ (MLSTACK_STATE_DIR), "
    "Redis is embedded unless MLSTACK_REDIS_URL is set.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(help="Synthetic offline data.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature repository and the Redis online store.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
model_app = typer.Typer(help="Registered models in MLflow: lineage, champion rollback.", no_args_is_help=True)
app.add_typer(model_app, name="model")
bento_app = typer.Typer(help="Packaging: the bento with the champion inside.", no_args_is_help=True)
app.add_typer(bento_app, name="bento")

console = Console()
err_console = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    """The settings, with command-line overrides applied (None means 'not given')."""
    given = {key: value for key, value in overrides.items() if value is not None}
    base = get_settings()
    return base.model_copy(update=given) if given else base


@data_app.command("generate")
def data_generate(
    customers: Annotated[int | None, typer.Option(min=1, help="Customers to simulate (default from settings).")] = None,
    months: Annotated[int | None, typer.Option(min=12, max=120, help="Months of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    end: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Last day of history (UTC).")] = None,
) -> None:
    """Generate the synthetic credit-risk data (parquet) under the state directory."""
    settings = _settings(customers=customers, months=months, seed=seed, data_end=end.date() if end else None)
    _generate(settings)


def _generate(settings: Settings) -> None:
    from mlstack.data.generator import generate_data
    from mlstack.features.store import reset_feature_state

    if (settings.data_dir / "loan_applications.parquet").is_file() and reset_feature_state(settings):
        console.print("existing data replaced: cleared the Feast registry and this project's online rows")

    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]generating[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("customers"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("generate", total=settings.customers)
        summary = generate_data(
            settings.data_dir,
            customers=settings.customers,
            months=settings.months,
            end=settings.data_end_datetime(),
            seed=settings.seed,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    table = Table(title=f"Synthetic data in {settings.data_dir} ({time.perf_counter() - started:.1f}s)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in ("customer_profile", "credit_history", "zipcode_stats", "loan_applications"):
        table.add_row(name, f"{getattr(summary, name + '_rows'):,}")
    console.print(table)
    console.print(f"default rate of applications: {summary.label_rate:.1%} (synthetic data, see docs/data.md)")


@features_app.command("apply")
def features_apply() -> None:
    """Register the Feast repo (entities, views, feature services): `feast apply` for this stack."""
    from mlstack.features.store import apply_repo

    result = apply_repo(get_settings())
    console.print(
        f"applied: views {', '.join(result.feature_views)}; on-demand {', '.join(result.on_demand_feature_views)}; "
        f"services {', '.join(result.feature_services)} ({result.seconds:.1f}s)"
    )


@features_app.command("materialize")
def features_materialize(
    end: Annotated[datetime | None, typer.Option(help="Window end (UTC ISO time); default now.")] = None,
    view: Annotated[
        list[str] | None, typer.Option(help="Feature view to materialise (repeatable); default all.")
    ] = None,
) -> None:
    """Run the Prefect flow `materialize-features`: apply the repo, load new rows into Redis."""
    results = _run_materialize_flow(end.replace(tzinfo=UTC) if end and end.tzinfo is None else end, view)
    _print_materialized(results)


def _run_materialize_flow(end: datetime | None, views: list[str] | None):  # type: ignore[no-untyped-def]
    from flows.materialize import materialize_features_flow

    return materialize_features_flow(end=end, feature_views=views)


def _print_materialized(results) -> None:  # type: ignore[no-untyped-def]
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


@features_app.command("show")
def features_show(
    customer_id: Annotated[list[int], typer.Option("--customer-id", help="Customer id (repeatable).")],
    zipcode: Annotated[str | None, typer.Option(help="Zipcode; default the customer's from the offline data.")] = None,
    loan_amount: Annotated[float, typer.Option(min=1)] = 10_000.0,
    loan_term_months: Annotated[int, typer.Option()] = 36,
    loan_purpose: Annotated[str, typer.Option()] = "debt_consolidation",
) -> None:
    """Read online feature vectors (credit_risk_v1) from Redis for some customers."""
    from mlstack.features.store import get_online_features, get_store, sample_entity_rows

    settings = get_settings()
    rows = sample_entity_rows(settings, customer_ids=customer_id)
    for row in rows:
        row.update(loan_amount=loan_amount, loan_term_months=loan_term_months, loan_purpose=loan_purpose)
        if zipcode:
            row["zipcode"] = zipcode
    _print_vectors(get_online_features(get_store(settings), rows))


def _print_vectors(frame) -> None:  # type: ignore[no-untyped-def]
    table = Table(title="Online feature vectors (feature service credit_risk_v1)")
    table.add_column("feature")
    for i in range(len(frame)):
        table.add_column(f"row {i}", justify="right")
    for column in frame.columns:
        values = [frame[column].iloc[i] for i in range(len(frame))]
        table.add_row(column, *[f"{v:.4g}" if isinstance(v, float) else str(v) for v in values])
    console.print(table)


@app.command()
def train(
    start: Annotated[datetime | None, typer.Option(help="First application time of the window (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Last application time of the window (UTC).")] = None,
) -> None:
    """Run the Prefect flow `train-model`: train, log to MLflow, register, and gate against @champion."""
    _print_training(_run_train_flow(_utc(start), _utc(end)), get_settings())


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def _run_train_flow(start: datetime | None, end: datetime | None):  # type: ignore[no-untyped-def]
    from flows.train import train_model_flow

    return train_model_flow(start=start, end=end)


def _print_training(outcome, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from mlstack.training.registry import champion_version

    metrics = outcome.metrics
    champion = champion_version(settings)
    verdict = "[green]promoted to @champion[/]" if outcome.promoted else "[yellow]not promoted[/]"
    console.print(f"model {settings.model_name} version {outcome.version}: {verdict}")
    console.print(f"  decision: {outcome.decision.summary()}")
    console.print(
        f"  holdout: ROC AUC {metrics.roc_auc:.4f}, PR AUC {metrics.pr_auc:.4f}, log loss {metrics.log_loss:.4f}, "
        f"Brier {metrics.brier:.4f}, calibration error {metrics.calibration_error:.4f}, "
        f"recall {metrics.recall_at_threshold:.3f} / precision {metrics.precision_at_threshold:.3f} "
        f"at threshold {metrics.threshold:.2f} ({metrics.rows:,} applications)"
    )
    for warning in outcome.leakage:
        console.print(f"  [red]probable leakage:[/] {warning}")
    console.print(f"  @champion is now version {champion.version if champion else '(none)'}")
    if not settings.mlflow_tracking_uri:
        console.print(
            f"  MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {settings.tracking_uri()} "
            "--port 5000, then open http://127.0.0.1:5000"
        )


@bento_app.command("build")
def bento_build() -> None:
    """Build the `credit-risk` bento with @champion pulled from MLflow inside; prints its tag."""
    built = _build_bento(get_settings())
    console.print(f"  serve it:        bentoml serve {built.tag}")
    console.print(f"  containerize it: bentoml containerize {built.tag}  (Dockerfile: {built.dockerfile})")


def _build_bento(settings: Settings):  # type: ignore[no-untyped-def]
    from mlstack.serving.bento import build_bento

    with console.status("bentoml build (champion pulled from MLflow by alias)..."):
        built = build_bento(settings)
    console.print(f"built bento [bold]{built.tag}[/] (MLflow model version {built.model_version}) at {built.path}")
    return built


@app.command()
def traffic(
    scenario: Annotated[str, typer.Option(help="normal | recession")] = "normal",
    rate: Annotated[float, typer.Option(min=0.1, help="Applications per second.")] = 40.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of traffic.")] = 30.0,
    url: Annotated[str | None, typer.Option(help="Service URL (default: the running local service).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: from the clock).")] = None,
) -> None:
    """Send loan applications to the service in a scenario, then write their outcomes into the offline data."""
    _run_traffic(get_settings(), scenario, rate, duration, url, seed)


def _run_traffic(settings: Settings, scenario: str, rate: float, duration: float, url: str | None, seed: int | None):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from mlstack.simulation.traffic import TrafficError, get_scenario, run_traffic
    from mlstack.stack.service import running_service

    chosen = get_scenario(scenario)
    if url is None:
        service = running_service(settings)
        if service is None:
            raise TrafficError("no local service is running: start one with `mlstack serve` or pass --url")
        url = service.url
    token = settings.service_api_token.get_secret_value() if settings.service_api_token else None
    console.print(f"scenario [bold]{chosen.name}[/]: {chosen.description}")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        tasks: dict[str, object] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "materialise new snapshots" if stage == "materialise" else f"POST {url}/predict"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done)  # type: ignore[arg-type]

        run = run_traffic(
            settings,
            scenario,
            url=url,
            rate=rate,
            duration=timedelta(seconds=duration),
            seed=seed,
            token=token,
            progress=progress,
        )
    console.print(run.summary())
    return run


@app.command()
def monitor(
    lookback_minutes: Annotated[float | None, typer.Option(help="Window before now (default from settings).")] = None,
    start: Annotated[datetime | None, typer.Option(help="Window start (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Window end (UTC, default now).")] = None,
) -> None:
    """Run the monitor-drift flow: live profiles vs the champion's training profile; emits the drift event."""
    _run_monitor(get_settings(), lookback_minutes, _utc(start), _utc(end))


def _run_monitor(settings: Settings, lookback_minutes, start, end):  # type: ignore[no-untyped-def]
    from flows.monitor import monitor_drift_flow

    report = monitor_drift_flow(lookback_minutes=lookback_minutes, start=start, end=end)
    colour = {"drift": "red", "no_drift": "green"}.get(report.verdict, "yellow")
    console.print(f"[{colour}]{report.summary()}[/]")
    if report.verdict != "insufficient_data":
        table = Table(title="drift by column (severity 1.0 = threshold)")
        for column in ("column", "algorithm", "score", "severity", "verdict"):
            table.add_column(column)
        for c in report.ranked()[:8]:
            verdict = "[red]DRIFT[/]" if c.drifted else c.verdict
            table.add_row(c.column, c.algorithm, f"{c.score:.4g}", f"{c.severity:.2f}", verdict)
        console.print(table)
    return report


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    bento: Annotated[str | None, typer.Option(help="Serve this bento tag instead of the source tree.")] = None,
) -> None:
    """Start `bentoml serve` for the credit-risk service in the background (stop it with `mlstack down`)."""
    from mlstack.stack.service import SERVICE, start_service

    service = start_service(get_settings(), {}, port, target=bento or SERVICE)
    console.print(f"credit-risk service ({service.target}) at {service.url} (pid {service.pid}, log {service.log})")
    console.print(f"  try: curl -s -X POST {service.url}/predict -H 'content-type: application/json' -d '{_EXAMPLE}'")


_EXAMPLE = (
    '{"customer_id": 1, "zipcode": "10001", "loan_amount": 12000, "loan_term_months": 36, '
    '"loan_purpose": "debt_consolidation"}'
)


def _score_examples(settings: Settings, url: str) -> None:
    import json
    import urllib.error
    import urllib.request

    from mlstack.features.store import sample_entity_rows

    applications = [
        {**row, "loan_amount": amount, "loan_term_months": 36, "loan_purpose": "debt_consolidation"}
        for row, amount in zip(sample_entity_rows(settings, n=3), (5_000.0, 25_000.0, 60_000.0), strict=False)
    ]
    applications.append({**applications[0], "customer_id": 999_999_999})  # unknown customer: answered, not an error
    token = settings.service_api_token.get_secret_value() if settings.service_api_token else None
    table = Table(title=f"POST {url}/predict")
    for column in ("customer", "amount", "p(default)", "decision", "model", "features found", "stalest feature age"):
        table.add_column(column)
    for application in applications:
        request = urllib.request.Request(
            f"{url}/predict",
            data=json.dumps(application).encode(),
            headers={"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            table.add_row(str(application["customer_id"]), "", f"HTTP {exc.code}", exc.read().decode()[:60], "", "", "")
            continue
        age = body["stalest_feature_age_seconds"]
        table.add_row(
            str(application["customer_id"]),
            f"{application['loan_amount']:,.0f}",
            f"{body['default_probability']:.3f}",
            body["decision"],
            f"{body['model_name']} v{body['model_version']}",
            str(body["features_found"]),
            f"{age / 86400:.1f} days" if age is not None else "-",
        )
    console.print(table)


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="Version number or @alias.")] = "@champion") -> None:
    """Print a model version's lineage: feature service, training window, fingerprint, commit, metrics."""
    from mlstack.training.registry import describe

    info = describe(get_settings(), ref)
    table = Table(title=f"{get_settings().model_name} {ref}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, value)
    console.print(table)


@model_app.command("rollback")
def model_rollback(reason: Annotated[str, typer.Option(help="Why; recorded on both versions.")]) -> None:
    """Move @champion back to the previous champion and record why."""
    from mlstack.training.registry import rollback

    previous, now = rollback(get_settings(), reason)
    console.print(f"@champion moved from version {previous} back to version {now}")


@app.command()
def demo(
    customers: Annotated[int | None, typer.Option(min=1, help="Customers to simulate.")] = None,
    reuse_data: Annotated[bool, typer.Option(help="Keep the offline data of an earlier run (default: fresh).")] = False,
) -> None:
    """The whole loop as a story: data, features, train, bento, serve, traffic, drift, event, retrain, new champion."""
    from mlstack.features.online_store import resolve_redis
    from mlstack.simulation import demo as story
    from mlstack.stack import local as local_stack
    from mlstack.stack.service import running_service, start_service, stop_service

    started = time.monotonic()
    settings = story.demo_settings(_settings(customers=customers))
    os.environ.update(local_stack.settings_environment(settings))  # in-process flows and every child see the same
    get_settings.cache_clear()
    notes = story.DemoStory()

    console.rule("[bold]1. orchestration: a local Prefect server, the deployments of prefect.yaml, a worker")
    api_url = local_stack.start_prefect_server(settings)
    os.environ["PREFECT_API_URL"] = api_url  # the flows below run in this process and report to it
    local_stack.ensure_work_pool(settings, api_url)
    with console.status("prefect deploy --all (imports each flow)..."):
        deployments = local_stack.deploy_flows(settings, api_url)
    worker = local_stack.start_worker(settings, api_url)
    console.print(f"Prefect UI {api_url.removesuffix('/api')}; deployments: {', '.join(deployments)}")
    console.print(f"process worker on pool {settings.work_pool!r} (log {worker.log})")

    console.rule("[bold]2. synthetic data")
    if reuse_data and (settings.data_dir / "loan_applications.parquet").is_file():
        console.print(f"reusing data in {settings.data_dir}")
    else:
        _generate(settings)
    console.rule("[bold]3. online store, feast apply + materialise (flow materialize-features)")
    target = resolve_redis(settings)
    console.print(f"Redis online store: {target.describe()}" + ("" if settings.redis_url else " (embedded)"))
    _print_materialized(_run_materialize_flow(None, None))

    console.rule("[bold]4. train, register in MLflow, champion/challenger gate (flow train-model)")
    first = _run_train_flow(None, None)
    _print_training(first, settings)
    champion = story.registry.champion_version(settings)
    notes.add(f"first champion: v{champion.version} (holdout ROC AUC {first.metrics.roc_auc:.3f} on pre-drift data)")

    console.rule("[bold]5. package the champion (bentoml build) and serve the bento")
    built = _build_bento(settings)
    stop_service(settings)  # a service left by an earlier run would serve an older model
    service = start_service(settings, local_stack.settings_environment(settings), target=built.tag)
    console.print(f"credit-risk service ({built.tag}) at {service.url} (log {service.log})")
    _score_examples(settings, service.url)

    console.rule("[bold]6. normal traffic (same distribution as training)")
    normal = _run_traffic(settings, "normal", 40.0, 20.0, service.url, 1)
    story.wait_for_window_close(settings, normal.finished)
    console.rule("[bold]7. monitor-drift on the normal window")
    quiet = _run_monitor(settings, None, normal.started - timedelta(seconds=1), datetime.now(UTC))
    notes.add(f"normal traffic: {quiet.summary()}")

    console.rule("[bold]8. recession traffic (features, loan sizes and the risk itself shift)")
    recession = _run_traffic(settings, "recession", 60.0, 50.0, service.url, 2)
    notes.add(
        f"recession: realised default rate {recession.default_rate:.1%} "
        f"(normal traffic: {normal.default_rate:.1%}); the champion approved "
        f"{_approval(recession):.0%} of applications (normal: {_approval(normal):.0%})"
    )
    story.wait_for_window_close(settings, recession.finished)
    since = story.since_now()
    console.rule("[bold]9. monitor-drift on the recession window -> event mlstack.drift.detected")
    drifted = _run_monitor(settings, None, recession.started - timedelta(seconds=1), datetime.now(UTC))
    notes.add(f"recession traffic: {drifted.summary()}")
    if drifted.verdict != "drift":
        raise story.DemoError(f"the recession was not detected ({drifted.summary()}); nothing would retrain")

    console.rule(f"[bold]10. the event triggers deployment train-model/{story.RETRAIN_DEPLOYMENT} on the worker")
    with console.status("waiting for the triggered retraining run...") as status:
        run = story.wait_for_triggered_run(
            api_url, story.RETRAIN_DEPLOYMENT, since, timeout=900, on_state=lambda text: status.update(text)
        )
    console.print(f"flow run {run['name']} finished: {run['state_type']} ({api_url.removesuffix('/api')}/runs)")
    if run["state_type"] != "COMPLETED":
        raise story.DemoError(f"the retraining run ended {run['state_type']}; see {worker.log}")
    newest = story.latest_version(settings)
    decision = story.version_decision(settings, newest)
    notes.add(
        f"retrained v{newest} on the last {settings.retrain_window_days} days (post-drift holdout): "
        f"challenger ROC AUC {float(decision['challenger_roc_auc']):.3f} vs champion "
        f"v{decision['compared_with_version']} {_auc(decision['champion_roc_auc'])} -> {decision['promotion_outcome']}"
    )

    console.rule("[bold]11. the service now")
    current = running_service(settings)
    if current is None:
        raise story.DemoError("the local service is not running after the rollout; see the worker's log")
    _score_examples(settings, current.url)
    now_champion = story.registry.champion_version(settings)
    notes.add(f"@champion is v{now_champion.version}; the service runs {current.target} at {current.url}")

    console.rule("[bold]the story")
    for line in notes.lines:
        console.print(f"- {line}")
    console.print(
        f"\n[green]done in {time.monotonic() - started:.0f}s.[/] Everything keeps running: the Prefect UI at "
        f"{api_url.removesuffix('/api')}, `mlstack status` shows it all, `mlstack down` stops it."
    )


def _approval(run) -> float:  # type: ignore[no-untyped-def]
    frame = run.result.answered_frame()
    return float((frame["decision"] == "approve").mean()) if len(frame) else float("nan")


def _auc(value: str) -> str:
    try:
        return f"{float(value):.3f}"
    except ValueError:
        return value


@app.command()
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
    settings = get_settings()
    if regenerate or not (settings.data_dir / "loan_applications.parquet").is_file():
        _generate(settings)
    else:
        console.print(f"reusing data in {settings.data_dir}")
    _print_materialized(_run_materialize_flow(None, None))
    if skip_training_if_champion:
        from mlstack.training.registry import champion_version

        champion = champion_version(settings)
        if champion is not None:
            console.print(f"@champion is version {champion.version}: training skipped (--skip-training-if-champion)")
            return
    _print_training(_run_train_flow(None, None), settings)


@app.command()
def up(
    service: Annotated[bool, typer.Option(help="Start the credit-risk service (needs a @champion in MLflow).")] = True,
    mlflow: Annotated[bool, typer.Option(help="Start the MLflow tracking server (its UI).")] = True,
) -> None:
    """Start the local stack natively: Redis, MLflow server, Prefect server + worker + deployments, the service."""
    from mlstack.errors import StackError
    from mlstack.stack.local import start_stack

    settings = get_settings()
    started = time.perf_counter()
    try:
        report = start_stack(
            settings,
            service=service,
            mlflow=mlflow,
            progress=lambda step: console.print(f"[{time.perf_counter() - started:5.1f}s] starting {step}"),
        )
    except StackError as exc:  # what started before the failure stays up: say how to see and stop it
        raise StackError(f"{exc}\n`mlstack status` shows what runs; `mlstack down` stops it.") from exc
    _print_components(f"mlstack up ({time.perf_counter() - started:.0f}s)", report.components)
    console.print(f"deployments on work pool {settings.work_pool!r}: {', '.join(report.deployments) or 'none'}")
    for note in report.notes:
        console.print(note)
    urls = {row.name: row.url for row in report.components if row.url and row.state in ("running", "external")}
    for name, label in (
        ("prefect-server", "Prefect UI"),
        ("mlflow-server", "MLflow UI"),
        ("service", "service (Swagger UI; POST /predict)"),
        ("redis", "Redis"),
    ):
        if name in urls:
            console.print(f"  {label}: {urls[name]}")
    console.print("stop it all with `mlstack down`; `mlstack status` checks health.")
    if any(row.state in ("running", "external") and not row.healthy for row in report.components):
        raise typer.Exit(1)


def _print_components(title: str, rows) -> None:  # type: ignore[no-untyped-def]
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


@app.command()
def down() -> None:
    """Stop the local stack: the service (flushing its profiles), worker, Prefect server, MLflow server, Redis."""
    from mlstack.stack.local import stop_stack

    settings = get_settings()
    for name, was_running in stop_stack(settings):
        console.print(f"{name}: stopped" if was_running else f"{name}: was not running")
    if settings.redis_url:
        console.print("redis: external (MLSTACK_REDIS_URL), left running")


@app.command()
def status() -> None:
    """Show what the local stack runs and whether it is healthy; its data, Feast registry and MLflow champion."""
    from mlstack.stack.local import stack_status

    settings = get_settings()
    console.print(f"state dir: {settings.state_dir}")
    _print_components("local stack (`mlstack up` starts it, `mlstack down` stops it)", stack_status(settings))
    console.print(f"data: {'present' if (settings.data_dir / 'loan_applications.parquet').is_file() else 'missing'}")
    registry_file = settings.feast_registry_path
    if settings.feast_registry_url or registry_file.is_file():
        console.print(f"feast registry: {settings.feast_registry_url or registry_file}")
    else:
        console.print("feast registry: none yet (mlstack features apply)")
    if settings.mlflow_tracking_uri or settings.mlflow_db_path.is_file():
        from mlstack.training.registry import RegistryError, champion_version

        try:
            champion = champion_version(settings)
            console.print(f"mlflow: {settings.tracking_uri()}; @champion = {champion.version if champion else 'none'}")
        except RegistryError as exc:
            console.print(f"mlflow: [red]{exc}[/]")
    else:
        console.print("mlflow: no local store yet (mlstack train)")


def main() -> None:
    """Console entry point: known failures print one clear line, not a traceback."""
    from mlstack.errors import StackError

    # Library chatter that says nothing to a user of this CLI.
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.update(stack_environment(get_settings()))
    if "PREFECT_API_URL" not in os.environ:
        # With `mlstack up` running, CLI flow runs report to its Prefect server (the UI shows them)
        # instead of a temporary server on the same database.
        from mlstack.stack.local import running_prefect_api_url

        local = running_prefect_api_url(get_settings())
        if local:
            os.environ["PREFECT_API_URL"] = local
    try:
        app(standalone_mode=True)
    except StackError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
