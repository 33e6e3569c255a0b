"""The steps of a training run that span several modules, and the report of its outcome.

The Prefect flow `train-model` calls these one per task; `run_training` runs them in order without
Prefect (tests, scripts).

Every run calibrates: the booster is trained on `train` (early-stopped on `validation`), a
calibrator is fitted on the `calibration` slice after it, and the holdout after that scores
"booster + calibrator". A retrain (`candidates=True`, the retraining deployment) with a champion
builds three candidates and evaluates each on the same post-drift holdout (docs/training.md,
"Candidates"): the best by log loss goes to the gate against the champion.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import tempfile
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import lightgbm
import pandas as pd

from mlstack.data import profiles
from mlstack.features.store import FEATURE_SERVICE_VERSION, get_store
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.training import calibration, evaluation, model_input, promotion, registry
from mlstack.training.calibration import Calibrator
from mlstack.training.dataset import (
    Split,
    TrainingParams,
    TrainingSet,
    build_training_set,
    split_by_time,
    train_booster,
    training_params,
)
from mlstack.training.distributed import LOCAL, TrainingEngine, fit_booster, training_engine
from mlstack.training.evaluation import HoldoutScore, Metrics

CandidateKind = Literal["retrained", "recalibrated", "continued"]
CANDIDATE_KINDS: tuple[CandidateKind, ...] = typing.get_args(CandidateKind)
CANDIDATE_WORDS: dict[CandidateKind, str] = {
    "retrained": "retrained on the training window",
    "recalibrated": "the champion recalibrated on the calibration slice",
    "continued": "the champion's trees continued on the training window",
}
# What the candidates table shows of each candidate (Metrics fields), in reading order.
CANDIDATE_METRICS = ("log_loss", "brier", "roc_auc", "calibration_intercept", "calibration_slope")


@dataclass(frozen=True)
class ChampionModel:
    """The current @champion: "booster + calibrator", its version and the end of its training window."""

    version: str
    booster: lightgbm.Booster
    calibrator: Calibrator
    training_window_end: str  # ISO time from its lineage tag ("unknown" for a version without it)


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
class Candidate:
    """One challenger candidate: "booster + calibrator" and its score on the run's holdout."""

    kind: CandidateKind
    booster: lightgbm.Booster
    calibrator: Calibrator
    score: HoldoutScore
    engine: TrainingEngine = LOCAL  # where this run fitted its trees (recalibrated, continued: this process)

    @property
    def metrics(self) -> Metrics:
        """Its holdout metrics."""
        return self.score.metrics


@dataclass(frozen=True)
class CandidateResult:
    """A candidate's holdout numbers as the candidates table shows them (`CANDIDATE_METRICS`)."""

    kind: CandidateKind
    log_loss: float
    brier: float
    roc_auc: float
    calibration_intercept: float
    calibration_slope: float
    calibrator: str  # `Calibrator.describe()`

    @classmethod
    def of(cls, candidate: Candidate) -> CandidateResult:
        """The table row of a candidate."""
        numbers = {name: float(getattr(candidate.metrics, name)) for name in CANDIDATE_METRICS}
        return cls(kind=candidate.kind, calibrator=candidate.calibrator.describe(), **numbers)


def candidate_tags(results: Sequence[CandidateResult], chosen: CandidateKind) -> dict[str, str]:
    """The candidates table as version tags: `challenger_candidate`, `candidates`, `candidate_<kind>_<metric>`."""
    tags = {"challenger_candidate": chosen, "candidates": ",".join(result.kind for result in results)}
    for result in results:
        for name in CANDIDATE_METRICS:
            tags[f"candidate_{result.kind}_{name}"] = repr(float(getattr(result, name)))
        tags[f"candidate_{result.kind}_calibrator"] = result.calibrator
    return tags


def candidate_metrics(results: Sequence[CandidateResult]) -> dict[str, float]:
    """The candidates table as run metrics `candidate_<kind>_<metric>` (NaN left out: MLflow plots numbers)."""
    return {
        f"candidate_{result.kind}_{name}": float(getattr(result, name))
        for result in results
        for name in CANDIDATE_METRICS
        if math.isfinite(getattr(result, name))
    }


