"""The steps of a training run that span several modules, and the report of its outcome.

The Prefect flow `train-model` calls these one per task; `run_training` runs them in order without
Prefect (tests, scripts).
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightgbm
import pandas as pd

from mlstack.data import profiles
from mlstack.features.store import FEATURE_SERVICE_VERSION, get_store
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.training import evaluation, model_input, promotion, registry
from mlstack.training.dataset import (
    Split,
    TrainingParams,
    TrainingSet,
    build_training_set,
    split_by_time,
    train_booster,
    training_params,
)
from mlstack.training.evaluation import HoldoutScore, Metrics


@dataclass(frozen=True)
class ChampionScore:
    """The current champion re-scored on the challenger's holdout, row by row (both None: no champion yet)."""

    version: str | None
    score: HoldoutScore | None

    @property
    def metrics(self) -> Metrics | None:
        """The champion's metrics on this holdout (None: no champion)."""
        return None if self.score is None else self.score.metrics


@dataclass(frozen=True)
class RunArtifacts:
    """Files logged with the run: plots and the whylogs reference profile of the training features."""

    plots: list[Path]
    reference_profile: Path


@dataclass(frozen=True)
class TrainingOutcome:
    """What a training run produced and decided."""

    version: str
    run_id: str
    metrics: Metrics
    champion: ChampionScore
    decision: promotion.Decision
    promoted: bool
    leakage: list[str]
    window_start: datetime
    window_end: datetime
    fingerprint: str
    rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs."""
        verdict = "promoted to @champion" if self.promoted else "not promoted"
        return f"model version {self.version} {verdict}: {self.decision.summary()}"


def load_training_set(settings: Settings, start: datetime | None, end: datetime | None) -> TrainingSet:
    """Point-in-time training set of labelled applications through the versioned feature service."""
    return build_training_set(settings, get_store(settings), start, end)


def split(settings: Settings, training_set: TrainingSet) -> Split:
    """Time-ordered train / validation / holdout split with the fractions from settings."""
    return split_by_time(training_set.frame, settings.validation_fraction, settings.holdout_fraction)


def train(settings: Settings, parts: Split, params: TrainingParams | None = None) -> lightgbm.Booster:
    """LightGBM with early stopping on validation; hyperparameters given (tuned, reused) or from settings."""
    return train_booster(parts, params or training_params(settings))


def evaluate_challenger(settings: Settings, booster: lightgbm.Booster, parts: Split) -> HoldoutScore:
    """The challenger's holdout predictions and metrics at the service's decision threshold."""
    return evaluation.score_holdout(booster, parts.holdout, settings.decision_threshold)


def check_leakage(settings: Settings, challenger: HoldoutScore, parts: Split) -> list[str]:
    """Warnings of probable leakage: a too-good holdout AUC, or a single feature too predictive on train."""
    univariate = evaluation.univariate_auc(parts.train)
    return evaluation.leakage_warnings(challenger.metrics, settings.leakage_auc_ceiling, univariate)


def score_champion(settings: Settings, parts: Split) -> ChampionScore:
    """Re-score the current @champion on this run's holdout, row by row, so the gate compares like with like."""
    if registry.champion_version(settings) is None:
        return ChampionScore(None, None)
    champion = registry.load_booster(settings, "@champion")
    return ChampionScore(
        champion.version, evaluation.score_holdout(champion.booster, parts.holdout, settings.decision_threshold)
    )


def write_artifacts(booster: lightgbm.Booster, parts: Split, champion: ChampionScore, directory: Path) -> RunArtifacts:
    """Holdout plots (the reliability plot with the champion's curve beside, if any) and the reference profile.

    The reference profile holds `model_input.PROFILE_COLUMNS` of the training rows: their model
    inputs and the model's own predictions on them, so the monitor can compare live inputs and live
    predictions.
    """
    plots = evaluation.write_plots(
        booster,
        parts.holdout,
        directory / "plots",
        champion=champion.score,
        champion_label=f"champion v{champion.version}",
    )
    rows = parts.train[list(model_input.FEATURES)].copy()
    rows[model_input.PREDICTION] = booster.predict(model_input.encode(rows))
    reference = profiles.profile_frame(rows[list(model_input.PROFILE_COLUMNS)])
    return RunArtifacts(plots, profiles.write_profile(reference, directory / "reference_profile.bin"))


def register(
    settings: Settings,
    booster: lightgbm.Booster,
    training_set: TrainingSet,
    parts: Split,
    challenger: HoldoutScore,
    artifacts: RunArtifacts,
    leakage: list[str],
    params: TrainingParams | None = None,
) -> registry.RegisteredVersion:
    """Log the run to MLflow and register a new version (alias @challenger) with its lineage tags.

    `params`: what the booster was trained with (default: the settings').
    """
    signature_frame = pd.DataFrame(model_input.encode(parts.holdout.head(200)), columns=list(model_input.FEATURES))
    return registry.log_and_register(
        settings,
        booster=booster,
        training_set=training_set,
        split=parts,
        params=(params or training_params(settings)).as_dict(),
        metrics=challenger.metrics,
        plots=artifacts.plots,
        reference_profile=artifacts.reference_profile,
        signature_frame=signature_frame,
        git_commit=git_commit(),
        extra_tags={
            "feature_service_version": FEATURE_SERVICE_VERSION,
            "feast_project": "mlstack",
            "leakage_warnings": "; ".join(leakage) or "none",
        },
    )


