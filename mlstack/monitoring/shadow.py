"""Shadow evidence: the champion's and the challenger's logged live scores against the outcomes once they mature.

The service logs both models' scores of every application it scores (``shadow_log``). Outcomes
arrive later: a loan's default can come up to ``generator.OUTCOME_WINDOW`` (12 months) after the
application, so only loans whose window has closed by ``as_of`` count (a younger loan that has not
defaulted yet is not a non-default). The scores are joined to the loan book
(``loan_applications.parquet``) by the application's fields and time, and the two models are
compared on those rows with the gate itself (``promotion.decide``: paired bootstrap of the log-loss
and Brier differences, DeLong for ROC AUC, the same rule and floors), so a promotion can rest on
this evidence exactly as on a holdout.

The reject-inference limit: a lender only learns the outcome of a loan it granted. By default the
comparison uses the applications the champion approved; how either model would have fared on
the ones it declined is not observed (``REJECT_INFERENCE``). The traffic simulator books every
answered application, declined or not (its own simplification); ``include_declined`` uses them,
which only a simulation can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from mlstack.data.generator import OUTCOME_WINDOW
from mlstack.data.schema import LOAN_APPLICATIONS_FILE
from mlstack.errors import StackError
from mlstack.monitoring.shadow_log import APPLICATION_FIELDS, read_shadow_log
from mlstack.settings import Settings
from mlstack.training import registry
from mlstack.training.evaluation import score_predictions
from mlstack.training.promotion import Decision, Floors, GateRule, decide, floors_from, rule_from

# A logged score and a booked application are the same request when their fields are equal and their
# times (the service's scoring instant, the client's send time) are this close; the nearest wins.
JOIN_TOLERANCE = timedelta(minutes=5)
REJECT_INFERENCE = (
    "Outcomes exist only for approved (booked) applications: this comparison covers the applications the "
    "champion approved. How either model would do on the ones the champion declined is not observed "
    "(reject inference), so a challenger that would approve different applicants is not judged on them."
)
SIMULATED_DECLINES = (
    "Declined applications are included: the traffic simulator books every answered application, which no "
    "lender can; read this as a simulation-only view."
)
_OUTCOME_COLUMNS = ("application_id", *APPLICATION_FIELDS, "event_timestamp", "defaulted")


class ShadowError(StackError):
    """Shadow evidence cannot be gathered (no champion, no loan book); the message says what is missing."""


@dataclass(frozen=True)
class ShadowPair:
    """The champion (deciding) and the challenger (shadowed) whose logged scores are compared."""

    champion_version: str
    challenger_version: str


@dataclass(frozen=True)
class ShadowEvidence:
    """What the logged scores of one pair say once joined to matured outcomes, and the gate's decision on them.

    Counts narrow down in order: records of the pair, booked (joined to the loan book), matured
    (outcome window closed by ``as_of``), compared (the rows given to the gate: matured and, unless
    ``include_declined``, approved by the champion).
    """

    pair: ShadowPair
    as_of: datetime
    include_declined: bool
    records: int
    booked: int
    ambiguous: int  # booked applications matched by more than one logged score (left out)
    matured: int
    declined: int  # matured but declined by the champion: no outcome in reality
    compared: int
    defaults: int
    first_scored_at: datetime | None
    last_scored_at: datetime | None
    rule: GateRule
    decision: Decision | None  # None: too few matured outcomes to compare at all
    torn_lines: int = 0

    @property
    def verdict(self) -> str:
        """The gate's verdict, or "insufficient_evidence" when it was not consulted."""
        return self.decision.verdict if self.decision is not None else "insufficient_evidence"

    @property
    def promote(self) -> bool:
        """True when the gate says promote on this evidence."""
        return self.decision is not None and self.decision.promote

    @property
    def reasons(self) -> list[str]:
        """Why: the gate's reasons, or what is missing."""
        if self.decision is not None:
            return self.decision.reasons
        non_defaults = self.compared - self.defaults
        return [
            f"insufficient evidence: {self.compared:,} matured outcomes ({self.defaults:,} defaults, {non_defaults:,} "
            f"non-defaults) of {self.records:,} logged scores, fewer than the {self.rule.min_defaults} of each the "
            f"gate needs: champion v{self.pair.champion_version} is kept"
        ]

    @property
    def population_note(self) -> str:
        """The reject-inference statement that applies to this comparison."""
        return SIMULATED_DECLINES if self.include_declined else REJECT_INFERENCE

    def summary(self) -> str:
        """One line: the pair, the counts, the verdict."""
        head = (
            f"shadow: challenger v{self.pair.challenger_version} vs champion v{self.pair.champion_version} as of "
            f"{self.as_of:%Y-%m-%d %H:%M} UTC: {self.records:,} logged, {self.booked:,} booked, {self.matured:,} "
            f"matured, {self.compared:,} compared ({self.defaults:,} defaults)"
        )
        if self.decision is not None:
            return f"{head}; {self.decision.summary()}"
        return f"{head}; insufficient evidence"

    def counts(self) -> dict[str, int]:
        """The counts as MLflow metrics (`shadow_*`)."""
        return {
            "shadow_records": self.records,
            "shadow_booked": self.booked,
            "shadow_ambiguous": self.ambiguous,
            "shadow_matured": self.matured,
            "shadow_declined": self.declined,
            "shadow_compared": self.compared,
            "shadow_defaults": self.defaults,
            "shadow_torn_lines": self.torn_lines,
        }


