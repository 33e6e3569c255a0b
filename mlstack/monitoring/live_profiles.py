"""Live-traffic profiling off the request path: buffer rows, profile them with whylogs in the background.

Request threads call ``ProfileBuffer.add(row)``, which only appends to a list under a lock. A
background thread drains the list every ``flush_seconds`` (sooner once ``flush_rows`` are waiting)
into the current window's whylogs profile. With ``process=True`` the whylogs work and the writes
happen in a child process that the thread feeds (the service's choice): whylogs is Python-heavy, and
in the serving process it held the GIL against the request path (about 10% of throughput and tens of
ms at p99 under load, docs/benchmarks.md); the thread only waits for the child, without the GIL.

Windows are aligned to wall-clock multiples of ``window_seconds`` (by each row's arrival time) and
hold one model version: a window closes when the clock passes its end, when a row of another model
version arrives, or on ``stop()`` (what the service's SIGTERM handler calls, so a partial window is
not lost).

Each closed window is written to the profile store (a local directory or any fsspec URL) as

    <store>/<model_version>/<window_start>.bin    whylogs binary, metadata: version, window, rows
    <store>/<model_version>/<window_start>.json   sidecar: the same metadata as JSON

``<window_start>`` is ISO 8601 basic format in UTC (``20250101T120000Z``); a second segment of the
same version and window (the version flipped back) gets ``.1``, ``.2``... appended. The ``.bin`` is
written first and the sidecar last, both atomically on local paths, so a sidecar means a complete
window and ``count_profiled_rows`` can sum the sidecars without whylogs.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import fsspec
import pandas as pd

from mlstack.data import profiles

log = logging.getLogger(__name__)

VERSION_KEY = "model_version"
UNKNOWN_VERSION = "unknown"
SIDECAR_SUFFIX = ".json"


@dataclass
class ProfileWindow:
    """One finished (or open) window: its model version, bounds, row count and the profile being tracked."""

    model_version: str
    start: datetime
    end: datetime
    rows: int = 0
    profile: profiles.ProfileTracker | None = field(default=None, repr=False)

    def metadata(self) -> dict[str, str]:
        """The window's metadata as strings (stored in the profile too)."""
        return {
            "model_version": self.model_version,
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "rows": str(self.rows),
        }

    def finished(self) -> profiles.Profile:
        """The window's profile, its metadata attached."""
        assert self.profile is not None, "a window is only written once it has rows"
        return self.profile.finish(self.metadata())


class ProfileSink(Protocol):
    """Where finished windows go."""

    def write(self, window: ProfileWindow) -> None: ...


class FsspecProfileSink:
    """Writes windows under a directory or fsspec URL (layout in the module docstring)."""

    def __init__(self, store_url: str | Path) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(str(store_url))
        self.local = "file" in _protocols(self.fs)

    def write(self, window: ProfileWindow) -> None:
        """Write the window's profile, then its sidecar (the sidecar marks the window complete)."""
        directory = f"{self.root.rstrip('/')}/{_safe_name(window.model_version)}"
        base = f"{directory}/{window.start.strftime('%Y%m%dT%H%M%SZ')}"
        stem, segment = base, 0
        while self.fs.exists(stem + profiles.PROFILE_SUFFIX):
            segment += 1
            stem = f"{base}.{segment}"
        sidecar = {**window.metadata(), "rows": window.rows, "written_at": datetime.now(UTC).isoformat()}
        if self.local:
            profiles.write_profile(window.finished(), Path(stem + profiles.PROFILE_SUFFIX))
            profiles.write_bytes_atomic(Path(stem + SIDECAR_SUFFIX), json.dumps(sidecar, indent=2).encode())
        else:
            self.fs.makedirs(directory, exist_ok=True)
            self.fs.pipe_file(stem + profiles.PROFILE_SUFFIX, window.finished().serialize())
            self.fs.pipe_file(stem + SIDECAR_SUFFIX, json.dumps(sidecar, indent=2).encode())


@dataclass(frozen=True)
class StoredWindow:
    """A complete window in the profile store: its sidecar metadata, and where its profile is."""

    metadata: dict[str, Any]
    profile_path: str
    fs: Any = field(repr=False)

    @property
    def rows(self) -> int:
        """Rows profiled in the window."""
        return int(self.metadata["rows"])

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether the window shares any instant with [start, end)."""
        begins = datetime.fromisoformat(self.metadata["window_start"])
        return datetime.fromisoformat(self.metadata["window_end"]) > start and begins < end

    def read_bytes(self) -> bytes:
        """The window's serialised profile."""
        return self.fs.cat_file(self.profile_path)


def stored_windows(store_url: str | Path, model_version: str | None = None) -> list[StoredWindow]:
    """Complete windows (those with a sidecar) under ``store_url``, of one model version or all; by path."""
    fs, root = fsspec.core.url_to_fs(str(store_url))
    directory = f"{root.rstrip('/')}/{_safe_name(model_version) if model_version is not None else '*'}"
    if not fs.exists(root):
        return []
    return [
        StoredWindow(json.loads(fs.cat_file(path)), path[: -len(SIDECAR_SUFFIX)] + profiles.PROFILE_SUFFIX, fs)
        for path in sorted(fs.glob(f"{directory}/*{SIDECAR_SUFFIX}"))
    ]


