"""Online scoring core: request/response models, the Feast online read, feature freshness, the scorer, error mapping.

The BentoML service is glue over this module: it validates a ``LoanApplication``, calls
``fetch_online_features`` and ``Scorer.score`` (or the batch variants), and maps any exception
with ``classify_error``. Nothing here needs BentoML to be tested.

Missing and stale features (the chosen policy):

- An unknown customer or zipcode is not an error. Feast returns every feature of that entity as
  not found; they are passed to the booster as NaN (LightGBM's "missing", the same encoding
  training uses for a missing snapshot) and a score is still returned, never a 4xx/5xx. The
  response says so: ``features_found=False`` and ``missing_features`` names them.
- A stored value older than its feature view's TTL is dropped (NaN) before scoring, because the
  training join (point in time, same TTLs) would not have seen it either; it is listed in
  ``stale_features``, not in ``missing_features``. Feast's Redis store does not apply the TTL on
  read, so this module does.
- The on-demand ratios (``loan_to_income``, ``payment_to_income``) come from Feast's response (the
  ODFV is the single definition). Feast computes them from whatever it read, so a ratio whose input
  is stale is dropped with it (``DERIVED_FEATURE_INPUTS``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import pydantic
import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlstack.data.schema import LOAN_AMOUNT_RANGE, REQUEST_FIELDS, LoanPurpose, LoanTerm
from mlstack.errors import StackError
from mlstack.features.online_store import OnlineStoreError
from mlstack.monitoring.live_profiles import VERSION_KEY
from mlstack.monitoring.shadow_log import DecidedBy
from mlstack.training import model_input
from mlstack.training.calibration import IDENTITY, Calibrator, default_probabilities

if TYPE_CHECKING:
    import lightgbm

MAX_BATCH = 256
# Training amounts are drawn in LOAN_AMOUNT_RANGE (1,000-100,000). The service accepts down to 500:
# small loans are real and the trees treat amounts below the trained range as the lowest leaf.
MIN_LOAN_AMOUNT = 500.0
MAX_LOAN_AMOUNT = LOAN_AMOUNT_RANGE[1]
# Feast's `customer` entity is INT64: a larger id cannot even be encoded as a key (protobuf raises ValueError).
MAX_CUSTOMER_ID = 2**63 - 1
TIMESTAMP_SUFFIX = "__ts"  # feast.online_response.TIMESTAMP_POSTFIX
ENTITY_KEYS = ("customer_id", "zipcode")
# On-demand features and the stored features they are computed from (feature_store/on_demand_features.py).
DERIVED_FEATURE_INPUTS: dict[str, tuple[str, ...]] = {
    "loan_to_income": ("annual_income",),
    "payment_to_income": ("annual_income", "monthly_debt_payments"),
}

Decision = Literal["approve", "decline"]
OutageCause = Literal["online_store_unavailable", "online_store_timeout"]
ErrorCause = Literal[OutageCause, "invalid_request", "internal"]


class LoanApplication(BaseModel):
    """One loan application as the client sends it, validated strictly: each field must have its JSON type.

    No coercion (pydantic strict mode): `true` is not customer 1, `"1"` is not a customer id and
    `"12000"` is not an amount; a client bug gets a 400 naming the field, never someone else's
    decision. Integer fields take JSON integers only (`36.0` is not a term). `loan_amount` takes any
    JSON number, `12000` as well as `12000.0`: JSON has one number type and amounts are written both ways.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        # OpenAPI 3.0's singular `example`: BentoML's schema model rejects a model-level `examples`.
        json_schema_extra={
            "example": {
                "customer_id": 1042,
                "zipcode": "94107",
                "loan_amount": 12_500.0,
                "loan_term_months": 36,
                "loan_purpose": "debt_consolidation",
            }
        },
    )

    customer_id: int = Field(ge=1, le=MAX_CUSTOMER_ID, description="Customer id (Feast entity `customer`, INT64).")
    zipcode: str = Field(
        pattern=r"^[0-9]{5}$", description="Five-digit zipcode of the customer's address (Feast entity `zipcode`)."
    )
    loan_amount: float = Field(
        ge=MIN_LOAN_AMOUNT,
        le=MAX_LOAN_AMOUNT,
        allow_inf_nan=False,
        description=(
            f"Requested principal, {MIN_LOAN_AMOUNT:,.0f}-{MAX_LOAN_AMOUNT:,.0f} "
            f"(trained on {LOAN_AMOUNT_RANGE[0]:,.0f}-{LOAN_AMOUNT_RANGE[1]:,.0f})."
        ),
    )
    loan_term_months: LoanTerm = Field(description="Repayment term in months.")
    loan_purpose: LoanPurpose = Field(description="What the loan is for.")

    @field_validator("loan_term_months", mode="before")
    @classmethod
    def _term_is_an_integer(cls, value: object) -> object:
        # Strict mode does not reach a Literal: it matches by equality, so 36.0 would pass as 36.
        if type(value) is not int:
            raise ValueError(f"should be an integer, not {type(value).__name__}")
        return value


