"""One settings object for the whole stack (env prefix ``MLSTACK_``)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of the stack; read from the environment (and ``.env``) with prefix ``MLSTACK_``."""

    model_config = SettingsConfigDict(env_prefix="MLSTACK_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    state_dir: Path = Field(
        default=PROJECT_ROOT / ".mlstack",
        description="Directory holding all local state: data, Feast registry, MLflow, profiles, embedded Redis.",
    )
    feature_repo: Path = Field(
        default=PROJECT_ROOT / "feature_store", description="Path of the Feast feature repository."
    )
    feast_registry_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Feast SQL registry. Unset: SQLite under the state dir.",
    )

    # Redis online store
    redis_url: str | None = Field(
        default=None,
        description="External Redis URL (redis:// or rediss://). Unset: an embedded Redis under the state dir.",
    )
    redis_socket_timeout: float = Field(default=0.5, gt=0, description="Redis socket timeout, seconds.")
    redis_connect_timeout: float = Field(default=0.5, gt=0, description="Redis connect timeout, seconds.")
    redis_retries: int = Field(default=1, ge=0, le=10, description="Retries on Redis connection errors.")

    # Synthetic data
    seed: int = Field(default=42, description="Seed of the synthetic data generator.")
    customers: int = Field(default=20_000, gt=0, description="Number of synthetic customers.")
    months: int = Field(default=18, ge=12, le=120, description="Months of history to generate.")
    data_end: date | None = Field(default=None, description="Last day of generated history (UTC). Unset: today.")

    # Materialisation
    materialize_batch_size: int | None = Field(
        default=10_000,
        gt=0,
        description="Rows per Feast online-write batch during materialisation (None: one batch, Feast's default).",
    )
    materialize_pull_latest: bool = Field(
        default=True,
        description="Let the offline store return only the latest row per entity in the window.",
    )
    materialize_skip_dedup: bool = Field(
        default=True,
        description=(
            "Skip Feast's read of stored timestamps before each write (~20% faster). Safe while the "
            "incremental flow is the only writer, as its windows only move forward; set false to backfill."
        ),
    )
    materialize_offline_memory_mb: int | None = Field(
        default=64,
        ge=32,
        description=(
            "Memory cap, MiB, for DuckDB's latest-row-per-entity query while the Arrow writer streams it; "
            "beyond it DuckDB spills to a temporary directory, so peak memory stays flat in the number of "
            "entities. Too low a cap fails the run with DuckDB's out-of-memory error (no window recorded). "
            "Unset: no cap (DuckDB's default, 80% of RAM)."
        ),
    )
    materialize_verify: bool | None = Field(
        default=None,
        description=(
            "Read every row the Arrow writer wrote back from Redis (its `_ts:<view>` and fields) before the "
            "window is recorded; a shortfall fails the run. Unset: on the Ray engine only (its writes run in "
            "other processes); locally Redis acknowledges every command and the read-back doubles the time."
        ),
    )
    materialize_writer: Literal["arrow", "feast"] = Field(
        default="arrow",
        description=(
            "How materialisation writes Redis: `arrow` (mlstack's ArrowRedisOnlineStore: whole Arrow columns, "
            "the same bytes as Feast) or `feast` (Feast's engine and writer). Reads are Feast's either way."
        ),
    )

    # Compute engine
    compute_engine: Literal["local", "ray"] = Field(
        default="local",
        description=(
            "Where the heavy work runs: `local` (DuckDB point-in-time joins, the Arrow writer, LightGBM in the "
            "flow's process) or `ray` (Feast's Ray offline store and `ray.engine`, LightGBM on Ray). Ray needs "
            "the `ray` extra (`uv sync --extra ray`)."
        ),
    )
    ray_address: str | None = Field(
        default=None,
        description=(
            "Address of an existing Ray cluster (`ray://host:10001` or `host:6379`) when the engine is `ray`. "
            "Unset: a local Ray is started for the run, bounded by MLSTACK_RAY_NUM_CPUS."
        ),
    )
    ray_num_cpus: int = Field(
        default=2, ge=1, description="CPUs of the local Ray started when MLSTACK_RAY_ADDRESS is unset."
    )
    ray_object_store_mb: int = Field(
        default=512, ge=80, description="Object store size, MiB, of the local Ray started when no address is set."
    )
    ray_train_workers: int = Field(
        default=2,
        ge=1,
        description=(
            "LightGBM workers (one CPU each) of a training run on Ray: Ray Train's data-parallel LightGBM, each "
            "worker holding its share of the training rows."
        ),
    )

    # MLflow
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI. Unset: SQLite under the state dir (mlflow/mlflow.db)."
    )
    mlflow_experiment: str = Field(default="credit-risk", description="MLflow experiment of training runs.")
    model_name: str = Field(default="credit-risk", description="Registered model name in MLflow.")
    mlflow_ui_url: str | None = Field(
        default=None,
        description=(
            "Base URL of the MLflow server as a browser reaches it (links and charts in Prefect artifacts). "
            "Unset: the tracking URI when it is http(s), else the server `mlstack up` runs, else none (text charts)."
        ),
    )

    # Training
    train_window_days: int | None = Field(
        default=None, gt=0, description="Train on applications of the last N days before the data end. Unset: all."
    )
    validation_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Share of rows (by time) for validation."
    )
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5, description="Most recent share of rows held out.")
    learning_rate: float = Field(default=0.05, gt=0, le=1, description="LightGBM learning rate.")
    num_leaves: int = Field(default=31, ge=2, description="LightGBM num_leaves.")
    min_data_in_leaf: int = Field(default=50, ge=1, description="LightGBM min_data_in_leaf.")
    feature_fraction: float = Field(default=0.9, gt=0, le=1, description="LightGBM feature_fraction.")
    num_boost_round: int = Field(default=1000, ge=1, description="Maximum boosting rounds.")
    early_stopping_rounds: int = Field(default=50, ge=1, description="Stop when validation log loss stalls this long.")
    calibration: Literal["platt", "isotonic", "auto", "none"] = Field(
        default="platt",
        description=(
            "How every training run calibrates its booster on the calibration slice (after validation, before "
            "the holdout): platt, isotonic (needs MLSTACK_CALIBRATION_ISOTONIC_MIN_ROWS rows), auto (isotonic "
            "from that many rows, else platt) or none."
        ),
    )
    calibration_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Share of rows (by time, just before the holdout) for calibration."
    )
    calibration_isotonic_min_rows: int = Field(
        default=5000, ge=1000, description="Fewest calibration rows for isotonic calibration (fewer: Platt)."
    )

    label_maturity_days: int = Field(
        default=366,
        ge=0,
        description=(
            "Days after an application by which its outcome is known (defaults arrive 2-12 months later): "
            "the gap between each tuning fold's training rows and its validation rows."
        ),
    )
    tuning_trials: int = Field(default=30, ge=1, description="Optuna trials of a tuning run (the weekly training).")
    tuning_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Wall-time bound of a tuning run; the study stops after the trial running then.",
    )
    tuning_folds: int = Field(default=3, ge=2, description="Time-ordered cross-validation folds of a tuning run.")
    decision_threshold: float = Field(
        default=0.2, gt=0, lt=1, description="Default probability at or above which an application is declined."
    )

    # Data validation gate (mlstack.data.validation; docs/data.md, "Validation")
    validation_row_count_error_band: float = Field(
        default=5.0,
        gt=1,
        description="A table's newest window holding fewer than 1/band times the rows of the one before is an error.",
    )
    validation_row_count_warn_band: float = Field(
        default=1.5,
        gt=1,
        description="Outside 1/band to band times the previous window's rows, the row count is a warning.",
    )
    validation_null_rate_band: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Largest rise of a nullable column's null rate from the previous window to the newest.",
    )
    validation_failing_rows: int = Field(
        default=20, ge=1, description="Failing rows per table shown in the validation artifact and report."
    )

    # Champion / challenger gate
    # The rule and why (docs/training.md, "The gate"): a challenger is promoted when its holdout log loss
    # is lower than the champion's with this confidence, unless its ROC AUC is significantly lower beyond the margin.
    gate_confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1,
        description="Confidence of the gate's intervals (the log-loss difference's must lie below 0).",
    )
    gate_auc_margin: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description=(
            "ROC AUC harm margin: a challenger whose AUC difference interval lies wholly below -margin "
            "(significantly worse ranking by more than the margin) is rejected."
        ),
    )
    gate_min_defaults: int = Field(
        default=30,
        ge=2,
        description="Fewest defaults (and non-defaults) to compare two models; fewer: insufficient evidence.",
    )
    gate_bootstrap_rounds: int = Field(
        default=1000, ge=100, le=100_000, description="Paired bootstrap resamples of the holdout rows."
    )
    gate_bootstrap_seed: int = Field(
        default=0, description="Seed of the paired bootstrap (a decision is reproducible)."
    )
    # Why these values: floors are sanity checks that catch a broken model, not a comparison between
    # good ones (docs/training.md, "Floors"). Both sat so close to what small training sets reach that
    # a fixture's first model passed or failed them by chance.
    floor_min_auc: float = Field(default=0.60, ge=0.5, le=1, description="Sanity floor: holdout ROC AUC.")
    floor_max_calibration_error: float = Field(
        default=0.10,
        gt=0,
        le=1,
        description="Sanity floor: expected calibration error on the holdout (widened to its sampling noise).",
    )
    leakage_auc_ceiling: float = Field(
        default=0.85, gt=0.5, le=1, description="A holdout ROC AUC above this is flagged as probable leakage."
    )

    # Serving
    profile_store: str | None = Field(
        default=None, description="fsspec URL of the live-traffic profile store. Unset: <state_dir>/profiles."
    )
    profile_window_seconds: float = Field(default=300.0, gt=0, description="Live-traffic profile window length.")
    service_api_token: SecretStr | None = Field(
        default=None, description="Bearer token required on the scoring endpoints. Unset: no auth."
    )
    service_max_body_bytes: int = Field(
        default=262_144, gt=0, description="Largest request body the service accepts (413 above)."
    )
    shadow_enabled: bool = Field(
        default=False,
        description="Score @challenger beside @champion off the response path and log both scores (shadow mode).",
    )
    # A/B mode (docs/monitoring.md, "A/B mode"): the sample size is fixed from these before the test starts.
    ab_challenger_share: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="A/B mode: share of customers (sticky hash of the id) whom @challenger decides for; 0: off. "
        "Needs MLSTACK_SHADOW_ENABLED.",
    )
    ab_baseline_approval_rate: float = Field(
        default=0.75, gt=0, lt=1, description="A/B sample size: the champion's expected approval rate."
    )
    ab_min_detectable_difference: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="A/B sample size: the smallest approval-rate difference the test must detect (80% power).",
    )

    batch_chunk_rows: int = Field(
        default=50_000, ge=1, description="Applications per chunk of batch scoring (memory is bounded by a chunk)."
    )

    # Drift monitoring and retraining
    monitor_lookback_minutes: float = Field(
        default=60.0, gt=0, description="The monitor judges the live-traffic profiles of the last N minutes."
    )
    drift_min_rows: int = Field(default=200, ge=1, description="Fewest live rows the monitor will judge drift on.")
    drift_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Drift false-alarm rate per window: a column drifts when its Holm-adjusted p-value is below it.",
    )
    drift_context_min_effect: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Zipcode-level columns and the prediction drift only with a KS distance at least this large.",
    )
    drift_numeric_min_effect: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description=(
            "Every numeric column drifts only with a KS distance at least this large: with hundreds of rows the "
            "test alone flags the slow, benign movement between an 18-month training mix and this month."
        ),
    )
    drift_event_cooldown_minutes: float = Field(
        default=30.0, ge=0, description="After a drift event for a model version, no new one for this long."
    )
    performance_outcome_months: float = Field(
        default=12.0,
        gt=0,
        description="An application's outcome is known this many months after it (a cohort is judged once all are).",
    )
    performance_min_rows: int = Field(
        default=200, ge=10, description="Fewest matured applications of a cohort the performance monitor judges."
    )
    performance_confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence level of the performance monitor's intervals."
    )
    performance_event_cooldown_minutes: float = Field(
        default=1440.0,
        ge=0,
        description="After a performance-degraded event for a model version, no new one for this long.",
    )
    retrain_window_days: int = Field(
        default=120, gt=0, description="Retraining on drift uses the applications of the last N days."
    )
    k8s_overlay: Path | None = Field(
        default=None,
        description="Kustomize overlay whose credit-risk image tag a rollout updates (e.g. infra/k8s/overlays/prod).",
    )

    # Metrics of the batch flows (drift, promotion) for Prometheus
    pushgateway_url: str | None = Field(
        default=None,
        description=(
            "Prometheus Pushgateway the monitor and training flows push their results to "
            "(e.g. http://127.0.0.1:9091). Unset: nothing is pushed (logged)."
        ),
    )

    # Orchestration (Prefect)
    work_pool: str = Field(
        default="mlstack-process",
        description="Prefect work pool the deployments run on (a process pool locally and in compose).",
    )

    # --- Local stack (`mlstack up`): ports of the native servers, all bound to 127.0.0.1 ---
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Port of the local Prefect server (UI + API).")
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="Port of the local MLflow tracking server (UI).")
    registry_webhooks: bool = Field(
        default=True,
        description="`mlstack up` registers an MLflow webhook so a @champion move made in the MLflow UI is rolled "
        "out at once (the watch-champion poll catches it within five minutes either way).",
    )
    service_port: int = Field(default=3000, ge=1, le=65535, description="Port of the credit-risk service.")
    # --- end local stack ---

    @model_validator(mode="after")
    def _ab_needs_the_challenger(self) -> Settings:
        # A/B mode decides with the challenger that shadow mode loads: without it, a share would silently do nothing.
        if self.ab_challenger_share > 0 and not self.shadow_enabled:
            raise ValueError("MLSTACK_AB_CHALLENGER_SHARE > 0 needs MLSTACK_SHADOW_ENABLED=true (it loads @challenger)")
        return self

    def profile_store_url(self) -> str:
        """Where the service writes its whylogs profiles."""
        return self.profile_store or str(self.profiles_dir)

    def data_end_datetime(self) -> datetime:
        """The end of generated history as a tz-aware UTC midnight."""
        day = self.data_end or datetime.now(UTC).date()
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    @property
    def data_dir(self) -> Path:
        """Directory of the offline parquet data."""
        return self.state_dir / "data"

    @property
    def mlflow_dir(self) -> Path:
        """Directory of the local MLflow store (SQLite database and artifacts)."""
        return self.state_dir / "mlflow"

    @property
    def mlflow_db_path(self) -> Path:
        """The local MLflow tracking and registry database (SQLite), used when no tracking URI is set."""
        return self.mlflow_dir / "mlflow.db"

    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: the setting, or SQLite under the state dir."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_db_path}"

    @property
    def redis_dir(self) -> Path:
        """Directory of the embedded Redis server (data, pid, config, password)."""
        return self.state_dir / "redis"

    @property
    def feast_dir(self) -> Path:
        """Directory of Feast's local state (the SQLite registry)."""
        return self.state_dir / "feast"

    @property
    def feast_registry_path(self) -> Path:
        """The local Feast SQL registry (SQLite), used when no registry URL is set."""
        return self.feast_dir / "registry.db"

    def feast_registry(self) -> str:
        """The Feast registry URL in force: the setting, or SQLite under the state dir."""
        return self.feast_registry_url or f"sqlite:///{self.feast_registry_path}"

    @property
    def profiles_dir(self) -> Path:
        """Default live-traffic profile store (when ``profile_store`` is unset)."""
        return self.state_dir / "profiles"

    @property
    def shadow_dir(self) -> Path:
        """The shadow-score log: JSONL segments of champion and challenger scores per request."""
        return self.state_dir / "shadow"

    @property
    def monitor_dir(self) -> Path:
        """The monitor's reports and its drift-event cooldown record."""
        return self.state_dir / "monitor"

    @property
    def runs_dir(self) -> Path:
        """Scratch files of training runs (plots, reference profiles) before they go to MLflow."""
        return self.state_dir / "runs"

    @property
    def batch_dir(self) -> Path:
        """The nightly batch scoring's default input (`applications/*.parquet`) and output (`scores/`)."""
        return self.state_dir / "batch"

    @property
    def quarantine_dir(self) -> Path:
        """Rows the data-validation gate refused, one parquet file per table and failed validation."""
        return self.state_dir / "quarantine"

    @property
    def stack_dir(self) -> Path:
        """State files (pid, start time) and logs of the processes `mlstack up` runs."""
        return self.state_dir / "stack"

    def stack_record(self, name: str) -> Path:
        """The record (pid, start time, url) of the stack process `name` that `mlstack up` started."""
        return self.stack_dir / f"{name}.json"

    @property
    def service_dir(self) -> Path:
        """State file and log of the background credit-risk service."""
        return self.state_dir / "service"

    @property
    def bentoml_home(self) -> Path:
        """BentoML's bento and model store."""
        return self.state_dir / "bentoml"

    @property
    def prefect_home(self) -> Path:
        """Prefect's home (ephemeral database, profiles) when no PREFECT_HOME is set."""
        return self.state_dir / "prefect"


