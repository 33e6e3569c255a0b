"""Flow `evaluate-shadow`: logged champion/challenger scores vs matured outcomes -> the gate -> artifacts, MLflow."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mlstack.monitoring import shadow
from mlstack.monitoring.shadow import ShadowEvidence
from mlstack.settings import get_settings

step = task(cache_policy=NO_CACHE)


@step
def gather_evidence(
    champion_version: str | None, challenger_version: str | None, as_of: datetime | None, include_declined: bool
) -> ShadowEvidence:
    return shadow.evaluate_shadow(
        get_settings(),
        champion_version=champion_version,
        challenger_version=challenger_version,
        as_of=as_of,
        include_declined=include_declined,
    )


@step
def record_in_mlflow(evidence: ShadowEvidence) -> str:
    return shadow.record(get_settings(), evidence)


@step
def publish_artifacts(evidence: ShadowEvidence) -> None:
    key = f"shadow-{get_settings().model_name}".lower()
    create_markdown_artifact(
        key=f"{key}-report", markdown=shadow.shadow_markdown(evidence), description=evidence.summary()
    )
    if evidence.decision is not None:
        table = [
            {"metric": label, "challenger": ours, "champion": theirs}
            for label, ours, theirs in evidence.decision.metric_rows()
        ]
        create_table_artifact(key=f"{key}-metrics", table=table, description=evidence.summary())


@step
def promote_challenger(evidence: ShadowEvidence) -> bool:
    return shadow.promote_on_evidence(get_settings(), evidence)


@flow(name="evaluate-shadow")
def evaluate_shadow_flow(
    as_of: datetime | None = None,
    champion_version: str | None = None,
    challenger_version: str | None = None,
    include_declined: bool = False,
    promote: bool = False,
) -> ShadowEvidence:
    """Compare the challenger's and the champion's logged live scores on the outcomes matured by `as_of`.

    Parameters:
        as_of: the instant outcomes are known up to (default: now); a loan counts once its outcome window closed.
        champion_version: the deciding model of the logged scores (default: the current @champion).
        challenger_version: the shadowed model (default: the current @challenger).
        include_declined: also use applications the champion declined (only a simulation has their outcomes).
        promote: when the gate says promote on this evidence, move @champion to the challenger.
    """
    logger = get_run_logger()
    evidence = gather_evidence(champion_version, challenger_version, as_of, include_declined)
    run_id = record_in_mlflow(evidence)
    publish_artifacts(evidence)
    logger.info("%s (MLflow run %s)", evidence.summary(), run_id)
    logger.info(evidence.population_note)
    if promote:
        moved = promote_challenger(evidence)
        logger.info(
            "challenger v%s %s",
            evidence.pair.challenger_version,
            "promoted to @champion on shadow evidence" if moved else f"not promoted ({evidence.verdict})",
        )
    return evidence
