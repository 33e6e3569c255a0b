"""Shadow scoring and A/B mode: the challenger scores what the champion scored, off the response path; both logged.

The request path only hands the champion's batch (the applications, the features Feast returned,
the instant they were scored and the champion's predictions) to ``ShadowScorer.submit``: an append
under a lock. A background thread scores the challenger with its own ``Scorer`` (the same code the
champion's answers come from, so whatever the Scorer applies, it applies to both) on those same
feature values, and appends one ``ShadowRecord`` per application to the shadow log. ``stop()``
(the service's shutdown hook) scores and writes whatever is still queued before it returns.

A/B mode (``ab_share`` > 0): a sticky hash of the customer id (``assign_arm``, salted with the
challenger's version, so a new challenger is a new experiment) gives that share of customers the
challenger's decision; only those rows are scored by the challenger on the response path. The log
says who decided each application, and still holds both models' scores of every one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlstack.monitoring.shadow_log import DecidedBy, ShadowLog, ShadowRecord
from mlstack.serving.scoring import OnlineFeatures, Prediction, Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Batch:
    applications: Sequence[Mapping[str, Any]]
    online: OnlineFeatures
    scored_at: datetime
    champion: list[Prediction]
    decided_by: Sequence[DecidedBy] | None


def assign_arm(customer_id: int, share: float, experiment: str) -> DecidedBy:
    """The arm of a customer in an A/B experiment: "challenger" for a `share` of customers, the same on every call.

    sha256 of ``<experiment>:<customer_id>`` read as a uniform number in [0, 1): stable across
    processes and restarts (Python's own ``hash`` of a str is salted per process).
    """
    digest = hashlib.sha256(f"{experiment}:{customer_id}".encode()).digest()
    return "challenger" if int.from_bytes(digest[:8], "big") / 2**64 < share else "champion"


class ShadowScorer:
    """Scores the challenger on the champion's batches in a background thread and logs both scores."""

    def __init__(
        self,
        challenger: Scorer,
        shadow_log: ShadowLog,
        feature_service: str,
        *,
        ab_share: float = 0.0,
        flush_seconds: float = 0.5,
        max_pending_rows: int = 100_000,
    ) -> None:
        if flush_seconds <= 0 or max_pending_rows <= 0:
            raise ValueError("flush_seconds and max_pending_rows must be positive")
        if not 0 <= ab_share < 1:
            raise ValueError(f"ab_share must be in [0, 1), got {ab_share}")
        self.challenger = challenger
        self.ab_share = ab_share
        self.experiment = f"ab-v{challenger.model_version}"
        self.log = shadow_log
        self.feature_service = feature_service
        self.flush_seconds = flush_seconds
        self.max_pending_rows = max_pending_rows
        self.recorded_rows = 0
        self.dropped_rows = 0  # refused because the queue was full (the thread fell behind)
        self.failed_rows = 0  # the challenger or the log failed on them
        self._lock = threading.Lock()
        self._pending: list[_Batch] = []
        self._pending_rows = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drain_lock = threading.Lock()
        self._thread: threading.Thread | None = None

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
        online: OnlineFeatures,
        scored_at: datetime,
        champion: list[Prediction],
        decided_by: Sequence[DecidedBy] | None = None,
    ) -> None:
        """Queue one champion batch (and who decided each row) for the challenger; O(1), never scores or writes."""
        rows = len(applications)
        with self._lock:
            if self._pending_rows + rows > self.max_pending_rows:
                self.dropped_rows += rows
                return
            self._pending.append(_Batch(applications, online, scored_at, champion, decided_by))
            self._pending_rows += rows

    @property
    def pending_rows(self) -> int:
        """Applications queued and not yet scored by the challenger."""
        with self._lock:
            return self._pending_rows

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Score and log everything queued, close the log; True if it finished in time."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("shadow scorer did not finish within %.1f s; %d rows pending", timeout, self.pending_rows)
                return False
            self._thread = None
        self.drain()  # no thread, or batches submitted after it finished
        self.log.close()
        return True

    def drain(self) -> None:
        """Score every queued batch with the challenger and append the records to the log."""
        with self._drain_lock:
            with self._lock:
                batches, self._pending, self._pending_rows = self._pending, [], 0
            for batch in batches:
                try:
                    records = self._records(batch)
                    self.log.append(records)
                except Exception:  # one bad batch must not stop the others (or the thread)
                    self.failed_rows += len(batch.applications)
                    log.exception("shadow scoring of %d applications failed", len(batch.applications))
                    continue
                self.recorded_rows += len(records)

    def _records(self, batch: _Batch) -> list[ShadowRecord]:
        online = batch.online
        challenger = self.challenger.score_batch(
            batch.applications, online.values, online.event_timestamps, batch.scored_at
        )
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
                champion_probability=champion.default_probability,
                champion_decision=champion.decision,
                challenger_version=theirs.model_version,
                challenger_probability=theirs.default_probability,
                challenger_decision=theirs.decision,
                decided_by=batch.decided_by[i] if batch.decided_by is not None else "champion",
                ab_share=self.ab_share,
            )
            for i, (application, champion, theirs) in enumerate(
                zip(batch.applications, batch.champion, challenger, strict=True)
            )
        ]

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.drain()
        self.drain()
