"""Flow `score-batch`: score a table of applications with the champion on point-in-time features."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlstack.serving import batch
from mlstack.settings import get_settings


@task(name="score-applications", cache_policy=NO_CACHE)
def score_applications_task(pattern: str, output: Path) -> batch.BatchResult:
    logger = get_run_logger()
    return batch.score_applications(
        get_settings(), pattern, output, lambda done, total: logger.info("scored %d / %d applications", done, total)
    )


@flow(name="score-batch")
def score_batch_flow(input: str | None = None, output: str | None = None) -> batch.BatchResult:
    """Score the applications of a parquet path or glob; write one parquet of scores (atomically).

    Parameters:
        input: parquet path or glob (default: <state dir>/batch/applications/*.parquet).
        output: parquet to write (default: <state dir>/batch/scores/scores-<UTC date>.parquet).
    """
    settings = get_settings()
    pattern = input or str(settings.batch_dir / "applications" / "*.parquet")
    target = Path(output) if output else settings.batch_dir / "scores" / f"scores-{datetime.now(UTC):%Y%m%d}.parquet"
    result = score_applications_task(pattern, target)
    get_run_logger().info(result.summary())
    return result