class Prediction(BaseModel):
    """The model's answer for one application, with what the feature store could and could not supply."""

    default_probability: float = Field(ge=0, le=1, description="Predicted probability of default.")
    decision: Decision = Field(description="`decline` when default_probability >= threshold, else `approve`.")
    threshold: float = Field(description="Decision threshold in force.")
    model_name: str
    model_version: str = Field(description="Version of the model that decided (see decided_by).")
    decided_by: DecidedBy = Field(
        default="champion", description="`challenger` when A/B mode gave this customer's decision to @challenger."
    )
    features_found: bool = Field(description="Both the customer and the zipcode had rows in the online store.")
    missing_features: list[str] = Field(description="Model features with no value (scored as missing).")
    stale_features: list[str] = Field(description="Model features older than their view's TTL (scored as missing).")
    freshest_feature_age_seconds: float | None = Field(
        json_schema_extra={"nullable": True}, description="Age of the newest stored feature; None if none."
    )
    stalest_feature_age_seconds: float | None = Field(
        json_schema_extra={"nullable": True}, description="Age of the oldest stored feature; None if none."
    )


class BatchRequest(BaseModel):
    """Up to MAX_BATCH applications scored together (strict like LoanApplication)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    applications: list[LoanApplication] = Field(min_length=1, max_length=MAX_BATCH)


class BatchResponse(BaseModel):
    """One prediction per application, in request order."""

    predictions: list[Prediction]


# --- Feast online read -------------------------------------------------------------------------


class FeatureStoreUnavailable(StackError):
    """The online store could not be read; ``cause`` is the machine-readable reason."""

    def __init__(self, message: str, cause: OutageCause = "online_store_unavailable") -> None:
        super().__init__(message)
        self.cause = cause


class OnlineResponseLike(Protocol):
    """What ``feast.OnlineResponse`` offers that this module uses."""

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, list[Any]]: ...


class OnlineFeatureSource(Protocol):
    """The part of ``feast.FeatureStore`` the online read needs (a small fake implements it in unit tests)."""

    def get_feature_service(self, name: str) -> Any: ...

    def get_online_features(self, features: Any, entity_rows: list[dict[str, Any]]) -> OnlineResponseLike: ...

    async def get_online_features_async(
        self, features: Any, entity_rows: list[dict[str, Any]]
    ) -> OnlineResponseLike: ...


@dataclass(frozen=True)
class OnlineFeatures:
    """Per-application feature values and event timestamps, in request order."""

    values: list[dict[str, Any]]
    event_timestamps: list[dict[str, datetime | None]]


def entity_row(application: Mapping[str, Any]) -> dict[str, Any]:
    """The Feast entity row of an application: join keys plus the request fields the ODFV needs."""
    return {name: application[name] for name in (*ENTITY_KEYS, *REQUEST_FIELDS)}


def parse_online_response(
    response: Mapping[str, Sequence[Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, datetime | None]]]:
    """Split ``OnlineResponse.to_dict(include_event_timestamps=True)`` into per-row values and timestamps.

    Input: columns ``{name: [v0, v1, ...], name + "__ts": [epoch seconds, ...]}``. Output: one
    ``{name: value}`` dict per row (no ``__ts`` keys) and one ``{name: datetime | None}`` per row for
    names that had a timestamp column; Feast writes 0 for "not found" and for values it computed
    (on-demand features, join keys), which become None.
    """
    names = [name for name in response if not name.endswith(TIMESTAMP_SUFFIX)]
    rows = len(response[names[0]]) if names else 0
    values: list[dict[str, Any]] = [{} for _ in range(rows)]
    stamps: list[dict[str, datetime | None]] = [{} for _ in range(rows)]
    for name in names:
        column = response[name]
        for i in range(rows):
            values[i][name] = column[i]
        ts_column = response.get(name + TIMESTAMP_SUFFIX)
        if ts_column is None:
            continue
        for i in range(rows):
            seconds = ts_column[i]
            stamps[i][name] = datetime.fromtimestamp(seconds, UTC) if seconds else None
    return values, stamps


# Kinds of Feast `Value` that `feast_value_type_to_python_type` returns as they are: no conversion, no type hint.
_PLAIN_VALUE_KINDS = frozenset(("double_val", "float_val", "int64_val", "int32_val", "bool_val"))


def online_columns(response: OnlineResponseLike) -> dict[str, list[Any]]:
    """``response.to_dict(include_event_timestamps=True)``, read from Feast's protobuf answer when it has one.

    ``to_dict`` calls Feast's converter on every value (~12% of the scoring path's CPU at 16 rows,
    docs/benchmarks.md); numbers and booleans need no conversion and are taken as they are, every
    other kind (strings, nulls, timestamps) still goes through Feast's converter, without the
    response's type hints, which only turn strings of UUID-typed features into ``uuid.UUID`` (the
    feature repo declares none). Same keys, order and values as ``to_dict`` otherwise; a response
    without a ``proto`` (another feature source) gives its own ``to_dict``.
    """
    proto = getattr(response, "proto", None)
    if proto is None:
        return response.to_dict(include_event_timestamps=True)
    from feast.type_map import feast_value_type_to_python_type

    columns: dict[str, list[Any]] = {}
    for name, vector in zip(proto.metadata.feature_names.val, proto.results, strict=True):
        values = []
        for value in vector.values:
            kind = value.WhichOneof("val")
            values.append(
                getattr(value, kind) if kind in _PLAIN_VALUE_KINDS else feast_value_type_to_python_type(value)
            )
        columns[name] = values
        columns[name + TIMESTAMP_SUFFIX] = [stamp.seconds for stamp in vector.event_timestamps]
    return columns


def fetch_online_features(
    store: OnlineFeatureSource, applications: Sequence[Mapping[str, Any]], feature_service: Any = None
) -> OnlineFeatures:
    """Read the feature service (default ``features.FEATURE_SERVICE``) for ``applications`` in one call.

    ``feature_service`` is a name, or the service object itself: a server resolves it once at start-up
    rather than looking it up in the registry on every request.
    Redis outages become FeatureStoreUnavailable; other errors propagate unchanged.
    """
    rows = [entity_row(application) for application in applications]
    with _online_store_errors():
        service = _feature_service(store, feature_service)
        columns = online_columns(store.get_online_features(features=service, entity_rows=rows))
    return OnlineFeatures(*parse_online_response(columns))


async def fetch_online_features_async(
    store: OnlineFeatureSource, applications: Sequence[Mapping[str, Any]], feature_service: Any = None
) -> OnlineFeatures:
    """``fetch_online_features`` through Feast's async read: the Redis round trip is awaited, not blocking a thread.

    Same request, result and errors; for a server whose requests share one event loop.
    """
    rows = [entity_row(application) for application in applications]
    with _online_store_errors():
        service = _feature_service(store, feature_service)
        response = await store.get_online_features_async(features=service, entity_rows=rows)
        columns = online_columns(response)
    return OnlineFeatures(*parse_online_response(columns))


def _feature_service(store: OnlineFeatureSource, feature_service: Any) -> Any:
    feature_service = feature_service or _default_feature_service()
    return store.get_feature_service(feature_service) if isinstance(feature_service, str) else feature_service


@contextlib.contextmanager
def _online_store_errors() -> Iterator[None]:
    """Redis outages (however wrapped) become FeatureStoreUnavailable with a cause; other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        cause = _online_store_cause(exc)
        if cause is None:
            raise
        raise FeatureStoreUnavailable(f"online feature store: {_describe(exc)}", cause) from exc


