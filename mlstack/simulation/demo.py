"""`mlstack demo`: the whole loop as a story, on embedded defaults (no Docker, no system services).

data -> features -> train -> bento -> serve -> normal traffic -> monitor (no drift) -> recession
traffic -> monitor (drift) -> Prefect event -> retraining deployment (on a real local Prefect server
and process worker) -> new champion -> the service answers with the new model version.

`run_demo` tells the story; what it shows goes to a `DemoView` (the CLI renders it), the Prefect flows
it runs in this process come in as `DemoFlows` (only the CLI imports `flows`), and it returns a
`DemoSummary` with the numbers of the closing summary.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from mlstack.errors import StackError
from mlstack.features.online_store import resolve_redis
from mlstack.features.store import FreshData, MaterializeResult, generate_fresh_data, has_data
from mlstack.monitoring.drift import DriftReport
from mlstack.monitoring.live_profiles import stored_windows
from mlstack.processes import seconds_since_start, tree_cpu_seconds
from mlstack.serving.bento import BuiltBento, build_bento
from mlstack.serving.client import ScoredApplication, score_examples, service_token
from mlstack.settings import Settings, get_settings
from mlstack.simulation.scenarios import Scenario
from mlstack.simulation.timing import LoadAverage, StepClock, StepTime
from mlstack.simulation.traffic import TrafficRun, get_scenario, run_traffic
from mlstack.stack.components import settings_environment
from mlstack.stack.prefect import (
    begin_prefect_server,
    deploy_flows,
    ensure_work_pool,
    request_json,
    start_prefect_server,
    start_worker,
)
from mlstack.stack.service import LocalService, running_service, start_service, stop_service
from mlstack.training import registry
from mlstack.training.promotion import Decision
from mlstack.training.steps import CANDIDATE_WORDS, TrainingOutcome, candidates_from_tags, chosen_candidate

RETRAIN_DEPLOYMENT = "weekly-and-on-drift"
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRAIN_TIMEOUT_SECONDS = 900.0
# The demo's worker asks for scheduled runs every 2 s (Prefect's default, 10 s, is idle time in the story).
WORKER_ENVIRONMENT = {"PREFECT_WORKER_QUERY_SECONDS": "2"}
RUN_POLL_SECONDS = 1.0
# After a window's end, how long to wait for the service to write its profile before judging what is there.
PROFILE_SLACK_SECONDS = 10.0


class DemoError(StackError):
    """A demo step failed; the message says which and where its log is."""


@dataclass(frozen=True)
class TrafficPlan:
    """One burst of the story's traffic: scenario, applications per second, seconds, seed."""

    scenario: str
    rate: float
    duration_seconds: float
    seed: int


# 800 and 3,000 applications, as many as at the earlier 40/s and 60/s: the monitor and the retrain see
# the same rows; only the pacing (idle seconds of the story) is shorter. The service answers 200/s with
# 8 client threads on 2 cores (p50 under 10 ms when the machine is quiet).
NORMAL_TRAFFIC = TrafficPlan("normal", rate=160.0, duration_seconds=5.0, seed=1)
RECESSION_TRAFFIC = TrafficPlan("recession", rate=200.0, duration_seconds=15.0, seed=2)


@dataclass(frozen=True)
class DemoFlows:
    """The Prefect flows the story runs in this process, passed in by the CLI (the only importer of `flows`)."""

    materialize: Callable[[], Sequence[MaterializeResult]]
    train: Callable[[], TrainingOutcome]
    monitor: Callable[[datetime, datetime], DriftReport]


class DemoView(Protocol):
    """Where the story shows itself as it goes (the CLI renders to the terminal)."""

    def chapter(self, title: str) -> None:
        """A new step of the story begins."""

    def say(self, text: str) -> None:
        """One plain line."""

    def waiting(self, text: str) -> AbstractContextManager[Callable[[str], None]]:
        """While something runs: a spinner whose text the yielded callable replaces."""

    def generating(self, total: int) -> AbstractContextManager[Callable[[int, int], None]]:
        """While data is generated: a progress callable (customers done, total)."""

    def data_generated(self, data: FreshData) -> None:
        """The offline data was generated."""

    def materialized(self, results: Sequence[MaterializeResult]) -> None:
        """Feature views were materialised into Redis."""

    def trained(self, settings: Settings, outcome: TrainingOutcome, champion: str | None) -> None:
        """A training run finished; `champion` is the @champion version afterwards."""

    def bento_built(self, built: BuiltBento) -> None:
        """A bento was built."""

    def scored(self, url: str, answers: Sequence[ScoredApplication]) -> None:
        """The service answered the example applications."""

    def sending(self, scenario: Scenario, url: str) -> AbstractContextManager[Callable[[str, int, int], None]]:
        """While traffic runs: a progress callable (stage, done, total), as `run_traffic` calls it."""

    def traffic_sent(self, run: TrafficRun) -> None:
        """A traffic run finished and its outcomes were written."""

    def drift_judged(self, report: DriftReport) -> None:
        """The monitor judged a window."""


