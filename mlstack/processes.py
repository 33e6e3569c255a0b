"""The one process supervisor: launch a background process, record it, wait until it is healthy, stop its group.

Everything that runs a server in the background (the local stack, the service, the embedded Redis, the
test harness, the benchmarks) goes through here. A process runs in its own session, so stopping its
process group stops what it started too (uvicorn and bentoml workers, flow runs). Its output goes to a
log file that the parent closes right after the launch. Its record (a JSON state file) is written
atomically right after the launch, not once it is ready, so a start that is interrupted can still be
stopped. A record names the process by pid *and* start time: a pid that now belongs to another process
(after a reboot, or a long time) is neither reported as running nor signalled.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from mlstack.errors import StackError

# Two reads of one process' start time differ by clock-tick rounding at most; a recycled pid by far more.
_SAME_START = 0.5

# Our own children, so their exit status is collected (no zombies that look alive, an exit code to report).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ProcessError(StackError):
    """A background process exited or did not become healthy during start-up; the message names its log."""


@dataclass(frozen=True)
class ProcessRecord:
    """A launched process as its state file records it: enough to find it again and to stop it."""

    name: str
    pid: int
    create_time: float  # psutil's start time: tells the launched process from a later one given the same pid
    command: tuple[str, ...]
    log: Path
    started_at: str
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def launch(
    name: str,
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str],
    cwd: Path,
    state_file: Path | None = None,
    url: str = "",
    extra: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start `command` in its own session with exactly `env`, output appended to `log`; record it at once."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    # Appended, so the log of a crashed earlier run stays readable; closed on leaving the block, since the
    # child holds its own copy of the descriptor.
    with log.open("ab") as out:
        out.write(f"\n=== {started_at} {shlex.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping the group stops its children
        )
    _CHILDREN[process.pid] = process
    created = _create_time(process.pid)
    record = ProcessRecord(
        name,
        process.pid,
        created if created is not None else time.time(),
        tuple(command),
        log,
        started_at,
        url,
        dict(extra or {}),
    )
    if state_file is not None:
        try:
            write_record(state_file, record)
        except BaseException:
            _stop_group(process.pid, timeout=5)  # an unrecorded server could never be stopped by its owner
            raise
    return record


def write_record(path: Path, record: ProcessRecord) -> None:
    """Write `record` to `path` atomically (readers never see half a file), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**asdict(record), "command": list(record.command), "log": str(record.log)}
    temporary = path.with_name(f".{path.name}.tmp")
    # 0600: a record may carry a secret (the embedded Redis keeps its password in it).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(state, out, indent=2)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def load_record(path: Path) -> ProcessRecord | None:
    """The record in `path` as written, whether or not its process still runs; None if missing or unreadable."""
    try:
        state = json.loads(path.read_text())
        return ProcessRecord(
            name=str(state.get("name", path.stem)),
            pid=int(state["pid"]),
            create_time=float(state.get("create_time", 0.0)),
            command=tuple(state.get("command", ())),
            log=Path(state.get("log", "")),
            started_at=str(state.get("started_at", "")),
            url=str(state.get("url", "")),
            extra={str(key): str(value) for key, value in dict(state.get("extra", {})).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def running_record(path: Path) -> ProcessRecord | None:
    """The record in `path` if its process still runs (not exited, pid not reused), else None."""
    record = load_record(path)
    return record if record is not None and is_running(record) else None


def is_running(record: ProcessRecord) -> bool:
    """True while the recorded process runs: its pid is alive and was started when the record says."""
    return process_alive(record.pid) and _same_start(record)


def process_alive(pid: int) -> bool:
    """True if `pid` runs; a zombie (exited, not reaped) is not alive."""
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()  # reap our own child if it exited: psutil then no longer sees it
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_code(record: ProcessRecord) -> int | None:
    """The exit status of a process this interpreter launched; None while it runs (or if it is not our child)."""
    child = _CHILDREN.get(record.pid)
    return child.poll() if child is not None else None


def wait_healthy(
    record: ProcessRecord,
    healthy: Callable[[ProcessRecord], bool],
    timeout: float,
    *,
    state_file: Path | None = None,
    error: type[Exception] = ProcessError,
    poll: float = 0.5,
) -> ProcessRecord:
    """Wait until `healthy(record)`; if the process exits or `timeout` passes, stop it, drop its record, raise `error`.

    The message names the log and shows its last lines.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not is_running(record):
            stop(record, timeout=5)  # what it started may outlive it
            _drop(state_file)
            code = exit_code(record)
            status = f" with status {code}" if code is not None else ""
            raise error(f"{record.name} exited during start-up{status}; see {record.log}:\n{tail(record.log)}")
        if healthy(record):
            return record
        if time.monotonic() > deadline:
            stop(record, timeout=10)
            _drop(state_file)
            raise error(f"{record.name} was not ready within {timeout:.0f}s; see {record.log}:\n{tail(record.log)}")
        time.sleep(poll)


def stop(record: ProcessRecord, timeout: float = 30, sig: int = signal.SIGTERM) -> bool:
    """Stop the record's process group: `sig`, SIGKILL what is left after `timeout`; False if none of it ran.

    A pid that now belongs to another process (another start time) is never signalled.
    """
    if not _owns_group(record):
        return False
    _stop_group(record.pid, timeout, sig)
    return True


def stop_recorded(path: Path, timeout: float = 30, sig: int = signal.SIGTERM) -> bool:
    """Stop the process recorded in `path` (as `stop` does), then remove the record; True if it ran."""
    record = load_record(path)
    stopped = record is not None and stop(record, timeout, sig)
    path.unlink(missing_ok=True)  # after the stop: an interrupted stop leaves the record to stop it again
    return stopped


def signal_group(record: ProcessRecord, sig: int) -> bool:
    """Send `sig` to the record's process group if it is still the launched one (e.g. SIGSTOP to hang a server)."""
    if not _owns_group(record):
        return False
    try:
        os.killpg(record.pid, sig)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """True if a server could bind 127.0.0.1:`port` now (TIME_WAIT is no obstacle, a listener is)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_ok(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> bool:
    """True if GET `url` answers 2xx within `timeout` (the usual health check of a server)."""
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def seconds_since_start(pid: int | None = None) -> float:
    """Wall-clock seconds since a process started (default: this one)."""
    return time.time() - psutil.Process(pid).create_time()


def tree_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) of a process and its descendants, reaped children included; default: this one.

    A process that leaves the tree (an orphan re-parented to init) takes its later CPU with it.
    """
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue  # exited meanwhile: its parent's children_* times take it over once it is reaped
        total += times.user + times.system + times.children_user + times.children_system
    return total


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _same_start(record: ProcessRecord) -> bool:
    created = _create_time(record.pid)
    return created is not None and abs(created - record.create_time) <= _SAME_START


def _owns_group(record: ProcessRecord) -> bool:
    """True if the record's process group is still the launched one.

    Either its leader is the recorded process (same start time), or the leader has gone and members
    remain: the kernel never hands out a pid that still names a process group, so those are ours.
    """
    if _create_time(record.pid) is not None:
        return _same_start(record)
    return _group_has_members(record.pid)


def _stop_group(pgid: int, timeout: float = 30, sig: int = signal.SIGTERM) -> None:
    """`sig` to the group led by `pgid`, then SIGKILL whatever is left after `timeout`."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while _group_alive(pgid) and time.monotonic() < deadline + 10:
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """True while the leader or any other member of the group runs (workers hold the port too)."""
    return process_alive(pgid) or _group_has_members(pgid)


def _group_has_members(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def _drop(state_file: Path | None) -> None:
    if state_file is not None:
        state_file.unlink(missing_ok=True)
