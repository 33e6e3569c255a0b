"""The process supervisor with real short-lived processes: launch, record, wait, stop, and never a stranger."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mlstack import processes
from mlstack.features.online_store import EmbeddedRedis
from mlstack.processes import ProcessError, ProcessRecord
from mlstack.settings import Settings
from mlstack.stack.service import running_service, stop_service

SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]
# A leader that starts a child in its group, then sleeps: stopping the group must stop both.
WITH_CHILD = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
    "time.sleep(30)",
]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _children(pid: int, count: int = 1, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(psutil.Process(pid).children()) < count:
        assert time.monotonic() < deadline, "the child process never started"
        time.sleep(0.02)
    return [child.pid for child in psutil.Process(pid).children()]


def _launch(tmp_path: Path, command: list[str] = SLEEP, name: str = "sleeper") -> ProcessRecord:
    return processes.launch(
        name,
        command,
        log=tmp_path / f"{name}.log",
        env=dict(os.environ),
        cwd=tmp_path,
        state_file=tmp_path / f"{name}.json",
        url="http://127.0.0.1:1",
        extra={"role": "test"},
    )


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process the supervisor did not launch, in its own group (a signal to that group would kill it)."""
    process = subprocess.Popen(SLEEP, start_new_session=True)
    yield process
    process.kill()
    process.wait(timeout=10)


def test_launch_records_the_process_at_once_and_stop_ends_its_whole_group(tmp_path):
    record = _launch(tmp_path, WITH_CHILD)
    state = json.loads((tmp_path / "sleeper.json").read_text())
    assert state["pid"] == record.pid
    assert state["create_time"] == pytest.approx(psutil.Process(record.pid).create_time(), abs=0.5)
    assert state["command"] == WITH_CHILD and state["url"] == "http://127.0.0.1:1"
    assert state["extra"] == {"role": "test"} and state["log"] == str(tmp_path / "sleeper.log")
    assert (tmp_path / "sleeper.json").stat().st_mode & 0o077 == 0  # a record may carry a password
    assert os.getpgid(record.pid) == record.pid  # its own process group, not ours
    child = _children(record.pid)[0]
    assert os.getpgid(child) == record.pid
    assert processes.running_record(tmp_path / "sleeper.json") == record

    assert processes.stop_recorded(tmp_path / "sleeper.json", timeout=5) is True
    assert _gone(record.pid) and _gone(child)
    assert not (tmp_path / "sleeper.json").exists()
    assert processes.running_record(tmp_path / "sleeper.json") is None
    assert processes.stop_recorded(tmp_path / "sleeper.json") is False  # idempotent


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    )
    record = _launch(tmp_path, [sys.executable, "-c", code])
    processes.wait_healthy(record, lambda _: "ready" in record.log.read_text(), 10, poll=0.02)
    assert processes.stop(record, timeout=0.5) is True
    assert _gone(record.pid)


def test_a_start_interrupted_before_ready_can_still_be_stopped(tmp_path):
    record = _launch(tmp_path)

    def interrupted(_: ProcessRecord) -> bool:
        raise KeyboardInterrupt  # Ctrl-C while waiting for the server to answer

    with pytest.raises(KeyboardInterrupt):
        processes.wait_healthy(record, interrupted, 10, state_file=tmp_path / "sleeper.json")
    # A later command (`mlstack down`) only has the state file to go by.
    found = processes.running_record(tmp_path / "sleeper.json")
    assert found == record
    assert processes.stop_recorded(tmp_path / "sleeper.json", timeout=5) is True
    assert _gone(record.pid)


def test_a_stale_record_with_a_recycled_pid_is_neither_reported_nor_signalled(tmp_path, stranger):
    # The pid is alive but belongs to a process started at another time than the recorded one.
    actual = psutil.Process(stranger.pid).create_time()
    stale = ProcessRecord("ghost", stranger.pid, actual - 3600, tuple(SLEEP), tmp_path / "ghost.log", "-")
    processes.write_record(tmp_path / "ghost.json", stale)
    assert processes.load_record(tmp_path / "ghost.json") == stale  # read back as written

    assert processes.running_record(tmp_path / "ghost.json") is None
    assert not processes.is_running(stale)
    assert processes.signal_group(stale, signal.SIGTERM) is False
    assert processes.stop(stale, timeout=1) is False
    assert processes.stop_recorded(tmp_path / "ghost.json", timeout=1) is False
    time.sleep(0.2)
    assert stranger.poll() is None  # never signalled: still running
    assert not (tmp_path / "ghost.json").exists()  # the stale record is cleared


def test_a_record_naming_our_own_pid_with_another_start_time_is_not_signalled(tmp_path):
    record = {"pid": os.getpid(), "url": "-", "log": "-", "started_at": "-", "create_time": 1.0}
    (tmp_path / "self.json").write_text(json.dumps(record))  # as an older version wrote it: no command
    assert processes.running_record(tmp_path / "self.json") is None
    assert processes.stop_recorded(tmp_path / "self.json", sig=signal.SIGTERM) is False  # we are still here


def test_an_unreadable_record_is_no_process(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "old.json").write_text(json.dumps({"host": "127.0.0.1", "port": 1}))  # no pid
    for name in ("broken.json", "old.json", "missing.json"):
        assert processes.load_record(tmp_path / name) is None
        assert processes.stop_recorded(tmp_path / name) is False


