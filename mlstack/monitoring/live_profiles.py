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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import fsspec
import pandas as pd

from mlstack.background import BackgroundQueue, ChildWorker, InlineWorker, Worker, WorkerLost
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


class ProfileBuffer(BackgroundQueue[tuple[float, Mapping[str, Any]]]):
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
        if window_seconds <= 0:
            raise ValueError("window_seconds, flush_seconds, flush_rows and max_pending_rows must be positive")
        if process:
            if sink is not None or store_url is None:
                raise ValueError("a profiling process writes to a store_url (a sink object stays in this process)")
            worker: Worker = ChildWorker(partial(_profiler_for_store, str(store_url)), "profile-writer")
        else:
            if sink is None:
                if store_url is None:
                    raise ValueError("give a store_url or a sink")
                sink = FsspecProfileSink(store_url)
            worker = InlineWorker(_Profiler(sink))
        super().__init__(
            worker,
            name="profile-buffer",
            flush_seconds=flush_seconds,
            max_pending_rows=max_pending_rows,
            flush_rows=flush_rows,
        )
        self.window_seconds = float(window_seconds)
        self.clock = clock
        self.failed_rows = 0  # rows whylogs could not profile or the sink could not write
        self.written_rows = 0
        self._window: ProfileWindow | None = None

    def add(self, row: Mapping[str, Any]) -> None:
        """Queue one row (its ``model_version`` key names the model); O(1), never profiles or writes.

        The row is kept by reference: do not mutate it afterwards. Rows beyond ``max_pending_rows``
        are dropped and counted in ``dropped_rows`` rather than growing memory without bound.
        """
        self._put((self.clock(), row))

    def _drain(self, batch: list[tuple[float, Mapping[str, Any]]], final: bool) -> None:
        """Profile the rows; close the open window if it has ended (or ``final``)."""
        if batch:
            self._profile(batch)
        if self._window is not None and (final or self.clock() >= self._window.end.timestamp()):
            self._close()

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
            self._worker.call(_message("track", window, rows))
        except WorkerLost:  # the child died with this window's profile: its rows so far are lost too
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
            self._worker.call(_message("write", window, window.rows))
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


def _message(kind: str, window: ProfileWindow, payload: Any) -> tuple[str, str, float, float, Any]:
    """What the profiler needs to know of a window (plain values: it may be in a child process)."""
    return (kind, window.model_version, window.start.timestamp(), window.end.timestamp(), payload)


class _Profiler:
    """The Handler that profiles: keeps the open windows' profiles, writes finished windows to a sink.

    Messages: ("track", version, start, end, rows) adds rows to a window's profile; ("write",
    version, start, end, row count) writes the window and forgets it.
    """

    def __init__(self, sink: ProfileSink) -> None:
        self.sink = sink
        self.windows: dict[tuple[str, float], ProfileWindow] = {}

    def handle(self, message: tuple[str, str, float, float, Any]) -> None:
        kind, version, start, end, payload = message
        key = (version, start)
        if kind == "write":
            window = self.windows.pop(key)  # KeyError: its rows were tracked by a child that died
            window.rows = payload
            self.sink.write(window)
            return
        window = self.windows.get(key) or ProfileWindow(
            version, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        )
        self.windows[key] = window
        frame = pd.DataFrame.from_records(payload).drop(columns=[VERSION_KEY], errors="ignore")
        if window.profile is None:
            window.profile = profiles.PROFILER.tracker(window.start)
        window.profile.track(frame)

    def close(self) -> None:
        return None


def _profiler_for_store(store_url: str) -> _Profiler:
    """The profiling process's handler (built in the child: a sink does not cross processes)."""
    return _Profiler(FsspecProfileSink(store_url))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _safe_name(name: str) -> str:
    """A model version usable as one path segment."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or UNKNOWN_VERSION