def candidates_from_tags(tags: typing.Mapping[str, str]) -> list[CandidateResult]:
    """The candidates table recorded by `candidate_tags` (empty for versions recorded without one)."""
    kinds = [kind for kind in tags.get("candidates", "").split(",") if kind in CANDIDATE_KINDS]
    results = []
    for kind in kinds:
        numbers = {name: float(tags.get(f"candidate_{kind}_{name}", "nan")) for name in CANDIDATE_METRICS}
        results.append(CandidateResult(kind=kind, calibrator=tags.get(f"candidate_{kind}_calibrator", "-"), **numbers))
    return results


def chosen_candidate(tags: typing.Mapping[str, str]) -> CandidateKind:
    """The candidate a version was registered as (`challenger_candidate`; "retrained" when not recorded)."""
    value = tags.get("challenger_candidate", "retrained")
    return value if value in CANDIDATE_KINDS else "retrained"


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
    candidates: list[CandidateResult] = field(default_factory=list)
    challenger_kind: CandidateKind = "retrained"
    calibrator: str = "none"  # the registered calibrator, `Calibrator.describe()`
    semantic_version: str = ""  # v<major>.<minor>.<patch> beside MLflow's integer version
    engine: TrainingEngine = LOCAL  # where the challenger's trees were fitted

    def summary(self) -> str:
        """One line for logs."""
        verdict = "promoted to @champion" if self.promoted else "not promoted"
        return f"model version {self.version} {verdict}: {self.decision.summary()}"


def load_training_set(settings: Settings, start: datetime | None, end: datetime | None) -> TrainingSet:
    """Point-in-time training set of labelled applications through the versioned feature service."""
    return build_training_set(settings, get_store(settings), start, end)


def split(settings: Settings, training_set: TrainingSet) -> Split:
    """Time-ordered train < validation < calibration < holdout split with the fractions from settings.

    With `MLSTACK_CALIBRATION=none` there is no calibration slice.
    """
    calibration_fraction = 0.0 if settings.calibration == "none" else settings.calibration_fraction
    return split_by_time(
        training_set.frame, settings.validation_fraction, settings.holdout_fraction, calibration_fraction
    )


def train(settings: Settings, parts: Split, params: TrainingParams | None = None) -> lightgbm.Booster:
    """LightGBM with early stopping on validation, on the configured compute engine (this process or Ray).

    Hyperparameters given (tuned, reused) or from settings.
    """
    return fit_booster(settings, parts, params or training_params(settings))


def fit_calibration(settings: Settings, booster: lightgbm.Booster, parts: Split) -> Calibrator:
    """The calibrator of `booster`, fitted on the calibration slice by the configured method (identity: none)."""
    rows = len(parts.calibration)
    method = calibration.choose_method(settings.calibration, rows, settings.calibration_isotonic_min_rows)
    if method == "identity" or rows == 0:
        return calibration.IDENTITY
    raw = booster.predict(model_input.encode(parts.calibration), raw_score=True)
    return calibration.fit_calibrator(raw, parts.calibration[model_input.LABEL].to_numpy(), method)


def make_candidate(
    settings: Settings,
    kind: CandidateKind,
    booster: lightgbm.Booster,
    parts: Split,
    calibrator: Calibrator | None = None,
    engine: TrainingEngine = LOCAL,
) -> Candidate:
    """A candidate: `booster` with `calibrator` (default: fitted on the calibration slice), scored on the holdout."""
    calibrator = fit_calibration(settings, booster, parts) if calibrator is None else calibrator
    score = evaluation.score_holdout(booster, parts.holdout, settings.decision_threshold, calibrator)
    return Candidate(kind, booster, calibrator, score, engine)


def train_retrained(settings: Settings, parts: Split, params: TrainingParams | None = None) -> Candidate:
    """Candidate (a), every run's: LightGBM on the training window (`params`, default the settings'), calibrated.

    Trained on the configured compute engine (`MLSTACK_COMPUTE_ENGINE`).
    """
    booster = train(settings, parts, params)
    return make_candidate(settings, "retrained", booster, parts, engine=training_engine(settings))


def load_champion(settings: Settings) -> ChampionModel | None:
    """The current @champion's "booster + calibrator" (None: no champion yet)."""
    if registry.champion_version(settings) is None:
        return None
    loaded = registry.load_booster(settings, "@champion")
    return ChampionModel(
        loaded.version,
        loaded.booster,
        loaded.calibrator,
        loaded.model_version.tags.get("training_window_end", "unknown"),
    )


