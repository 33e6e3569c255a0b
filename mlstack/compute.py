"""The compute engine setting: the local process, or Ray (a local Ray for the run, or an existing cluster).

Feast reads the engine from ``feature_store.yaml`` (``offline_store`` and ``batch_engine`` types come from
``FEAST_MLSTACK_*`` variables set by ``mlstack.features.store``); this module owns the one connection to
Ray, so that Feast, training and the benchmarks share it and a local Ray is bounded by the settings
(Feast's own initialiser would take every CPU of the machine).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from mlstack.errors import StackError
from mlstack.settings import Settings

log = logging.getLogger(__name__)

Engine = Literal["local", "ray"]
# Seconds to open a TCP connection to the Ray address before handing it to Ray: Ray itself retries an
# unreachable address for 30 s (Ray Client) or minutes (a GCS address) before it gives up.
RAY_CONNECT_TIMEOUT = 10.0
# Ray Client connections: the head's proxy starts a server process per client, and that start can fail once
# (seen in a test run: the new process died at start and the proxy answered "Initialization failure from
# server"); the next connection to the same head worked. Attempts, and seconds between them.
RAY_CLIENT_ATTEMPTS = 3
RAY_CLIENT_RETRY_SECONDS = 2.0
RAY_EXTRA_HINT = "Ray is not installed: install the `ray` extra (`uv sync --extra ray`, what `make test` does)"


_RAY_INIT = threading.Lock()  # views materialised in threads may be the first to ask for Ray


class ComputeEngineError(StackError):
    """The configured compute engine cannot be used; the message says what to install or start."""


@dataclass(frozen=True)
class FeastEngine:
    """The Feast configuration of an engine: offline store and batch (materialisation) engine types."""

    offline_store: str
    batch_engine: str


FEAST_ENGINES: dict[Engine, FeastEngine] = {
    "local": FeastEngine(offline_store="duckdb", batch_engine="local"),
    "ray": FeastEngine(offline_store="ray", batch_engine="ray.engine"),
}


@dataclass(frozen=True)
class RayConnection:
    """The Ray this process uses: where it is and what it offers."""

    address: str
    started_locally: bool
    cpus: float


def ensure_ray(settings: Settings) -> RayConnection:
    """Connect to the configured Ray cluster, or start a bounded local Ray once per process.

    Raises ComputeEngineError when Ray is not installed or the cluster cannot be reached.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry: there is no internet here
    # Ray reads this one when it is imported. Left on, a driver started by `uv run` (the Makefile's
    # targets, `make bench`) ships its working directory to the workers and starts them with `uv run`
    # again: here they died at start-up and the first task waited forever.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError as exc:
        raise ComputeEngineError(RAY_EXTRA_HINT) from exc
    keep_uv_run_propagation_off()
    started_locally = settings.ray_address is None
    with _RAY_INIT:
        _init_ray(ray, settings)
    return RayConnection(
        address=ray.get_runtime_context().gcs_address,
        started_locally=started_locally,
        cpus=float(ray.cluster_resources().get("CPU", 0.0)),
    )


def _init_ray(ray: Any, settings: Settings) -> None:
    """``ray.init`` once per process: the local Ray bounded by the settings, or the configured cluster."""
    address = settings.ray_address
    if not ray.is_initialized():
        try:
            if address is None:
                ray.init(
                    num_cpus=settings.ray_num_cpus,
                    object_store_memory=settings.ray_object_store_mb * 1024 * 1024,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    _node_ip_address="127.0.0.1",
                    runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
                )
            else:
                check_reachable(address, RAY_CONNECT_TIMEOUT)
                _connect(ray, address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = settings.ray_address or "a local Ray"
            raise ComputeEngineError(f"cannot start or reach Ray ({where}): {exc}") from exc
        how = "started locally" if address is None else "connected"
        log.info("Ray %s: %s", how, ray.get_runtime_context().gcs_address)


def _connect(ray: Any, address: str) -> None:
    """``ray.init`` of an existing cluster; a Ray Client address is tried again when the head's proxy fails it."""
    attempts = RAY_CLIENT_ATTEMPTS if address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            return
        except ConnectionAbortedError as exc:  # Ray Client's "Initialization failure from server"
            if attempt == attempts:
                raise
            log.warning("Ray Client connection %d of %d to %s failed, retrying: %s", attempt, attempts, address, exc)
            time.sleep(RAY_CLIENT_RETRY_SECONDS)


def keep_uv_run_propagation_off() -> None:
    """Make Ray honour ``RAY_ENABLE_UV_RUN_RUNTIME_ENV=0`` even if it was imported before ``ensure_ray`` set it.

    Ray reads the variable once, into a module constant, when it is first imported; a process that imported
    Ray earlier (a test, a library) kept the default. Through Ray Client the cluster then started the
    client's server with this machine's `uv` path and uploaded the working directory: it never came up
    ("Proxy failed to Connect to backend"). The constant is read at each ``ray.init``, so it is set here.
    """
    from ray._private import ray_constants

    if os.environ.get("RAY_ENABLE_UV_RUN_RUNTIME_ENV") == "0":
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


def check_reachable(address: str, timeout: float) -> None:
    """Raise ComputeEngineError unless something accepts a TCP connection at the address's host and port.

    ``ray://host:port`` (Ray Client) and ``host:port`` (the GCS) are checked; other forms (``auto``) go to Ray as
    they are.
    """
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ComputeEngineError(
            f"cannot start or reach Ray ({address}): nothing accepted a connection at {host}:{port} within "
            f"{timeout:g} s ({exc}). Check MLSTACK_RAY_ADDRESS and that the cluster's head runs"
        ) from exc


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local Ray this process started); a no-op without Ray."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
