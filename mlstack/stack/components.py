"""What every server of the local stack shares: its error, its environment, its record and log under ``stack/``.

A server `name` logs to ``<state_dir>/stack/<name>.log`` and is recorded in ``<state_dir>/stack/<name>.json``
by the process supervisor (`mlstack.processes`): pid, start time, command, url, log, started_at. A recorded
server that still runs is reused, never started twice.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path

from pydantic import SecretStr

from mlstack import processes
from mlstack.errors import StackError
from mlstack.processes import ProcessRecord
from mlstack.settings import PROJECT_ROOT, Settings, stack_environment


class LocalStackError(StackError):
    """A stack process could not be started, reached or stopped; the message names its log or setting."""


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


def absolute(settings: Settings) -> Settings:
    """The settings with an absolute state dir: servers run from the project root, not the caller's cwd."""
    return settings.model_copy(update={"state_dir": settings.state_dir.resolve()})


def require_free_port(port: int, setting: str, alternative: str = "") -> None:
    """Raise naming the setting (``MLSTACK_<SETTING>``) when `port` is taken; `alternative` adds another way out."""
    if not processes.port_free(port):
        raise LocalStackError(
            f"port {port} on 127.0.0.1 is already in use by another process: "
            f"set MLSTACK_{setting.upper()} (setting `{setting}`) to a free port{alternative}"
        )


def state_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path` under the state dir, created (mode 0600) by `make` on first use."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created concurrently: read theirs
            return path.read_text().strip()
        with os.fdopen(descriptor, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def _state_file(settings: Settings, name: str) -> Path:
    return settings.stack_record(name)


def launch_process(
    settings: Settings,
    name: str,
    command: Sequence[str],
    url: str,
    env: Mapping[str, str | None] | None = None,
    extra: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start the server `name` from the project root, logging to ``stack/<name>.log``; recorded before it is ready."""
    return processes.launch(
        name,
        command,
        log=settings.stack_dir / f"{name}.log",
        env=child_environment(settings, env),
        cwd=PROJECT_ROOT,
        state_file=_state_file(settings, name),
        url=url,
        extra=extra,
    )


def running_process(settings: Settings, name: str) -> ProcessRecord | None:
    """The recorded server `name`, if it is still the process that was started (pid not reused)."""
    return processes.running_record(_state_file(settings, name))


def wait_ready(
    settings: Settings, process: ProcessRecord, ready: Callable[[ProcessRecord], bool], timeout: float
) -> ProcessRecord:
    """Wait until `ready(process)`; if it exits or times out, stop it and raise naming its log."""
    return processes.wait_healthy(
        process, ready, timeout, state_file=_state_file(settings, process.name), error=LocalStackError
    )


def stop_process(settings: Settings, name: str, timeout: float = 30, sig: int = signal.SIGTERM) -> bool:
    """Stop the recorded server `name` and its group (`sig`, SIGKILL after `timeout`); True if it ran."""
    return processes.stop_recorded(_state_file(settings, name), timeout, sig)