def champion_candidates(
    settings: Settings,
    champion: ChampionModel | None,
    parts: Split,
    enabled: bool,
    params: TrainingParams | None = None,
) -> list[Candidate]:
    """Candidates (b) and (c) of a retrain, built from the champion (empty: not a retrain, or no champion).

    (b) `recalibrated`: the champion's booster with a calibrator fitted on this run's calibration
    slice (recent matured labels, later than the champion's training data on a drift retrain): the
    cheapest fix when the ranking holds and the base rate moved. (c) `continued`: LightGBM training
    continued from the champion's trees on this run's training rows (early-stopped on validation),
    then calibrated: the champion's long history, corrected by the recent window. Both are built in
    this process whatever the compute engine (docs/training.md, "On Ray").
    """
    if not enabled or champion is None:
        return []
    recalibrated = make_candidate(settings, "recalibrated", champion.booster, parts)
    continued = train_booster(parts, params or training_params(settings), init_model=champion.booster)
    return [recalibrated, make_candidate(settings, "continued", continued, parts)]


def select_challenger(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the lowest holdout log loss (the gate's primary measure); ties go to the earlier one."""
    if not candidates:
        raise ValueError("select_challenger needs at least one candidate")

    def loss(candidate: Candidate) -> float:
        value = candidate.metrics.log_loss
        return math.inf if math.isnan(value) else value

    return min(candidates, key=loss)


def check_leakage(settings: Settings, challenger: HoldoutScore, parts: Split) -> list[str]:
    """Warnings of probable leakage: a too-good holdout AUC, or a single feature too predictive on train."""
    univariate = evaluation.univariate_auc(parts.train)
    return evaluation.leakage_warnings(challenger.metrics, settings.leakage_auc_ceiling, univariate)


def score_champion(settings: Settings, champion: ChampionModel | None, parts: Split) -> ChampionScore:
    """Re-score the current champion ("booster + calibrator") on this run's holdout, row by row."""
    if champion is None:
        return ChampionScore(None, None)
    score = evaluation.score_holdout(champion.booster, parts.holdout, settings.decision_threshold, champion.calibrator)
    return ChampionScore(champion.version, score)


def write_artifacts(challenger: Candidate, parts: Split, champion: ChampionScore, directory: Path) -> RunArtifacts:
    """Holdout plots (the reliability plot with the champion's curve beside, if any) and the reference profile.

    The reference profile holds `model_input.PROFILE_COLUMNS` of the training rows: their model
    inputs and the model's own (calibrated) predictions on them, so the monitor can compare live
    inputs and live predictions.
    """
    plots = evaluation.write_plots(
        challenger.booster,
        parts.holdout,
        directory / "plots",
        champion=champion.score,
        champion_label=f"champion v{champion.version}",
        calibrator=challenger.calibrator,
    )
    rows = parts.train[list(model_input.FEATURES)].copy()
    rows[model_input.PREDICTION] = evaluation.predict(challenger.booster, rows, challenger.calibrator)
    reference = profiles.profile_frame(rows[list(model_input.PROFILE_COLUMNS)])
    return RunArtifacts(plots, profiles.write_profile(reference, directory / "reference_profile.bin"))


def register(
    settings: Settings,
    challenger: Candidate,
    candidates: Sequence[Candidate],
    training_set: TrainingSet,
    parts: Split,
    artifacts: RunArtifacts,
    leakage: list[str],
    params: TrainingParams | None = None,
) -> registry.RegisteredVersion:
    """Log the run to MLflow and register the challenger (alias @challenger) with lineage and the candidates table.

    `params`: what this run trained with (default: the settings').
    """
    signature_frame = pd.DataFrame(model_input.encode(parts.holdout.head(200)), columns=list(model_input.FEATURES))
    results = [CandidateResult.of(candidate) for candidate in candidates]
    return registry.log_and_register(
        settings,
        booster=challenger.booster,
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
            **candidate_tags(results, challenger.kind),
            **challenger.engine.tags(),
        },
        calibrator=challenger.calibrator,
        extra_metrics=candidate_metrics(results),
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
    challenger: Candidate,
    candidates: Sequence[Candidate],
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
        rows=parts.rows(),
        candidates=[CandidateResult.of(candidate) for candidate in candidates],
        challenger_kind=challenger.kind,
        calibrator=challenger.calibrator.describe(),
        semantic_version=registered.semantic_version,
        engine=challenger.engine,
    )


def run_training(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Callable[[str], object] = print,
    candidates: bool = False,
) -> TrainingOutcome:
    """Every step of `train-model` in order, without Prefect (`candidates`: a retrain's three candidates)."""
    training_set = load_training_set(settings, start, end)
    progress(f"training set: {len(training_set.frame):,} applications, fingerprint {training_set.fingerprint}")
    return run_on_training_set(settings, training_set, progress, candidates)


def run_on_training_set(
    settings: Settings,
    training_set: TrainingSet,
    progress: Callable[[str], object] = print,
    candidates: bool = False,
) -> TrainingOutcome:
    """The steps of `train-model` after the training set: split, train, register, gate, promote."""
    parts = split(settings, training_set)
    champion_model = load_champion(settings)
    retrained = train_retrained(settings, parts)
    all_candidates = [retrained, *champion_candidates(settings, champion_model, parts, candidates)]
    challenger = select_challenger(all_candidates)
    leakage = check_leakage(settings, challenger.score, parts)
    champion = score_champion(settings, champion_model, parts)
    artifacts = write_artifacts(challenger, parts, champion, run_directory(settings))
    registered = register(settings, challenger, all_candidates, training_set, parts, artifacts, leakage)
    decision = gate(settings, challenger.score, champion, leakage)
    promoted = registry.promote(settings, registered.version, decision)
    outcome = outcome_of(
        registered, training_set, parts, challenger, all_candidates, champion, decision, promoted, leakage
    )
    progress(outcome.summary())
    return outcome


def run_directory(settings: Settings) -> Path:
    """A fresh local directory for one run's artifact files before they are logged."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    root = settings.runs_dir
    root.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="train-", dir=root))


def candidate_rows(results: Sequence[CandidateResult], chosen: CandidateKind) -> list[tuple[str, ...]]:
    """(candidate, log loss, Brier, ROC AUC, calibration intercept, slope) as text, the chosen one marked."""
    return [
        (
            f"{result.kind}{' (challenger)' if result.kind == chosen else ''}: {CANDIDATE_WORDS[result.kind]}",
            *(f"{float(getattr(result, name)):.4f}" for name in CANDIDATE_METRICS),
        )
        for result in results
    ]


def training_markdown(outcome: TrainingOutcome) -> str:
    """The Prefect artifact: both models on the same holdout, the differences with their intervals, the decision."""
    decision = outcome.decision
    rule = decision.rule
    challenger = outcome.metrics
    champion_name = f"champion v{outcome.champion.version}" if outcome.champion.version else "champion (none)"
    lines = [
        f"# train-model: version {outcome.version} ({outcome.semantic_version or 'no semantic version'}) "
        f"{'**promoted**' if outcome.promoted else 'not promoted'}",
        "",
        f"Training window {outcome.window_start:%Y-%m-%d} → {outcome.window_end:%Y-%m-%d}, "
        f"fingerprint `{outcome.fingerprint}`, rows {outcome.rows}.",
        f"Decision threshold {challenger.threshold:.2f}; holdout of {challenger.rows:,} applications "
        f"({challenger.positives:,} defaults). Calibrator: {outcome.calibrator}. "
        f"Trees fitted on: {outcome.engine.describe()}.",
    ]
    if len(outcome.candidates) > 1:
        lines += [
            "",
            "Candidates on the same holdout (the lowest log loss goes to the gate):",
            "",
            "| candidate | log loss | Brier | ROC AUC | calibration intercept | calibration slope |",
            "|---|---:|---:|---:|---:|---:|",
            *(f"| {' | '.join(row)} |" for row in candidate_rows(outcome.candidates, outcome.challenger_kind)),
        ]
    lines += [
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
        f"Rule: promote when the {rule.confidence:.0%} interval of the log-loss difference lies below 0, unless the "
        f"ROC AUC difference's interval lies wholly below -{rule.auc_margin:.4f}; at least {rule.min_defaults} "
        f"defaults (and non-defaults) to compare; {rule.bootstrap_rounds:,} paired bootstrap rounds, seed "
        f"{rule.bootstrap_seed}.",
        "",
        f"**Decision: {decision.verdict_text}**",
        "",
        *(f"- {reason}" for reason in decision.reasons),
    ]
    if outcome.leakage:
        lines += ["", "**Probable leakage:**", *(f"- {warning}" for warning in outcome.leakage)]
    return "\n".join(lines)
