"""Task `validate-offline-data`: the data-validation gate that `materialize-features` and `train-model` run first."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from mlstack.data import validation
from mlstack.settings import get_settings


@task(name="validate-offline-data", cache_policy=NO_CACHE)
def validate_offline_data_task() -> validation.ValidationReport:
    """Validate the offline tables; on failure quarantine the bad rows, publish them and the failed checks, and raise.

    Warnings are logged and the flow goes on.
    """
    settings = get_settings()
    logger = get_run_logger()
    report = validation.validate_offline_data(settings)
    for warning in report.warnings:
        logger.warning("data validation warning: %s", warning.line())
    if report.passed:
        logger.info(report.summary())
        return report
    quarantined = validation.quarantine(settings, report)
    create_table_artifact(
        key="data-validation-failed-checks",
        table=report.failure_records(),
        description=f"Failed checks of the offline data at {report.checked_at.isoformat()}",
    )
    create_table_artifact(
        key="data-validation-failing-rows",
        table=report.bad_row_records(settings.validation_failing_rows),
        description=(
            f"First {settings.validation_failing_rows} failing rows per table; all of them in "
            + (", ".join(str(path) for path in quarantined) or "no file (no row-level failure)")
        ),
    )
    raise validation.DataValidationError(report)