def test_stop_reaches_the_members_of_a_group_whose_leader_has_exited(tmp_path):
    code = (
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
        "print('started', flush=True)"
    )
    record = _launch(tmp_path, [sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while processes.process_alive(record.pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    orphans = [p.pid for p in psutil.process_iter() if _group_of(p.pid) == record.pid]
    assert orphans, "the leader's child should outlive it"
    assert processes.stop(record, timeout=5) is True
    assert all(_gone(pid) for pid in orphans)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_the_log_handle_is_closed_in_the_parent(tmp_path):
    record = _launch(tmp_path)
    try:
        ours = {Path(f.path) for f in psutil.Process().open_files()}
        assert record.log not in ours
        theirs = {Path(f.path) for f in psutil.Process(record.pid).open_files()}
        assert record.log in theirs  # the child writes its output there
        assert record.log.read_text().startswith("\n=== ")  # a header names the start and the command
    finally:
        processes.stop(record, timeout=5)


def test_wait_healthy_returns_once_healthy_and_raises_naming_the_log_when_the_process_exits(tmp_path):
    record = _launch(tmp_path)
    try:
        assert processes.wait_healthy(record, lambda _: True, 5) == record
    finally:
        processes.stop(record, timeout=5)

    crash = [sys.executable, "-c", "import sys; print('no config file'); sys.exit(3)"]
    failed = _launch(tmp_path, crash, name="crasher")
    with pytest.raises(ProcessError, match=r"crasher exited during start-up with status 3") as caught:
        processes.wait_healthy(failed, lambda _: False, 10, state_file=tmp_path / "crasher.json", poll=0.02)
    assert str(failed.log) in str(caught.value) and "no config file" in str(caught.value)
    assert not (tmp_path / "crasher.json").exists()  # nothing half-written is left to reuse


def test_wait_healthy_stops_a_process_that_is_not_ready_in_time_and_raises_the_callers_error(tmp_path):
    class CallerError(RuntimeError):
        pass

    record = _launch(tmp_path)
    with pytest.raises(CallerError, match=r"sleeper was not ready within 0s"):
        processes.wait_healthy(record, lambda _: False, 0.2, state_file=tmp_path / "sleeper.json", error=CallerError)
    assert _gone(record.pid)
    assert not (tmp_path / "sleeper.json").exists()


def test_exit_code_of_our_own_child(tmp_path):
    record = _launch(tmp_path, [sys.executable, "-c", "raise SystemExit(7)"], name="quick")
    deadline = time.monotonic() + 10
    while processes.exit_code(record) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert processes.exit_code(record) == 7
    assert processes.exit_code(replace(record, pid=os.getpid())) is None  # not a child of ours


def test_tail_shows_the_last_lines_or_says_there_is_no_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert processes.tail(log, 3) == "line 27\nline 28\nline 29"
    assert processes.tail(log).splitlines()[0] == "line 15"  # 15 lines by default
    assert processes.tail(tmp_path / "missing.log") == f"(no log at {tmp_path / 'missing.log'})"


def test_free_port_is_bindable_and_port_free_sees_a_listener():
    port = processes.free_port()
    assert 0 < port < 65536
    assert processes.port_free(port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not processes.port_free(port)


def test_http_ok_is_false_when_nothing_listens():
    assert processes.http_ok(f"http://127.0.0.1:{processes.free_port()}/health", timeout=1) is False


def test_the_service_and_the_embedded_redis_ignore_a_stale_record_with_a_recycled_pid(tmp_path, stranger):
    settings = Settings(state_dir=tmp_path)
    actual = psutil.Process(stranger.pid).create_time()
    stale = ProcessRecord("x", stranger.pid, actual - 3600, (), tmp_path / "x.log", "-", "http://127.0.0.1:1")
    processes.write_record(settings.service_dir / "service.json", stale)
    redis_extra = {"host": "127.0.0.1", "port": "1", "password": "p"}
    processes.write_record(settings.redis_dir / "server.json", replace(stale, extra=redis_extra))

    assert running_service(settings) is None
    assert stop_service(settings, timeout=1) is False
    embedded = EmbeddedRedis(settings.redis_dir, settings)
    assert embedded.pid() is None and not embedded.is_running()
    assert embedded.stop(timeout=1) is False
    time.sleep(0.2)
    assert stranger.poll() is None  # neither signalled it


def test_tree_cpu_seconds_counts_a_child_s_cpu_while_it_runs_and_after_it_is_reaped():
    # The child burns 0.5 s of its own CPU time (not wall time), says so, and waits to be told to exit;
    # /proc counts in clock ticks, updated lazily: 0.4 s leaves room for that rounding.
    burner = "import sys, time\nwhile time.process_time() < 0.5: pass\nprint('burnt', flush=True); sys.stdin.readline()"
    before = processes.tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", burner], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"burnt\n"
        assert processes.tree_cpu_seconds() - before >= 0.4  # a live child
        child.communicate(b"\n", timeout=10)
        assert processes.tree_cpu_seconds() - before >= 0.4  # reaped: in our children's times now
    finally:
        child.kill()
        child.wait(timeout=10)


def test_tree_cpu_seconds_of_a_process_that_does_not_exist_raises():
    with pytest.raises(psutil.NoSuchProcess):
        processes.tree_cpu_seconds(2**22 + 12345)