# --- Freshness ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """Ages of the stored features and which are stale (age > TTL) or missing (no row in the store)."""

    ages_seconds: dict[str, float]
    stale: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def freshest_age_seconds(self) -> float | None:
        """Age of the newest stored feature, None when nothing was found."""
        return min(self.ages_seconds.values(), default=None)

    @property
    def stalest_age_seconds(self) -> float | None:
        """Age of the oldest stored feature, None when nothing was found."""
        return max(self.ages_seconds.values(), default=None)


def feature_freshness(
    event_timestamps: Mapping[str, datetime | None], ttls: Mapping[str, timedelta], now: datetime
) -> Freshness:
    """Freshness of every feature in ``ttls`` (feature -> its view's TTL; zero or negative means no expiry).

    A feature absent from ``event_timestamps`` or with a None timestamp is missing; otherwise its age
    is ``now - timestamp`` and it is stale when the age exceeds the TTL. Order follows ``ttls``.
    """
    ages: dict[str, float] = {}
    stale: list[str] = []
    missing: list[str] = []
    for name, ttl in ttls.items():
        stamp = event_timestamps.get(name)
        if stamp is None:
            missing.append(name)
            continue
        age = now - stamp
        ages[name] = age.total_seconds()
        if ttl > timedelta(0) and age > ttl:
            stale.append(name)
    return Freshness(ages, tuple(stale), tuple(missing))


