"""The local stack: Prefect and MLflow servers, the background service, rollout of a new champion."""