@dataclass(frozen=True)
class Orchestration:
    """The local Prefect server the story runs on, its deployments, and the process worker's log."""

    api_url: str
    deployments: list[str]
    worker_log: Path

    @property
    def ui_url(self) -> str:
        """The Prefect UI (the API URL without /api)."""
        return self.api_url.removesuffix("/api")


@dataclass(frozen=True)
class Retraining:
    """The retraining run the drift event triggered, and the registry's record of the version it registered."""

    run_name: str
    state: str
    version: str
    decision: dict[str, str]  # the version's tags and run metrics (`registry.describe`)

    def lines(self, window_days: int) -> list[str]:
        """The candidates, the gate's log-loss and AUC differences with their intervals, and the outcome."""
        info = self.decision
        head = f"retrained v{self.version} on the last {window_days} days"
        try:
            decision = Decision.from_tags(info)
        except ValueError as exc:
            return [f"{head}: no gate record ({exc})"]
        chosen = chosen_candidate(info)
        candidates = candidates_from_tags(info)
        rows = f"{decision.challenger.rows:,}-row post-drift holdout ({decision.challenger.positives:,} defaults)"
        lines = [
            f"{head}; candidates on the same {rows}, log loss: "
            + ", ".join(f"{c.kind} {c.log_loss:.4f}" for c in candidates)
            + f" -> {chosen} ({CANDIDATE_WORDS[chosen]}) goes to the gate"
        ]
        comparison, champion = decision.comparison, decision.champion
        if comparison is not None and champion is not None:
            level = f"{decision.rule.confidence:.0%}"
            loss, auc = comparison.log_loss, comparison.roc_auc
            lines.append(
                f"gate, v{self.version} vs champion v{decision.champion_version}: log loss "
                f"{decision.challenger.log_loss:.4f} vs {champion.log_loss:.4f}, difference {loss.estimate:+.4f} "
                f"({level} interval [{loss.lower:+.4f}, {loss.upper:+.4f}]); ROC AUC difference {auc.estimate:+.4f} "
                f"([{auc.lower:+.4f}, {auc.upper:+.4f}], harm margin {decision.rule.auc_margin:.2f}); calibration "
                f"intercept {decision.challenger.calibration_intercept:+.2f} vs {champion.calibration_intercept:+.2f}"
            )
        lines.append(
            f"decision: {decision.verdict_text} -> {info.get('promotion_outcome', '-')}"
            + (f" ({decision.reasons[-1]})" if not decision.promote and decision.reasons else "")
        )
        return lines


@dataclass(frozen=True)
class DemoSummary:
    """What the story showed: the first champion, both traffic windows and verdicts, the retraining, the end."""

    first_champion: str
    first_roc_auc: float
    normal: TrafficRun
    quiet: DriftReport
    recession: TrafficRun
    drifted: DriftReport
    retraining: Retraining
    retrain_window_days: int
    final_champion: str
    service: LocalService
    prefect_ui: str
    seconds: float
    steps: Sequence[StepTime] = ()
    load: LoadAverage | None = None

    def lines(self) -> list[str]:
        """The closing summary, one line per beat of the story."""
        return [
            f"first champion: v{self.first_champion} (holdout ROC AUC {self.first_roc_auc:.3f} on pre-drift data)",
            f"normal traffic: {self.quiet.summary()}",
            f"recession: realised default rate {self.recession.default_rate:.1%} "
            f"(normal traffic: {self.normal.default_rate:.1%}); the champion approved "
            f"{approval_rate(self.recession):.0%} of applications (normal: {approval_rate(self.normal):.0%})",
            f"recession traffic: {self.drifted.summary()}",
            *self.retraining.lines(self.retrain_window_days),
            f"@champion is v{self.final_champion}; the service runs {self.service.target} at {self.service.url}",
        ]


def demo_settings(base: Settings) -> Settings:
    """The demo's settings: short profile windows (5 s) and a retraining window that the new labels dominate."""
    # A window is written once it has closed: the story waits for that twice, so the windows are short.
    return base.model_copy(update={"profile_window_seconds": 5.0, "retrain_window_days": 14})