def gate(
    settings: Settings, challenger: HoldoutScore, champion: ChampionScore, leakage: list[str]
) -> promotion.Decision:
    """Champion/challenger decision on the holdout rows; probable leakage refuses promotion whatever the scores."""
    decision = promotion.decide(
        challenger,
        champion.score,
        promotion.rule_from(settings),
        promotion.floors_from(settings),
        champion_version=champion.version,
    )
    if leakage and decision.promote:
        return dataclasses.replace(
            decision,
            verdict="probable_leakage",
            reasons=[*decision.reasons, *(f"probable leakage: {warning}" for warning in leakage)],
        )
    return decision


def git_commit() -> str | None:
    """The stack's git commit (None outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def outcome_of(
    registered: registry.RegisteredVersion,
    training_set: TrainingSet,
    parts: Split,
    challenger: HoldoutScore,
    champion: ChampionScore,
    decision: promotion.Decision,
    promoted: bool,
    leakage: list[str],
) -> TrainingOutcome:
    """Bundle the run's results."""
    return TrainingOutcome(
        version=registered.version,
        run_id=registered.run_id,
        metrics=challenger.metrics,
        champion=champion,
        decision=decision,
        promoted=promoted,
        leakage=leakage,
        window_start=training_set.window_start,
        window_end=training_set.window_end,
        fingerprint=training_set.fingerprint,
        rows={"train": len(parts.train), "validation": len(parts.validation), "holdout": len(parts.holdout)},
    )


def run_training(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Callable[[str], object] = print,
) -> TrainingOutcome:
    """Every step of `train-model` in order, without Prefect."""
    training_set = load_training_set(settings, start, end)
    progress(f"training set: {len(training_set.frame):,} applications, fingerprint {training_set.fingerprint}")
    parts = split(settings, training_set)
    booster = train(settings, parts)
    challenger = evaluate_challenger(settings, booster, parts)
    leakage = check_leakage(settings, challenger, parts)
    champion = score_champion(settings, parts)
    artifacts = write_artifacts(booster, parts, champion, run_directory(settings))
    registered = register(settings, booster, training_set, parts, challenger, artifacts, leakage)
    decision = gate(settings, challenger, champion, leakage)
    promoted = registry.promote(settings, registered.version, decision)
    outcome = outcome_of(registered, training_set, parts, challenger, champion, decision, promoted, leakage)
    progress(outcome.summary())
    return outcome


def run_directory(settings: Settings) -> Path:
    """A fresh local directory for one run's artifact files before they are logged."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    root = settings.runs_dir
    root.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="train-", dir=root))


def training_markdown(outcome: TrainingOutcome) -> str:
    """The Prefect artifact: both models on the same holdout, the differences with their intervals, the decision."""
    decision = outcome.decision
    rule = decision.rule
    challenger = outcome.metrics
    champion_name = f"champion v{outcome.champion.version}" if outcome.champion.version else "champion (none)"
    lines = [
        f"# train-model: version {outcome.version} {'**promoted**' if outcome.promoted else 'not promoted'}",
        "",
        f"Training window {outcome.window_start:%Y-%m-%d} → {outcome.window_end:%Y-%m-%d}, "
        f"fingerprint `{outcome.fingerprint}`, rows {outcome.rows}.",
        f"Decision threshold {challenger.threshold:.2f}; holdout of {challenger.rows:,} applications "
        f"({challenger.positives:,} defaults).",
        "",
        f"| metric (holdout) | challenger v{outcome.version} | {champion_name} |",
        "|---|---:|---:|",
        *(f"| {label} | {ours} | {theirs} |" for label, ours, theirs in decision.metric_rows()),
    ]
    differences = decision.difference_rows()
    if differences:
        comparison = decision.comparison
        assert comparison is not None
        lines += [
            "",
            f"Challenger minus champion on the {comparison.rows:,} rows both scored "
            f"({comparison.defaults:,} defaults):",
            "",
            "| measure | difference | interval | gate |",
            "|---|---:|---|---|",
            *(f"| {measure} | {value} | {interval} | {verdict} |" for measure, value, interval, verdict in differences),
        ]
    lines += [
        "",
        f"Rule: promote when the {rule.confidence:.0%} interval of the log-loss difference lies below 0 and the "
        f"ROC AUC difference's lower end is above -{rule.auc_margin:.4f}; at least {rule.min_defaults} defaults "
        f"(and non-defaults) to compare; {rule.bootstrap_rounds:,} paired bootstrap rounds, seed "
        f"{rule.bootstrap_seed}.",
        "",
        f"**Decision: {decision.verdict_text}**",
        "",
        *(f"- {reason}" for reason in decision.reasons),
    ]
    if outcome.leakage:
        lines += ["", "**Probable leakage:**", *(f"- {warning}" for warning in outcome.leakage)]
    return "\n".join(lines)