def resolve_pair(settings: Settings, champion_version: str | None, challenger_version: str | None) -> ShadowPair:
    """The versions to compare: the given ones, else the current @champion and @challenger."""
    champion = champion_version or registry.alias_version(settings, registry.CHAMPION)
    challenger = challenger_version or registry.alias_version(settings, registry.CHALLENGER)
    if champion is None:
        raise ShadowError(
            f"model {settings.model_name!r} has no @{registry.CHAMPION}: there is nothing to compare with"
        )
    if challenger is None:
        raise ShadowError(f"model {settings.model_name!r} has no @{registry.CHALLENGER}: nothing was shadowed")
    if challenger == champion:
        raise ShadowError(
            f"@{registry.CHALLENGER} is the champion (v{champion}): name the challenger version to evaluate"
        )
    return ShadowPair(str(champion), str(challenger))


def load_outcomes(data_dir: Path) -> pd.DataFrame:
    """The loan book: booked applications with their (eventual) outcome, columns ``_OUTCOME_COLUMNS``."""
    path = data_dir / LOAN_APPLICATIONS_FILE
    if not path.is_file():
        raise ShadowError(f"the loan book {path} does not exist: run `mlstack data generate` first")
    return pd.read_parquet(path, columns=list(_OUTCOME_COLUMNS))


def join_outcomes(records: pd.DataFrame, outcomes: pd.DataFrame, tolerance: timedelta = JOIN_TOLERANCE) -> pd.DataFrame:
    """Logged scores joined to booked applications (same fields, nearest time within ``tolerance``).

    Returns the records that found a booking, with ``application_id``, ``event_timestamp`` and
    ``defaulted``, and an ``ambiguous`` flag on bookings matched by more than one record.
    """
    keys = {"customer_id": "int64", "zipcode": "str", "loan_amount": "float64", "loan_term_months": "int64"}
    left = records.astype(keys).assign(scored_at=pd.to_datetime(records["scored_at"], utc=True).dt.as_unit("us"))
    right = outcomes.astype(keys).assign(
        event_timestamp=pd.to_datetime(outcomes["event_timestamp"], utc=True).dt.as_unit("us")
    )
    left = left.sort_values("scored_at", kind="stable")
    right = right.sort_values("event_timestamp", kind="stable")
    joined = pd.merge_asof(
        left,
        right,
        left_on="scored_at",
        right_on="event_timestamp",
        by=list(APPLICATION_FIELDS),
        direction="nearest",
        tolerance=pd.Timedelta(tolerance),
    )
    joined = joined[joined["application_id"].notna()].copy()
    joined["ambiguous"] = joined["application_id"].duplicated(keep=False)
    return joined.reset_index(drop=True)