def run_demo(base: Settings, flows: DemoFlows, view: DemoView, *, reuse_data: bool = False) -> DemoSummary:
    """Tell the whole story (steps 1-11) on `demo_settings(base)`; raise `DemoError` where it breaks.

    What does not depend on each other overlaps: the Prefect server boots while the story's libraries
    import (the CLI launches it) and the data is generated; the deployments and the worker start in the
    background while the first champion is trained, packaged and served, and the story waits for them
    only before the drift event needs them. `DemoSummary.steps` says where the time went.
    """
    started = time.monotonic()
    settings = demo_settings(base)
    os.environ.update(settings_environment(settings))  # in-process flows and every child see the same
    get_settings.cache_clear()
    clock = StepClock()
    clock.prior("0. start-up: Python, the CLI, the story's imports", seconds_since_start(), tree_cpu_seconds())

    def chapter(title: str) -> None:
        clock.begin(title)
        view.chapter(title)

    chapter("1. orchestration: a local Prefect server, the deployments of prefect.yaml, a worker")
    begin_prefect_server(settings)
    view.say("Prefect server starting; the deployments and a process worker follow in the background")
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-orchestration")
    try:
        chapter("2. synthetic data")
        if reuse_data and has_data(settings):
            view.say(f"reusing data in {settings.data_dir}")
        else:
            with view.generating(settings.customers) as progress:
                fresh = generate_fresh_data(settings, progress)
            view.data_generated(fresh)
        chapter("3. online store, feast apply + materialise (flow materialize-features)")
        booting = time.monotonic()
        api_url = start_prefect_server(settings)
        clock.note(f"waited {time.monotonic() - booting:.1f}s for the Prefect server to boot (launched at the start)")
        os.environ["PREFECT_API_URL"] = api_url  # the flows of the story run in this process and report to it
        orchestrating = background.submit(start_orchestration, settings, api_url)
        target = resolve_redis(settings)
        view.say(f"Redis online store: {target.describe()}" + ("" if settings.redis_url else " (embedded)"))
        view.materialized(flows.materialize())

        chapter("4. train, register in MLflow, champion/challenger gate (flow train-model)")
        first = flows.train()
        first_champion = _champion(settings)
        view.trained(settings, first, first_champion)

        chapter("5. package the champion (bentoml build) and serve the bento")
        service = serve_champion(settings, view)

        chapter("6. normal traffic (same distribution as training)")
        normal = send(settings, view, clock, NORMAL_TRAFFIC, service.url)
        await_profiles(settings, clock, normal)
        chapter("7. monitor-drift on the normal window")
        quiet = flows.monitor(normal.started - timedelta(seconds=1), datetime.now(UTC))
        view.drift_judged(quiet)

        chapter("8. recession traffic (features, loan sizes and the risk itself shift)")
        recession = send(settings, view, clock, RECESSION_TRAFFIC, service.url)
        await_profiles(settings, clock, recession)
        # The drift event needs the deployment's trigger (and a worker to run what it starts).
        orchestration = await_orchestration(settings, view, clock, orchestrating)
        since = since_now()
        chapter("9. monitor-drift on the recession window -> event mlstack.drift.detected")
        drifted = flows.monitor(recession.started - timedelta(seconds=1), datetime.now(UTC))
        emitted = datetime.now(UTC)
        view.drift_judged(drifted)
        if drifted.verdict != "drift":
            raise DemoError(f"the recession was not detected ({drifted.summary()}); nothing would retrain")
    finally:
        background.shutdown(wait=False)  # on an error the started process still finishes (or times out)

    chapter(f"10. the event triggers deployment train-model/{RETRAIN_DEPLOYMENT} on the worker")
    retraining = await_retraining(settings, view, clock, orchestration, since, emitted)

    chapter("11. the service now")
    current = running_service(settings)
    if current is None:
        raise DemoError("the local service is not running after the rollout; see the worker's log")
    view.scored(current.url, score_examples(settings, current.url))
    steps, load = clock.finish()
    return DemoSummary(
        first_champion=first_champion or "(none)",
        first_roc_auc=first.metrics.roc_auc,
        normal=normal,
        quiet=quiet,
        recession=recession,
        drifted=drifted,
        retraining=retraining,
        retrain_window_days=settings.retrain_window_days,
        final_champion=_champion(settings) or "(none)",
        service=current,
        prefect_ui=orchestration.ui_url,
        seconds=time.monotonic() - started,
        steps=steps,
        load=load,
    )