def ttls_from_feature_views(views: Sequence[Any]) -> dict[str, timedelta]:
    """Feature -> TTL from Feast ``FeatureView`` objects (``ttl`` and ``features`` with ``.name``); None TTL is 0."""
    return {feature.name: view.ttl or timedelta(0) for view in views for feature in view.features}


def load_feature_ttls(store: Any, feature_service: str | None = None) -> dict[str, timedelta]:
    """Feature -> TTL of the batch views in the registered feature service (the registry is the source of truth)."""
    service = store.get_feature_service(feature_service or _default_feature_service())
    names = {projection.name for projection in service.feature_view_projections}
    return ttls_from_feature_views([view for view in store.list_feature_views() if view.name in names])


# --- Scoring -----------------------------------------------------------------------------------


class ModelContractError(StackError):
    """The booster was not trained on ``model_input.FEATURES`` (names and order)."""


@dataclass(frozen=True)
class ScoredApplication:
    """A prediction and the model inputs it was computed from (stale values already dropped)."""

    prediction: Prediction
    inputs: dict[str, Any]

    def profile_row(self) -> dict[str, Any]:
        """A flat row for live-traffic profiling: ``model_input.PROFILE_COLUMNS``, the decision, the model version."""
        return {
            **self.inputs,
            model_input.PREDICTION: self.prediction.default_probability,
            "decision": self.prediction.decision,
            VERSION_KEY: self.prediction.model_version,
        }


@dataclass(frozen=True)
class ScoredBatch:
    """A batch's scored applications and its model matrix (``model_input.FEATURES`` columns, one row each)."""

    rows: list[ScoredApplication]
    matrix: npt.NDArray[np.float64]


