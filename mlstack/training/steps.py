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
from mlstack.features.store import FEATURE_SERVICE, get_store
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.training import evaluation, model_input, promotion, registry
from mlstack.training.dataset import (
    Split,
    TrainingSet,
    build_training_set,
    split_by_time,
    train_booster,
    training_params,
)
from mlstack.training.evaluation import Metrics


@dataclass(frozen=True)
class ChampionScore:
    """The current champion re-scored on the challenger's holdout (both None: no champion yet)."""

    version: str | None
    metrics: Metrics | None


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


def train(settings: Settings, parts: Split) -> lightgbm.Booster:
    """LightGBM with early stopping on validation, hyperparameters from settings."""
    return train_booster(parts, training_params(settings))


def evaluate_challenger(settings: Settings, booster: lightgbm.Booster, parts: Split) -> Metrics:
    """Holdout metrics at the service's decision threshold."""
    return evaluation.evaluate(booster, parts.holdout, settings.decision_threshold)


def check_leakage(settings: Settings, metrics: Metrics, parts: Split) -> list[str]:
    """Warnings of probable leakage: a too-good holdout AUC, or a single feature too predictive on train."""
    univariate = evaluation.univariate_auc(parts.train)
    return evaluation.leakage_warnings(metrics, settings.leakage_auc_ceiling, univariate)


def score_champion(settings: Settings, parts: Split) -> ChampionScore:
    """Re-evaluate the current @champion on this run's holdout, so the gate compares like with like."""
    if registry.champion_version(settings) is None:
        return ChampionScore(None, None)
    champion = registry.load_booster(settings, "@champion")
    metrics = evaluation.evaluate(champion.booster, parts.holdout, settings.decision_threshold)
    return ChampionScore(champion.version, metrics)


def write_artifacts(booster: lightgbm.Booster, parts: Split, directory: Path) -> RunArtifacts:
    """Holdout plots and the reference profile under `directory`.

    The reference profile holds `model_input.PROFILE_COLUMNS` of the training rows: their model
    inputs and the model's own predictions on them, so the monitor can compare live inputs and live
    predictions.
    """
    plots = evaluation.write_plots(booster, parts.holdout, directory / "plots")
    rows = parts.train[list(model_input.FEATURES)].copy()
    rows[model_input.PREDICTION] = booster.predict(model_input.encode(rows))
    reference = profiles.profile_frame(rows[list(model_input.PROFILE_COLUMNS)])
    return RunArtifacts(plots, profiles.write_profile(reference, directory / "reference_profile.bin"))


def register(
    settings: Settings,
    booster: lightgbm.Booster,
    training_set: TrainingSet,
    parts: Split,
    metrics: Metrics,
    artifacts: RunArtifacts,
    leakage: list[str],
) -> registry.RegisteredVersion:
    """Log the run to MLflow and register a new version (alias @challenger) with its lineage tags."""
    signature_frame = pd.DataFrame(model_input.encode(parts.holdout.head(200)), columns=list(model_input.FEATURES))
    return registry.log_and_register(
        settings,
        booster=booster,
        training_set=training_set,
        split=parts,
        params=training_params(settings).as_dict(),
        metrics=metrics,
        plots=artifacts.plots,
        reference_profile=artifacts.reference_profile,
        signature_frame=signature_frame,
        git_commit=git_commit(),
        extra_tags={
            "feature_service_version": FEATURE_SERVICE.rsplit("_v", 1)[-1],
            "feast_project": "mlstack",
            "leakage_warnings": "; ".join(leakage) or "none",
        },
    )


def gate(settings: Settings, metrics: Metrics, champion: ChampionScore, leakage: list[str]) -> promotion.Decision:
    """Champion/challenger decision; probable leakage refuses promotion whatever the AUC."""
    decision = promotion.decide(
        metrics,
        champion.metrics,
        settings.promotion_margin,
        promotion.floors_from(settings),
        champion_version=champion.version,
    )
    if leakage and decision.promote:
        return dataclasses.replace(
            decision,
            promote=False,
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
    metrics: Metrics,
    champion: ChampionScore,
    decision: promotion.Decision,
    promoted: bool,
    leakage: list[str],
) -> TrainingOutcome:
    """Bundle the run's results."""
    return TrainingOutcome(
        version=registered.version,
        run_id=registered.run_id,
        metrics=metrics,
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
    metrics = evaluate_challenger(settings, booster, parts)
    leakage = check_leakage(settings, metrics, parts)
    champion = score_champion(settings, parts)
    artifacts = write_artifacts(booster, parts, run_directory(settings))
    registered = register(settings, booster, training_set, parts, metrics, artifacts, leakage)
    decision = gate(settings, metrics, champion, leakage)
    promoted = registry.promote(settings, registered.version, decision)
    outcome = outcome_of(registered, training_set, parts, metrics, champion, decision, promoted, leakage)
    progress(outcome.summary())
    return outcome


def run_directory(settings: Settings) -> Path:
    """A fresh local directory for one run's artifact files before they are logged."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    root = settings.runs_dir
    root.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="train-", dir=root))


def training_markdown(outcome: TrainingOutcome) -> str:
    """The Prefect artifact: challenger vs champion on the same holdout, and the decision."""
    challenger, champion = outcome.metrics, outcome.champion.metrics
    rows = [
        ("ROC AUC", "roc_auc"),
        ("PR AUC", "pr_auc"),
        ("log loss", "log_loss"),
        ("Brier score", "brier"),
        ("calibration error", "calibration_error"),
        ("precision @ threshold", "precision_at_threshold"),
        ("recall @ threshold", "recall_at_threshold"),
        ("decline rate @ threshold", "decline_rate_at_threshold"),
    ]
    champion_name = f"champion v{outcome.champion.version}" if outcome.champion.version else "champion (none)"
    lines = [
        f"# train-model: version {outcome.version} {'**promoted**' if outcome.promoted else 'not promoted'}",
        "",
        f"Training window {outcome.window_start:%Y-%m-%d} → {outcome.window_end:%Y-%m-%d}, "
        f"fingerprint `{outcome.fingerprint}`, rows {outcome.rows}.",
        f"Decision threshold {challenger.threshold:.2f}; holdout of {challenger.rows:,} applications.",
        "",
        f"| metric (holdout) | challenger v{outcome.version} | {champion_name} |",
        "|---|---:|---:|",
    ]
    for label, key in rows:
        theirs = f"{getattr(champion, key):.4f}" if champion else "n/a"
        lines.append(f"| {label} | {getattr(challenger, key):.4f} | {theirs} |")
    lines += ["", f"**Decision:** {outcome.decision.summary()}"]
    if outcome.leakage:
        lines += ["", "**Probable leakage:**", *(f"- {warning}" for warning in outcome.leakage)]
    return "\n".join(lines)
