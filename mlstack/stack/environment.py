"""The resolved stack as environment variables, for tools run by hand: `feast`, `mlflow`, `prefect`, `redis-cli`.

`mlstack env` prints these as ``export`` lines (``eval "$(mlstack env)"``); `mlstack feast -- …` runs
`feast` with them. The Feast variables are the ones mlstack sets for itself (`feast_environment`),
so a plain ``feast -c feature_store plan`` sees the same registry, data and Redis as `mlstack features`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlstack.features.online_store import resolve_redis
from mlstack.features.store import feast_environment
from mlstack.settings import Settings, stack_environment
from mlstack.stack.components import absolute
from mlstack.stack.prefect import running_prefect_api_url

REDIS_URL = "REDIS_URL"  # the conventional name (`redis-cli -u "$REDIS_URL"`); not MLSTACK_REDIS_URL, which would
# make the embedded server look external to the next `mlstack down`


def shell_environment(settings: Settings) -> dict[str, str]:
    """The resolved stack as variables: Feast (``FEAST_MLSTACK_*``), MLflow, Prefect, Redis; starts the embedded Redis.

    ``PREFECT_API_URL`` is included when the local Prefect server runs (`mlstack up`) or is already set.
    """
    settings = absolute(settings)  # paths must not depend on where the shell that evals them is
    target = resolve_redis(settings)
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        **stack_environment(settings),
        **feast_environment(settings, target),
        "MLFLOW_TRACKING_URI": settings.tracking_uri(),
        REDIS_URL: target.url(),
    }
    prefect_api = os.environ.get("PREFECT_API_URL") or running_prefect_api_url(settings)
    if prefect_api:
        environment["PREFECT_API_URL"] = prefect_api
    return dict(sorted(environment.items()))


def export_lines(environment: Mapping[str, str]) -> str:
    """``export NAME=value`` lines, shell-quoted, one per variable (what ``eval`` takes)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())


def feast_command(arguments: Sequence[str]) -> list[str]:
    """The `feast` command of this interpreter's environment with `arguments`."""
    return [str(Path(sys.executable).with_name("feast")), *arguments]