def count_profiled_rows(store_url: str | Path) -> int:
    """Total rows of every window written under ``store_url`` (sum of the sidecars' ``rows``)."""
    return sum(window.rows for window in stored_windows(store_url))


class ProfileBuffer:
    """Thread-safe row buffer whose background thread profiles rows into time windows (see the module docstring)."""

    def __init__(
        self,
        store_url: str | Path | None = None,
        *,
        window_seconds: float = 300.0,
        flush_seconds: float = 1.0,
        flush_rows: int = 1000,
        max_pending_rows: int = 100_000,
        sink: ProfileSink | None = None,
        clock: Callable[[], float] = time.time,
        process: bool = False,
    ) -> None:
        if window_seconds <= 0 or flush_seconds <= 0 or flush_rows <= 0 or max_pending_rows <= 0:
            raise ValueError("window_seconds, flush_seconds, flush_rows and max_pending_rows must be positive")
        if process:
            if sink is not None or store_url is None:
                raise ValueError("a profiling process writes to a store_url (a sink object stays in this process)")
            self._tracker: _Tracker = _ProcessTracker(str(store_url))
        else:
            if sink is None:
                if store_url is None:
                    raise ValueError("give a store_url or a sink")
                sink = FsspecProfileSink(store_url)
            self._tracker = _InlineTracker(sink)
        self.window_seconds = float(window_seconds)
        self.flush_seconds = float(flush_seconds)
        self.flush_rows = flush_rows
        self.max_pending_rows = max_pending_rows
        self.clock = clock
        self.dropped_rows = 0  # rows refused because the buffer was full (the drain thread fell behind)
        self.failed_rows = 0  # rows whylogs could not profile or the sink could not write
        self.written_rows = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[float, Mapping[str, Any]]] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drain_lock = threading.Lock()  # one drainer at a time: the thread, or stop() without a thread
        self._window: ProfileWindow | None = None
        self._thread: threading.Thread | None = None

    def add(self, row: Mapping[str, Any]) -> None:
        """Queue one row (its ``model_version`` key names the model); O(1), never profiles or writes.

        The row is kept by reference: do not mutate it afterwards. Rows beyond ``max_pending_rows``
        are dropped and counted in ``dropped_rows`` rather than growing memory without bound.
        """
        with self._lock:
            if len(self._pending) >= self.max_pending_rows:
                self.dropped_rows += 1
                return
            self._pending.append((self.clock(), row))
            if len(self._pending) >= self.flush_rows:
                self._wake.set()

    @property
    def pending_rows(self) -> int:
        """Rows queued and not yet profiled."""
        with self._lock:
            return len(self._pending)

    def start(self) -> None:
        """Start the background drain thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        try:
            self._tracker.open()
        except ProfilerLost:  # profiling must not stop the service: the next drain tries again
            log.exception("could not start the profiling process")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="profile-buffer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Drain every queued row, write the open (partial) window and stop the thread; True if all done in time."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("profile buffer did not finish within %.1f s; %d rows pending", timeout, self.pending_rows)
                return False
            self._thread = None
        self.drain(final=True)  # no thread, or rows added after it finished
        self._tracker.close()
        return True

    def drain(self, final: bool = False) -> None:
        """Profile every queued row, close windows that have ended; ``final`` also closes the open window."""
        with self._drain_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                self._profile(batch)
            if self._window is not None and (final or self.clock() >= self._window.end.timestamp()):
                self._close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.drain()
            except Exception:  # the thread must survive a bad batch; the rows are counted as failed
                log.exception("profiling live traffic failed")
        try:
            self.drain(final=True)
        except Exception:
            log.exception("profiling live traffic failed at stop")

    def _profile(self, batch: list[tuple[float, Mapping[str, Any]]]) -> None:
        """Track consecutive rows of the same window and version together."""
        group: list[Mapping[str, Any]] = []
        key: tuple[str, float] | None = None
        for arrived, row in batch:
            version = str(row.get(VERSION_KEY) or UNKNOWN_VERSION)
            start = math.floor(arrived / self.window_seconds) * self.window_seconds
            window = self._window
            if window is not None and window.model_version == version:
                start = max(start, window.start.timestamp())  # a late row joins the open window, never reopens one
            if (version, start) != key:
                self._track(group)
                group = []
                key = (version, start)
                self._open(version, start)
            group.append(row)
        self._track(group)

    def _open(self, version: str, start: float) -> None:
        window = self._window
        if window is not None and (window.model_version, window.start.timestamp()) == (version, start):
            return
        if window is not None:
            self._close()
        self._window = ProfileWindow(
            model_version=version,
            start=datetime.fromtimestamp(start, UTC),
            end=datetime.fromtimestamp(start + self.window_seconds, UTC),
        )

    def _track(self, rows: list[Mapping[str, Any]]) -> None:
        if not rows:
            return
        window = self._window
        assert window is not None
        try:
            self._tracker.track(window, rows)
        except ProfilerLost:  # the child died with this window's profile: its rows so far are lost too
            self.failed_rows += len(rows) + window.rows
            log.exception("lost %d rows of live traffic", len(rows) + window.rows)
            window.rows = 0
            return
        except Exception:  # a bad batch must not kill the thread or the window: count it and go on
            self.failed_rows += len(rows)
            log.exception("could not profile %d rows of live traffic", len(rows))
            return
        window.rows += len(rows)

    def _close(self) -> None:
        window, self._window = self._window, None
        if window is None or window.rows == 0:
            return
        try:
            self._tracker.write(window)
        except Exception:
            self.failed_rows += window.rows
            log.exception(
                "could not write the profile of %d rows (model %s, window %s)",
                window.rows,
                window.model_version,
                window.start.isoformat(),
            )
            return
        self.written_rows += window.rows


class ProfilerLost(RuntimeError):
    """The profiling process died: the profiles of its open windows are gone."""


class _Tracker(Protocol):
    """Where rows become profiles and finished windows are written; raises on failure."""

    def open(self) -> None: ...

    def track(self, window: ProfileWindow, rows: list[Mapping[str, Any]]) -> None: ...

    def write(self, window: ProfileWindow) -> None: ...

    def close(self) -> None: ...


class _InlineTracker:
    """The profiler in the calling thread, profiles on the window objects, finished windows to a sink."""

    def __init__(self, sink: ProfileSink) -> None:
        self.sink = sink

    def open(self) -> None:
        return None

    def track(self, window: ProfileWindow, rows: list[Mapping[str, Any]]) -> None:
        frame = pd.DataFrame.from_records(rows).drop(columns=[VERSION_KEY], errors="ignore")
        if window.profile is None:
            window.profile = profiles.PROFILER.tracker(window.start)
        window.profile.track(frame)

    def write(self, window: ProfileWindow) -> None:
        self.sink.write(window)

    def close(self) -> None:
        return None


class _ProcessTracker:
    """The same work in a child process (spawned), driven by synchronous messages over a pipe.

    The child keeps the open windows' profiles and writes finished windows to the store itself. It
    ignores SIGTERM and SIGINT, which a service's process group receives on shutdown, so the last
    window still reaches it; it exits when told to, or when the pipe closes (the parent died). A
    child found dead raises ProfilerLost once (the buffer counts the open window's rows as failed)
    and is replaced at the next call.
    """

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self._process: Any = None
        self._connection: Any = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def open(self) -> None:
        """Start the child (and wait until it is ready) unless it runs."""
        if self.pid is None:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # never fork a process that has threads
            parent, child = context.Pipe()
            self._process = context.Process(
                target=_profile_in_child, args=(child, self.store_url), name="profile-writer", daemon=True
            )
            self._process.start()
            child.close()
            self._connection = parent
            # Wait until the child ignores SIGTERM: a shutdown signal must not find it still starting.
            try:
                ready = parent.poll(120) and parent.recv() == ("ready",)
            except (EOFError, OSError):
                ready = False
            if not ready:
                self._process.kill()
                self._process = self._connection = None
                raise ProfilerLost("the profiling process did not start")

    def track(self, window: ProfileWindow, rows: list[Mapping[str, Any]]) -> None:
        self._call("track", window, rows)

    def write(self, window: ProfileWindow) -> None:
        self._call("write", window, window.rows)

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._connection.send(("stop",))
            self._connection.recv()
        except (EOFError, OSError):
            pass
        self._process.join(10)
        self._connection.close()
        self._process = self._connection = None

    def _call(self, kind: str, window: ProfileWindow, payload: Any) -> None:
        if self._process is not None and not self._process.is_alive():
            self._process = self._connection = None
            raise ProfilerLost("the profiling process died")
        self.open()
        message = (kind, window.model_version, window.start.timestamp(), window.end.timestamp(), payload)
        try:
            self._connection.send(message)
            reply = self._connection.recv()  # waits without the GIL while the child works
        except (EOFError, OSError) as exc:
            self._process = self._connection = None
            raise ProfilerLost(f"the profiling process died ({type(exc).__name__})") from exc
        if reply[0] != "ok":
            raise RuntimeError(f"the profiling process failed: {reply[1]}")


def _profile_in_child(connection: Any, store_url: str) -> None:
    """The child of ``_ProcessTracker``: answers each message with ("ok",) or ("error", message)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent decides when to stop (after the last window)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection.send(("ready",))
    tracker = _InlineTracker(FsspecProfileSink(store_url))
    windows: dict[tuple[str, float], ProfileWindow] = {}
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            connection.send(("ok",))
            return
        kind, version, start, end, payload = message
        key = (version, start)
        try:
            if kind == "track":
                window = windows.get(key) or ProfileWindow(
                    version, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
                )
                windows[key] = window
                tracker.track(window, payload)
            else:
                window = windows.pop(key)  # KeyError: its rows were tracked by a child that died
                window.rows = payload
                tracker.write(window)
            connection.send(("ok",))
        except Exception as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}"))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _safe_name(name: str) -> str:
    """A model version usable as one path segment."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or UNKNOWN_VERSION
