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

A/B mode (a share of customers decided by the challenger, ``serving.shadow.assign_arm``): the
approval rates of the two arms are compared with a two-proportion z-test at a sample size fixed in
advance from the settings (``AbPlan``: baseline approval rate, smallest difference to detect,
alpha = 1 - gate confidence, 80% power) and the arms' shares. The test is run once, on the first
rows of each arm up to that size, never before: looking at it as data comes in and stopping when it
is significant would inflate the false-positive rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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

AB_POWER = 0.8  # the conventional power of the A/B test's pre-registered sample size
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
class AbPlan:
    """What fixes the A/B test's sample size before it starts: expected approval rate, difference to detect, alpha."""

    baseline_approval_rate: float
    min_detectable_difference: float
    alpha: float
    power: float = AB_POWER

    def sample_sizes(self, share: float) -> tuple[int, int]:
        """(champion arm, challenger arm) rows the test needs when the challenger decides for `share` of customers.

        Two-sided two-proportion test (statsmodels' NormalIndPower on Cohen's h), for the harder of
        baseline - difference and baseline + difference (the one nearer 0.5 needs more rows).
        """
        from statsmodels.stats.power import NormalIndPower
        from statsmodels.stats.proportion import proportion_effectsize

        if not 0 < share < 1:
            raise ValueError(f"the challenger's share must be in (0, 1), got {share}")
        ratio = share / (1 - share)  # challenger rows per champion row
        alternatives = [
            rate
            for rate in (
                self.baseline_approval_rate - self.min_detectable_difference,
                self.baseline_approval_rate + self.min_detectable_difference,
            )
            if 0 < rate < 1
        ]
        champion_rows = max(
            NormalIndPower().solve_power(
                effect_size=abs(proportion_effectsize(rate, self.baseline_approval_rate)),
                alpha=self.alpha,
                power=self.power,
                ratio=ratio,
                alternative="two-sided",
            )
            for rate in alternatives
        )
        return math.ceil(champion_rows), math.ceil(ratio * champion_rows)


def ab_plan_from(settings: Settings) -> AbPlan:
    """The A/B plan configured in the settings (alpha: 1 - the gate's confidence)."""
    return AbPlan(
        baseline_approval_rate=settings.ab_baseline_approval_rate,
        min_detectable_difference=settings.ab_min_detectable_difference,
        alpha=1 - settings.gate_confidence,
    )


@dataclass(frozen=True)
class ApprovalTest:
    """Approval rates of the A/B arms and, once both reached their pre-registered size, the two-proportion test."""

    plan: AbPlan
    share: float
    required: tuple[int, int]  # (champion arm, challenger arm), from the plan and the share
    seen: tuple[int, int]  # rows logged in each arm so far
    champion_rate: float  # over the tested rows once reached, else over all rows so far
    challenger_rate: float
    z: float | None = None  # None: not tested yet
    p_value: float | None = None

    @property
    def reached(self) -> bool:
        """Both arms have their pre-registered number of rows."""
        return self.seen[0] >= self.required[0] and self.seen[1] >= self.required[1]

    @property
    def significant(self) -> bool:
        """The approval rates differ at the plan's alpha (False until the test was run)."""
        return self.p_value is not None and self.p_value < self.plan.alpha

    def summary(self) -> str:
        """One line: the arms, their approval rates, the test or how far from it."""
        rates = (
            f"approval rate challenger {self.challenger_rate:.1%} vs champion {self.champion_rate:.1%} "
            f"(challenger share {self.share:.0%})"
        )
        if not self.reached:
            return (
                f"A/B: {rates} so far; not tested: {self.seen[0]:,} of {self.required[0]:,} champion-arm and "
                f"{self.seen[1]:,} of {self.required[1]:,} challenger-arm decisions (pre-registered sizes)"
            )
        assert self.z is not None and self.p_value is not None
        outcome = "differ" if self.significant else "do not differ detectably"
        return (
            f"A/B: {rates} on the first {self.required[0]:,} + {self.required[1]:,} decisions: z = {self.z:+.2f}, "
            f"p = {self.p_value:.3g}: they {outcome} at alpha {self.plan.alpha:.2f}"
        )