# Usage telemetry of every library the stack drives, off: offline, their heartbeats hang or hold
# locks, and a reference stack has no business phoning home. The one list; everything imports it.
TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow reads it at import and ignores DO_NOT_TRACK
    "BENTOML_DO_NOT_TRACK": "True",
    "WHYLOGS_NO_ANALYTICS": "True",
}


def telemetry_off_environment() -> dict[str, str]:
    """TELEMETRY_OFF, except where the environment already says otherwise."""
    return {key: os.environ.get(key, value) for key, value in TELEMETRY_OFF.items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build the settings once per process (never at import time)."""
    return Settings()


def stack_environment(settings: Settings) -> dict[str, str]:
    """Environment for the libraries the stack drives: Prefect (below) and MLflow, telemetry off.

    MLflow: no usage telemetry, no progress bars, and a bounded number of HTTP retries so an
    unreachable tracking server fails in seconds rather than minutes.
    """
    mlflow_defaults = {
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    bentoml_defaults = {"BENTOML_HOME": str(settings.bentoml_home)}  # the bento store lives with the local state
    return {
        **{key: os.environ.get(key, value) for key, value in {**mlflow_defaults, **bentoml_defaults}.items()},
        **prefect_environment(settings),
    }


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Environment for Prefect: local ephemeral mode, state under the state dir, no telemetry.

    Telemetry must be off here: offline, its heartbeat fails and holds the SQLite lock.
    Values already set in the environment (e.g. PREFECT_API_URL of a real server) win.
    """
    defaults = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    return {**telemetry_off_environment(), **{key: os.environ.get(key, value) for key, value in defaults.items()}}


def settings_reference_markdown() -> str:
    """A Markdown table of every setting: variable, type, default, description (docs/configuration.md)."""
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            shown = f"`{default.relative_to(PROJECT_ROOT)}`" if default.is_relative_to(PROJECT_ROOT) else f"`{default}`"
        elif default is None:
            shown = "unset"
        else:
            shown = f"`{default}`"
        kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
        for prefix in ("typing.", "pydantic.types.", "pathlib.", "datetime."):
            kind = kind.replace(prefix, "")
        kind = kind.replace(" | None", ", optional")
        rows.append(f"| `MLSTACK_{name.upper()}` | {kind} | {shown} | {field.description or ''} |")
    return "\n".join(rows)


SETTINGS_TABLE_MARKERS = ("<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->")


def write_settings_reference(path: Path = PROJECT_ROOT / "docs" / "configuration.md") -> None:
    """Replace the settings table between its markers in ``path`` with ``settings_reference_markdown()``."""
    start, end = SETTINGS_TABLE_MARKERS
    head, rest = path.read_text().split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + start + settings_reference_markdown() + end + tail)
