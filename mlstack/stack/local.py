"""`mlstack up`, `down` and `status`: the local stack's components started, stopped and checked in order.

The components (each server in its own module, every background process through `mlstack.processes`):

- Redis: the embedded server (``online_store.EmbeddedRedis``) unless ``MLSTACK_REDIS_URL`` is set;
- ``mlflow-server`` (`mlstack.stack.mlflow`): ``mlflow server`` on the settings' tracking store (not
  started for a remote one);
- ``prefect-server``, the work pool, the deployments of ``prefect.yaml`` and ``prefect-worker``
  (`mlstack.stack.prefect`; no server is started when ``PREFECT_API_URL`` names another one);
- ``mlflow-webhooks`` (`mlstack.stack.registry_events`): the receiver of the local MLflow server's
  webhook for ``@champion`` moves (setting ``registry_webhooks``); the poll ``watch-champion`` is the
  source of truth either way;
- the credit-risk service (`mlstack.stack.service`), only once MLflow has a ``@champion``.

Prefect, MLflow and BentoML run as ``python -m …`` subprocesses: this package never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mlstack.features.online_store import EmbeddedRedis, OnlineStoreError, check_reachable, parse_redis_url
from mlstack.processes import ProcessRecord, http_ok
from mlstack.settings import Settings
from mlstack.stack.components import (
    LocalStackError,
    absolute,
    require_free_port,
    running_process,
    settings_environment,
    wait_ready,
)
from mlstack.stack.mlflow import (
    MLFLOW_ELSEWHERE,
    begin_mlflow_server,
    mlflow_healthy,
    mlflow_is_remote,
    stop_mlflow_server,
)
from mlstack.stack.prefect import (
    PREFECT_ELSEWHERE,
    PREFECT_SERVER,
    PREFECT_WORKER,
    api_ok,
    begin_prefect_server,
    deploy_flows,
    ensure_work_pool,
    external_prefect_api_url,
    list_deployments,
    prefect_healthy,
    start_worker,
    stop_prefect_server,
    stop_worker,
    worker_ready,
)
from mlstack.stack.registry_events import (
    WEBHOOK_RECEIVER,
    receiver_healthy,
    start_webhook_receiver,
    stop_webhook_receiver,
)
from mlstack.stack.service import (
    SCORING_SERVICE,
    ServiceError,
    running_service,
    service_ready,
    start_service,
    stop_service,
)
from mlstack.training.mlflow_ui import MLFLOW_SERVER

REDIS = "redis"

ComponentState = Literal["running", "stopped", "external", "not started"]


@dataclass(frozen=True)
class ComponentStatus:
    """One component of the stack: whether it runs (``state``), answers its health check, and where."""

    name: str
    state: ComponentState
    healthy: bool
    url: str | None = None
    pid: int | None = None
    log: Path | None = None
    note: str = ""


@dataclass(frozen=True)
class StackReport:
    """What `start_stack` brought up: one status per component, the registered deployments, remarks."""

    components: list[ComponentStatus]
    deployments: list[str]
    notes: list[str]


def ensure_redis(settings: Settings) -> ComponentStatus:
    """The configured Redis checked reachable, or the embedded one started or reused."""
    if settings.redis_url:
        target = parse_redis_url(settings.redis_url)
        check_reachable(target, settings)
        return ComponentStatus(REDIS, "external", True, target.describe(), note="MLSTACK_REDIS_URL")
    embedded = EmbeddedRedis(settings.redis_dir, settings)
    target = embedded.ensure_running()
    return ComponentStatus(REDIS, "running", True, target.describe(), embedded.pid(), embedded.log_file, "embedded")


def champion_note(settings: Settings) -> str | None:
    """None if MLflow has a `@champion`; else why the service cannot start (what to run first)."""
    if not mlflow_is_remote(settings) and not settings.mlflow_db_path.is_file():
        return "no model yet"
    from mlstack.training.registry import RegistryError, champion_version

    try:
        return None if champion_version(settings) is not None else "no @champion yet"
    except RegistryError as exc:
        return f"could not read the champion ({exc})"


def start_stack(
    settings: Settings,
    *,
    service: bool = True,
    mlflow: bool = True,
    progress: Callable[[str], None] = lambda message: None,
    timeout: float = 180,
) -> StackReport:
    """Start (or reuse) every component, register the deployments; report each component's status.

    The order: Redis; the MLflow and Prefect servers (started together: both take seconds to import);
    the work pool and the deployments; the worker; the service, if MLflow has a champion.
    """
    settings = absolute(settings)
    notes: list[str] = []
    external = external_prefect_api_url(settings)
    local_mlflow = mlflow and not mlflow_is_remote(settings)
    # Ports first: a taken one fails before anything is started.
    if local_mlflow and running_process(settings, MLFLOW_SERVER) is None:
        require_free_port(settings.mlflow_port, "mlflow_port", MLFLOW_ELSEWHERE.format(port=settings.mlflow_port))
    if not external and running_process(settings, PREFECT_SERVER) is None:
        require_free_port(settings.prefect_port, "prefect_port", PREFECT_ELSEWHERE.format(port=settings.prefect_port))
    progress("Redis" + (" (MLSTACK_REDIS_URL)" if settings.redis_url else " (embedded)"))
    components = [ensure_redis(settings)]

    mlflow_process = None
    if local_mlflow:
        progress(f"MLflow tracking server on port {settings.mlflow_port}")
        mlflow_process = begin_mlflow_server(settings)
    if external:
        progress(f"Prefect server: using PREFECT_API_URL={external}")
        api_url = external
        if not api_ok(f"{api_url}/health", timeout=5):
            raise LocalStackError(f"the Prefect server at PREFECT_API_URL={api_url} does not answer /health")
        components.append(ComponentStatus(PREFECT_SERVER, "external", True, api_url.removesuffix("/api")))
    else:
        progress(f"Prefect server on port {settings.prefect_port}")
        server = wait_ready(settings, begin_prefect_server(settings), prefect_healthy, timeout)
        api_url = f"{server.url}/api"
        components.append(ComponentStatus(PREFECT_SERVER, "running", True, server.url, server.pid, server.log))

    progress(f"work pool {settings.work_pool!r} and the deployments of prefect.yaml")
    if ensure_work_pool(settings, api_url):
        notes.append(f"created work pool {settings.work_pool!r} (process)")
    deployments = deploy_flows(settings, api_url)
    progress("Prefect worker")
    worker = start_worker(settings, api_url)
    components.append(
        ComponentStatus(PREFECT_WORKER, "running", True, None, worker.pid, worker.log, _worker_note(worker))
    )

    if mlflow_process is not None:
        mlflow_process = wait_ready(settings, mlflow_process, mlflow_healthy, timeout)
        components.append(
            ComponentStatus(MLFLOW_SERVER, "running", True, mlflow_process.url, mlflow_process.pid, mlflow_process.log)
        )
        if settings.registry_webhooks:
            progress("MLflow webhook receiver (@champion moves -> Prefect events)")
            receiver = start_webhook_receiver(settings, api_url, mlflow_process.url, timeout)
            components.append(
                ComponentStatus(WEBHOOK_RECEIVER, "running", True, receiver.url, receiver.pid, receiver.log)
            )
    elif mlflow_is_remote(settings):
        url = settings.tracking_uri().rstrip("/")
        components.append(ComponentStatus(MLFLOW_SERVER, "external", http_ok(f"{url}/health", 5), url))
    else:
        components.append(ComponentStatus(MLFLOW_SERVER, "not started", False, note="--no-mlflow"))

    components.append(_start_service(settings, service, notes, progress))
    return StackReport(components, deployments, notes)


def _start_service(
    settings: Settings, wanted: bool, notes: list[str], progress: Callable[[str], None]
) -> ComponentStatus:
    """The service, started on `service_port` when wanted and a champion exists; never raises for it."""
    running = running_service(settings)
    if running is not None:
        return ComponentStatus(
            SCORING_SERVICE, "running", service_ready(running.url), running.url, running.pid, running.log
        )
    if not wanted:
        return ComponentStatus(SCORING_SERVICE, "not started", False, note="--no-service")
    missing = champion_note(settings)
    if missing is not None:
        notes.append(
            f"service not started: {missing}. Run `mlstack bootstrap` (data, features, first model) or "
            "`mlstack train`, then `mlstack up` again."
        )
        return ComponentStatus(SCORING_SERVICE, "not started", False, note=missing)
    require_free_port(settings.service_port, "service_port")
    progress(f"credit-risk service on port {settings.service_port} (bentoml serve)")
    try:
        started = start_service(settings, settings_environment(settings), settings.service_port)
    except ServiceError as exc:
        notes.append(f"service failed to start: {exc}")
        return ComponentStatus(SCORING_SERVICE, "stopped", False, note="failed to start")
    return ComponentStatus(SCORING_SERVICE, "running", True, started.url, started.pid, started.log)


def stop_stack(settings: Settings) -> list[tuple[str, bool]]:
    """Stop the service (it flushes its profiles), worker, Prefect server, webhook receiver, MLflow server, Redis.

    Returns (component, was running) in that order; stopping what is not running is not an error.
    """
    settings = absolute(settings)
    stopped = [
        (SCORING_SERVICE, stop_service(settings)),
        (PREFECT_WORKER, stop_worker(settings)),
        (PREFECT_SERVER, stop_prefect_server(settings)),
        (WEBHOOK_RECEIVER, stop_webhook_receiver(settings)),
        (MLFLOW_SERVER, stop_mlflow_server(settings)),
    ]
    if not settings.redis_url:
        stopped.append((REDIS, EmbeddedRedis(settings.redis_dir, settings).stop()))
    return stopped


def stack_status(settings: Settings) -> list[ComponentStatus]:
    """Each component: running or not, healthy or not (HTTP/PING probes with short timeouts), where."""
    settings = absolute(settings)
    rows: list[ComponentStatus] = []
    if settings.redis_url:
        target = parse_redis_url(settings.redis_url)
        try:
            check_reachable(target, settings)
            rows.append(ComponentStatus(REDIS, "external", True, target.describe()))
        except OnlineStoreError as exc:
            rows.append(ComponentStatus(REDIS, "external", False, target.describe(), note=str(exc)))
    else:
        embedded = EmbeddedRedis(settings.redis_dir, settings)
        pid, recorded = embedded.pid(), embedded.target()
        rows.append(
            ComponentStatus(
                REDIS,
                "running" if pid else "stopped",
                embedded.is_running(),
                recorded.describe() if pid and recorded else None,
                pid,
                embedded.log_file,
                "embedded",
            )
        )

    external = external_prefect_api_url(settings)
    server = running_process(settings, PREFECT_SERVER)
    api_url = external or (f"{server.url}/api" if server else None)
    if external:
        rows.append(ComponentStatus(PREFECT_SERVER, "external", api_ok(f"{external}/health"), external))
    else:
        rows.append(_process_status(settings, PREFECT_SERVER, prefect_healthy))
    if rows[-1].healthy and api_url:
        try:
            count = len(list_deployments(api_url))
            rows[-1] = _with_note(rows[-1], f"{count} deployments")
        except LocalStackError as exc:
            rows[-1] = _with_note(rows[-1], str(exc))
    rows.append(_process_status(settings, PREFECT_WORKER, worker_ready))
    if mlflow_is_remote(settings):
        url = settings.tracking_uri().rstrip("/")
        rows.append(ComponentStatus(MLFLOW_SERVER, "external", http_ok(f"{url}/health"), url))
    else:
        rows.append(_process_status(settings, MLFLOW_SERVER, mlflow_healthy))
        if settings.registry_webhooks:
            rows.append(_process_status(settings, WEBHOOK_RECEIVER, receiver_healthy))
    service = running_service(settings)
    if service is None:
        rows.append(ComponentStatus(SCORING_SERVICE, "stopped", False))
    else:
        ready = service_ready(service.url)
        rows.append(ComponentStatus(SCORING_SERVICE, "running", ready, service.url, service.pid, service.log))
    return rows


def _process_status(settings: Settings, name: str, healthy: Callable[[ProcessRecord], bool]) -> ComponentStatus:
    process = running_process(settings, name)
    if process is None:
        return ComponentStatus(name, "stopped", False, log=settings.stack_dir / f"{name}.log")
    if name == PREFECT_WORKER:
        return ComponentStatus(name, "running", healthy(process), None, process.pid, process.log, _worker_note(process))
    return ComponentStatus(name, "running", healthy(process), process.url, process.pid, process.log)


def _worker_note(worker: ProcessRecord) -> str:
    return f"worker {worker.extra.get('worker_name')} on pool {worker.extra.get('pool')}"


def _with_note(status: ComponentStatus, note: str) -> ComponentStatus:
    return replace(status, note=note)
