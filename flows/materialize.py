"""Flow `materialize-features`: apply the Feast repo, then materialise each batch view into Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from prefect import State, flow, get_run_logger, task
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.validation import validate_offline_data_task
from mlstack.features.materialization import MaterializationError, failed_views_error
from mlstack.features.store import (
    BATCH_VIEWS,
    ApplyResult,
    MaterializeResult,
    apply_repo,
    materialize_feature_view,
    views_in_parallel,
)
from mlstack.settings import get_settings


@task(name="apply-feature-repo")
def apply_repo_task() -> ApplyResult:
    return apply_repo(get_settings())


def _worth_retrying(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry a failed view unless Redis refused the writes (out of memory): the retry would meet the same answer."""
    error = state.result(raise_on_failure=False)
    return not (isinstance(error, MaterializationError) and not error.retryable)


@task(
    name="materialize-feature-view",
    task_run_name="materialize-{feature_view}",
    retries=1,
    retry_condition_fn=_worth_retrying,
)
def materialize_view_task(feature_view: str, end: datetime) -> MaterializeResult:
    return materialize_feature_view(get_settings(), feature_view, end)


# Threads: on the Ray engine a view's task mostly waits for its shards; views_in_parallel says when they run at once.
# The cast: `flow` declares TaskRunner[PrefectFuture[Any]], which Prefect's own runners do not match (invariance).
VIEW_RUNNER = cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=len(BATCH_VIEWS)))


@flow(name="materialize-features", log_prints=False, task_runner=VIEW_RUNNER)
def materialize_features_flow(
    end: datetime | None = None, feature_views: list[str] | None = None
) -> list[MaterializeResult]:
    """Validate the offline data, apply the repo, then materialise incrementally up to `end` (default: now).

    Every view runs to its end even if another fails (each records its own window); then the flow fails
    naming the views that failed.

    Parameters:
        end: upper bound of the window (UTC); default now.
        feature_views: which batch views; default all of them.
    """
    logger = get_run_logger()
    validate_offline_data_task()  # first: a failing window stops the flow before Feast or Redis is written
    applied = apply_repo_task()
    logger.info(
        "Applied Feast repo: %d feature views, %d on-demand views, services %s (%.1fs)",
        len(applied.feature_views),
        len(applied.on_demand_feature_views),
        ", ".join(applied.feature_services),
        applied.seconds,
    )
    end = end or datetime.now(UTC)
    # On the Ray engine the views run at once in threads (2-2.4x faster at 100k customers, about even at
    # 1M); locally one after another (views_in_parallel says why). Prefect's process pool and prefect-ray's
    # RayTaskRunner were 12-17x slower locally and 1.3x slower on Ray (each worker imports Feast and
    # Prefect); see docs/benchmarks.md, "Task runners".
    parallel = views_in_parallel(get_settings())
    futures: dict[str, PrefectFuture[MaterializeResult]] = {}
    for view in feature_views or list(BATCH_VIEWS):
        futures[view] = materialize_view_task.submit(view, end)
        if not parallel:
            futures[view].wait()
    wait(list(futures.values()))
    results, failures = [], {}
    for view, future in futures.items():
        if not future.state.is_completed():
            failures[view] = future.state.result(raise_on_failure=False)
            continue
        result = future.result()
        logger.info(
            "Materialised %s: %d rows in %.2fs (%.0f rows/s), window %s -> %s",
            result.feature_view,
            result.rows,
            result.seconds,
            result.rows / result.seconds if result.seconds else 0.0,
            result.start.isoformat() if result.start else "ttl",
            result.end.isoformat(),
        )
        results.append(result)
    if failures:
        raise failed_views_error(failures, [result.feature_view for result in results])
    return results
