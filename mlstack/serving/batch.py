"""Batch scoring: a table of applications scored with the served model on point-in-time features.

Each row is scored as of its own `event_timestamp`: its features come from Feast's historical
retrieval (the offline store, the same feature service and TTLs as training), not from the online
store. The matrix is built by `model_input.encode` and scored by `Scorer.probabilities`, the same
code the service's request path uses, and the decision by `Scorer.decision`. Rows go through in
chunks (memory bounded by the chunk, not the table); the output parquet appears under its final
name only when complete (temp file + rename).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlstack.data.schema import REQUEST_FIELDS, TIMESTAMP
from mlstack.errors import StackError
from mlstack.features.store import FEATURE_SERVICE_VERSION, get_historical_features, get_store
from mlstack.serving.runtime import build_scorer, load_model
from mlstack.serving.scoring import Scorer, load_feature_ttls
from mlstack.settings import Settings
from mlstack.training import model_input

INPUT_COLUMNS = ("customer_id", "zipcode", "event_timestamp", *REQUEST_FIELDS)
SCORE_COLUMNS = ("default_probability", "decision", "model_name", "model_version", "feature_service_version")
_ROW = "__batch_row"  # input order, carried through the join (Feast may reorder rows)


class BatchScoringError(StackError):
    """The batch input cannot be scored; the message names the file or column."""


@dataclass(frozen=True)
class BatchResult:
    """What a batch run scored and wrote."""

    inputs: list[Path]
    output: Path
    rows: int
    chunks: int
    seconds: float
    model_name: str
    model_version: str
    feature_service_version: str

    def summary(self) -> str:
        """One line for logs."""
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (
            f"scored {self.rows:,} applications in {self.chunks} chunks with {self.model_name} v{self.model_version} "
            f"(feature service v{self.feature_service_version}) in {self.seconds:.1f}s ({rate:,.0f} rows/s) "
            f"-> {self.output}"
        )


def input_files(pattern: str) -> list[Path]:
    """The parquet files a path or glob names, sorted; raises naming the pattern when there are none."""
    files = sorted(Path(name) for name in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
    files = [path for path in files if path.is_file()]
    if not files:
        raise BatchScoringError(f"no input file matches {pattern!r}")
    return files


def read_applications(files: list[Path]) -> pd.DataFrame:
    """The applications of `files`, in file then row order; raises naming a file that lacks a column."""
    frames = []
    for path in files:
        names = pq.read_schema(path).names
        absent = [name for name in INPUT_COLUMNS if name not in names]
        if absent:
            raise BatchScoringError(f"{path} lacks column(s) {absent}; a batch input needs {list(INPUT_COLUMNS)}")
        frames.append(pd.read_parquet(path))
    frame = pd.concat(frames, ignore_index=True)
    stamps = pd.to_datetime(frame["event_timestamp"], utc=True)
    if stamps.isna().any():
        raise BatchScoringError(f"event_timestamp has {int(stamps.isna().sum())} missing value(s): each row needs one")
    return frame.assign(event_timestamp=stamps.astype(pd.DatetimeTZDtype("us", "UTC")))


def score_chunk(scorer: Scorer, store: object, chunk: pd.DataFrame) -> pd.DataFrame:
    """`chunk` with the score columns appended: features as of each row's event_timestamp, in input order."""
    entities = chunk[list(INPUT_COLUMNS)].assign(**{_ROW: range(len(chunk))})
    joined = get_historical_features(store, entities)  # type: ignore[arg-type]
    if len(joined) != len(chunk):
        raise BatchScoringError(f"historical retrieval returned {len(joined)} rows for {len(chunk)} applications")
    joined = joined.sort_values(_ROW, kind="stable").reset_index(drop=True)
    probabilities = scorer.probabilities(model_input.encode(joined))
    out = chunk.reset_index(drop=True).copy()
    out["default_probability"] = probabilities
    out["decision"] = [scorer.decision(float(probability)) for probability in probabilities]
    out["model_name"] = scorer.model_name
    out["model_version"] = scorer.model_version
    out["feature_service_version"] = FEATURE_SERVICE_VERSION
    return out


def output_schema(applications: pd.DataFrame) -> pa.Schema:
    """The output's Arrow schema: the input's columns, then the score columns."""
    sample = pa.Schema.from_pandas(applications, preserve_index=False)  # from the values: object columns need them
    fields = [sample.field(name) for name in sample.names if name != "event_timestamp"]
    fields.insert(list(sample.names).index("event_timestamp"), pa.field("event_timestamp", TIMESTAMP))
    return pa.schema(
        [
            *fields,
            pa.field("default_probability", pa.float64()),
            pa.field("decision", pa.string()),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("feature_service_version", pa.string()),
        ]
    )


def score_applications(
    settings: Settings,
    pattern: str,
    output: Path,
    progress: Callable[[int, int], object] = lambda done, total: None,
) -> BatchResult:
    """Score every application of `pattern` with the served model (bento's, else @champion); write `output`."""
    started = time.perf_counter()
    files = input_files(pattern)
    applications = read_applications(files)
    model = load_model(settings)
    store = get_store(settings)
    scorer = build_scorer(settings, model, load_feature_ttls(store))  # booster + calibrator, as the service
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    schema = output_schema(applications)
    total, chunks, step = len(applications), 0, settings.batch_chunk_rows
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            for start in range(0, total, step):
                scored = score_chunk(scorer, store, applications.iloc[start : start + step])
                writer.write_table(pa.Table.from_pandas(scored, schema=schema, preserve_index=False))
                chunks += 1
                progress(min(start + step, total), total)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    return BatchResult(
        files,
        output,
        total,
        chunks,
        time.perf_counter() - started,
        model.name,
        model.version,
        FEATURE_SERVICE_VERSION,
    )
