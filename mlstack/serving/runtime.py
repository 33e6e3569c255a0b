"""What the online service holds: the champion Booster, the Feast store, the scorer, the profile buffer, the shadow.

`ServingRuntime` is built once per worker; the BentoML service only adapts HTTP to its methods.
`RequestBatcher` coalesces the requests that arrive while a batch is being scored into the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from mlstack.errors import StackError
from mlstack.features.store import FEATURE_SERVICE, get_store
from mlstack.monitoring.live_profiles import ProfileBuffer
from mlstack.monitoring.shadow_log import ShadowLog
from mlstack.serving import scoring
from mlstack.serving.bento import load_bundled_model
from mlstack.serving.scoring import Prediction, Scorer
from mlstack.serving.shadow import ShadowScorer
from mlstack.settings import Settings
from mlstack.training import registry
from mlstack.training.calibration import Calibrator

if TYPE_CHECKING:
    import lightgbm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """The "booster + calibrator" a worker serves, with its registered name and version."""

    booster: lightgbm.Booster
    calibrator: Calibrator
    name: str
    version: str


def load_model(settings: Settings) -> ServedModel:
    """The model to serve: the one shipped in the bento if any (immutable), else @champion from MLflow."""
    bundled = load_bundled_model()
    if bundled is not None:
        return ServedModel(bundled.booster, bundled.calibrator, bundled.name, bundled.version)
    return load_registered_model(settings, f"@{registry.CHAMPION}")


def load_registered_model(settings: Settings, ref: str) -> ServedModel:
    """Version `ref` ("3" or "@alias") of the registered model with its calibrator, as a worker serves it."""
    loaded = registry.load_booster(settings, ref)
    return ServedModel(loaded.booster, loaded.calibrator, settings.model_name, loaded.version)


def load_challenger(settings: Settings, champion: ServedModel) -> ServedModel | None:
    """@challenger from MLflow (a bento ships only its champion), or None with a log line when there is nothing
    to shadow: no @challenger alias, the challenger is the champion, or the registry cannot be read (the
    service must start without its shadow)."""
    try:
        version = registry.alias_version(settings, registry.CHALLENGER)
        if version is None:
            logger.info(
                "shadow scoring is on, but %s has no @%s: nothing to shadow", champion.name, registry.CHALLENGER
            )
            return None
        if version == champion.version:
            logger.info(
                "shadow scoring is on, but @%s is the champion (v%s): nothing to shadow", registry.CHALLENGER, version
            )
            return None
        return load_registered_model(settings, version)
    except StackError:
        logger.exception("shadow scoring is on, but @%s could not be loaded: serving without it", registry.CHALLENGER)
        return None


def build_scorer(settings: Settings, model: ServedModel, feature_ttls: Mapping[str, timedelta]) -> Scorer:
    """The Scorer of a served model (booster + calibrator): the one code path champion and challenger are scored by."""
    return Scorer(
        model.booster,
        calibrator=model.calibrator,
        model_name=model.name,
        model_version=model.version,
        threshold=settings.decision_threshold,
        feature_ttls=feature_ttls,
    )


class ServingObserver(Protocol):
    """Receives what the request path measured (the service turns it into Prometheus metrics)."""

    def feature_fetch(self, seconds: float) -> None: ...

    def prediction(self, prediction: Prediction) -> None: ...


@dataclass
class ServingRuntime:
    """A loaded model and its feature source; `predict` is the request path."""

    scorer: Scorer
    store: Any
    profiles: ProfileBuffer | None
    observer: ServingObserver | None = None
    feature_service: Any = None  # resolved once, not per request
    shadow: ShadowScorer | None = None  # the challenger, scored off the response path (shadow mode)

    def __post_init__(self) -> None:
        if self.shadow is not None and self.shadow.challenger.feature_ttls != self.scorer.feature_ttls:
            raise ValueError(
                "the challenger is scored on the champion's model inputs: both Scorers need the same feature TTLs"
            )
        if self.feature_service is None:
            self.feature_service = self.store.get_feature_service(FEATURE_SERVICE)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, profile: bool = True, observer: ServingObserver | None = None
    ) -> ServingRuntime:
        """Load the model (the bento's own, else @champion from MLflow), connect Feast, start the profiler.

        With ``settings.shadow_enabled``, also load @challenger and start its shadow scorer.
        """
        model = load_model(settings)
        store = get_store(settings)
        feature_ttls = scoring.load_feature_ttls(store)
        scorer = build_scorer(settings, model, feature_ttls)
        shadow = None
        if settings.shadow_enabled:
            challenger = load_challenger(settings, model)
            if challenger is not None:
                shadow = ShadowScorer(
                    build_scorer(settings, challenger, feature_ttls),
                    ShadowLog(settings.shadow_dir),
                    FEATURE_SERVICE,
                    ab_share=settings.ab_challenger_share,
                    process=True,  # the challenger's Python work off this process's GIL, as the profiler's
                )
                shadow.start()
                logger.info(
                    "shadow scoring: challenger v%s beside champion v%s (A/B: the challenger decides for %.0f%%)",
                    challenger.version,
                    model.version,
                    100 * settings.ab_challenger_share,
                )
        profiles = None
        if profile:
            # whylogs in a child process: in this one it would hold the GIL against the request path.
            profiles = ProfileBuffer(
                settings.profile_store_url(), window_seconds=settings.profile_window_seconds, process=True
            )
            profiles.start()
        return cls(scorer, store, profiles, observer, shadow=shadow)

    def predict(self, applications: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Features from Redis through Feast, one Booster call, rows handed to the profiler (no whylogs here)."""
        started = time.perf_counter()
        online = scoring.fetch_online_features(self.store, applications, self.feature_service)
        return self._score(applications, online, started)

    async def predict_async(self, applications: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """``predict`` on the caller's event loop: Feast's async read awaits Redis (no thread, no blocking)."""
        started = time.perf_counter()
        online = await scoring.fetch_online_features_async(self.store, applications, self.feature_service)
        return self._score(applications, online, started)

    def _score(
        self, applications: Sequence[Mapping[str, Any]], online: scoring.OnlineFeatures, started: float
    ) -> list[Prediction]:
        if self.observer is not None:
            self.observer.feature_fetch(time.perf_counter() - started)
        now = datetime.now(UTC)
        scored = self.scorer.evaluate(applications, online.values, online.event_timestamps, now)
        if self.profiles is not None:  # the champion's inputs and scores (one model version per window)
            for row in scored.rows:
                self.profiles.add(row.profile_row())
        champion = [row.prediction for row in scored.rows]
        answers, decided_by = champion, None
        if self.shadow is not None:  # the challenger scores the same model inputs, at the same instant
            answers, decided_by = self.shadow.decide(applications, online, now, champion)
            self.shadow.submit(applications, scored.matrix, now, champion, decided_by)
        if self.observer is not None:
            for prediction in answers:
                self.observer.prediction(prediction)
        return answers

    def close(self, timeout: float = 10.0) -> None:
        """Log the queued shadow scores and flush the partial profile window (graceful shutdown)."""
        if self.shadow is not None:
            self.shadow.stop(timeout)
        if self.profiles is not None:
            self.profiles.stop(timeout)


Rows = Sequence[Mapping[str, Any]]


class RequestBatcher:
    """Adaptive batching of concurrent scoring requests on one event loop: one `predict` call per batch.

    A request that finds the scorer idle is scored at once, alone (no added latency under light
    load); requests that arrive while a batch runs wait and go together into the next call, up to
    `max_rows` rows (a request is never split). Batches run one at a time on the loop (`predict` is
    a coroutine function, e.g. `ServingRuntime.predict_async`: it awaits Redis, so the loop keeps
    taking requests meanwhile). When a batch of several requests fails for a reason other than an
    online-store outage, each request is retried alone, so a bad request cannot fail the others; an
    outage fails them all at once (retrying would multiply the timeouts).
    """

    def __init__(
        self, predict: Callable[[Rows], Awaitable[list[Prediction]]], max_rows: int = scoring.MAX_BATCH
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        self.predict = predict
        self.max_rows = max_rows
        self._queue: deque[tuple[Rows, asyncio.Future[list[Prediction]]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, rows: Rows) -> list[Prediction]:
        """Predictions for `rows` (in order), scored with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Prediction]] = loop.create_future()
        self._queue.append((rows, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                jobs = [self._queue.popleft()]
                size = len(jobs[0][0])
                while self._queue and size + len(self._queue[0][0]) <= self.max_rows:
                    jobs.append(self._queue.popleft())
                    size += len(jobs[-1][0])
                await self._run(jobs)
                await asyncio.sleep(0)  # let the answered requests respond before the next batch
        finally:  # only non-empty if this task was cancelled: nobody may wait for ever
            while self._queue:
                self._queue.popleft()[1].cancel()

    async def _run(self, jobs: list[tuple[Rows, asyncio.Future[list[Prediction]]]]) -> None:
        rows = [row for job_rows, _ in jobs for row in job_rows]
        try:
            predictions = await self.predict(rows)
        except asyncio.CancelledError:
            for _, future in jobs:
                future.cancel()
            raise
        except Exception as exc:
            if len(jobs) == 1 or scoring.classify_error(exc).is_outage:
                for _, future in jobs:
                    _settle(future, exception=exc)
                return
            for job in jobs:  # isolate the request that broke the batch
                await self._run([job])
            return
        start = 0
        for job_rows, future in jobs:
            _settle(future, result=predictions[start : start + len(job_rows)])
            start += len(job_rows)


def _settle(
    future: asyncio.Future[list[Prediction]],
    result: list[Prediction] | None = None,
    exception: BaseException | None = None,
) -> None:
    if future.done():  # the request was cancelled (client gone): its rows were scored and profiled anyway
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result or [])
