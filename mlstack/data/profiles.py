"""Profiles of frames (the training reference, live traffic) behind one small interface; whylogs implements it.

Every other module profiles, merges, stores and reads profiles through `Profiler` and `Profile`
(here, not in `monitoring/`, because training writes the reference profile and training sits below
monitoring). What drift scoring reads from a profile is profiler-neutral: a `NumericSketch` (counts,
nulls, a quantile sketch's CDF) or a `CategoryCounts` (counts per value). whylogs is the one
implementation (`WhylogsProfiler`), chosen in `PROFILER`; replacing it means writing another class
with these methods (docs/monitoring.md, "Replacing whylogs"). No WhyLabs writer or SaaS call is used.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlstack.errors import StackError
from mlstack.settings import TELEMETRY_OFF

if TYPE_CHECKING:
    from whylogs.core import DatasetProfile
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

PROFILE_SUFFIX = ".bin"


class ProfileError(StackError):
    """A profile could not be read or written."""


@dataclass(frozen=True, eq=False)
class NumericSketch:
    """A numeric column in a profile: non-null count, nulls (None and NaN), and its distribution sketch.

    `support` holds the sketch's quantiles on an even grid of ranks (ascending values): the points at
    which two CDFs are compared. `rank_error` is the sketch's normalised rank error (0: exact).
    """

    count: int
    nulls: int
    support: npt.NDArray[np.float64]
    rank_error: float
    _cdf: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]] = field(repr=False)

    def cdf(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The share of non-null values at or below each of `points`, shape (len(points),)."""
        return self._cdf(np.asarray(points, dtype=np.float64))


@dataclass(frozen=True)
class CategoryCounts:
    """A categorical column in a profile: the count of each (frequent) value, and nulls."""

    counts: Mapping[str, int]
    nulls: int


class Profile(Protocol):
    """A profile of a frame: mergeable, serialisable, and readable per column."""

    @property
    def metadata(self) -> dict[str, str]:
        """String metadata stored with the profile (a live window's version, bounds, rows)."""
        ...

    def columns(self) -> frozenset[str]:
        """Names of the profiled columns."""
        ...

    def count(self, column: str) -> int:
        """Values seen in `column`, nulls included."""
        ...

    def merge(self, other: Profile) -> Profile:
        """The profile of both frames together."""
        ...

    def serialize(self) -> bytes:
        """The profile as bytes (`Profiler.deserialize` reads them back)."""
        ...

    def numeric(self, column: str) -> NumericSketch | None:
        """`column`'s distribution sketch, or None when it holds no numbers."""
        ...

    def categorical(self, column: str) -> CategoryCounts | None:
        """`column`'s counts per value, or None when it holds no strings."""
        ...


class ProfileTracker(Protocol):
    """A profile being built from batches of rows (a live-traffic window)."""

    def track(self, frame: pd.DataFrame) -> None:
        """Add the rows of `frame`."""
        ...

    def finish(self, metadata: Mapping[str, str]) -> Profile:
        """The profile of every row tracked so far, with `metadata` attached."""
        ...


class Profiler(Protocol):
    """Makes and reads profiles."""

    def profile(self, frame: pd.DataFrame) -> Profile:
        """The profile of every column of `frame`."""
        ...

    def tracker(self, timestamp: datetime) -> ProfileTracker:
        """An empty profile of the data at `timestamp`, to track rows into."""
        ...

    def deserialize(self, data: bytes, source: object) -> Profile:
        """A profile from `Profile.serialize` bytes; `source` names where they came from in errors."""
        ...


# Ranks at which a numeric sketch's quantiles are taken as CDF comparison points (0.1 % apart).
SUPPORT_RANKS = np.linspace(0.0, 1.0, 1001)


def _whylogs() -> ModuleType:
    """Import whylogs lazily (slow import) with its usage telemetry off: offline, it would hang at exit."""
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", TELEMETRY_OFF["WHYLOGS_NO_ANALYTICS"])
    import whylogs

    return whylogs


