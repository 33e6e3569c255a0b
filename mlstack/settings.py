"""One settings object for the whole stack (env prefix ``MLSTACK_``)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path

from pydantic import Field
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

    def data_end_datetime(self) -> datetime:
        """The end of generated history as a tz-aware UTC midnight."""
        day = self.data_end or datetime.now(UTC).date()
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    @property
    def data_dir(self) -> Path:
        """Directory of the offline parquet data."""
        return self.state_dir / "data"

    @property
    def redis_dir(self) -> Path:
        """Directory of the embedded Redis server (data, pid, config, password)."""
        return self.state_dir / "redis"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build the settings once per process (never at import time)."""
    return Settings()


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Environment for Prefect: local ephemeral mode, state under the state dir, no telemetry.

    Telemetry must be off here: offline, its heartbeat fails and holds the SQLite lock.
    Values already set in the environment (e.g. PREFECT_API_URL of a real server) win.
    """
    defaults = {
        "PREFECT_HOME": str(settings.state_dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    return {key: os.environ.get(key, value) for key, value in defaults.items()}
