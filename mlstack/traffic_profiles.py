"""Live-traffic profiling off the request path: buffer rows, profile them with whylogs in the background.

Request threads call ``ProfileBuffer.add(row)``, which only appends to a list under a lock. A
background thread drains the list every ``flush_seconds`` (sooner once ``flush_rows`` are waiting)
into the current window's whylogs profile. Windows are aligned to wall-clock multiples of
``window_seconds`` (by each row's arrival time) and hold one model version: a window closes when
the clock passes its end, when a row of another model version arrives, or on ``stop()`` (what the
service's SIGTERM handler calls, so a partial window is not lost).

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
from typing import TYPE_CHECKING, Any, Protocol

import fsspec
import pandas as pd

from mlstack import profiling

if TYPE_CHECKING:
    from whylogs.core import DatasetProfile
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

log = logging.getLogger(__name__)

VERSION_KEY = "model_version"
UNKNOWN_VERSION = "unknown"
SIDECAR_SUFFIX = ".json"


@dataclass
class ProfileWindow:
    """One finished (or open) window: its model version, bounds, row count and whylogs profile."""

    model_version: str
    start: datetime
    end: datetime
    rows: int = 0
    profile: DatasetProfile | None = field(default=None, repr=False)

    def metadata(self) -> dict[str, str]:
        """The window's metadata as strings (whylogs metadata values must be strings)."""
        return {
            "model_version": self.model_version,
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "rows": str(self.rows),
        }

    def view(self) -> DatasetProfileView:
        """The whylogs view of the window, its metadata attached."""
        assert self.profile is not None, "a window is only written once it has rows"
        self.profile.metadata.update(self.metadata())
        return self.profile.view()


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
        while self.fs.exists(stem + profiling.PROFILE_SUFFIX):
            segment += 1
            stem = f"{base}.{segment}"
        sidecar = {**window.metadata(), "rows": window.rows, "written_at": datetime.now(UTC).isoformat()}
        if self.local:
            profiling.write_profile(window.view(), Path(stem + profiling.PROFILE_SUFFIX))
            profiling.write_bytes_atomic(Path(stem + SIDECAR_SUFFIX), json.dumps(sidecar, indent=2).encode())
        else:
            self.fs.makedirs(directory, exist_ok=True)
            self.fs.pipe_file(stem + profiling.PROFILE_SUFFIX, window.view().serialize())
            self.fs.pipe_file(stem + SIDECAR_SUFFIX, json.dumps(sidecar, indent=2).encode())


def count_profiled_rows(store_url: str | Path) -> int:
    """Total rows of every window written under ``store_url`` (sum of the sidecars' ``rows``)."""
    fs, root = fsspec.core.url_to_fs(str(store_url))
    if not fs.exists(root):
        return 0
    total = 0
    for path in fs.glob(f"{root.rstrip('/')}/*/*{SIDECAR_SUFFIX}"):
        total += int(json.loads(fs.cat_file(path))["rows"])
    return total


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
    ) -> None:
        if window_seconds <= 0 or flush_seconds <= 0 or flush_rows <= 0 or max_pending_rows <= 0:
            raise ValueError("window_seconds, flush_seconds, flush_rows and max_pending_rows must be positive")
        if sink is None:
            if store_url is None:
                raise ValueError("give a store_url or a sink")
            sink = FsspecProfileSink(store_url)
        self.sink = sink
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
            frame = pd.DataFrame.from_records(rows).drop(columns=[VERSION_KEY], errors="ignore")
            if window.profile is None:
                profiling._whylogs()  # telemetry off before whylogs is imported
                from whylogs.core import DatasetProfile

                window.profile = DatasetProfile(dataset_timestamp=window.start)
            window.profile.track(pandas=frame)
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
            self.sink.write(window)
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


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _safe_name(name: str) -> str:
    """A model version usable as one path segment."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or UNKNOWN_VERSION
