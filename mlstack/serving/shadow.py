"""Shadow scoring and A/B mode: the challenger scores what the champion scored, off the response path; both logged.

The request path only hands the champion's batch (the applications, the model matrix the champion
scored, the instant and the champion's predictions) to ``ShadowScorer.submit``: an append under a
lock. A background thread hands the queued batches, as plain values and one numpy matrix, to the
challenger's handler, in a spawned child process in the service (``process=True``), where the
challenger's ``Scorer`` (the same code the champion's answers come from) scores that same matrix:
the same feature values, stale ones dropped by the same policy, which the two Scorers apply alike
because they share the feature TTLs (``ServingRuntime`` checks). The handler appends one
``ShadowRecord`` per application to the shadow log. ``stop()`` (the service's shutdown hook) scores
and writes whatever is still queued, then closes (fsyncs) the log, before it returns.

A/B mode (``ab_share`` > 0): a sticky hash of the customer id (``assign_arm``, salted with the
challenger's version, so a new challenger is a new experiment) gives that share of customers the
challenger's decision; only those rows are scored by the challenger on the response path. The log
says who decided each application, and still holds both models' scores of every one.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from mlstack.background import BackgroundQueue, ChildWorker, InlineWorker
from mlstack.monitoring.shadow_log import DecidedBy, ShadowLog, ShadowRecord
from mlstack.serving.scoring import OnlineFeatures, Prediction, Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Batch:
    """A champion batch as the request path queued it (references only)."""

    applications: Sequence[Mapping[str, Any]]
    model_inputs: npt.NDArray[np.float64]
    scored_at: datetime
    champion: Sequence[Prediction]
    decided_by: Sequence[DecidedBy] | None


class ChampionScore(NamedTuple):
    """What the log keeps of the champion's answer to one application."""

    model_name: str
    model_version: str
    threshold: float
    probability: float
    decision: str


@dataclass(frozen=True)
class ShadowBatch:
    """What the challenger needs of one champion batch, in plain values and one array (cheap to pickle to a child)."""

    applications: Sequence[Mapping[str, Any]]
    model_inputs: npt.NDArray[np.float64]  # the champion's model matrix: the same features, stale ones dropped
    scored_at: datetime
    champion: list[ChampionScore]
    decided_by: Sequence[DecidedBy] | None

    @classmethod
    def of(cls, batch: _Batch) -> ShadowBatch:
        """The batch without its pydantic objects."""
        champion = [
            ChampionScore(p.model_name, p.model_version, p.threshold, p.default_probability, p.decision)
            for p in batch.champion
        ]
        return cls(batch.applications, batch.model_inputs, batch.scored_at, champion, batch.decided_by)


def assign_arm(customer_id: int, share: float, experiment: str) -> DecidedBy:
    """The arm of a customer in an A/B experiment: "challenger" for a `share` of customers, the same on every call.

    sha256 of ``<experiment>:<customer_id>`` read as a uniform number in [0, 1): stable across
    processes and restarts (Python's own ``hash`` of a str is salted per process).
    """
    digest = hashlib.sha256(f"{experiment}:{customer_id}".encode()).digest()
    return "challenger" if int.from_bytes(digest[:8], "big") / 2**64 < share else "champion"