class WhylogsProfile:
    """A `Profile` backed by a whylogs `DatasetProfileView` (`view`: for whylogs-specific code only)."""

    def __init__(self, view: DatasetProfileView) -> None:
        self.view = view

    @property
    def metadata(self) -> dict[str, str]:
        """String metadata stored with the profile."""
        return dict(self.view.metadata or {})

    def columns(self) -> frozenset[str]:
        """Names of the profiled columns."""
        return frozenset(self.view.get_columns())

    def count(self, column: str) -> int:
        """Values seen in `column`, nulls included (0 if absent)."""
        metric = self._metric(column, "counts")
        return 0 if metric is None else int(metric.n.value)

    def merge(self, other: Profile) -> Profile:
        """The merged whylogs view."""
        if not isinstance(other, WhylogsProfile):
            raise ProfileError(f"cannot merge a whylogs profile with a {type(other).__name__}")
        return WhylogsProfile(self.view.merge(other.view))

    def serialize(self) -> bytes:
        """The whylogs binary."""
        return bytes(self.view.serialize())

    def numeric(self, column: str) -> NumericSketch | None:
        """The column's KLL sketch (whylogs' `distribution` metric), or None when it holds no numbers."""
        metric = self._metric(column, "distribution")
        if metric is None or metric.kll.value.is_empty():
            return None
        kll = metric.kll.value
        return NumericSketch(
            count=int(kll.get_n()),
            nulls=self._nulls(column),
            support=np.asarray(kll.get_quantiles(SUPPORT_RANKS.tolist()), dtype=np.float64),
            rank_error=float(kll.normalized_rank_error(False)) if kll.is_estimation_mode() else 0.0,
            _cdf=lambda points: np.asarray(kll.get_cdf(points.tolist())[:-1], dtype=np.float64),
        )

    def categorical(self, column: str) -> CategoryCounts | None:
        """The column's frequent strings (whylogs' `frequent_items`), or None when it holds none."""
        metric = self._metric(column, "frequent_items")
        if metric is None:
            return None
        items = metric.to_summary_dict().get("frequent_strings") or []
        if not items:
            return None
        return CategoryCounts({str(item.value): int(item.est) for item in items}, self._nulls(column))

    def _nulls(self, column: str) -> int:
        metric = self._metric(column, "counts")
        return 0 if metric is None else int(metric.null.value)

    def _metric(self, column: str, name: str) -> Any:
        profile = self.view.get_column(column)
        return None if profile is None else profile.get_metric(name)


class _WhylogsTracker:
    """A whylogs `DatasetProfile` that rows are tracked into."""

    def __init__(self, profile: DatasetProfile) -> None:
        self.profile = profile

    def track(self, frame: pd.DataFrame) -> None:
        self.profile.track(pandas=frame)

    def finish(self, metadata: Mapping[str, str]) -> Profile:
        self.profile.metadata.update(metadata)
        return WhylogsProfile(self.profile.view())


class WhylogsProfiler:
    """The `Profiler` of the stack: whylogs (local profiles only; no WhyLabs writer)."""

    def profile(self, frame: pd.DataFrame) -> Profile:
        """A whylogs profile of every column of `frame` (counts, types, distribution sketches)."""
        return WhylogsProfile(_whylogs().log(pandas=frame).view())

    def tracker(self, timestamp: datetime) -> ProfileTracker:
        """An empty whylogs `DatasetProfile` at `timestamp`."""
        _whylogs()
        from whylogs.core import DatasetProfile

        return _WhylogsTracker(DatasetProfile(dataset_timestamp=timestamp))

    def deserialize(self, data: bytes, source: object) -> Profile:
        """A profile from whylogs binary `data`."""
        _whylogs()
        from whylogs.core.view.dataset_profile_view import DatasetProfileView

        try:
            return WhylogsProfile(DatasetProfileView.deserialize(data))
        except Exception as exc:  # whylogs raises assorted errors on foreign or truncated bytes
            raise ProfileError(f"{source} is not a whylogs profile ({type(exc).__name__}: {exc})") from exc


PROFILER: Profiler = WhylogsProfiler()  # the one place that chooses the implementation


def profile_frame(frame: pd.DataFrame) -> Profile:
    """The profile of every column of `frame`."""
    if frame.columns.empty:
        raise ProfileError("cannot profile a frame without columns")
    return PROFILER.profile(frame)


def write_profile(profile: Profile, path: Path) -> Path:
    """Write `profile` at `path` atomically (temp file + rename); returns the path."""
    path = Path(path)
    write_bytes_atomic(path, profile.serialize())
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_profile(path: Path) -> Profile:
    """Read a profile written by `write_profile`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ProfileError(f"no profile at {path}") from exc
    return deserialize_profile(data, path)


def deserialize_profile(data: bytes, source: object) -> Profile:
    """A profile from `Profile.serialize` bytes; `source` names where it came from in errors."""
    return PROFILER.deserialize(data, source)
