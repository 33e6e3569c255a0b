"""The stack's Prefect parts: the local server, the work pool, the deployments, the worker, the API over HTTP.

Prefect runs as ``python -m prefect`` subprocesses and is reached over its REST API: this package never
imports Prefect.

- ``prefect-server``: ``prefect server start`` with its SQLite database under ``PREFECT_HOME``
  (not started when ``PREFECT_API_URL`` names another server);
- the work pool and the deployments of ``prefect.yaml`` (``prefect deploy --all``);
- ``prefect-worker``: a process worker on the pool, with the stack's settings in its environment.
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
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from mlstack.processes import ProcessRecord, http_ok, tail
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.stack.components import (
    LocalStackError,
    child_environment,
    launch_process,
    require_free_port,
    running_process,
    stop_process,
    wait_ready,
)

PREFECT_SERVER = "prefect-server"
PREFECT_WORKER = "prefect-worker"

PREFECT_ELSEWHERE = ", or PREFECT_API_URL=http://127.0.0.1:{port}/api to use the Prefect server running there"


# --- the API over HTTP ------------------------------------------------------------------------


def auth_headers() -> dict[str, str]:
    """Credentials of an external Prefect server, if the environment has them (a local one has none)."""
    if key := os.environ.get("PREFECT_API_KEY"):
        return {"authorization": f"Bearer {key}"}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        return {"authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    return {}


def api_ok(url: str, timeout: float = 2.0) -> bool:
    """True if GET `url` on a Prefect server answers 2xx within `timeout` (credentials sent if set)."""
    return http_ok(url, timeout, auth_headers())


def request_json(method: str, url: str, body: object = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of an HTTP call; HTTP errors are returned, unreachable raises."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **auth_headers()}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError) as exc:
        raise LocalStackError(f"{url} is not reachable ({exc})") from exc


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


# --- the server -------------------------------------------------------------------------------


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


def prefect_healthy(process: ProcessRecord) -> bool:
    """True if the recorded Prefect server answers ``/api/health``."""
    return api_ok(f"{process.url}/api/health")


def begin_prefect_server(settings: Settings) -> ProcessRecord:
    """Launch the local Prefect server (or find the running one) without waiting for it."""
    current = running_process(settings, PREFECT_SERVER)
    if current is not None:
        return current
    require_free_port(settings.prefect_port, "prefect_port", PREFECT_ELSEWHERE.format(port=settings.prefect_port))
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
    process = wait_ready(settings, begin_prefect_server(settings), prefect_healthy, timeout)
    return f"{process.url}/api"


def stop_prefect_server(settings: Settings, timeout: float = 30) -> bool:
    """Stop the local Prefect server; True if it was running."""
    return stop_process(settings, PREFECT_SERVER, timeout)


# --- the work pool and the deployments --------------------------------------------------------


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
    directory = settings.stack_dir
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


# --- the worker -------------------------------------------------------------------------------


def start_worker(
    settings: Settings, api_url: str, extra_env: dict[str, str] | None = None, timeout: float = 120
) -> ProcessRecord:
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
    return wait_ready(settings, current, worker_ready, timeout)


def worker_ready(process: ProcessRecord) -> bool:
    """True if the recorded worker heartbeats to its server."""
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
