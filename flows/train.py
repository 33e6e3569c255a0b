"""Flow `train-model`: Feast training set -> time split -> LightGBM + calibrator (candidates) -> MLflow -> gate."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.validation import validate_offline_data_task
from mlstack.monitoring import export
from mlstack.settings import get_settings
from mlstack.stack.rollout import Rollout, roll_out
from mlstack.training import mlflow_ui, registry, tuning
from mlstack.training import steps as training_steps
from mlstack.training.dataset import Split, TrainingParams, TrainingSet, requested_window
from mlstack.training.promotion import Decision

# Frames and boosters pass between tasks in memory: never hash them into Prefect cache keys.
step = task(cache_policy=NO_CACHE)


@step
def build_training_set(start: datetime | None, end: datetime | None) -> TrainingSet:
    return training_steps.load_training_set(get_settings(), start, end)


@step
def split_by_time(training_set: TrainingSet) -> Split:
    return training_steps.split(get_settings(), training_set)


@step
def load_champion() -> training_steps.ChampionModel | None:
    return training_steps.load_champion(get_settings())


@step
def choose_training_params(parts: Split, tune: bool) -> tuning.ParamsChoice:
    return tuning.choose_params(get_settings(), parts, tune)


@step
def record_training_params(registered: registry.RegisteredVersion, choice: tuning.ParamsChoice) -> None:
    tuning.record_params(get_settings(), registered.version, registered.run_id, choice)


@step
def train_and_calibrate(parts: Split, params: TrainingParams) -> training_steps.Candidate:
    return training_steps.train_retrained(get_settings(), parts, params)


@step
def build_champion_candidates(
    champion: training_steps.ChampionModel | None, parts: Split, enabled: bool, params: TrainingParams
) -> list[training_steps.Candidate]:
    return training_steps.champion_candidates(get_settings(), champion, parts, enabled, params)


@step
def select_challenger(candidates: list[training_steps.Candidate]) -> training_steps.Candidate:
    return training_steps.select_challenger(candidates)


@step
def check_leakage(challenger: training_steps.Candidate, parts: Split) -> list[str]:
    return training_steps.check_leakage(get_settings(), challenger.score, parts)


@step
def score_champion(champion: training_steps.ChampionModel | None, parts: Split) -> training_steps.ChampionScore:
    return training_steps.score_champion(get_settings(), champion, parts)


@step
def write_artifacts(
    challenger: training_steps.Candidate, parts: Split, champion: training_steps.ChampionScore
) -> training_steps.RunArtifacts:
    return training_steps.write_artifacts(challenger, parts, champion, training_steps.run_directory(get_settings()))


@step
def log_and_register(
    challenger: training_steps.Candidate,
    candidates: list[training_steps.Candidate],
    training_set: TrainingSet,
    parts: Split,
    artifacts: training_steps.RunArtifacts,
    leakage: list[str],
    params: TrainingParams,
) -> registry.RegisteredVersion:
    return training_steps.register(
        get_settings(), challenger, candidates, training_set, parts, artifacts, leakage, params
    )


@step
def decide_promotion(
    challenger: training_steps.Candidate, champion: training_steps.ChampionScore, leakage: list[str]
) -> Decision:
    return training_steps.gate(get_settings(), challenger.score, champion, leakage)


@step
def move_champion_alias(version: str, decision: Decision) -> bool:
    return registry.promote(get_settings(), version, decision)


@step
def publish_report(outcome: training_steps.TrainingOutcome) -> None:
    settings = get_settings()
    plots = mlflow_ui.plots_markdown(settings, settings.model_name, outcome.version, outcome.run_id)
    create_markdown_artifact(
        key="train-model-report", markdown=f"{training_steps.training_markdown(outcome)}\n\n{plots}"
    )


@step
def push_decision(version: str, decision: Decision, promoted: bool) -> export.PushOutcome:
    return export.push_promotion(get_settings(), version, decision, promoted)


@step
def roll_out_champion() -> Rollout:
    return roll_out(get_settings())


@flow(name="train-model")
def train_model_flow(
    start: datetime | None = None,
    end: datetime | None = None,
    window_days: int | None = None,
    recent: bool = False,
    rollout: bool = False,
    reason: str = "",
    tune: bool = False,
) -> training_steps.TrainingOutcome:
    """Train and calibrate a challenger on labelled applications in [start, end] and gate it against @champion.

    A retrain (`recent`) with a champion also builds the champion recalibrated and the champion's
    trees continued on the window; the candidate with the lowest holdout log loss goes to the gate.

    Parameters:
        start: first application time of the window (default: MLSTACK_TRAIN_WINDOW_DAYS before end, or all).
        end: last application time (default: the end of the offline data; now when window_days is given).
        window_days: train on the last N days up to `end`.
        recent: train on the last MLSTACK_RETRAIN_WINDOW_DAYS days up to now, new labels included (retraining).
        rollout: when the challenger is promoted, build its bento and roll the local service / k8s overlay onto it.
        reason: why this run started (recorded in the log, e.g. "drift detected").
        tune: search hyperparameters (Optuna, time-ordered folds; the weekly schedule sets it); otherwise
            reuse the champion's recorded parameters, or the settings' when there is none.
    """
    logger = get_run_logger()
    if reason:
        logger.info("training because: %s", reason)
    start, end = requested_window(get_settings(), start, end, window_days, recent)
    validate_offline_data_task()  # first: a failing window stops the flow before MLflow is written
    training_set = build_training_set(start, end)
    logger.info("training set: %d applications, fingerprint %s", len(training_set.frame), training_set.fingerprint)
    parts = split_by_time(training_set)
    choice = choose_training_params(parts, tune)
    logger.info("training parameters (%s): %s", choice.source, choice.detail)
    champion_model = load_champion()
    candidates = [
        train_and_calibrate(parts, choice.params),
        *build_champion_candidates(champion_model, parts, recent, choice.params),
    ]
    challenger = select_challenger(candidates)
    leakage = check_leakage(challenger, parts)
    champion = score_champion(champion_model, parts)
    artifacts = write_artifacts(challenger, parts, champion)
    registered = log_and_register(challenger, candidates, training_set, parts, artifacts, leakage, choice.params)
    record_training_params(registered, choice)
    decision = decide_promotion(challenger, champion, leakage)
    promoted = move_champion_alias(registered.version, decision)
    outcome = training_steps.outcome_of(
        registered, training_set, parts, challenger, candidates, champion, decision, promoted, leakage
    )
    publish_report(outcome)
    push_decision(registered.version, decision, promoted)
    logger.info(outcome.summary())
    if rollout and promoted:
        logger.info("rolled out: %s", roll_out_champion().summary())
    return outcome
