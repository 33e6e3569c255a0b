"""The native local stack behind `mlstack up`, `down` and `status`: background servers with state files.

Each server runs in its own session (stopping its process group stops its children too), logs to
``<state_dir>/stack/<name>.log`` and is recorded in ``<state_dir>/stack/<name>.json`` (pid, url,
log, started_at). A recorded process that still runs is reused, never started twice. Prefect,
MLflow and BentoML run as ``python -m …`` subprocesses: this package never imports Prefect or
BentoML. Components:

- Redis: the embedded server (``online_store.EmbeddedRedis``) unless ``MLSTACK_REDIS_URL`` is set;
- ``mlflow-server``: ``mlflow server`` on the settings' tracking store (not started for a remote one);
- ``prefect-server``: ``prefect server start`` with its SQLite database under ``PREFECT_HOME``
  (not started when ``PREFECT_API_URL`` names another server);
- the work pool and the deployments of ``prefect.yaml`` (``prefect deploy --all``);
- ``prefect-worker``: a process worker on the pool, with the stack's settings in its environment;
- the credit-risk service (``local_service``), only once MLflow has a ``@champion``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import psutil
from pydantic import SecretStr

from mlstack.errors import StackError
from mlstack.features.online_store import process_alive
from mlstack.settings import PROJECT_ROOT, Settings, stack_environment

PREFECT_SERVER = "prefect-server"
PREFECT_WORKER = "prefect-worker"
MLFLOW_SERVER = "mlflow-server"
REDIS = "redis"
SCORING_SERVICE = "service"

_PREFECT_ELSEWHERE = ", or PREFECT_API_URL=http://127.0.0.1:{port}/api to use the Prefect server running there"
_MLFLOW_ELSEWHERE = (
    ", or MLSTACK_MLFLOW_TRACKING_URI=http://127.0.0.1:{port} to use the MLflow server running there "
    "(training then logs to it)"
)

# Our own children, so their exit status is collected (no zombies, no ResourceWarning on exit).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LocalStackError(StackError):
    """A stack process could not be started, reached or stopped; the message names its log or setting."""


@dataclass(frozen=True)
class BackgroundProcess:
    """A server of the local stack, as recorded in its state file."""

    name: str
    pid: int
    url: str
    log: Path
    started_at: str
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ComponentStatus:
    """One component of the stack: whether it runs (``state``), answers its health check, and where."""

    name: str
    state: str  # running | stopped | external | not started
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


# --- processes: launch, reuse, readiness, stop -------------------------------------------------


def stack_dir(settings: Settings) -> Path:
    """Directory of the stack's state files and logs."""
    return settings.stack_dir


