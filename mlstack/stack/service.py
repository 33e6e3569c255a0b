"""The local `bentoml serve` process of the stack: start it in the background, wait until ready, stop it.

Recorded by the process supervisor in ``<state_dir>/service/service.json`` (pid, start time, url, log,
target) as soon as it is launched, so `mlstack down` can stop a start that was interrupted; its output
goes to ``<state_dir>/service/serve.log``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlstack import processes
from mlstack.errors import StackError
from mlstack.processes import ProcessRecord
from mlstack.settings import PROJECT_ROOT, Settings
from mlstack.stack.components import child_environment

SERVICE = "services.credit_risk:CreditRisk"
SCORING_SERVICE = "service"


class ServiceError(StackError):
    """The local service could not be started or reached; the message says where its log is."""


@dataclass(frozen=True)
class LocalService:
    """A running `bentoml serve` started by the stack."""

    pid: int
    url: str
    log: Path
    target: str = SERVICE

    @classmethod
    def from_record(cls, record: ProcessRecord) -> LocalService:
        """The service a supervisor record describes."""
        return cls(record.pid, record.url, record.log, record.extra.get("target", SERVICE))


def _state_file(settings: Settings) -> Path:
    return settings.service_dir / "service.json"


def running_service(settings: Settings) -> LocalService | None:
    """The recorded service, if its process still runs (and its pid was not reused by another process)."""
    record = processes.running_record(_state_file(settings))
    return LocalService.from_record(record) if record is not None else None


def start_service(
    settings: Settings,
    env: Mapping[str, str],
    port: int | None = None,
    timeout: float = 300,
    target: str = SERVICE,
) -> LocalService:
    """Start `bentoml serve <target>` in the background (reusing a running one) and wait for /readyz.

    `target` is the service in source (default) or a bento tag (`credit-risk:mlflow-v3-…`). The settings
    are passed explicitly (``MLSTACK_*``, absolute paths), then `env`: a bento runs from its own
    directory, where the defaults would differ.
    """
    current = running_service(settings)
    if current is not None:
        return current
    port = port or processes.free_port()
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    record = processes.launch(
        SCORING_SERVICE,
        command,
        log=settings.service_dir / "serve.log",
        env=child_environment(settings, env),
        cwd=PROJECT_ROOT,
        state_file=_state_file(settings),
        url=f"http://127.0.0.1:{port}",
        extra={"target": target},
    )
    ready = processes.wait_healthy(
        record,
        lambda launched: service_ready(launched.url),
        timeout,
        state_file=_state_file(settings),
        error=ServiceError,
    )
    return LocalService.from_record(ready)


def service_ready(url: str) -> bool:
    """True if the service at `url` answers ``/readyz`` (model loaded, online store reachable)."""
    return processes.http_ok(f"{url}/readyz")


def stop_service(settings: Settings, timeout: float = 30) -> bool:
    """SIGTERM the service's group (it flushes its profiles), SIGKILL after `timeout`; True if one was running."""
    return processes.stop_recorded(_state_file(settings), timeout)