def start_orchestration(settings: Settings, api_url: str) -> Orchestration:
    """On the running Prefect server at `api_url`: the work pool, the deployments, and a process worker."""
    ensure_work_pool(settings, api_url)
    deployments = deploy_flows(settings, api_url)
    worker = start_worker(settings, api_url, extra_env=WORKER_ENVIRONMENT)
    return Orchestration(api_url, deployments, worker.log)


def await_orchestration(
    settings: Settings, view: DemoView, clock: StepClock, orchestrating: Future[Orchestration]
) -> Orchestration:
    """Wait for the background start of the deployments and the worker (re-raising its error); show them."""
    began = time.monotonic()
    with view.waiting("prefect deploy --all and the worker (started in the background)..."):
        orchestration = orchestrating.result()
    clock.note(f"waited {time.monotonic() - began:.1f}s for the deployments and the worker (background since step 3)")
    view.say(f"Prefect UI {orchestration.ui_url}; deployments: {', '.join(orchestration.deployments)}")
    view.say(f"process worker on pool {settings.work_pool!r} (log {orchestration.worker_log})")
    return orchestration


def serve_champion(settings: Settings, view: DemoView) -> LocalService:
    """Build the champion's bento and serve it in place of any earlier service; show its first answers."""
    with view.waiting("bentoml build (champion pulled from MLflow by alias)..."):
        built = build_bento(settings)
    view.bento_built(built)
    stop_service(settings)  # a service left by an earlier run would serve an older model
    service = start_service(settings, settings_environment(settings), target=built.tag)
    view.say(f"credit-risk service ({built.tag}) at {service.url} (log {service.log})")
    view.scored(service.url, score_examples(settings, service.url))
    return service


def send(settings: Settings, view: DemoView, clock: StepClock, plan: TrafficPlan, url: str) -> TrafficRun:
    """Run one burst of traffic against the service at `url` and write its outcomes (seeded by the data seed too)."""
    with view.sending(get_scenario(plan.scenario), url) as progress:
        run = run_traffic(
            settings,
            plan.scenario,
            url=url,
            rate=plan.rate,
            duration=timedelta(seconds=plan.duration_seconds),
            seed=traffic_seed(settings, plan),
            token=service_token(settings),
            progress=progress,
        )
    sending = (run.finished - run.started).total_seconds()
    clock.waited(sending, f"{run.result.sent:,} requests paced at {plan.rate:.0f}/s: {sending:.1f}s")
    view.traffic_sent(run)
    return run


def await_retraining(
    settings: Settings,
    view: DemoView,
    clock: StepClock,
    orchestration: Orchestration,
    since: datetime,
    emitted: datetime,
) -> Retraining:
    """Wait for the run the drift event triggered; raise unless it completed; the gate's record on its version.

    `emitted` is when the drift event had been sent: the run's timeline from there is booked on `clock`.
    """
    with view.waiting("waiting for the triggered retraining run...") as update:
        run = wait_for_triggered_run(
            orchestration.api_url, RETRAIN_DEPLOYMENT, since, timeout=RETRAIN_TIMEOUT_SECONDS, on_state=update
        )
    view.say(f"flow run {run['name']} finished: {run['state_type']} ({orchestration.ui_url}/runs)")
    timeline = run_timeline(orchestration.api_url, run)
    clock.waited(timeline.idle_seconds(emitted), timeline.describe(emitted))
    if run["state_type"] != "COMPLETED":
        raise DemoError(f"the retraining run ended {run['state_type']}; see {orchestration.worker_log}")
    newest = latest_version(settings)
    return Retraining(str(run["name"]), str(run["state_type"]), newest, version_decision(settings, newest))


def traffic_seed(settings: Settings, plan: TrafficPlan) -> int:
    """The seed of a burst: the plan's, moved by the data seed, so `mlstack demo --seed N` is another world."""
    return plan.seed + 1000 * settings.seed


def approval_rate(run: TrafficRun) -> float:
    """Share of the run's answered applications the model approved (NaN if none was answered)."""
    frame = run.result.answered_frame()
    return float((frame["decision"] == "approve").mean()) if len(frame) else math.nan


def _champion(settings: Settings) -> str | None:
    champion = registry.champion_version(settings)
    return str(champion.version) if champion is not None else None


