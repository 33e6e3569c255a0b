"""A Feast Redis online store that writes whole Arrow batches, with the same bytes as Feast's own writer.

Select it in ``feature_store.yaml`` with
``online_store: type: mlstack.features.redis_writer.ArrowRedisOnlineStore`` (plus the usual Redis
options). Reads, deletes and the per-row ``online_write_batch`` are Feast's ``RedisOnlineStore``,
unchanged; what it adds is ``write_arrow_batches``, which encodes a record batch column by column
(NumPy and Arrow kernels, no Python object per value), packs the HSET commands itself and pipelines
them over one connection, a chunk at a time.

Byte compatibility with Feast 0.67's writer (``RedisOnlineStore.online_write_batch`` fed by
``feast.utils._convert_arrow_to_proto``) is the contract:

- key: Feast's entity-key serialisation (version 3: the key names' prefix comes from Feast's own
  ``serialize_entity_key_prefix``) followed by the project name;
- fields: ``_mmh3("<view>:<feature>")`` from Feast's helpers, and ``_ts:<view>``;
- values: serialized ``feast.types.Value`` protos, tags taken from the proto descriptor; nulls and
  NaNs as the empty message, integer columns with nulls passing through float64 as in Feast, null
  timestamps as Feast's ``NULL_TIMESTAMP_INT_VALUE``;
- ``_ts``: a ``google.protobuf.Timestamp`` of the event time truncated to microseconds.

Column types without a vectorised encoder here (lists, maps, JSON, ...) are converted by Feast's own
``python_values_to_proto_values``, so they are correct, only not faster. The first rows of every
call are also encoded by Feast's converter and compared, so a Feast upgrade that changes the format
fails loudly instead of writing rows Feast cannot read.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from feast import FeatureView, RepoConfig, utils
from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType as ValueTypeProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from mlstack.errors import StackError

STORE_TYPE = "mlstack.features.redis_writer.ArrowRedisOnlineStore"
DEFAULT_CHUNK_ROWS = 10_000  # when the repo sets no online_write_batch_size: memory stays bounded
_CHECKED_ROWS = 16  # rows of each call cross-checked against Feast's own converter
_NULL_TIMESTAMP = -9223372036854775808  # what Feast stores for a null (NaT) UNIX_TIMESTAMP value
_FLOAT64_EXACT = 2**53  # ints up to this survive Feast's float64 detour (int columns with nulls)


class ArrowRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis options, unchanged; only the type selects this class."""

    type: Literal["mlstack.features.redis_writer.ArrowRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class RedisWriteError(StackError):
    """Redis refused or lost some writes; ``rows_written`` rows (of this call) were acknowledged before.

    ``refused``: Redis answered the writes with an error (out of memory, a read-only replica), which a
    retry would meet again; otherwise the connection was lost, which a retry may not.
    """

    def __init__(self, message: str, rows_written: int, refused: bool = False) -> None:
        super().__init__(message)
        self.rows_written = rows_written
        self.refused = refused


# redis-py prefixes a pipeline's error reply with the failing command, binary arguments and all.
_PIPELINE_COMMAND = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
_MAX_ERROR_CHARS = 300


def describe_redis_error(exc: BaseException) -> str:
    """``OutOfMemoryError: command not allowed ...``: what Redis answered, one printable line, no command bytes."""
    text = _PIPELINE_COMMAND.sub("", str(exc))
    text = "".join(char if char.isprintable() else " " for char in text).strip()[:_MAX_ERROR_CHARS]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EncodingMismatchError(StackError):
    """The vectorised encoding differs from Feast's own: Feast changed its format; nothing was written."""


@dataclass(frozen=True)
class EncodedRows:
    """One chunk as Redis will store it: a key, the ``_ts`` value and one value per feature, per row."""

    keys: pa.Array  # binary: entity key + project
    timestamps: pa.Array  # binary: serialized google.protobuf.Timestamp
    timestamp_nanos: np.ndarray  # int64 nanoseconds since the epoch (for Feast's dedup comparison)
    values: list[pa.Array]  # binary: serialized feast Value, one array per feature, in view order

    @property
    def num_rows(self) -> int:
        return len(self.keys)

    def row(self, index: int) -> tuple[bytes, list[bytes]]:
        """Row ``index`` as (key, [ts, value per feature])."""
        fields = [self.timestamps[index].as_py(), *(column[index].as_py() for column in self.values)]
        return self.keys[index].as_py(), fields

    def take(self, mask: np.ndarray) -> EncodedRows:
        """The rows where ``mask`` is true."""
        keep = pa.array(mask)
        return EncodedRows(
            keys=pc.filter(self.keys, keep),
            timestamps=pc.filter(self.timestamps, keep),
            timestamp_nanos=self.timestamp_nanos[mask],
            values=[pc.filter(column, keep) for column in self.values],
        )


class ArrowRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store plus ``write_arrow_batches``: vectorised, pipelined, chunked writes."""

    def write_arrow_batches(
        self,
        config: RepoConfig,
        feature_view: FeatureView,
        batches: Iterable[pa.RecordBatch],
        progress: Callable[[int], Any] | None = None,
        acknowledged_rows: Callable[[EncodedRows], Any] | None = None,
    ) -> int:
        """Write record batches (one row per entity key, columns named as the view's) like Feast; return rows written.

        Batches are cut to the repo's ``online_write_batch_size`` rows (default 10,000): one chunk
        is encoded, sent and acknowledged before the next is read, and ``progress`` gets the rows
        Redis acknowledged for it. With ``skip_dedup: false`` the stored ``_ts`` is read first and
        older-or-equal rows are skipped, as Feast does; skipped rows are not written nor counted.
        A refused or lost write raises RedisWriteError carrying the rows acknowledged so far
        (earlier chunks stay written, as with Feast's batches). ``acknowledged_rows`` gets each chunk's
        rows once Redis acknowledged all of them (what ``read_back`` checks later).
        """
        online_config = config.online_store
        assert isinstance(online_config, RedisOnlineStoreConfig)
        if online_config.redis_type == RedisType.redis_cluster:
            raise StackError(
                "write_arrow_batches supports redis_type redis and redis_sentinel, not redis_cluster: "
                "materialise through Feast's writer (MLSTACK_MATERIALIZE_WRITER=feast)"
            )
        encoder = ViewEncoder(config, feature_view)
        client = self._get_client(online_config)
        chunk_rows = config.materialization_config.online_write_batch_size or DEFAULT_CHUNK_ROWS
        written = 0
        checked = False
        for chunk in _chunks(batches, chunk_rows):
            rows = encoder.encode(chunk)
            if not checked:
                encoder.check_against_feast(chunk, rows)
                checked = True
            if not online_config.skip_dedup:
                rows = rows.take(_newer_than_stored(client, encoder.ts_field, rows))
            acknowledged = 0
            if rows.num_rows:
                acknowledged = _send(client, encoder.commands(rows), rows.num_rows, encoder.replies_per_row, written)
            written += acknowledged
            if progress:
                progress(acknowledged)
            if acknowledged_rows and rows.num_rows:
                acknowledged_rows(rows)
        return written


class ViewEncoder:
    """Encodes record batches of one feature view into Feast's Redis keys, fields and values."""

    def __init__(self, config: RepoConfig, feature_view: FeatureView) -> None:
        self.view = feature_view
        self.project = config.project
        self.key_version = config.entity_key_serialization_version
        view_name = compute_versioned_name(feature_view, config.registry.enable_online_feature_view_versioning)
        self.ts_field = f"_ts:{view_name}".encode()
        self.features = [(f.name, f.dtype.to_value_type()) for f in feature_view.features]
        self.feature_fields = [_mmh3(f"{view_name}:{name}") for name, _ in self.features]
        # Feast's engine keys rows by the view's entity columns, typed by their declared dtype.
        self.join_keys = {column.name: column.dtype.to_value_type() for column in feature_view.entity_columns}
        batch_source = feature_view.batch_source
        if batch_source is None:
            raise StackError(f"feature view {feature_view.name!r} has no batch source to materialise from")
        self.timestamp_column = batch_source.timestamp_field
        online_config = config.online_store
        assert isinstance(online_config, RedisOnlineStoreConfig)
        self.key_ttl = online_config.key_ttl_seconds
        self.replies_per_row = 2 if self.key_ttl else 1

    def encode(self, batch: pa.RecordBatch) -> EncodedRows:
        """Keys, ``_ts`` and feature values of every row of ``batch``, as Feast would write them."""
        for name in [*self.join_keys, *(name for name, _ in self.features), self.timestamp_column]:
            if name not in batch.schema.names:
                raise ValueError(f"Column {name} not found in table")
        keys = self._keys(batch)
        timestamps, nanos = _timestamps(batch.column(self.timestamp_column), self.view.name)
        values = [_values(batch.column(name), value_type) for name, value_type in self.features]
        return EncodedRows(keys, timestamps, nanos, values)

    def commands(self, rows: EncodedRows) -> pa.Buffer:
        """The RESP bytes of ``HSET key _ts:<view> ts <field> <value> ...`` per row (and EXPIRE if set)."""
        pieces: list[Any] = [f"*{2 + 2 * (1 + len(self.features))}\r\n$4\r\nHSET\r\n$".encode()]
        key_length = _decimal_lengths(rows.keys)
        pieces += [key_length, b"\r\n", rows.keys, b"\r\n" + _bulk(self.ts_field) + b"$"]
        pieces += [_decimal_lengths(rows.timestamps), b"\r\n", rows.timestamps, b"\r\n"]
        for field, column in zip(self.feature_fields, rows.values, strict=True):
            pieces += [_bulk(field) + b"$", _decimal_lengths(column), b"\r\n", column, b"\r\n"]
        if self.key_ttl:
            ttl = str(self.key_ttl).encode()
            pieces += [b"*3\r\n$6\r\nEXPIRE\r\n$", key_length, b"\r\n", rows.keys, b"\r\n" + _bulk(ttl)]
        joined = _join(_merge_constants(pieces))
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
        return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))

    def check_against_feast(self, batch: pa.RecordBatch, rows: EncodedRows) -> None:
        """Encode the first rows with Feast's own converter; raise EncodingMismatchError on any difference."""
        sample = batch.slice(0, min(_CHECKED_ROWS, batch.num_rows))
        for index, (key, fields) in enumerate(self.feast_rows(sample)):
            ours_key, ours_fields = rows.row(index)
            if (ours_key, ours_fields) != (key, fields):
                names = ["_ts", *(name for name, _ in self.features)]
                diff = [n for n, a, b in zip(names, ours_fields, fields, strict=True) if a != b]
                raise EncodingMismatchError(
                    f"the Arrow writer's encoding of {self.view.name!r} differs from Feast's "
                    f"(row {index}: {'key' if ours_key != key else ', '.join(diff)}); "
                    "use MLSTACK_MATERIALIZE_WRITER=feast until mlstack.features.redis_writer is updated"
                )

    def feast_rows(self, batch: pa.RecordBatch) -> Iterator[tuple[bytes, list[bytes]]]:
        """(key, [ts, value per feature]) per row, computed by Feast's own code path."""
        for entity_key, values, event_ts, _ in utils._convert_arrow_to_proto(batch, self.view, self.join_keys):
            key = _redis_key(self.project, entity_key, entity_key_serialization_version=self.key_version)
            ts = Timestamp()
            ts.FromDatetime(utils.make_tzaware(event_ts))
            yield key, [ts.SerializeToString(), *(values[name].SerializeToString() for name, _ in self.features)]

    def _keys(self, batch: pa.RecordBatch) -> pa.Array:
        names = list(self.join_keys) if len(self.join_keys) == 1 else sorted(self.join_keys)
        parts = [_entity_value(batch.column(name), self.join_keys[name]) for name in names]
        if self.key_version != 3 or any(part is None for part in parts):
            return self._keys_by_feast(batch)
        prefix = serialize_entity_key_prefix(names, entity_key_serialization_version=3)
        return _join([prefix, *parts, self.project.encode()])

    def _keys_by_feast(self, batch: pa.RecordBatch) -> pa.Array:
        """Feast's per-row key serialisation: for key types or versions without a vectorised path."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey

        columns = {
            name: python_values_to_proto_values(batch.column(name).to_numpy(zero_copy_only=False), value_type)
            for name, value_type in self.join_keys.items()
        }
        names = list(self.join_keys)
        keys = [
            serialize_entity_key(
                EntityKey(join_keys=names, entity_values=[columns[n][i] for n in names]),
                entity_key_serialization_version=self.key_version,
            )
            + self.project.encode()
            for i in range(batch.num_rows)
        ]
        return pa.array(keys, pa.binary())


# --------------------------------------------------------------------------- value encoding


def _wire_tag(message: Any, field_name: str) -> int:
    """The one-byte protobuf tag of a scalar field, from the message descriptor."""
    field = message.DESCRIPTOR.fields_by_name[field_name]
    wire = {
        FieldDescriptor.TYPE_DOUBLE: 1,
        FieldDescriptor.TYPE_FLOAT: 5,
        FieldDescriptor.TYPE_STRING: 2,
        FieldDescriptor.TYPE_BYTES: 2,
    }.get(field.type, 0)  # int32, int64, bool: varint
    tag = (field.number << 3) | wire
    assert tag < 0x80, field_name
    return tag


_VALUE_FIELDS = {
    ValueType.INT32: "int32_val",
    ValueType.INT64: "int64_val",
    ValueType.DOUBLE: "double_val",
    ValueType.FLOAT: "float_val",
    ValueType.STRING: "string_val",
    ValueType.BYTES: "bytes_val",
    ValueType.BOOL: "bool_val",
    ValueType.UNIX_TIMESTAMP: "unix_timestamp_val",
}
_TAGS = {value_type: _wire_tag(ValueProto, name) for value_type, name in _VALUE_FIELDS.items()}
_SECONDS_TAG = _wire_tag(Timestamp, "seconds")
_NANOS_TAG = _wire_tag(Timestamp, "nanos")
_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


def _values(column: pa.Array, value_type: ValueType) -> pa.Array:
    """Serialized feast Value of every element (b"" for null), vectorised where the type allows."""
    encoded = _vectorised_values(column, value_type)
    if encoded is not None:
        return encoded
    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
    return pa.array([proto.SerializeToString() for proto in protos], pa.binary())


def _vectorised_values(column: pa.Array, value_type: ValueType) -> pa.Array | None:
    """The vectorised encodings; None where Feast's per-value conversion must be used instead."""
    kind = column.type
    tag = _TAGS.get(value_type)
    if tag is None:
        return None
    if value_type in (ValueType.INT64, ValueType.INT32) and kind in _INT_TYPES:
        # Feast converts via to_numpy(): with nulls that is a float64 array, NaN for null.
        array = np.asarray(column.to_numpy(zero_copy_only=False))
        valid = ~np.isnan(array) if array.dtype.kind == "f" else np.ones(len(array), dtype=bool)
        ints = np.where(valid, array, 0).astype(np.int64)
        if value_type == ValueType.INT32 and (ints.min(initial=0) < -(2**31) or ints.max(initial=0) >= 2**31):
            return None  # Feast raises on out-of-range int32: let its converter say so
        return _tagged_varints(tag, ints.view(np.uint64), valid)
    if value_type == ValueType.BOOL and pa.types.is_boolean(kind):
        valid = _validity(column)
        bits = np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint64)
        return _tagged_varints(tag, bits, valid)
    if value_type == ValueType.UNIX_TIMESTAMP and pa.types.is_timestamp(kind):
        seconds = _floor_seconds(column)
        seconds = np.where(_validity(column), seconds, _NULL_TIMESTAMP)
        return _tagged_varints(tag, seconds.view(np.uint64), np.ones(len(column), dtype=bool))
    if value_type == ValueType.DOUBLE and kind == pa.float64():
        return _tagged_fixed(tag, np.asarray(column.to_numpy(zero_copy_only=False), dtype="<f8"))
    if value_type == ValueType.FLOAT and kind == pa.float32():
        return _tagged_fixed(tag, np.asarray(column.to_numpy(zero_copy_only=False), dtype="<f4"))
    string_like = value_type == ValueType.STRING and (pa.types.is_string(kind) or pa.types.is_large_string(kind))
    bytes_like = value_type == ValueType.BYTES and (pa.types.is_binary(kind) or pa.types.is_large_binary(kind))
    if string_like or bytes_like:
        data = pc.cast(column, pa.binary())
        valid = _validity(column)
        lengths = np.asarray(pc.binary_length(data).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.uint64)
        header = _tagged_varints(tag, lengths, valid)
        return _join([header, data.fill_null(b"")])
    return None