def _state_file(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / f"{name}.json"


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # reap our own child: a zombie is not alive
        _CHILDREN.pop(pid, None)
        return False
    return process_alive(pid)


def running_process(settings: Settings, name: str) -> BackgroundProcess | None:
    """The recorded process `name`, if it is still the process that was started (pid not reused)."""
    try:
        state = json.loads(_state_file(settings, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    pid = int(state["pid"])
    created = _create_time(pid)
    if not _alive(pid) or created is None or abs(created - float(state.get("create_time", 0))) > 0.5:
        return None
    return BackgroundProcess(
        name, pid, state["url"], Path(state["log"]), state["started_at"], dict(state.get("extra", {}))
    )


def child_environment(settings: Settings, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Environment of a stack process: ours, the libraries' (telemetry off), the settings, then `extra`.

    A None in `extra` removes that variable.
    """
    merged: dict[str, str | None] = {
        **os.environ,
        **stack_environment(settings),
        **settings_environment(settings),
        "PYTHONUNBUFFERED": "1",
        # Importing Feast points these at a temp dir of the importing process, deleted when it exits:
        # a worker inheriting them would crash every flow run that imports Feast.
        "PROMETHEUS_MULTIPROC_DIR": None,
        "PROMETHEUS_MULTIPROCESS_DIR": None,
        **(extra or {}),
    }
    return {key: value for key, value in merged.items() if value is not None}


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as ``MLSTACK_*`` variables: processes started elsewhere (flow runs) see exactly these.

    Explicit rather than inherited: a `.env` file is read relative to the working directory, which
    differs for a flow run, and relative paths would resolve elsewhere.
    """
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, Path):
            text = str(value.resolve())
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        elif isinstance(value, date):
            text = value.isoformat()
        else:
            text = json.dumps(value, default=str)  # pydantic-settings parses complex values as JSON
        env[f"MLSTACK_{name.upper()}"] = text
    return env


def launch_process(
    settings: Settings,
    name: str,
    command: Sequence[str],
    url: str,
    env: Mapping[str, str | None] | None = None,
    extra: dict[str, str] | None = None,
) -> BackgroundProcess:
    """Start `command` in its own session, logging to ``stack/<name>.log``; record it before it is ready.

    Recorded at once so that `mlstack down` can stop a server whose start-up was interrupted.
    """
    directory = stack_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.log"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with log.open("ab") as out:  # appended: the log of a crashed earlier run stays readable
        out.write(f"\n=== {started_at} {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            list(command),
            cwd=PROJECT_ROOT,
            env=child_environment(settings, env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children
        )
    _CHILDREN[process.pid] = process
    record = BackgroundProcess(name, process.pid, url, log, started_at, dict(extra or {}))
    state = {
        "pid": record.pid,
        "url": url,
        "log": str(log),
        "started_at": started_at,
        "create_time": _create_time(process.pid) or 0.0,
        "extra": record.extra,
    }
    tmp = _state_file(settings, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, _state_file(settings, name))
    return record


def wait_ready(
    settings: Settings, process: BackgroundProcess, ready: Callable[[BackgroundProcess], bool], timeout: float
) -> BackgroundProcess:
    """Wait until `ready(process)`; if it exits or times out, stop it and raise naming its log."""
    deadline = time.monotonic() + timeout
    while not ready(process):
        if not _alive(process.pid):
            _state_file(settings, process.name).unlink(missing_ok=True)
            raise LocalStackError(f"{process.name} exited during start-up; see {process.log}:\n{tail(process.log)}")
        if time.monotonic() > deadline:
            stop_process(settings, process.name, timeout=10)
            raise LocalStackError(
                f"{process.name} was not ready within {timeout:.0f}s; see {process.log}:\n{tail(process.log)}"
            )
        time.sleep(0.5)
    return process


def stop_process(settings: Settings, name: str, timeout: float = 30, sig: int = signal.SIGTERM) -> bool:
    """Stop the recorded process `name` and its group (`sig`, SIGKILL after `timeout`); True if it ran."""
    current = running_process(settings, name)
    _state_file(settings, name).unlink(missing_ok=True)
    if current is None:
        return False
    stop_process_group(current.pid, timeout, sig)
    return True


def stop_process_group(pid: int, timeout: float = 30, sig: int = signal.SIGTERM) -> None:
    """Graceful stop of the process group led by `pid`: `sig`, then SIGKILL whatever is left after `timeout`."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while _group_alive(pid) and time.monotonic() < deadline + 10:
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """True while the leader or any other member of the group runs (workers hold the port too)."""
    if _alive(pgid):
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# --- ports and HTTP ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """True if a server could bind 127.0.0.1:`port` now (TIME_WAIT is no obstacle, a listener is)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def require_free_port(port: int, setting: str, alternative: str = "") -> None:
    """Raise naming the setting (``MLSTACK_<SETTING>``) when `port` is taken; `alternative` adds another way out."""
    if not port_free(port):
        raise LocalStackError(
            f"port {port} on 127.0.0.1 is already in use by another process: "
            f"set MLSTACK_{setting.upper()} (setting `{setting}`) to a free port{alternative}"
        )


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if GET `url` answers 2xx within `timeout`."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_auth_headers()), timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _auth_headers() -> dict[str, str]:
    """Credentials of an external Prefect server, if the environment has them (a local one has none)."""
    if key := os.environ.get("PREFECT_API_KEY"):
        return {"authorization": f"Bearer {key}"}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        return {"authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


def request_json(method: str, url: str, body: object = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of an HTTP call; HTTP errors are returned, unreachable raises."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **_auth_headers()}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError) as exc:
        raise LocalStackError(f"{url} is not reachable ({exc})") from exc


# --- Prefect ----------------------------------------------------------------------------------


def prefect_api_url(settings: Settings) -> str:
    """The API URL of the local Prefect server (``http://127.0.0.1:<prefect_port>/api``)."""
    return f"http://127.0.0.1:{settings.prefect_port}/api"


def running_prefect_api_url(settings: Settings) -> str | None:
    """The API URL of the stack's Prefect server if it runs (CLI flow runs could report to it), else None."""
    server = running_process(settings, PREFECT_SERVER)
    return f"{server.url}/api" if server else None


def external_prefect_api_url(settings: Settings) -> str | None:
    """``PREFECT_API_URL`` when it names a server other than the local one (then none is started)."""
    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    return url if url and url != prefect_api_url(settings) else None


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _prefect_healthy(process: BackgroundProcess) -> bool:
    return http_ok(f"{process.url}/api/health")


def begin_prefect_server(settings: Settings) -> BackgroundProcess:
    """Launch the local Prefect server (or find the running one) without waiting for it."""
    current = running_process(settings, PREFECT_SERVER)
    if current is not None:
        return current
    require_free_port(settings.prefect_port, "prefect_port", _PREFECT_ELSEWHERE.format(port=settings.prefect_port))
    api = prefect_api_url(settings)
    command = _prefect("server", "start", "--host", "127.0.0.1", "--port", str(settings.prefect_port))
    # The UI calls the API at PREFECT_UI_API_URL, which defaults to any PREFECT_API_URL inherited here.
    env = {"PREFECT_API_URL": api, "PREFECT_UI_API_URL": api}
    return launch_process(settings, PREFECT_SERVER, command, api.removesuffix("/api"), env)


def start_prefect_server(settings: Settings, timeout: float = 180) -> str:
    """Start (or reuse) the local Prefect server on `prefect_port`, wait for /api/health; return its API URL.

    Its SQLite database is under ``PREFECT_HOME`` (``<state_dir>/prefect``). The UI is the URL without
    ``/api``.
    """
    process = wait_ready(settings, begin_prefect_server(settings), _prefect_healthy, timeout)
    return f"{process.url}/api"


def ensure_work_pool(settings: Settings, api_url: str, timeout: float = 120) -> bool:
    """Create the process work pool `settings.work_pool` unless it exists; True if it was created."""
    pool = settings.work_pool
    status, body = request_json("GET", f"{api_url}/work_pools/{quote(pool, safe='')}")
    if status == 200:
        if body.get("type") != "process":
            raise LocalStackError(
                f"work pool {pool!r} exists with type {body.get('type')!r}, but the local worker needs a "
                "process pool: set MLSTACK_WORK_POOL (setting `work_pool`) to another name"
            )
        return False
    if status != 404:
        raise LocalStackError(f"Prefect at {api_url} answered {status} when asked for work pool {pool!r}")
    _run_prefect_cli(settings, api_url, ["work-pool", "create", pool, "--type", "process"], "work-pool", timeout)
    return True


def deploy_flows(
    settings: Settings, api_url: str, names: Sequence[str] | None = None, timeout: float = 600
) -> list[str]:
    """Register the deployments of ``prefect.yaml`` (all, or those `names`); return every deployment's name.

    Runs ``prefect --no-prompt deploy --all`` in the project root, which imports each flow module
    (Feast and MLflow with them: tens of seconds). Names are ``<flow>/<deployment>``, sorted.
    """
    selection = [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    _run_prefect_cli(settings, api_url, ["--no-prompt", "deploy", *selection], "deploy", timeout)
    return list_deployments(api_url)


def _run_prefect_cli(settings: Settings, api_url: str, args: list[str], what: str, timeout: float) -> None:
    """Run a `prefect` command against `api_url`, its output in ``stack/<what>.log``; raise naming the log."""
    directory = stack_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{what}.log"
    with log.open("wb") as out:
        try:
            result = subprocess.run(
                _prefect(*args),
                cwd=PROJECT_ROOT,  # prefect.yaml and the flows' entrypoints are relative to it
                env=child_environment(settings, _prefect_client_environment(settings, api_url)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalStackError(f"prefect {' '.join(args)} took over {timeout:.0f}s; see {log}") from exc
    if result.returncode != 0:  # e.g. an entrypoint that does not import: the deployments before it are kept
        raise LocalStackError(f"prefect {' '.join(args)} failed ({result.returncode}); see {log}:\n{tail(log)}")


def _prefect_client_environment(settings: Settings, api_url: str) -> dict[str, str]:
    """What deploy and the worker need: the server, and the values prefect.yaml templates."""
    return {
        "PREFECT_API_URL": api_url,
        "MLSTACK_WORK_POOL": settings.work_pool,
        "MLSTACK_PROJECT_DIR": str(PROJECT_ROOT),
        "COLUMNS": "160",  # rich boxes of the CLI's output stay readable in the log
    }


def list_deployments(api_url: str) -> list[str]:
    """Names (``<flow>/<deployment>``, sorted) of the deployments registered on the Prefect server."""
    status, deployments = request_json("POST", f"{api_url}/deployments/filter", {"limit": 200})
    status_flows, flows = request_json("POST", f"{api_url}/flows/filter", {"limit": 200})
    if status != 200 or status_flows != 200:
        raise LocalStackError(f"Prefect at {api_url} answered {status}/{status_flows} when listing deployments")
    flow_names = {flow["id"]: flow["name"] for flow in flows}
    return sorted(f"{flow_names.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)


def pool_workers(api_url: str, pool: str) -> list[dict[str, Any]]:
    """The workers the server knows for `pool` (each a dict with name, status ONLINE/OFFLINE, last heartbeat)."""
    status, workers = request_json("POST", f"{api_url}/work_pools/{quote(pool, safe='')}/workers/filter", {})
    return workers if status == 200 and isinstance(workers, list) else []


def worker_online(api_url: str, pool: str, name: str) -> bool:
    """True if the worker `name` heartbeats to the server (status ONLINE); False if unknown or unreachable."""
    try:
        return any(w.get("name") == name and w.get("status") == "ONLINE" for w in pool_workers(api_url, pool))
    except LocalStackError:
        return False


def start_worker(
    settings: Settings, api_url: str, extra_env: dict[str, str] | None = None, timeout: float = 120
) -> BackgroundProcess:
    """Start (or reuse) a process worker on `settings.work_pool` polling `api_url`; wait until it is ONLINE.

    Flow runs inherit its environment: the stack's settings as ``MLSTACK_*`` variables, then
    `extra_env`. A worker recorded for another server is replaced; a reused one keeps its environment.
    """
    current = running_process(settings, PREFECT_WORKER)
    if current is not None and current.extra.get("api_url") != api_url:
        stop_worker(settings)
        current = None
    if current is None:
        name = f"mlstack-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"  # unique: no stale record looks online
        command = _prefect("worker", "start", "--pool", settings.work_pool, "--type", "process", "--name", name)
        env = {**_prefect_client_environment(settings, api_url), **(extra_env or {})}
        extra = {"api_url": api_url, "worker_name": name, "pool": settings.work_pool}
        current = launch_process(settings, PREFECT_WORKER, command, api_url, env, extra)
    return wait_ready(settings, current, _worker_ready, timeout)


def _worker_ready(process: BackgroundProcess) -> bool:
    return worker_online(process.extra["api_url"], process.extra["pool"], process.extra["worker_name"])


def stop_worker(settings: Settings, timeout: float = 20) -> bool:
    """Stop the worker (SIGINT, Prefect's graceful stop; SIGKILL after `timeout`) and drop its pool record."""
    current = running_process(settings, PREFECT_WORKER)
    stopped = stop_process(settings, PREFECT_WORKER, timeout, signal.SIGINT)
    if current is not None:
        pool, name = current.extra.get("pool", settings.work_pool), current.extra.get("worker_name", "")
        # Else the UI lists a ghost worker until its heartbeat expires; a server already gone needs no tidying.
        with contextlib.suppress(LocalStackError):
            request_json("DELETE", f"{current.extra['api_url']}/work_pools/{quote(pool, safe='')}/workers/{name}")
    return stopped


def stop_prefect_server(settings: Settings, timeout: float = 30) -> bool:
    """Stop the local Prefect server; True if it was running."""
    return stop_process(settings, PREFECT_SERVER, timeout)


# --- MLflow -----------------------------------------------------------------------------------


def mlflow_is_remote(settings: Settings) -> bool:
    """True when the tracking URI is a server (``http(s)://``): then none is started locally."""
    return urlparse(settings.tracking_uri()).scheme in ("http", "https")


def _mlflow_healthy(process: BackgroundProcess) -> bool:
    return http_ok(f"{process.url}/health")


def begin_mlflow_server(settings: Settings) -> BackgroundProcess | None:
    """Launch `mlflow server` on the settings' store (or find the running one) without waiting; None if remote."""
    if mlflow_is_remote(settings):
        return None
    settings = _absolute(settings)  # the store's path must not depend on the caller's working directory
    current = running_process(settings, MLFLOW_SERVER)
    if current is not None:
        return current
    require_free_port(settings.mlflow_port, "mlflow_port", _MLFLOW_ELSEWHERE.format(port=settings.mlflow_port))
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    artifacts = (settings.mlflow_dir / "artifacts").resolve()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.tracking_uri(),
        # Where experiments created through the UI keep artifacts; training's own experiment uses the same.
        "--default-artifact-root",
        artifacts.as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
    ]
    env: dict[str, str | None] = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runner processes
        "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
        "MLFLOW_TRACKING_URI": None,  # the server is the store, not a client of another one
    }
    return launch_process(settings, MLFLOW_SERVER, command, f"http://127.0.0.1:{settings.mlflow_port}", env)


def start_mlflow_server(settings: Settings, timeout: float = 180) -> str:
    """Start (or reuse) an MLflow tracking server on `mlflow_port` serving the settings' store; return its URL.

    With a remote tracking URI (``MLSTACK_MLFLOW_TRACKING_URI=http://…``) nothing is started and that
    URI is returned.
    """
    process = begin_mlflow_server(settings)
    if process is None:
        return settings.tracking_uri().rstrip("/")
    return wait_ready(settings, process, _mlflow_healthy, timeout).url


def stop_mlflow_server(settings: Settings, timeout: float = 30) -> bool:
    """Stop the local MLflow server; True if it was running."""
    return stop_process(settings, MLFLOW_SERVER, timeout)


# --- the whole stack --------------------------------------------------------------------------


def _absolute(settings: Settings) -> Settings:
    """The settings with an absolute state dir: servers run from the project root, not the caller's cwd."""
    return settings.model_copy(update={"state_dir": settings.state_dir.resolve()})


def ensure_redis(settings: Settings) -> ComponentStatus:
    """The configured Redis checked reachable, or the embedded one started or reused."""
    from mlstack.features.online_store import EmbeddedRedis, check_reachable, parse_redis_url

    if settings.redis_url:
        target = parse_redis_url(settings.redis_url)
        check_reachable(target, settings)
        return ComponentStatus(REDIS, "external", True, target.describe(), note="MLSTACK_REDIS_URL")
    embedded = EmbeddedRedis(settings.redis_dir, settings)
    target = embedded.ensure_running()
    log = settings.redis_dir / "redis.log"
    return ComponentStatus(REDIS, "running", True, target.describe(), embedded.pid(), log, "embedded")


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
    settings = _absolute(settings)
    notes: list[str] = []
    external = external_prefect_api_url(settings)
    local_mlflow = mlflow and not mlflow_is_remote(settings)
    # Ports first: a taken one fails before anything is started.
    if local_mlflow and running_process(settings, MLFLOW_SERVER) is None:
        require_free_port(settings.mlflow_port, "mlflow_port", _MLFLOW_ELSEWHERE.format(port=settings.mlflow_port))
    if not external and running_process(settings, PREFECT_SERVER) is None:
        require_free_port(settings.prefect_port, "prefect_port", _PREFECT_ELSEWHERE.format(port=settings.prefect_port))
    progress("Redis" + (" (MLSTACK_REDIS_URL)" if settings.redis_url else " (embedded)"))
    components = [ensure_redis(settings)]

    mlflow_process = None
    if local_mlflow:
        progress(f"MLflow tracking server on port {settings.mlflow_port}")
        mlflow_process = begin_mlflow_server(settings)
    if external:
        progress(f"Prefect server: using PREFECT_API_URL={external}")
        api_url = external
        if not http_ok(f"{api_url}/health", timeout=5):
            raise LocalStackError(f"the Prefect server at PREFECT_API_URL={api_url} does not answer /health")
        components.append(ComponentStatus(PREFECT_SERVER, "external", True, api_url.removesuffix("/api")))
    else:
        progress(f"Prefect server on port {settings.prefect_port}")
        server = wait_ready(settings, begin_prefect_server(settings), _prefect_healthy, timeout)
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
        mlflow_process = wait_ready(settings, mlflow_process, _mlflow_healthy, timeout)
        components.append(
            ComponentStatus(MLFLOW_SERVER, "running", True, mlflow_process.url, mlflow_process.pid, mlflow_process.log)
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
    from mlstack.stack.service import ServiceError, running_service, start_service

    running = running_service(settings)
    if running is not None:
        return ComponentStatus(
            SCORING_SERVICE, "running", http_ok(f"{running.url}/readyz"), running.url, running.pid, running.log
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
    """Stop the service (it flushes its profiles), worker, Prefect server, MLflow server, embedded Redis.

    Returns (component, was running) in that order; stopping what is not running is not an error.
    """
    from mlstack.features.online_store import EmbeddedRedis
    from mlstack.stack.service import stop_service

    settings = _absolute(settings)
    stopped = [
        (SCORING_SERVICE, stop_service(settings)),
        (PREFECT_WORKER, stop_worker(settings)),
        (PREFECT_SERVER, stop_prefect_server(settings)),
        (MLFLOW_SERVER, stop_mlflow_server(settings)),
    ]
    if not settings.redis_url:
        stopped.append((REDIS, EmbeddedRedis(settings.redis_dir, settings).stop()))
    return stopped


stop_all = stop_stack


def stack_status(settings: Settings) -> list[ComponentStatus]:
    """Each component: running or not, healthy or not (HTTP/PING probes with short timeouts), where."""
    from mlstack.features.online_store import EmbeddedRedis, OnlineStoreError, check_reachable, parse_redis_url
    from mlstack.stack.service import running_service

    settings = _absolute(settings)
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
        pid, target = embedded.pid(), embedded.target()
        rows.append(
            ComponentStatus(
                REDIS,
                "running" if pid else "stopped",
                embedded.is_running(),
                target.describe() if pid and target else None,
                pid,
                settings.redis_dir / "redis.log",
                "embedded",
            )
        )

    external = external_prefect_api_url(settings)
    server = running_process(settings, PREFECT_SERVER)
    api_url = external or (f"{server.url}/api" if server else None)
    if external:
        rows.append(ComponentStatus(PREFECT_SERVER, "external", http_ok(f"{external}/health"), external))
    else:
        rows.append(_process_status(settings, PREFECT_SERVER, _prefect_healthy))
    if rows[-1].healthy and api_url:
        try:
            count = len(list_deployments(api_url))
            rows[-1] = _with_note(rows[-1], f"{count} deployments")
        except LocalStackError as exc:
            rows[-1] = _with_note(rows[-1], str(exc))
    rows.append(_process_status(settings, PREFECT_WORKER, _worker_ready))
    if mlflow_is_remote(settings):
        url = settings.tracking_uri().rstrip("/")
        rows.append(ComponentStatus(MLFLOW_SERVER, "external", http_ok(f"{url}/health"), url))
    else:
        rows.append(_process_status(settings, MLFLOW_SERVER, _mlflow_healthy))
    service = running_service(settings)
    if service is None:
        rows.append(ComponentStatus(SCORING_SERVICE, "stopped", False))
    else:
        ready = http_ok(f"{service.url}/readyz")
        rows.append(ComponentStatus(SCORING_SERVICE, "running", ready, service.url, service.pid, service.log))
    return rows


def _process_status(settings: Settings, name: str, healthy: Callable[[BackgroundProcess], bool]) -> ComponentStatus:
    process = running_process(settings, name)
    if process is None:
        return ComponentStatus(name, "stopped", False, log=stack_dir(settings) / f"{name}.log")
    if name == PREFECT_WORKER:
        return ComponentStatus(name, "running", healthy(process), None, process.pid, process.log, _worker_note(process))
    return ComponentStatus(name, "running", healthy(process), process.url, process.pid, process.log)


def _worker_note(worker: BackgroundProcess) -> str:
    return f"worker {worker.extra.get('worker_name')} on pool {worker.extra.get('pool')}"


def _with_note(status: ComponentStatus, note: str) -> ComponentStatus:
    return ComponentStatus(status.name, status.state, status.healthy, status.url, status.pid, status.log, note)
