"""whylogs profiles of frames (the training reference, later live traffic), stored as whylogs binaries."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pandas as pd

from mlstack.errors import StackError
from mlstack.settings import TELEMETRY_OFF

if TYPE_CHECKING:
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

PROFILE_SUFFIX = ".bin"


class ProfileError(StackError):
    """A profile could not be read or written."""


def _whylogs() -> ModuleType:
    """Import whylogs lazily (slow import) with its usage telemetry off: offline, it would hang at exit."""
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", TELEMETRY_OFF["WHYLOGS_NO_ANALYTICS"])
    import whylogs

    return whylogs


def profile_frame(frame: pd.DataFrame) -> DatasetProfileView:
    """A whylogs profile view of every column of `frame` (counts, types, distribution sketches)."""
    if frame.columns.empty:
        raise ProfileError("cannot profile a frame without columns")
    return _whylogs().log(pandas=frame).view()


def write_profile(view: DatasetProfileView, path: Path) -> Path:
    """Write `view` as a whylogs binary at `path` atomically (temp file + rename); returns the path."""
    path = Path(path)
    write_bytes_atomic(path, view.serialize())
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


def read_profile(path: Path) -> DatasetProfileView:
    """Read a profile written by `write_profile`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ProfileError(f"no profile at {path}") from exc
    return deserialize_profile(data, path)


def deserialize_profile(data: bytes, source: object) -> DatasetProfileView:
    """A profile view from whylogs binary `data`; `source` names where it came from in errors."""
    _whylogs()
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

    try:
        return DatasetProfileView.deserialize(data)
    except Exception as exc:  # whylogs raises assorted errors on foreign or truncated bytes
        raise ProfileError(f"{source} is not a whylogs profile ({type(exc).__name__}: {exc})") from exc