def await_profiles(settings: Settings, clock: StepClock, run: TrafficRun) -> None:
    """Wait until the service has written the profiles of the run's answered requests (books the wait).

    A window is written once the clock passes its end: sleep until the window holding the run's end
    closes, then poll the profile store until its windows hold every answered row, for at most
    `PROFILE_SLACK_SECONDS` (the monitor then judges what is there).
    """
    began = time.monotonic()
    window = settings.profile_window_seconds
    closes = (int(run.finished.timestamp() // window) + 1) * window
    time.sleep(max(0.0, closes - time.time()))
    deadline = time.monotonic() + PROFILE_SLACK_SECONDS
    while profiled_rows(settings, run) < run.result.ok and time.monotonic() < deadline:
        time.sleep(0.2)
    waited = time.monotonic() - began
    clock.waited(waited, f"{waited:.1f}s for the profile windows to close and be written ({window:.0f}s windows)")


def profiled_rows(settings: Settings, run: TrafficRun) -> int:
    """Rows of the stored profile windows that overlap the run (the service writes a window once it closes)."""
    start, end = run.started - timedelta(seconds=1), run.finished + timedelta(seconds=1)
    return sum(w.rows for w in stored_windows(settings.profile_store_url()) if w.overlaps(start, end))


def _api(method: str, url: str, body: object | None = None) -> Any:
    status, answer = request_json(method, url, body, timeout=10)
    if status != 200:
        raise DemoError(f"Prefect at {url} answered {status}")
    return answer


def deployment_runs(api_url: str, deployment: str, since: datetime) -> list[dict[str, Any]]:
    """Flow runs of the deployment named `deployment` created after `since` (dicts from Prefect's API)."""
    deployments = _api("POST", f"{api_url}/deployments/filter", {"deployments": {"name": {"any_": [deployment]}}})
    if not deployments:
        raise DemoError(f"no deployment named {deployment!r} on {api_url}: were the deployments registered?")
    runs = _api(
        "POST",
        f"{api_url}/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [d["id"] for d in deployments]}}, "limit": 50},
    )
    return [run for run in runs if datetime.fromisoformat(run["created"]) >= since]


def wait_for_triggered_run(
    api_url: str,
    deployment: str,
    since: datetime,
    timeout: float,
    on_state: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Wait for the first run of `deployment` created after `since` to finish; return it (its state is in it)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        runs = deployment_runs(api_url, deployment, since)
        if runs:
            run = min(runs, key=lambda r: r["created"])
            state = run["state_type"]
            if state != seen and on_state is not None:
                on_state(f"{run['name']}: {state.lower()}")
            seen = state
            if state in TERMINAL_STATES:
                return run
        time.sleep(RUN_POLL_SECONDS)
    raise DemoError(f"no run of {deployment!r} finished within {timeout:.0f}s (see the worker's log)")


def version_decision(settings: Settings, version: str) -> dict[str, str]:
    """The registry's record of a version: its tags (the gate's decision, the candidates) and run metrics."""
    return registry.describe(settings, version)


def latest_version(settings: Settings) -> str:
    """The newest registered version of the model."""
    client = registry.tracking(settings)
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    return str(max(int(v.version) for v in versions))


def since_now() -> datetime:
    """Now, a second early (Prefect's `created` and ours come from different clocks' roundings)."""
    return datetime.now(UTC) - timedelta(seconds=1)


@dataclass(frozen=True)
class RunTimeline:
    """A flow run's moments (UTC): created (by the trigger), picked up by a worker (PENDING), RUNNING, ended."""

    created: datetime
    pending: datetime | None
    running: datetime | None
    ended: datetime | None

    def idle_seconds(self, emitted: datetime) -> float:
        """Seconds from the event to the worker picking the run up: trigger and worker polling, no work."""
        return max(0.0, ((self.pending or self.created) - emitted).total_seconds())

    def describe(self, emitted: datetime) -> str:
        """One line: the seconds between the event and each moment of the run."""
        moments = [
            ("run created", self.created),
            ("picked up by the worker", self.pending),
            ("running (process start, flow imports)", self.running),
            ("finished (train, gate, rollout)", self.ended),
        ]
        parts, before = [], emitted
        for label, moment in moments:
            if moment is not None:
                parts.append(f"{label} +{(moment - before).total_seconds():.1f}s")
                before = moment
        return "drift event -> " + ", ".join(parts)


def run_timeline(api_url: str, run: dict[str, Any]) -> RunTimeline:
    """The timeline of a flow run (a dict from Prefect's API), from its recorded states."""
    states = _api("GET", f"{api_url}/flow_run_states/?flow_run_id={run['id']}")

    def first(kind: str) -> datetime | None:
        moments = [datetime.fromisoformat(state["timestamp"]) for state in states if state["type"] == kind]
        return min(moments) if moments else None

    ended = run.get("end_time")
    return RunTimeline(
        created=datetime.fromisoformat(run["created"]),
        pending=first("PENDING"),
        running=first("RUNNING"),
        ended=datetime.fromisoformat(ended) if ended else None,
    )
