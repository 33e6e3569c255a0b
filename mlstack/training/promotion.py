"""Champion / challenger gate and rollback planning: pure rules, no MLflow.

The gate compares two models on the SAME holdout rows, paired row by row (docs/training.md, "The
gate"). A champion's metrics logged when it was trained are on an older holdout and are not
comparable: the caller must re-score the champion's booster on the challenger's holdout and pass
its per-row predictions (and the champion's version, so the registry can refuse the promotion if
the champion changed in the meantime).

The rule: floors first (sanity checks; a floor the champion fails worse does not block); the first
model is promoted if it passes them; with a champion, too few defaults on the holdout is
"insufficient evidence"; otherwise promote when the challenger's log loss is lower with the
configured confidence (the paired-bootstrap interval of the difference lies below 0) unless its
ROC AUC is significantly lower by more than the harm margin (DeLong interval's upper end below
-margin). docs/training.md, "The gate", says why the AUC condition is a harm guard and not a
non-inferiority test.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mlstack.settings import Settings
from mlstack.training.comparison import Comparison, Interval, compare
from mlstack.training.evaluation import HoldoutScore, Metrics

Verdict = Literal["promote", "not_better", "worse_auc", "insufficient_evidence", "fails_floors", "probable_leakage"]
VERDICTS: tuple[Verdict, ...] = typing.get_args(Verdict)
VERDICT_WORDS: dict[Verdict, str] = {
    "promote": "promote",
    "not_better": "not better",
    "worse_auc": "worse on ROC AUC",
    "insufficient_evidence": "insufficient evidence",
    "fails_floors": "fails the floors",
    "probable_leakage": "probable leakage",
}


@dataclass(frozen=True)
class Floors:
    """Sanity floors every model must pass, champion or not."""

    min_auc: float
    max_calibration_error: float


def floors_from(settings: Settings) -> Floors:
    """The floors configured in the settings."""
    return Floors(min_auc=settings.floor_min_auc, max_calibration_error=settings.floor_max_calibration_error)


@dataclass(frozen=True)
class GateRule:
    """How sure the gate must be: interval confidence, AUC harm margin, evidence needed, bootstrap."""

    confidence: float
    auc_margin: float
    min_defaults: int
    bootstrap_rounds: int
    bootstrap_seed: int

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1 or math.isnan(self.confidence):
            raise ValueError(f"gate confidence must be in (0, 1), got {self.confidence}")
        if not self.auc_margin >= 0:
            raise ValueError(f"gate AUC margin must be >= 0, got {self.auc_margin}")
        if self.min_defaults < 2:
            raise ValueError(f"gate minimum defaults must be >= 2 (DeLong's test needs two), got {self.min_defaults}")
        if self.bootstrap_rounds < 1:
            raise ValueError(f"gate bootstrap rounds must be >= 1, got {self.bootstrap_rounds}")


def rule_from(settings: Settings) -> GateRule:
    """The gate's rule configured in the settings."""
    return GateRule(
        confidence=settings.gate_confidence,
        auc_margin=settings.gate_auc_margin,
        min_defaults=settings.gate_min_defaults,
        bootstrap_rounds=settings.gate_bootstrap_rounds,
        bootstrap_seed=settings.gate_bootstrap_seed,
    )


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate: the verdict, why, and every number it was based on."""

    verdict: Verdict
    reasons: list[str]
    challenger: Metrics
    champion: Metrics | None
    rule: GateRule
    comparison: Comparison | None = None  # None: no champion, or too few rows to compare at all
    champion_version: str | None = None  # the champion the challenger was compared with (None: no champion)
    floors: Floors | None = field(default=None, compare=False)

    @property
    def promote(self) -> bool:
        """True when the verdict is to promote."""
        return self.verdict == "promote"

    @property
    def verdict_text(self) -> str:
        """The verdict in words ("not better", "insufficient evidence", ...)."""
        return VERDICT_WORDS[self.verdict]

    def summary(self) -> str:
        """One line: verdict, log loss and ROC AUC of both models with the differences' intervals, and the reasons."""
        challenger, champion, comparison = self.challenger, self.champion, self.comparison
        head = "promote" if self.promote else f"reject ({self.verdict_text})"
        name = f"champion v{self.champion_version}" if self.champion_version else "champion"
        if champion is None:
            against = (
                f"challenger log loss {challenger.log_loss:.4f}, ROC AUC {challenger.roc_auc:.4f}, "
                f"calibration error {challenger.calibration_error:.4f}, NaN predictions "
                f"{challenger.nan_predictions} (no champion)"
            )
        elif comparison is None:
            against = (
                f"challenger log loss {challenger.log_loss:.4f} vs {name} {champion.log_loss:.4f}, "
                f"ROC AUC {challenger.roc_auc:.4f} vs {champion.roc_auc:.4f} (not compared)"
            )
        else:
            level = f"{self.rule.confidence:.0%}"
            against = (
                f"challenger log loss {challenger.log_loss:.4f} vs {name} {champion.log_loss:.4f} "
                f"(difference {_interval(comparison.log_loss, level)}), ROC AUC {challenger.roc_auc:.4f} vs "
                f"{champion.roc_auc:.4f} (difference {_interval(comparison.roc_auc, level)}, margin "
                f"{self.rule.auc_margin:.4f})"
            )
        return f"{head}: {against} - {REASON_SEPARATOR.join(self.reasons)}"

    def metric_rows(self) -> list[tuple[str, str, str]]:
        """(measure, challenger, champion) for a report table: scores, calibration, threshold metrics."""
        return [
            (
                label,
                _number(getattr(self.challenger, key)),
                _number(getattr(self.champion, key)) if self.champion else "n/a",
            )
            for label, key in REPORT_METRICS
        ]

    def difference_rows(self) -> list[tuple[str, str, str, str]]:
        """(measure, challenger - champion, interval, what the gate made of it) for a report table (empty: none)."""
        comparison = self.comparison
        if comparison is None:
            return []
        level = f"{self.rule.confidence:.0%}"
        margin = self.rule.auc_margin
        better = comparison.log_loss.upper < 0
        harmed = auc_harmed(comparison, self.rule)
        return [
            (
                "log loss (decides)",
                f"{comparison.log_loss.estimate:+.4f}",
                f"{level} [{comparison.log_loss.lower:+.4f}, {comparison.log_loss.upper:+.4f}] (paired bootstrap)",
                "better: interval below 0" if better else "not better: interval reaches 0",
            ),
            (
                "ROC AUC (harm guard)",
                f"{comparison.roc_auc.estimate:+.4f}",
                f"{level} [{comparison.roc_auc.lower:+.4f}, {comparison.roc_auc.upper:+.4f}] "
                f"(DeLong, p = {comparison.roc_auc_p_value:.3g})",
                f"worse beyond the margin: upper end below -{margin:.4f}"
                if harmed
                else f"no evidence of a loss beyond -{margin:.4f}: upper end at or above it",
            ),
            (
                "Brier score",
                f"{comparison.brier.estimate:+.4f}",
                f"{level} [{comparison.brier.lower:+.4f}, {comparison.brier.upper:+.4f}] (paired bootstrap)",
                "reported (log loss decides)",
            ),
        ]

    def to_tags(self) -> dict[str, str]:
        """The decision as MLflow tags (string values; floats in full precision); `from_tags` reads them back.

        Every metric of both models is a `challenger_<metric>` / `champion_<metric>` tag (`none`
        without a champion); the rule is `gate_<field>`; the comparison `diff_<measure>[_lower|_upper]`,
        `diff_roc_auc_p_value`, `compared_rows`, `compared_defaults` (`none` without one); reasons
        are joined with "; " (the gate's reasons never contain it).
        """
        tags = {
            "promotion_decision": "promote" if self.promote else "reject",
            "promotion_verdict": self.verdict,
            "promotion_reasons": REASON_SEPARATOR.join(self.reasons),
            "promotion_summary": self.summary(),
            "compared_with_version": self.champion_version or NONE,
        }
        for name, kind in _RULE_FIELDS.items():
            tags[f"gate_{name}"] = _format(kind, getattr(self.rule, name))
        for name, kind in _METRIC_FIELDS.items():
            tags[f"challenger_{name}"] = _format(kind, getattr(self.challenger, name))
            tags[f"champion_{name}"] = NONE if self.champion is None else _format(kind, getattr(self.champion, name))
        for key, read in _COMPARISON_TAGS.items():
            tags[key] = NONE if self.comparison is None else _format(float, read(self.comparison))
        tags["compared_rows"] = NONE if self.comparison is None else str(self.comparison.rows)
        tags["compared_defaults"] = NONE if self.comparison is None else str(self.comparison.defaults)
        if self.floors is not None:
            tags["floor_min_auc"] = repr(float(self.floors.min_auc))
            tags["floor_max_calibration_error"] = repr(float(self.floors.max_calibration_error))
        return tags

    def to_metrics(self) -> dict[str, float]:
        """Every number of `to_tags` as an MLflow run metric named `gate_<tag>` (absent values left out)."""
        numeric = {}
        for key, value in self.to_tags().items():
            if key.startswith("promotion_") or key == "compared_with_version" or value == NONE:
                continue
            numeric[key if key.startswith("gate_") else f"gate_{key}"] = float(value)
        return numeric

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Decision:
        """The decision recorded by `to_tags` (other tags are ignored); ValueError names a missing or bad tag."""
        verdict = _tag(tags, "promotion_verdict")
        if verdict not in VERDICTS:
            raise ValueError(f"tag promotion_verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        reasons = _tag(tags, "promotion_reasons")
        champion_version = _tag(tags, "compared_with_version")
        has_champion = _tag(tags, "champion_roc_auc") != NONE
        rule = GateRule(**{name: _parse(kind, tags, f"gate_{name}") for name, kind in _RULE_FIELDS.items()})
        comparison = None
        if _tag(tags, "compared_rows") != NONE:
            values = {key: _parse(float, tags, key) for key in _COMPARISON_TAGS}
            comparison = Comparison(
                rows=_parse(int, tags, "compared_rows"),
                defaults=_parse(int, tags, "compared_defaults"),
                confidence=rule.confidence,
                **{
                    measure: Interval(
                        values[f"diff_{measure}"], values[f"diff_{measure}_lower"], values[f"diff_{measure}_upper"]
                    )
                    for measure in ("log_loss", "brier", "roc_auc")
                },
                roc_auc_p_value=values["diff_roc_auc_p_value"],
            )
        floors = None
        if "floor_min_auc" in tags or "floor_max_calibration_error" in tags:
            floors = Floors(_parse(float, tags, "floor_min_auc"), _parse(float, tags, "floor_max_calibration_error"))
        return cls(
            verdict=verdict,
            reasons=reasons.split(REASON_SEPARATOR) if reasons else [],
            challenger=_metrics_from(tags, "challenger_"),
            champion=_metrics_from(tags, "champion_") if has_champion else None,
            rule=rule,
            comparison=comparison,
            champion_version=None if champion_version == NONE else champion_version,
            floors=floors,
        )


NONE = "none"  # a tag's value for "no champion" / "no comparison"
REASON_SEPARATOR = "; "
# (label, Metrics field) of the report tables, in the order people read them.
REPORT_METRICS = (
    ("log loss", "log_loss"),
    ("Brier score", "brier"),
    ("ROC AUC", "roc_auc"),
    ("PR AUC", "pr_auc"),
    ("calibration intercept (0: calibrated)", "calibration_intercept"),
    ("calibration slope (1: calibrated)", "calibration_slope"),
    ("calibration error (10-bin ECE)", "calibration_error"),
    ("ECE of a calibrated model (95th pct)", "calibration_error_noise"),
    ("precision @ threshold", "precision_at_threshold"),
    ("recall @ threshold", "recall_at_threshold"),
    ("decline rate @ threshold", "decline_rate_at_threshold"),
)
# Metrics / GateRule field -> its type (int or float), in declaration order.
_METRIC_FIELDS: dict[str, type] = {f.name: typing.get_type_hints(Metrics)[f.name] for f in dataclasses.fields(Metrics)}
_RULE_FIELDS: dict[str, type] = {f.name: typing.get_type_hints(GateRule)[f.name] for f in dataclasses.fields(GateRule)}
_COMPARISON_TAGS: dict[str, Callable[[Comparison], float]] = {
    "diff_log_loss": lambda c: c.log_loss.estimate,
    "diff_log_loss_lower": lambda c: c.log_loss.lower,
    "diff_log_loss_upper": lambda c: c.log_loss.upper,
    "diff_brier": lambda c: c.brier.estimate,
    "diff_brier_lower": lambda c: c.brier.lower,
    "diff_brier_upper": lambda c: c.brier.upper,
    "diff_roc_auc": lambda c: c.roc_auc.estimate,
    "diff_roc_auc_lower": lambda c: c.roc_auc.lower,
    "diff_roc_auc_upper": lambda c: c.roc_auc.upper,
    "diff_roc_auc_p_value": lambda c: c.roc_auc_p_value,
}


def _format(kind: type, value: float) -> str:
    return str(int(value)) if kind is int else repr(float(value))


def _number(value: float) -> str:
    return f"{value:.4f}"


def _interval(interval: Interval, level: str) -> str:
    return f"{interval.estimate:+.4f}, {level} interval [{interval.lower:+.4f}, {interval.upper:+.4f}]"


def _tag(tags: Mapping[str, str], key: str) -> str:
    try:
        return tags[key]
    except KeyError:
        raise ValueError(f"promotion tags lack {key!r} (recorded by an older version?)") from None


def _parse(kind: type, tags: Mapping[str, str], key: str) -> typing.Any:
    raw = _tag(tags, key)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"tag {key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None


def _metrics_from(tags: Mapping[str, str], prefix: str) -> Metrics:
    return Metrics(**{name: _parse(kind, tags, prefix + name) for name, kind in _METRIC_FIELDS.items()})


@dataclass(frozen=True)
class _FloorFailure:
    severity: float  # how badly, oriented so that larger is worse (NaN counts as infinitely bad)
    message: str


def _floor_failures(metrics: Metrics, floors: Floors) -> dict[str, _FloorFailure]:
    """The floors `metrics` fail, by floor name (empty: it passes them all)."""
    failures = {}
    if metrics.nan_predictions > 0:
        failures["nan_predictions"] = _FloorFailure(
            metrics.nan_predictions, f"{metrics.nan_predictions} NaN predictions on the holdout"
        )
    if math.isnan(metrics.roc_auc) or metrics.roc_auc < floors.min_auc:
        failures["roc_auc"] = _FloorFailure(
            math.inf if math.isnan(metrics.roc_auc) else -metrics.roc_auc,
            f"ROC AUC {metrics.roc_auc:.4f} below the floor {floors.min_auc:.4f}",
        )
    allowed = calibration_allowance(metrics, floors)
    if math.isnan(metrics.calibration_error) or metrics.calibration_error > allowed:
        failures["calibration_error"] = _FloorFailure(
            math.inf if math.isnan(metrics.calibration_error) else metrics.calibration_error,
            f"calibration error {metrics.calibration_error:.4f} above the floor {allowed:.4f}",
        )
    return failures


def check_floors(metrics: Metrics, floors: Floors) -> list[str]:
    """Reasons why `metrics` fail the floors (empty: they pass)."""
    return [failure.message for failure in _floor_failures(metrics, floors).values()]


def calibration_allowance(metrics: Metrics, floors: Floors) -> float:
    """The calibration floor in force: the configured one, widened to what sampling noise gives on this holdout.

    Why: on a few hundred holdout rows a perfectly calibrated model's 10-bin ECE exceeds 0.05 by
    chance (``Metrics.calibration_error_noise``); a fixed floor there fails good models at random.
    """
    noise = metrics.calibration_error_noise
    return max(floors.max_calibration_error, 0.0 if math.isnan(noise) else noise)


def decide(
    challenger: HoldoutScore,
    champion: HoldoutScore | None,
    rule: GateRule,
    floors: Floors,
    *,
    champion_version: str | None = None,
) -> Decision:
    """Gate a challenger against the champion on the same holdout rows (module docstring: the rule).

    Pass `champion_version` with `champion`, so the registry can check the champion is unchanged.
    The reasons say which condition passed or failed, with its numbers.
    """
    if champion is not None and not np.array_equal(challenger.labels, champion.labels):
        raise ValueError("the challenger and the champion must be scored on the same holdout rows (labels differ)")
    champion_metrics = None if champion is None else champion.metrics
    name = f"champion v{champion_version}" if champion_version else "the champion"

    def decision(verdict: Verdict, reasons: list[str], comparison: Comparison | None = None) -> Decision:
        return Decision(
            verdict, reasons, challenger.metrics, champion_metrics, rule, comparison, champion_version, floors
        )

    floor_reasons, blocked = _floor_reasons(challenger.metrics, champion_metrics, floors)
    if blocked:
        return decision("fails_floors", floor_reasons)
    if champion is None:
        return decision("promote", ["no champion yet", *floor_reasons])

    both = np.isfinite(challenger.probabilities) & np.isfinite(champion.probabilities)
    defaults = int(challenger.labels[both].sum())
    non_defaults = int(both.sum()) - defaults
    comparison = None
    if min(defaults, non_defaults) >= 2:  # enough for the statistics to exist, if not to decide
        comparison = compare(
            challenger.labels,
            challenger.probabilities,
            champion.probabilities,
            confidence=rule.confidence,
            rounds=rule.bootstrap_rounds,
            seed=rule.bootstrap_seed,
        )
    if min(defaults, non_defaults) < rule.min_defaults:
        return decision(
            "insufficient_evidence",
            [
                *floor_reasons,
                f"insufficient evidence: the holdout has {defaults} defaults and {non_defaults} non-defaults scored "
                f"by both models, fewer than the {rule.min_defaults} of each needed to compare them: {name} is kept",
            ],
            comparison,
        )
    assert comparison is not None  # min_defaults >= 2
    level = f"{rule.confidence:.0%}"
    loss, auc, brier = comparison.log_loss, comparison.roc_auc, comparison.brier
    better = loss.upper < 0
    harmed = auc_harmed(comparison, rule)
    scores = f"{challenger.metrics.log_loss:.4f} vs {champion.metrics.log_loss:.4f}"
    loss_reason = (
        f"better on log loss: {scores}, difference {loss.estimate:+.4f}, {level} interval "
        f"[{loss.lower:+.4f}, {loss.upper:+.4f}] below 0"
        if better
        else f"not better on log loss: {scores}, difference {loss.estimate:+.4f}, {level} interval "
        f"[{loss.lower:+.4f}, {loss.upper:+.4f}] does not lie below 0"
    )
    aucs = f"{challenger.metrics.roc_auc:.4f} vs {champion.metrics.roc_auc:.4f}"
    auc_numbers = (
        f"{aucs}, difference {auc.estimate:+.4f}, {level} interval [{auc.lower:+.4f}, {auc.upper:+.4f}] "
        f"(DeLong, p = {comparison.roc_auc_p_value:.3g})"
    )
    auc_reason = (
        f"worse on ROC AUC beyond the margin: {auc_numbers}, upper end below -{rule.auc_margin:.4f} (the harm margin)"
        if harmed
        else f"not worse on ROC AUC beyond the margin: {auc_numbers}, upper end at or above -{rule.auc_margin:.4f} "
        "(no significant loss larger than the harm margin)"
    )
    brier_reason = (
        f"Brier {challenger.metrics.brier:.4f} vs {champion.metrics.brier:.4f}, difference {brier.estimate:+.4f}, "
        f"{level} interval [{brier.lower:+.4f}, {brier.upper:+.4f}] (reported, log loss decides)"
    )
    reasons = [*floor_reasons, loss_reason, auc_reason, brier_reason]
    if not better:
        return decision("not_better", reasons, comparison)
    if harmed:
        return decision("worse_auc", reasons, comparison)
    return decision("promote", reasons, comparison)


def auc_harmed(comparison: Comparison, rule: GateRule) -> bool:
    """True when the challenger ranks significantly worse by more than the margin (AUC interval wholly below -margin).

    A harm guard, not a non-inferiority test: on a few hundred holdout rows the AUC difference's
    interval is about +-0.03 wide, so demanding that its lower end clear -0.01 would refuse every
    challenger there, however much better its probabilities (docs/training.md, "The gate").
    """
    return comparison.roc_auc.upper < -rule.auc_margin


def _floor_reasons(challenger: Metrics, champion: Metrics | None, floors: Floors) -> tuple[list[str], bool]:
    """What the floors say about the challenger, and whether any blocks it.

    A floor the challenger fails does not block when the champion fails the same floor worse on
    the same holdout: keeping the champion would not cure what the floor guards against.
    """
    failures = _floor_failures(challenger, floors)
    theirs = {} if champion is None else _floor_failures(champion, floors)
    blocking, waived = [], []
    for key, failure in failures.items():
        worse = theirs.get(key)
        if worse is not None and worse.severity > failure.severity:
            waived.append(
                f"{failure.message}, but the champion fails it worse on the same holdout ({worse.message}): "
                "this floor does not block"
            )
        else:
            blocking.append(f"fails the floors: {failure.message}")
    if blocking:
        return [*blocking, *waived], True
    if waived:
        return waived, False
    return [
        f"floors pass (AUC {challenger.roc_auc:.4f} >= {floors.min_auc:.4f}, calibration error "
        f"{challenger.calibration_error:.4f} <= {calibration_allowance(challenger, floors):.4f})"
    ], False


def plan_rollback(history: list[str], current: str | None) -> str | None:
    """The champion to roll back to: the latest earlier champion that is not `current` (None: there is none)."""
    for version in reversed(history):
        if version != current:
            return version
    return None


def history_after_rollback(history: list[str], target: str) -> list[str]:
    """The champion history once `target` is champion again: everything before its latest entry."""
    for index in range(len(history) - 1, -1, -1):
        if history[index] == target:
            return history[:index]
    return list(history)


def history_after_promotion(history: list[str], previous: str | None) -> list[str]:
    """The champion history once `previous` is replaced (unchanged if there was none or it is already last)."""
    if previous is None or (history and history[-1] == previous):
        return list(history)
    return [*history, previous]