def _entity_value(column: pa.Array, value_type: ValueType) -> pa.Array | None:
    """``<type><length><bytes>`` of each entity value as serialize_entity_key (v3) writes it; None if unsupported."""
    kind = column.type
    if column.null_count:
        return None  # Feast raises on a null entity value: let it
    if value_type == ValueType.INT64 and kind in _INT_TYPES:
        head = struct.pack("<II", ValueTypeProto.INT64, 8)
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype="<i8")
        return _fixed_width(head, values.view(np.uint8).reshape(-1, 8))
    if value_type == ValueType.STRING and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        data = pc.cast(column, pa.binary())
        lengths = np.asarray(pc.binary_length(data).to_numpy(zero_copy_only=False), dtype="<u4")
        head = _fixed_width(struct.pack("<I", ValueTypeProto.STRING), lengths.view(np.uint8).reshape(-1, 4))
        return _join([head, data])
    return None


def _timestamps(column: pa.Array, view: str) -> tuple[pa.Array, np.ndarray]:
    """Serialized google.protobuf.Timestamp of each event time (microseconds, as Feast keeps), and its nanos."""
    if not pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us"))
    if column.null_count:
        raise StackError(f"feature view {view!r}: {column.null_count} rows have no event timestamp")
    micros = _floor_units(column, 1_000_000)
    seconds, micro_part = np.divmod(micros, 1_000_000)
    nanos = micro_part * 1000
    # proto3 leaves zero fields out: seconds == 0 or nanos == 0 encode as nothing.
    seconds_part = _tagged_varints(_SECONDS_TAG, seconds.view(np.uint64), seconds != 0)
    nanos_part = _tagged_varints(_NANOS_TAG, nanos.view(np.uint64), nanos != 0)
    return _join([seconds_part, nanos_part]), seconds * 1_000_000_000 + nanos


