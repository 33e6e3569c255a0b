"""The local `bentoml serve` process of the stack: start it in the background, wait until ready, stop it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlstack.errors import StackError
from mlstack.features.online_store import process_alive
from mlstack.settings import PROJECT_ROOT, Settings, stack_environment
from mlstack.stack.local import free_port as _free_port
from mlstack.stack.local import stop_process_group

SERVICE = "services.credit_risk:CreditRisk"


class ServiceError(StackError):
    """The local service could not be started or reached; the message says where its log is."""


@dataclass(frozen=True)
class LocalService:
    """A running `bentoml serve` started by the stack."""

    pid: int
    url: str
    log: Path
    target: str = SERVICE


def _state_file(settings: Settings) -> Path:
    return settings.service_dir / "service.json"


def running_service(settings: Settings) -> LocalService | None:
    """The recorded service, if its process is alive."""
    try:
        state = json.loads(_state_file(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not process_alive(int(state["pid"])):
        return None
    return LocalService(int(state["pid"]), state["url"], Path(state["log"]), state.get("target", SERVICE))


def start_service(
    settings: Settings, env: dict[str, str], port: int | None = None, timeout: float = 300, target: str = SERVICE
) -> LocalService:
    """Start `bentoml serve <target>` in the background (reusing a running one) and wait for /readyz.

    `target` is the service in source (default) or a bento tag (`credit-risk:mlflow-v3-…`). The state
    dir is passed explicitly: a bento runs from its own directory, where the default would differ.
    """
    current = running_service(settings)
    if current is not None:
        return current
    directory = settings.service_dir
    directory.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = directory / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **stack_environment(settings), "MLSTACK_STATE_DIR": str(settings.state_dir), **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # `mlstack down` stops the whole process group
    )
    service = LocalService(process.pid, f"http://127.0.0.1:{port}", log, target)
    deadline = time.monotonic() + timeout
    while not _ready(service.url):
        if process.poll() is not None:
            raise ServiceError(f"bentoml serve exited with {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            stop_process_group(process.pid)
            raise ServiceError(f"bentoml serve was not ready within {timeout:.0f}s; see {log}")
        time.sleep(0.5)
    state = {"pid": service.pid, "url": service.url, "log": str(log), "target": target}
    _state_file(settings).write_text(json.dumps(state))
    return service


def stop_service(settings: Settings, timeout: float = 30) -> bool:
    """SIGTERM the service (it flushes its profiles), SIGKILL after `timeout`; True if one was running."""
    service = running_service(settings)
    _state_file(settings).unlink(missing_ok=True)
    if service is None:
        return False
    stop_process_group(service.pid, timeout)
    return True


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
