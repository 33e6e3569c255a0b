"""Champion / challenger gate and rollback planning: pure rules, no MLflow.

The gate compares two `Metrics` measured on the SAME holdout. A champion's metrics logged when it
was trained are on an older holdout and are not comparable: the caller must re-evaluate the
champion's booster on the challenger's holdout and pass those metrics (and the champion's version,
so the registry can refuse the promotion if the champion changed in the meantime).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlstack.settings import Settings
from mlstack.training.evaluation import Metrics


@dataclass(frozen=True)
class Floors:
    """Sanity floors every model must pass, champion or not."""

    min_auc: float
    max_calibration_error: float


def floors_from(settings: Settings) -> Floors:
    """The floors configured in the settings."""
    return Floors(min_auc=settings.floor_min_auc, max_calibration_error=settings.floor_max_calibration_error)


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate: whether to promote, why, and the numbers it was based on."""

    promote: bool
    reasons: list[str]
    challenger: Metrics
    champion: Metrics | None
    margin: float
    champion_version: str | None = None  # the champion the challenger was compared with (None: no champion)
    floors: Floors | None = field(default=None, compare=False)

    def summary(self) -> str:
        """One line: verdict, AUCs, margin, calibration and the reasons."""
        challenger = self.challenger
        if self.champion is None:
            against = "(no champion)"
        else:
            delta = challenger.roc_auc - self.champion.roc_auc
            name = f"champion v{self.champion_version}" if self.champion_version else "champion"
            against = f"vs {name} AUC {self.champion.roc_auc:.4f} (delta {delta:+.4f}, margin {self.margin:.4f})"
        return (
            f"{'promote' if self.promote else 'reject'}: challenger AUC {challenger.roc_auc:.4f} {against}, "
            f"calibration error {challenger.calibration_error:.4f}, NaN predictions {challenger.nan_predictions}"
            f" - {'; '.join(self.reasons)}"
        )

    def to_tags(self) -> dict[str, str]:
        """The decision as MLflow tags (string values; floats in full precision); `from_tags` reads them back.

        Every metric of both models is a `challenger_<metric>` / `champion_<metric>` tag (`none`
        without a champion); reasons are joined with "; " (the gate's reasons never contain it).
        """
        tags = {
            "promotion_decision": "promote" if self.promote else "reject",
            "promotion_reasons": REASON_SEPARATOR.join(self.reasons),
            "promotion_summary": self.summary(),
            "promotion_margin": repr(float(self.margin)),
            "compared_with_version": self.champion_version or NONE,
        }
        for name, kind in _METRIC_FIELDS.items():
            tags[f"challenger_{name}"] = _format(kind, getattr(self.challenger, name))
            tags[f"champion_{name}"] = NONE if self.champion is None else _format(kind, getattr(self.champion, name))
        if self.floors is not None:
            tags["floor_min_auc"] = repr(float(self.floors.min_auc))
            tags["floor_max_calibration_error"] = repr(float(self.floors.max_calibration_error))
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Decision:
        """The decision recorded by `to_tags` (other tags are ignored); ValueError names a missing or bad tag."""
        verdict = _tag(tags, "promotion_decision")
        if verdict not in ("promote", "reject"):
            raise ValueError(f"tag promotion_decision must be 'promote' or 'reject', got {verdict!r}")
        reasons = _tag(tags, "promotion_reasons")
        champion_version = _tag(tags, "compared_with_version")
        has_champion = _tag(tags, "champion_roc_auc") != NONE
        floors = None
        if "floor_min_auc" in tags or "floor_max_calibration_error" in tags:
            floors = Floors(_parse(float, tags, "floor_min_auc"), _parse(float, tags, "floor_max_calibration_error"))
        return cls(
            promote=verdict == "promote",
            reasons=reasons.split(REASON_SEPARATOR) if reasons else [],
            challenger=_metrics_from(tags, "challenger_"),
            champion=_metrics_from(tags, "champion_") if has_champion else None,
            margin=_parse(float, tags, "promotion_margin"),
            champion_version=None if champion_version == NONE else champion_version,
            floors=floors,
        )


NONE = "none"  # a tag's value for "no champion"
REASON_SEPARATOR = "; "
# Metrics field -> its type (int or float), in declaration order.
_METRIC_FIELDS: dict[str, type] = {f.name: typing.get_type_hints(Metrics)[f.name] for f in dataclasses.fields(Metrics)}


def _format(kind: type, value: float) -> str:
    return str(int(value)) if kind is int else repr(float(value))


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


def check_floors(metrics: Metrics, floors: Floors) -> list[str]:
    """Reasons why `metrics` fail the floors (empty: they pass)."""
    failures = []
    if metrics.nan_predictions > 0:
        failures.append(f"{metrics.nan_predictions} NaN predictions on the holdout")
    if math.isnan(metrics.roc_auc) or metrics.roc_auc < floors.min_auc:
        failures.append(f"ROC AUC {metrics.roc_auc:.4f} below the floor {floors.min_auc:.4f}")
    allowed = calibration_allowance(metrics, floors)
    if math.isnan(metrics.calibration_error) or metrics.calibration_error > allowed:
        failures.append(f"calibration error {metrics.calibration_error:.4f} above the floor {allowed:.4f}")
    return failures


def calibration_allowance(metrics: Metrics, floors: Floors) -> float:
    """The calibration floor in force: the configured one, widened to what sampling noise gives on this holdout.

    Why: on a few hundred holdout rows a perfectly calibrated model's 10-bin ECE exceeds 0.05 by
    chance (``Metrics.calibration_error_noise``); a fixed floor there fails good models at random.
    """
    noise = metrics.calibration_error_noise
    return max(floors.max_calibration_error, 0.0 if math.isnan(noise) else noise)


def decide(
    challenger: Metrics,
    champion: Metrics | None,
    margin: float,
    floors: Floors,
    *,
    champion_version: str | None = None,
) -> Decision:
    """Gate a challenger: floors first; then, if there is a champion, AUC >= champion AUC + margin.

    Both metrics must come from the same holdout (re-evaluate the champion on the challenger's).
    Pass `champion_version` with `champion`, so the registry can check the champion is unchanged.
    """
    if margin < 0 or math.isnan(margin):
        raise ValueError(f"promotion margin must be >= 0, got {margin}")

    def decision(promote: bool, reasons: list[str]) -> Decision:
        return Decision(promote, reasons, challenger, champion, margin, champion_version, floors)

    failures = check_floors(challenger, floors)
    if failures:
        return decision(False, ["fails the floors: " + failure for failure in failures])
    floors_ok = (
        f"floors pass (AUC {challenger.roc_auc:.4f} >= {floors.min_auc:.4f}, "
        f"calibration error {challenger.calibration_error:.4f} <= {calibration_allowance(challenger, floors):.4f})"
    )
    if champion is None:
        return decision(True, ["no champion yet", floors_ok])
    if math.isnan(champion.roc_auc):
        return decision(False, [floors_ok, "champion ROC AUC on this holdout is NaN: cannot compare"])
    needed = champion.roc_auc + margin
    delta = challenger.roc_auc - champion.roc_auc
    if challenger.roc_auc >= needed:
        return decision(True, [floors_ok, f"beats the champion by {delta:+.4f} (margin {margin:.4f})"])
    return decision(
        False,
        [floors_ok, f"does not beat the champion by the margin: {delta:+.4f} < {margin:.4f} (needs {needed:.4f})"],
    )


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