class ShadowScorer(BackgroundQueue[_Batch]):
    """Scores the challenger on the champion's batches off the request path and logs both scores.

    ``process=True`` (the service's choice) scores and writes in a spawned child process: in the
    serving process the challenger's Python work held the GIL against the request path. The log is
    then opened by the child (its segment is named after the child's pid).
    """

    def __init__(
        self,
        challenger: Scorer,
        shadow_log: ShadowLog,
        feature_service: str,
        *,
        ab_share: float = 0.0,
        flush_seconds: float = 0.5,
        max_pending_rows: int = 100_000,
        process: bool = False,
    ) -> None:
        if not 0 <= ab_share < 1:
            raise ValueError(f"ab_share must be in [0, 1), got {ab_share}")
        handler = partial(_ChallengerLog, challenger, shadow_log, feature_service, ab_share)
        super().__init__(
            ChildWorker(handler, "shadow-scorer") if process else InlineWorker(handler()),
            name="shadow-scorer",
            flush_seconds=flush_seconds,
            max_pending_rows=max_pending_rows,
        )
        self.challenger = challenger
        self.ab_share = ab_share
        self.experiment = f"ab-v{challenger.model_version}"
        self.feature_service = feature_service
        self.recorded_rows = 0
        self.failed_rows = 0  # the challenger or the log failed on them (or the child died with them)

    @property
    def challenger_version(self) -> str:
        """The registered version of the shadowed challenger."""
        return self.challenger.model_version

    def decide(
        self,
        applications: Sequence[Mapping[str, Any]],
        online: OnlineFeatures,
        scored_at: datetime,
        champion: list[Prediction],
    ) -> tuple[list[Prediction], list[DecidedBy] | None]:
        """The answers to send and who decided each (None: the champion decided all; A/B mode off)."""
        if self.ab_share == 0:
            return champion, None
        arms = [
            assign_arm(int(application["customer_id"]), self.ab_share, self.experiment) for application in applications
        ]
        mine = [i for i, arm in enumerate(arms) if arm == "challenger"]
        if not mine:
            return champion, arms
        theirs = self.challenger.score_batch(
            [applications[i] for i in mine],
            [online.values[i] for i in mine],
            [online.event_timestamps[i] for i in mine],
            scored_at,
        )
        answers = list(champion)
        for i, prediction in zip(mine, theirs, strict=True):
            answers[i] = prediction.model_copy(update={"decided_by": "challenger"})
        return answers, arms

    def submit(
        self,
        applications: Sequence[Mapping[str, Any]],
        model_inputs: npt.NDArray[np.float64],
        scored_at: datetime,
        champion: Sequence[Prediction],
        decided_by: Sequence[DecidedBy] | None = None,
    ) -> None:
        """Queue one champion batch, with the model matrix it was scored on; O(1), never scores or writes."""
        if applications:
            self._put(_Batch(applications, model_inputs, scored_at, champion, decided_by), len(applications))

    def _drain(self, batches: list[_Batch], final: bool) -> None:
        """Send the batches to the challenger's handler in one message, count what it recorded."""
        if not batches:
            return
        rows = sum(len(batch.applications) for batch in batches)
        try:
            recorded, failed = self._worker.call([ShadowBatch.of(batch) for batch in batches])
        except Exception:  # a dead child: some of these may have reached the log before it died
            self.failed_rows += rows
            log.exception("shadow scoring of %d applications failed", rows)
            return
        self.recorded_rows += recorded
        self.failed_rows += failed


class _ChallengerLog:
    """The Handler that scores the challenger on champion batches and appends both scores to the log."""

    def __init__(self, challenger: Scorer, shadow_log: ShadowLog, feature_service: str, ab_share: float) -> None:
        self.challenger = challenger
        self.log = shadow_log
        self.feature_service = feature_service
        self.ab_share = ab_share

    def handle(self, batches: list[ShadowBatch]) -> tuple[int, int]:
        """Score and log each batch; (applications recorded, applications failed)."""
        recorded = failed = 0
        for batch in batches:
            try:
                records = self._records(batch)
                self.log.append(records)
            except Exception:  # one bad batch must not stop the others
                failed += len(batch.applications)
                log.exception("shadow scoring of %d applications failed", len(batch.applications))
                continue
            recorded += len(records)
        return recorded, failed

    def close(self) -> None:
        self.log.close()

    def _records(self, batch: ShadowBatch) -> list[ShadowRecord]:
        challenger = self.challenger
        probabilities = challenger.probabilities(batch.model_inputs).tolist()
        return [
            ShadowRecord(
                request_id=uuid.uuid4().hex,
                scored_at=batch.scored_at,
                customer_id=int(application["customer_id"]),
                zipcode=str(application["zipcode"]),
                loan_amount=float(application["loan_amount"]),
                loan_term_months=int(application["loan_term_months"]),
                loan_purpose=str(application["loan_purpose"]),
                feature_service=self.feature_service,
                model_name=champion.model_name,
                threshold=champion.threshold,
                champion_version=champion.model_version,
                champion_probability=champion.probability,
                champion_decision=champion.decision,
                challenger_version=challenger.model_version,
                challenger_probability=probability,
                challenger_decision=challenger.decision(probability),
                decided_by=batch.decided_by[i] if batch.decided_by is not None else "champion",
                ab_share=self.ab_share,
            )
            for i, (application, champion, probability) in enumerate(
                zip(batch.applications, batch.champion, probabilities, strict=True)
            )
        ]
