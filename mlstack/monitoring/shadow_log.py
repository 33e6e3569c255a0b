"""The shadow-score log: the champion's and the challenger's score of every application the service scored.

Append-only JSON Lines segments under one directory (``Settings.shadow_dir``):

    <shadow_dir>/<opened at, 20250101T120000Z>-<pid>-<random>.jsonl    one segment per writer (service worker)

Each line is one ``ShadowRecord``. A writer writes whole lines and flushes after every batch, and
fsyncs when it is closed (the service closes it on SIGTERM, after the last batch). A reader skips a
torn last line (a writer killed mid-write) and counts it, so a crash loses at most the line being
written, never the segment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

import pandas as pd

SEGMENT_SUFFIX = ".jsonl"
# The application fields a record carries: what joins it to the loan book once the outcome is known.
APPLICATION_FIELDS = ("customer_id", "zipcode", "loan_amount", "loan_term_months", "loan_purpose")

DecidedBy = Literal["champion", "challenger"]


@dataclass(frozen=True)
class ShadowRecord:
    """Both models' answers for one scored application, with what identifies the request and the models."""

    request_id: str  # assigned by the service to each scored application
    scored_at: datetime  # when the champion scored it (UTC)
    customer_id: int
    zipcode: str
    loan_amount: float
    loan_term_months: int
    loan_purpose: str
    feature_service: str  # the versioned Feast feature service both models read (e.g. credit_risk_v1)
    model_name: str
    threshold: float
    champion_version: str
    champion_probability: float
    champion_decision: str
    challenger_version: str
    challenger_probability: float
    challenger_decision: str
    decided_by: DecidedBy = "champion"  # whose decision the client got
    ab_share: float = 0.0  # A/B mode's challenger share when it was scored (0: shadow only)

    def to_json(self) -> str:
        """One JSON line (no newline); ``scored_at`` in ISO 8601."""
        fields = dict(self.__dict__)  # shallow: dataclasses.asdict deep-copies every value (most of the cost)
        fields["scored_at"] = self.scored_at.isoformat()
        return json.dumps(fields, separators=(",", ":"))


RECORD_COLUMNS = tuple(field.name for field in dataclasses.fields(ShadowRecord))


class ShadowLog:
    """Appends records to this writer's own segment (opened at the first append); not thread-safe: one writer."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self._file: IO[str] | None = None

    def append(self, records: Sequence[ShadowRecord]) -> None:
        """Write the records as whole lines and flush them to the operating system."""
        if not records:
            return
        handle = self._open()
        handle.write("".join(record.to_json() + "\n" for record in records))
        handle.flush()

    def close(self) -> None:
        """Flush, fsync and close the segment (idempotent)."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            opened = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            self.path = self.directory / f"{opened}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
            self._file = self.path.open("x", encoding="utf-8")  # "x": never append to another writer's segment
        return self._file


@dataclass(frozen=True)
class ShadowLogContents:
    """Every record of a shadow log as a frame (columns ``RECORD_COLUMNS``, ``scored_at`` UTC); torn lines skipped."""

    records: pd.DataFrame
    torn_lines: int
    segments: int


def read_shadow_log(directory: Path) -> ShadowLogContents:
    """All records under ``directory`` (none if it does not exist), oldest first.

    A line that is not valid JSON is skipped and counted only when it is a segment's last line (a
    torn write); anywhere else the segment is corrupt and ValueError names the file and line.
    """
    rows: list[dict[str, object]] = []
    torn = 0
    paths = sorted(Path(directory).glob(f"*{SEGMENT_SUFFIX}")) if Path(directory).is_dir() else []
    for path in paths:
        lines = path.read_text(encoding="utf-8").split("\n")
        complete, last = lines[:-1], lines[-1]  # a whole segment ends with a newline: `last` is ""
        for number, line in enumerate(complete, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"shadow log segment {path} is corrupt at line {number}: {exc}") from exc
        if last:
            torn += 1
    frame = pd.DataFrame.from_records(rows, columns=list(RECORD_COLUMNS))
    frame["scored_at"] = pd.to_datetime(frame["scored_at"], utc=True, format="ISO8601").dt.as_unit("us")
    frame = frame.astype(
        {
            "customer_id": "int64",
            "loan_amount": "float64",
            "loan_term_months": "int64",
            "threshold": "float64",
            "ab_share": "float64",
            "champion_probability": "float64",
            "challenger_probability": "float64",
            "champion_version": "str",
            "challenger_version": "str",
            "zipcode": "str",
        }
    )
    frame = frame.sort_values("scored_at", kind="stable").reset_index(drop=True)
    return ShadowLogContents(frame, torn, len(paths))