def compare_approval_rates(records: pd.DataFrame, plan: AbPlan) -> ApprovalTest | None:
    """The A/B test on the logged records of A/B mode (``ab_share`` > 0; the latest share); None: no A/B records."""
    from statsmodels.stats.proportion import proportions_ztest

    ab = records[records["ab_share"].fillna(0) > 0]
    if ab.empty:
        return None
    share = float(ab["ab_share"].iloc[-1])
    ab = ab[ab["ab_share"] == share].sort_values("scored_at", kind="stable")
    required = plan.sample_sizes(share)
    champion_arm = ab.loc[ab["decided_by"] == "champion", "champion_decision"] == "approve"
    challenger_arm = ab.loc[ab["decided_by"] == "challenger", "challenger_decision"] == "approve"
    seen = (len(champion_arm), len(challenger_arm))
    reached = seen[0] >= required[0] and seen[1] >= required[1]
    if reached:  # the pre-registered rows only: the first ones of each arm
        champion_arm, challenger_arm = champion_arm.iloc[: required[0]], challenger_arm.iloc[: required[1]]
    champion_rate = float(champion_arm.mean()) if len(champion_arm) else math.nan
    challenger_rate = float(challenger_arm.mean()) if len(challenger_arm) else math.nan
    if not reached:
        return ApprovalTest(plan, share, required, seen, champion_rate, challenger_rate)
    z, p_value = proportions_ztest(
        [int(challenger_arm.sum()), int(champion_arm.sum())], [len(challenger_arm), len(champion_arm)]
    )
    return ApprovalTest(plan, share, required, seen, champion_rate, challenger_rate, float(z), float(p_value))


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
    approval: ApprovalTest | None = field(default=None)  # A/B mode's approval-rate test (None: no A/B records)

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
        tail = self.decision.summary() if self.decision is not None else "insufficient evidence"
        ab = f"; {self.approval.summary()}" if self.approval is not None else ""
        return f"{head}; {tail}{ab}"

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

    def approval_metrics(self) -> dict[str, float]:
        """The A/B test's numbers as MLflow metrics (`ab_*`; empty without A/B records)."""
        test = self.approval
        if test is None:
            return {}
        metrics = {
            "ab_share": test.share,
            "ab_required_champion": float(test.required[0]),
            "ab_required_challenger": float(test.required[1]),
            "ab_seen_champion": float(test.seen[0]),
            "ab_seen_challenger": float(test.seen[1]),
            "ab_champion_approval_rate": test.champion_rate,
            "ab_challenger_approval_rate": test.challenger_rate,
        }
        if test.z is not None and test.p_value is not None:
            metrics |= {"ab_z": test.z, "ab_p_value": test.p_value}
        return metrics


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
    ab_plan: AbPlan | None = None,
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
    # Who decided: only what the deciding model approved gets an outcome (A/B mode: the challenger's arm too).
    given = matured["champion_decision"].where(matured["decided_by"] != "challenger", matured["challenger_decision"])
    declined = given == "decline"
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
        approval=compare_approval_rates(mine, ab_plan) if ab_plan is not None else None,
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
        ab_plan=ab_plan_from(settings),
    )


def record(settings: Settings, evidence: ShadowEvidence) -> str:
    """Log the evidence as an MLflow monitoring run against the challenger version (tags `last_shadow_*`); run id."""
    metrics: dict[str, float] = {key: float(value) for key, value in evidence.counts().items()}
    if evidence.decision is not None:
        metrics |= {key: value for key, value in evidence.decision.to_metrics().items() if math.isfinite(value)}
    metrics |= {key: value for key, value in evidence.approval_metrics().items() if math.isfinite(value)}
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
    if evidence.approval is not None:
        test = evidence.approval
        lines += [
            "",
            f"**A/B mode.** The challenger decides for {test.share:.0%} of customers (a sticky hash of the id). "
            f"Pre-registered: {test.required[0]:,} champion-arm and {test.required[1]:,} challenger-arm decisions "
            f"detect an approval-rate difference of {test.plan.min_detectable_difference:.1%} from "
            f"{test.plan.baseline_approval_rate:.0%} with {test.plan.power:.0%} power at alpha {test.plan.alpha:.2f}.",
            "",
            f"- {test.summary()}",
        ]
    verdict = decision.verdict_text if decision is not None else "insufficient evidence"
    lines += ["", f"**Verdict (the promotion gate): {verdict}**", "", *(f"- {reason}" for reason in evidence.reasons)]
    return "\n".join(lines)
