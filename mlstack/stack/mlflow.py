"""The stack's MLflow tracking server: ``mlflow server`` on the settings' store (not started for a remote one).

It serves the store training writes to, so its UI shows the runs, plots and registered versions; training
keeps writing to the store directly.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlparse

from mlstack.processes import ProcessRecord, http_ok
from mlstack.settings import Settings
from mlstack.stack.components import (
    absolute,
    launch_process,
    require_free_port,
    running_process,
    state_secret,
    stop_process,
    wait_ready,
)
from mlstack.training.mlflow_ui import MLFLOW_SERVER

MLFLOW_ELSEWHERE = (
    ", or MLSTACK_MLFLOW_TRACKING_URI=http://127.0.0.1:{port} to use the MLflow server running there "
    "(training then logs to it)"
)

# The environment of every `mlflow server` (the stack's and the test suite's); None removes a variable.
SERVER_ENVIRONMENT: dict[str, str | None] = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runner processes
    "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
    "MLFLOW_TRACKING_URI": None,  # the server is the store, not a client of another one
    # Webhooks to the stack's receiver on 127.0.0.1 over http: MLflow allows only https and public
    # addresses by default. Local only: the server binds 127.0.0.1 and only the stack registers webhooks.
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    # The server caches the webhook list per event (default 60 s): a webhook registered just after the
    # server started would miss the moves of its first minute.
    "MLFLOW_WEBHOOK_CACHE_TTL": "5",
}


def server_command(backend_store_uri: str, port: int, artifact_options: Sequence[str]) -> list[str]:
    """The ``mlflow server`` command on 127.0.0.1:`port`, one worker; `artifact_options` say where artifacts go."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        *artifact_options,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def mlflow_is_remote(settings: Settings) -> bool:
    """True when the tracking URI is a server (``http(s)://``): then none is started locally."""
    return urlparse(settings.tracking_uri()).scheme in ("http", "https")


def mlflow_healthy(process: ProcessRecord) -> bool:
    """True if the recorded MLflow server answers ``/health``."""
    return http_ok(f"{process.url}/health")


def begin_mlflow_server(settings: Settings) -> ProcessRecord | None:
    """Launch `mlflow server` on the settings' store (or find the running one) without waiting; None if remote."""
    if mlflow_is_remote(settings):
        return None
    settings = absolute(settings)  # the store's path must not depend on the caller's working directory
    current = running_process(settings, MLFLOW_SERVER)
    if current is not None:
        return current
    require_free_port(settings.mlflow_port, "mlflow_port", MLFLOW_ELSEWHERE.format(port=settings.mlflow_port))
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    artifacts = (settings.mlflow_dir / "artifacts").resolve()
    # Where experiments created through the UI keep artifacts; training's own experiment uses the same.
    command = server_command(
        settings.tracking_uri(), settings.mlflow_port, ["--default-artifact-root", artifacts.as_uri()]
    )
    url = f"http://127.0.0.1:{settings.mlflow_port}"
    # Webhook secrets are stored encrypted; without a fixed key each server start makes a new one
    # and cannot read the secrets stored before.
    environment = SERVER_ENVIRONMENT | {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": webhook_encryption_key(settings)}
    return launch_process(settings, MLFLOW_SERVER, command, url, environment)


def webhook_encryption_key(settings: Settings) -> str:
    """The Fernet key the local MLflow server encrypts webhook secrets with (kept in the state dir)."""
    return state_secret(
        settings.stack_dir / "mlflow-webhook-key", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode()
    )


def start_mlflow_server(settings: Settings, timeout: float = 180) -> str:
    """Start (or reuse) an MLflow tracking server on `mlflow_port` serving the settings' store; return its URL.

    With a remote tracking URI (``MLSTACK_MLFLOW_TRACKING_URI=http://…``) nothing is started and that
    URI is returned.
    """
    process = begin_mlflow_server(settings)
    if process is None:
        return settings.tracking_uri().rstrip("/")
    return wait_ready(absolute(settings), process, mlflow_healthy, timeout).url


def stop_mlflow_server(settings: Settings, timeout: float = 30) -> bool:
    """Stop the local MLflow server; True if it was running."""
    return stop_process(settings, MLFLOW_SERVER, timeout)