def _floor_seconds(column: pa.Array) -> np.ndarray:
    """Whole seconds since the epoch (floored, as numpy's datetime64[s] cast does)."""
    return _floor_units(column, 1)


def _floor_units(column: pa.Array, per_second: int) -> np.ndarray:
    """The timestamps as int64 counts of 1/per_second seconds, floored; nulls as 0."""
    unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[column.type.unit]
    raw = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    if unit >= per_second:
        return np.floor_divide(raw, unit // per_second)
    return raw * (per_second // unit)


def _validity(column: pa.Array) -> np.ndarray:
    if not column.null_count:
        return np.ones(len(column), dtype=bool)
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _tagged_varints(tag: int, values: np.ndarray, present: np.ndarray) -> pa.Array:
    """``tag + varint(value)`` per row where ``present``, else b"" (uint64 two's complement, as protobuf)."""
    count = len(values)
    groups = ((values[:, None] >> np.arange(0, 70, 7, dtype=np.uint64)[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    nonzero = groups != 0
    width = np.where(nonzero.any(axis=1), 10 - np.argmax(nonzero[:, ::-1], axis=1), 1)
    groups |= (np.arange(10)[None, :] < (width - 1)[:, None]).astype(np.uint8) << 7
    matrix = np.empty((count, 11), dtype=np.uint8)
    matrix[:, 0] = tag
    matrix[:, 1:] = groups
    return _ragged(matrix, np.where(present, width + 1, 0))


def _tagged_fixed(tag: int, values: np.ndarray) -> pa.Array:
    """``tag + little-endian bytes`` per float, b"" for NaN (Feast's pd.isnull) and null."""
    size = values.dtype.itemsize
    matrix = np.empty((len(values), 1 + size), dtype=np.uint8)
    matrix[:, 0] = tag
    matrix[:, 1:] = values.view(np.uint8).reshape(-1, size)
    return _ragged(matrix, np.where(np.isnan(values), 0, 1 + size))


def _fixed_width(head: bytes, body: np.ndarray) -> pa.Array:
    """A constant ``head`` followed by each row of the uint8 matrix ``body``."""
    matrix = np.empty((body.shape[0], len(head) + body.shape[1]), dtype=np.uint8)
    matrix[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    matrix[:, len(head) :] = body
    return _ragged(matrix, np.full(body.shape[0], matrix.shape[1]))


def _ragged(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary array whose row i is the first ``lengths[i]`` bytes of ``matrix[i]``."""
    count, width = matrix.shape
    data = matrix[np.arange(width)[None, :] < lengths[:, None]]
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _join(parts: list[Any]) -> pa.Array:
    """Row-wise concatenation of binary arrays and constant bytes."""
    arguments = [pa.scalar(p, pa.binary()) if isinstance(p, bytes) else p for p in parts]
    return pc.binary_join_element_wise(*arguments, pa.scalar(b"", pa.binary()))


def _decimal_lengths(column: pa.Array) -> pa.Array:
    """Each element's byte length in ASCII decimal (the RESP bulk-string header)."""
    return pc.cast(pc.cast(pc.binary_length(column), pa.string()), pa.binary())


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _merge_constants(pieces: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


# --------------------------------------------------------------------------- Redis I/O


@dataclass(frozen=True)
class ReadBack:
    """What Redis holds for rows written earlier: how many are there as written, and what is wrong with the rest.

    ``missing_keys``: no hash at all; ``wrong_timestamps``: the hash's ``_ts:<view>`` is absent or not the
    value written; ``missing_fields``: the timestamp is right but a feature field is absent.
    """

    expected: int
    missing_keys: int = 0
    wrong_timestamps: int = 0
    missing_fields: int = 0

    @property
    def found(self) -> int:
        """Rows whose hash holds the written ``_ts`` and every feature field."""
        return self.expected - self.missing_keys - self.wrong_timestamps - self.missing_fields

    def __add__(self, other: ReadBack) -> ReadBack:
        return ReadBack(
            self.expected + other.expected,
            self.missing_keys + other.missing_keys,
            self.wrong_timestamps + other.wrong_timestamps,
            self.missing_fields + other.missing_fields,
        )


# Classifies rows inside Redis, a chunk per call: one round trip, no Python per row (a pipelined HMGET per
# row cost 4x the write). KEYS: the rows' keys; ARGV: the ``_ts`` field, the feature fields, then one
# written ``_ts`` per key. A null feature is stored as an empty value, so only an absent field (false) is missing.
_READ_BACK_SCRIPT = """
local fields = tonumber(ARGV[1])
local names = {}
for i = 1, fields do names[i] = ARGV[1 + i] end
local missing_keys, wrong, missing_fields = 0, 0, 0
for k = 1, #KEYS do
  local stored = redis.call('HMGET', KEYS[k], unpack(names))
  local absent = 0
  for i = 2, fields do if stored[i] == false then absent = absent + 1 end end
  if stored[1] == false and absent == fields - 1 then missing_keys = missing_keys + 1
  elseif stored[1] ~= ARGV[1 + fields + k] then wrong = wrong + 1
  elseif absent > 0 then missing_fields = missing_fields + 1 end
end
return {missing_keys, wrong, missing_fields}
"""
_READ_BACK_CHUNK = 5_000  # keys per script call: Redis serves nothing else while one runs (~5 ms)


def read_back(
    client: redis.Redis, ts_field: bytes, feature_fields: list[bytes], keys: pa.Array, timestamps: pa.Array
) -> ReadBack:
    """Check written rows in Redis, a server-side script per chunk: ``ts_field`` as written, every feature field set."""
    if len(keys) != len(timestamps):
        raise ValueError(f"{len(timestamps)} timestamps for {len(keys)} keys")
    script = client.register_script(_READ_BACK_SCRIPT)
    fields = [ts_field, *feature_fields]
    total = ReadBack(0)
    for start in range(0, len(keys), _READ_BACK_CHUNK):
        chunk_keys = keys.slice(start, _READ_BACK_CHUNK).to_pylist()
        chunk_ts = timestamps.slice(start, _READ_BACK_CHUNK).to_pylist()
        missing, wrong, absent = script(keys=chunk_keys, args=[len(fields), *fields, *chunk_ts])
        total += ReadBack(len(chunk_keys), int(missing), int(wrong), int(absent))
    return total


def _chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The batches cut to at most ``rows`` rows each (empty ones dropped)."""
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _send(client: redis.Redis, commands: pa.Buffer, rows: int, replies_per_row: int, written_before: int) -> int:
    """Send one chunk's commands on one connection and read every reply; return rows acknowledged.

    Error replies (e.g. OOM) are counted, not stopped at, so the count of written rows is exact.
    """
    pool = client.connection_pool
    connection = pool.get_connection()
    acknowledged = errors = 0
    first_error: Exception | None = None
    try:
        connection.send_packed_command([memoryview(commands)])
        for _ in range(rows):
            ok = True
            for _ in range(replies_per_row):
                try:
                    connection.read_response()
                except redis.ResponseError as exc:
                    ok = False
                    first_error = first_error or exc
            acknowledged += ok
            errors += not ok
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        connection.disconnect()
        raise RedisWriteError(
            f"lost the Redis connection mid-chunk ({describe_redis_error(exc)})", written_before + acknowledged
        ) from exc
    except BaseException:
        connection.disconnect()  # replies may be left unread: never hand this connection back as is
        raise
    finally:
        pool.release(connection)
    if errors:
        assert first_error is not None
        raise RedisWriteError(
            f"Redis refused {errors:,} of a chunk's {rows:,} rows ({describe_redis_error(first_error)})",
            written_before + acknowledged,
            refused=True,
        ) from first_error
    return acknowledged


def _newer_than_stored(client: redis.Redis, ts_field: bytes, rows: EncodedRows) -> np.ndarray:
    """Feast's dedup: keep a row only if its event time is after the stored ``_ts`` (and earlier rows')."""
    keys = rows.keys.to_pylist()
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, [ts_field])
        stored = [reply[0] for reply in pipe.execute()]
    keep = np.zeros(len(keys), dtype=bool)
    latest: dict[bytes, int] = {}
    for index, (key, previous, new) in enumerate(zip(keys, stored, rows.timestamp_nanos.tolist(), strict=True)):
        previous_nanos = 0
        if previous:
            ts = Timestamp()
            ts.ParseFromString(previous)
            previous_nanos = ts.seconds * 1_000_000_000 + ts.nanos
        seen = max(previous_nanos, latest.get(key, 0))
        if seen and new <= seen:
            continue
        latest[key] = new
        keep[index] = True
    return keep
