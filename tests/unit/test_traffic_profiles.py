"""Live-traffic profiling: counts conserved, windows roll and close, add() stays off the slow path."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from mlstack.data.profiles import read_profile
from mlstack.monitoring.live_profiles import ProfileBuffer, ProfileWindow, count_profiled_rows


class FakeClock:
    """A settable clock (epoch seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatedSink:
    """A sink that blocks in write() until released: stands in for a slow object store."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.windows: list[ProfileWindow] = []

    def write(self, window: ProfileWindow) -> None:
        self.entered.set()
        self.release.wait(30)
        self.windows.append(window)


class FailingSink:
    def write(self, window: ProfileWindow) -> None:
        raise OSError("bucket unreachable")


def row(i: int, version: str = "3") -> dict[str, object]:
    return {
        "bureau_score": 600 + i % 100,
        "home_ownership": "RENT",
        "default_probability": 0.1,
        "model_version": version,
    }


def sidecars(store: Path) -> dict[str, dict]:
    return {str(p.relative_to(store)): json.loads(p.read_text()) for p in sorted(store.glob("*/*.json"))}


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_counts_are_conserved_across_threads(tmp_path: Path, process: bool) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=3600, flush_seconds=0.05, flush_rows=100, process=process)
    buffer.start()

    def send(offset: int) -> None:
        for i in range(300):
            buffer.add(row(offset + i))

    threads = [threading.Thread(target=send, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert buffer.stop(timeout=60)
    assert count_profiled_rows(tmp_path) == 1200
    assert (buffer.written_rows, buffer.dropped_rows, buffer.failed_rows) == (1200, 0, 0)


def test_windows_roll_at_wall_clock_multiples(tmp_path: Path) -> None:
    clock = FakeClock(1_000.0)  # window of 60 s: [960, 1020)
    buffer = ProfileBuffer(tmp_path, window_seconds=60, clock=clock)
    for i in range(3):
        buffer.add(row(i))
    clock.now = 1_019.0
    buffer.add(row(3))
    buffer.drain()
    assert sidecars(tmp_path) == {}  # the window is still open
    clock.now = 1_020.0
    buffer.add(row(4))
    buffer.drain()
    clock.now = 1_081.0  # past the end of [1020, 1080): closes with no new rows
    buffer.drain()
    written = sidecars(tmp_path)
    assert list(written) == ["3/19700101T001600Z.json", "3/19700101T001700Z.json"]
    first, second = written.values()
    assert (first["rows"], first["window_start"], first["window_end"]) == (
        4,
        "1970-01-01T00:16:00+00:00",
        "1970-01-01T00:17:00+00:00",
    )
    assert second["rows"] == 1
    assert first["model_version"] == "3"


def test_model_version_change_closes_the_window(tmp_path: Path) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=60, clock=FakeClock(1_000.0))
    for version, rows in (("3", 2), ("4", 5), ("3", 1)):
        for i in range(rows):
            buffer.add(row(i, version))
    buffer.stop()
    written = sidecars(tmp_path)
    assert {name: meta["rows"] for name, meta in written.items()} == {
        "3/19700101T001600Z.json": 2,
        "3/19700101T001600Z.1.json": 1,  # the same window again: a second segment, nothing overwritten
        "4/19700101T001600Z.json": 5,
    }
    assert count_profiled_rows(tmp_path) == 8


def test_late_row_joins_the_open_window(tmp_path: Path) -> None:
    clock = FakeClock(1_030.0)
    buffer = ProfileBuffer(tmp_path, window_seconds=60, clock=clock)
    buffer.add(row(0))
    clock.now = 1_019.0  # the clock stepped back across the boundary
    buffer.add(row(1))
    buffer.stop()
    assert [meta["rows"] for meta in sidecars(tmp_path).values()] == [2]


def test_stop_flushes_the_partial_window(tmp_path: Path) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=3600, flush_seconds=60)
    buffer.start()
    for i in range(10):
        buffer.add(row(i))
    assert buffer.stop(timeout=30)
    assert count_profiled_rows(tmp_path) == 10
    assert buffer.pending_rows == 0


def test_stop_without_start_still_writes(tmp_path: Path) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=3600)
    buffer.add(row(0))
    assert buffer.stop()
    assert count_profiled_rows(tmp_path) == 1


@pytest.mark.timeout(60)
def test_add_does_not_wait_for_a_slow_writer() -> None:
    clock = FakeClock(0.0)
    sink = GatedSink()
    buffer = ProfileBuffer(sink=sink, window_seconds=10, flush_seconds=0.02, clock=clock)
    buffer.add(row(0))
    clock.now = 15.0  # the first window has ended: the drain thread will write it and block in the sink
    buffer.start()
    assert sink.entered.wait(30)
    # The writer stays blocked until release: an add() that waited for it would never return, and the
    # timeout above would fail the test. No wall-clock bound is needed.
    for i in range(5_000):
        buffer.add(row(i))
    assert buffer.pending_rows == 5_000  # nothing was profiled while the writer is stuck
    sink.release.set()
    assert buffer.stop(timeout=30)
    assert sum(window.rows for window in sink.windows) == 5_001


def test_full_buffer_drops_and_counts_rows() -> None:
    sink = GatedSink()
    sink.release.set()
    buffer = ProfileBuffer(sink=sink, max_pending_rows=5)
    for i in range(8):
        buffer.add(row(i))
    assert buffer.dropped_rows == 3
    buffer.stop()
    assert sum(window.rows for window in sink.windows) == 5


def test_failing_writer_counts_rows_and_keeps_running() -> None:
    clock = FakeClock(0.0)
    buffer = ProfileBuffer(sink=FailingSink(), window_seconds=10, clock=clock)
    buffer.add(row(0))
    clock.now = 11.0
    buffer.add(row(1))
    buffer.stop()
    assert buffer.failed_rows == 2
    assert buffer.written_rows == 0


def test_written_profile_reads_back_with_columns_and_metadata(tmp_path: Path) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=60, clock=FakeClock(1_000.0))
    for i in range(20):
        buffer.add(row(i))
    buffer.stop()
    [path] = tmp_path.glob("3/*.bin")
    view = read_profile(path)
    assert view.columns() == {"bureau_score", "home_ownership", "default_probability"}
    assert view.count("bureau_score") == 20
    assert view.metadata["model_version"] == "3"
    assert view.metadata["rows"] == "20"
    assert view.metadata["window_start"] == "1970-01-01T00:16:00+00:00"
    assert not list(tmp_path.glob("3/.*.tmp"))  # atomic writes leave no temp files


def test_profiles_go_to_an_fsspec_url() -> None:
    url = f"memory://profiles-{uuid.uuid4().hex}"
    buffer = ProfileBuffer(url, window_seconds=60, clock=FakeClock(1_000.0))
    for i in range(7):
        buffer.add(row(i, "v/2"))
    buffer.stop()
    assert count_profiled_rows(url) == 7


def test_count_profiled_rows_of_an_empty_store_is_zero(tmp_path: Path) -> None:
    assert count_profiled_rows(tmp_path / "nothing-yet") == 0


def test_buffer_needs_a_destination() -> None:
    with pytest.raises(ValueError, match="store_url or a sink"):
        ProfileBuffer()


# --- whylogs in a child process (what the service uses) ----------------------------------------


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_process_profiler_writes_the_same_windows_as_the_thread(tmp_path: Path) -> None:
    for mode, process in (("thread", False), ("process", True)):
        buffer = ProfileBuffer(tmp_path / mode, window_seconds=60, clock=FakeClock(1_000.0), process=process)
        for version, rows in (("3", 2), ("4", 5), ("3", 1)):
            for i in range(rows):
                buffer.add(row(i, version))
        assert buffer.stop(timeout=60)
    thread, process = sidecars(tmp_path / "thread"), sidecars(tmp_path / "process")
    assert list(process) == list(thread)
    assert [meta["rows"] for meta in process.values()] == [meta["rows"] for meta in thread.values()]
    view = read_profile(tmp_path / "process" / "4" / "19700101T001600Z.bin")
    assert view.count("bureau_score") == 5
    assert view.metadata["rows"] == "5"


def test_process_profiler_ignores_sigterm_so_stop_still_writes(tmp_path: Path) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=3600, flush_seconds=0.02, process=True)
    buffer.start()
    for i in range(10):
        buffer.add(row(i))
    wait_for(lambda: buffer.pending_rows == 0)
    os.kill(buffer.process_id, signal.SIGTERM)  # what a service's process group gets on shutdown
    time.sleep(0.2)
    buffer.add(row(10))
    assert buffer.stop(timeout=60)
    assert count_profiled_rows(tmp_path) == 11


def test_process_profiler_counts_rows_lost_with_a_dead_child_and_carries_on(tmp_path: Path) -> None:
    buffer = ProfileBuffer(tmp_path, window_seconds=3600, process=True)
    for i in range(3):
        buffer.add(row(i))
    buffer.drain()  # tracked in the child, which holds the window's profile
    pid = buffer.process_id
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: buffer.process_id is None)
    for i in range(2):
        buffer.add(row(i))
    buffer.drain()  # finds the child dead: these 2 and the window's 3 are lost
    for i in range(4):
        buffer.add(row(i))
    assert buffer.stop(timeout=60)  # a new child profiles and writes the rest
    assert (buffer.failed_rows, buffer.written_rows) == (5, 4)
    assert count_profiled_rows(tmp_path) == 4


def test_process_profiler_needs_a_store_url() -> None:
    with pytest.raises(ValueError, match="store_url"):
        ProfileBuffer(sink=GatedSink(), process=True)


def test_process_profiler_that_cannot_start_logs_it_and_counts_its_rows_as_failed(caplog) -> None:
    buffer = ProfileBuffer("unknownprotocol://nowhere", window_seconds=3600, process=True)
    with caplog.at_level("ERROR"):
        buffer.start()  # the service starts anyway; the child's error is in the log
    assert "did not start" in caplog.text and "unknownprotocol" in caplog.text
    for i in range(3):
        buffer.add(row(i))
    assert buffer.stop(timeout=60)
    assert (buffer.failed_rows, buffer.written_rows, buffer.pending_rows) == (3, 0, 0)