class Scorer:
    """A loaded "booster + calibrator", its decision rule and the feature TTLs; turns feature rows into predictions."""

    def __init__(
        self,
        booster: lightgbm.Booster,
        *,
        model_name: str,
        model_version: str,
        threshold: float,
        feature_ttls: Mapping[str, timedelta],
        calibrator: Calibrator = IDENTITY,
    ) -> None:
        names = booster.feature_name()
        if list(names) != list(model_input.FEATURES):
            raise ModelContractError(
                f"model {model_name} v{model_version} expects features {names}, not {list(model_input.FEATURES)}"
            )
        stored = [
            name for name in model_input.FEATURES if name not in REQUEST_FIELDS and name not in DERIVED_FEATURE_INPUTS
        ]
        without_ttl = [name for name in stored if name not in feature_ttls]
        if without_ttl:  # freshness and features_found would silently ignore them
            raise ModelContractError(f"no feature view TTL for stored feature(s) {without_ttl}; load them from Feast")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.booster = booster
        self.calibrator = calibrator
        self.model_name = model_name
        self.model_version = str(model_version)
        self.threshold = float(threshold)
        self.feature_ttls = dict(feature_ttls)

    def score(
        self,
        application: Mapping[str, Any],
        feature_values: Mapping[str, Any],
        event_timestamps: Mapping[str, datetime | None],
        now: datetime,
    ) -> Prediction:
        """Predict one application from its Feast values and timestamps (see the module docstring for the policy)."""
        return self.score_batch([application], [feature_values], [event_timestamps], now)[0]

    def score_batch(
        self,
        applications: Sequence[Mapping[str, Any]],
        feature_values: Sequence[Mapping[str, Any]],
        event_timestamps: Sequence[Mapping[str, datetime | None]],
        now: datetime,
    ) -> list[Prediction]:
        """Predict several applications with one booster call; one Prediction per application, in order."""
        return [s.prediction for s in self.evaluate_batch(applications, feature_values, event_timestamps, now)]

    def evaluate_batch(
        self,
        applications: Sequence[Mapping[str, Any]],
        feature_values: Sequence[Mapping[str, Any]],
        event_timestamps: Sequence[Mapping[str, datetime | None]],
        now: datetime,
    ) -> list[ScoredApplication]:
        """Like ``score_batch``, also returning each row's model inputs (for profiling)."""
        return self.evaluate(applications, feature_values, event_timestamps, now).rows

    def evaluate(
        self,
        applications: Sequence[Mapping[str, Any]],
        feature_values: Sequence[Mapping[str, Any]],
        event_timestamps: Sequence[Mapping[str, datetime | None]],
        now: datetime,
    ) -> ScoredBatch:
        """Like ``evaluate_batch``, also returning the model matrix the booster scored."""
        if not len(applications) == len(feature_values) == len(event_timestamps):
            raise ValueError(
                f"{len(applications)} applications but {len(feature_values)} feature rows "
                f"and {len(event_timestamps)} timestamp rows"
            )
        matrix = np.empty((len(applications), len(model_input.FEATURES)), dtype=np.float64)
        if not applications:
            return ScoredBatch([], matrix)
        rows = []
        for i, (application, values, stamps) in enumerate(
            zip(applications, feature_values, event_timestamps, strict=True)
        ):
            inputs, freshness = self._model_inputs(application, values, stamps, now)
            matrix[i] = model_input.encode_row(inputs)[0]
            rows.append((inputs, freshness))
        probabilities = self.probabilities(matrix)
        scored = [
            self._scored(float(probability), inputs, freshness)
            for probability, (inputs, freshness) in zip(probabilities, rows, strict=True)
        ]
        return ScoredBatch(scored, matrix)

    def probabilities(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Default probabilities of a model matrix (`model_input.encode` rows): the one place both the service
        and batch scoring turn model inputs into scores."""
        # The same function as training's evaluation: served == batch == offline, row for row.
        return default_probabilities(self.booster, self.calibrator, matrix, num_threads=1)

    def decision(self, probability: float) -> Decision:
        """`decline` at or above the threshold, else `approve`."""
        return "decline" if probability >= self.threshold else "approve"

    def _model_inputs(
        self,
        application: Mapping[str, Any],
        values: Mapping[str, Any],
        stamps: Mapping[str, datetime | None],
        now: datetime,
    ) -> tuple[dict[str, Any], Freshness]:
        freshness = feature_freshness(stamps, self.feature_ttls, now)
        dropped = set(freshness.stale)
        inputs = {name: values.get(name) for name in model_input.FEATURES}
        for name in REQUEST_FIELDS:
            inputs[name] = application[name]
        for name in freshness.stale:
            inputs[name] = None
        for name, sources in DERIVED_FEATURE_INPUTS.items():
            if dropped.intersection(sources):
                inputs[name] = None
        return inputs, freshness

    def _scored(self, probability: float, inputs: dict[str, Any], freshness: Freshness) -> ScoredApplication:
        stale = set(freshness.stale)
        derived_stale = {name for name, sources in DERIVED_FEATURE_INPUTS.items() if stale.intersection(sources)}
        stale_features = [name for name in model_input.FEATURES if name in stale or name in derived_stale]
        missing_features = [
            name for name in model_input.FEATURES if name not in stale_features and _is_missing(inputs[name])
        ]
        prediction = Prediction(
            default_probability=probability,
            decision=self.decision(probability),
            threshold=self.threshold,
            model_name=self.model_name,
            model_version=self.model_version,
            features_found=not freshness.missing,
            missing_features=missing_features,
            stale_features=stale_features,
            freshest_feature_age_seconds=freshness.freshest_age_seconds,
            stalest_feature_age_seconds=freshness.stalest_age_seconds,
        )
        return ScoredApplication(prediction, inputs)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- Error mapping -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorAnswer:
    """How the service answers a failed request: HTTP status, machine-readable cause, message for the client."""

    status: int
    cause: ErrorCause
    message: str

    @property
    def is_outage(self) -> bool:
        """The online store is down or hung (503): retrying the same rows would fail the same way."""
        return self.status == 503

    def body(self) -> dict[str, str]:
        """The JSON error body: ``{"error": message, "cause": cause}``."""
        return {"error": self.message, "cause": self.cause}


def classify_error(exc: BaseException) -> ErrorAnswer:
    """The answer to an exception raised while serving a request.

    Online store down -> 503 ``online_store_unavailable``; timed out -> 503 ``online_store_timeout``;
    invalid request -> 422 ``invalid_request`` naming the fields; anything else -> 500 ``internal``
    (details stay in the log, not in the response).
    """
    if isinstance(exc, FeatureStoreUnavailable):
        return ErrorAnswer(503, exc.cause, str(exc))
    if isinstance(exc, pydantic.ValidationError):
        return ErrorAnswer(422, "invalid_request", validation_message(exc))
    cause = _online_store_cause(exc)
    if cause is not None:
        return ErrorAnswer(503, cause, f"online feature store: {_describe(exc)}")
    return ErrorAnswer(500, "internal", f"internal error ({type(exc).__name__}); see the service log")


def validation_message(exc: pydantic.ValidationError) -> str:
    """One line per problem, each naming the field: ``loan_amount: Input should be less than or equal to 100000``."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "request"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def _online_store_cause(exc: BaseException) -> OutageCause | None:
    """The 503 cause code if ``exc`` (or an exception it wraps) is an online-store outage, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FeatureStoreUnavailable):
            return current.cause
        # redis.TimeoutError is not a subclass of the builtin; socket timeouts are the builtin one.
        if isinstance(current, redis.TimeoutError | TimeoutError):
            return "online_store_timeout"
        if isinstance(current, redis.ConnectionError | ConnectionError | OnlineStoreError):
            return "online_store_unavailable"
        current = current.__cause__ or current.__context__
    return None


def _default_feature_service() -> str:
    from mlstack.features.store import FEATURE_SERVICE  # imported late: importing Feast takes seconds

    return FEATURE_SERVICE


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