def evaluate(
    records: pd.DataFrame,
    outcomes: pd.DataFrame,
    pair: ShadowPair,
    *,
    as_of: datetime,
    rule: GateRule,
    floors: Floors,
    threshold: float,
    include_declined: bool = False,
    torn_lines: int = 0,
) -> ShadowEvidence:
    """The evidence of ``pair``'s logged scores against the outcomes matured by ``as_of`` (module docstring)."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    mine = records[
        (records["champion_version"] == pair.champion_version)
        & (records["challenger_version"] == pair.challenger_version)
    ]
    joined = join_outcomes(mine, outcomes)
    ambiguous = int(joined["ambiguous"].sum())
    joined = joined[~joined["ambiguous"]]
    matured = joined[joined["event_timestamp"] + pd.Timedelta(OUTCOME_WINDOW) <= pd.Timestamp(as_of)]
    declined = matured["champion_decision"] == "decline"
    compared = matured if include_declined else matured[~declined]
    labels = compared["defaulted"].to_numpy(dtype=np.float64)
    defaults = int(labels.sum())
    decision = None
    if min(defaults, len(labels) - defaults) >= rule.min_defaults:
        challenger = score_predictions(labels, compared["challenger_probability"].to_numpy(), threshold)
        champion = score_predictions(labels, compared["champion_probability"].to_numpy(), threshold)
        decision = decide(challenger, champion, rule, floors, champion_version=pair.champion_version)
    return ShadowEvidence(
        pair=pair,
        as_of=as_of,
        include_declined=include_declined,
        records=len(mine),
        booked=len(joined) + ambiguous,
        ambiguous=ambiguous,
        matured=len(matured),
        declined=int(declined.sum()),
        compared=len(compared),
        defaults=defaults,
        first_scored_at=mine["scored_at"].min().to_pydatetime() if len(mine) else None,
        last_scored_at=mine["scored_at"].max().to_pydatetime() if len(mine) else None,
        rule=rule,
        decision=decision,
        torn_lines=torn_lines,
    )


def evaluate_shadow(
    settings: Settings,
    *,
    champion_version: str | None = None,
    challenger_version: str | None = None,
    as_of: datetime | None = None,
    include_declined: bool = False,
) -> ShadowEvidence:
    """``evaluate`` on the service's shadow log and the loan book of ``settings``, with the gate's rule and floors."""
    pair = resolve_pair(settings, champion_version, challenger_version)
    log = read_shadow_log(settings.shadow_dir)
    return evaluate(
        log.records,
        load_outcomes(settings.data_dir),
        pair,
        as_of=as_of or datetime.now(UTC),
        rule=rule_from(settings),
        floors=floors_from(settings),
        threshold=settings.decision_threshold,
        include_declined=include_declined,
        torn_lines=log.torn_lines,
    )


def record(settings: Settings, evidence: ShadowEvidence) -> str:
    """Log the evidence as an MLflow monitoring run against the challenger version (tags `last_shadow_*`); run id."""
    metrics: dict[str, float] = {key: float(value) for key, value in evidence.counts().items()}
    if evidence.decision is not None:
        metrics |= {key: value for key, value in evidence.decision.to_metrics().items() if math.isfinite(value)}
    tags = {
        "verdict": evidence.verdict,
        "summary": evidence.summary()[:5000],  # MLflow caps tag values
        "champion_version": evidence.pair.champion_version,
        "as_of": evidence.as_of.isoformat(),
        "population": "all booked (simulation)" if evidence.include_declined else "approved by the champion",
    }
    return registry.log_monitoring_run(settings, "shadow", evidence.pair.challenger_version, metrics, tags, [])


def promote_on_evidence(settings: Settings, evidence: ShadowEvidence) -> bool:
    """Move @champion to the challenger through the gate's own alias move when the evidence says promote.

    Returns True if it moved; nothing is written when the evidence does not say promote.
    """
    if evidence.decision is None or not evidence.decision.promote:
        return False
    return registry.promote(settings, evidence.pair.challenger_version, evidence.decision)


def shadow_markdown(evidence: ShadowEvidence) -> str:
    """The Prefect artifact: the counts, both models on the matured outcomes, the differences, the verdict."""
    pair, decision = evidence.pair, evidence.decision
    window = (
        f"{evidence.first_scored_at:%Y-%m-%d %H:%M} → {evidence.last_scored_at:%Y-%m-%d %H:%M} UTC"
        if evidence.first_scored_at and evidence.last_scored_at
        else "none"
    )
    lines = [
        f"# evaluate-shadow: challenger v{pair.challenger_version} vs champion v{pair.champion_version}",
        "",
        f"As of {evidence.as_of:%Y-%m-%d %H:%M} UTC; scores logged {window}. A loan's outcome counts once "
        f"{OUTCOME_WINDOW.days} days have passed since its application (the latest a default comes).",
        "",
        "| logged scores | booked | ambiguous (left out) | matured | declined by the champion | compared | defaults |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {evidence.records:,} | {evidence.booked:,} | {evidence.ambiguous:,} | {evidence.matured:,} "
        f"| {evidence.declined:,}{' (included)' if evidence.include_declined else ' (no outcome)'} "
        f"| {evidence.compared:,} | {evidence.defaults:,} |",
        "",
        f"**Population.** {evidence.population_note}",
    ]
    if decision is not None:
        lines += [
            "",
            f"| metric (matured outcomes) | challenger v{pair.challenger_version} "
            f"| champion v{pair.champion_version} |",
            "|---|---:|---:|",
            *(f"| {label} | {ours} | {theirs} |" for label, ours, theirs in decision.metric_rows()),
            "",
            "| measure | challenger - champion | interval | gate |",
            "|---|---:|---|---|",
            *(
                f"| {measure} | {value} | {interval} | {verdict} |"
                for measure, value, interval, verdict in decision.difference_rows()
            ),
        ]
    verdict = decision.verdict_text if decision is not None else "insufficient evidence"
    lines += ["", f"**Verdict (the promotion gate): {verdict}**", "", *(f"- {reason}" for reason in evidence.reasons)]
    return "\n".join(lines)
