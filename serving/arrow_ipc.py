"""Reading an Arrow IPC stream from an untrusted client: every check before any compute.

Arrow's readers trust what they read. A stream whose list or string offsets point past their
buffers reads fine (the arrays are zero-copy views of the body) and then crashes the process in
the first compute kernel that follows them (SIGSEGV); non-monotonic offsets read out of bounds
silently; compressed buffers are inflated by the reader to whatever size the sender declares. So a
request body goes through `read_stream`, which

1. walks the stream's messages without decoding them (`pa.ipc.MessageReader`: metadata and body
   bytes only) and reads each record batch's flatbuffer header: its row count, its buffers' places
   in the body, and whether the body is compressed. A compressed buffer starts with its
   uncompressed length (an int64, Arrow IPC format); those lengths are summed and bounded BEFORE
   anything is decompressed (Arrow then checks that each buffer inflates to exactly its declared
   length, so the declared sum bounds the memory). Rows are bounded the same way, and so is the
   number of batches;
2. accepts only the column types the product documents (integers, floats, booleans, strings,
   nulls, lists of integers / strings / nulls, and vectors: lists and fixed-size lists of float32 /
   float64), refuses duplicate and empty column names and dictionary batches. The byte bound of
   step 1 sums every buffer of the batch, a list's child values included, so a vector column
   counts with all its floats;
3. decodes, then runs Arrow's full validation (`validate(full=True)`: offsets monotonic and inside
   their buffers, buffer sizes, UTF-8) on every column before any kernel touches it.

Every refusal is a `StreamError` with the HTTP status and the field to name (400 for a broken
stream, 413 for a decoded size over the limit, 422 for a type or name the server does not take).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

# A stream may carry its candidates in several record batches (a client writing in chunks); many
# thousands of tiny batches would cost per-batch overhead and prove nothing useful.
MAX_BATCHES = 64

# Message header types (Arrow format, Message.fbs: union MessageHeader)
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3


class StreamError(ValueError):
    """A request stream the server refuses; `status` is the HTTP status, `field` what to name."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------------------------
# the flatbuffer header of one message (just what the checks need)
# ---------------------------------------------------------------------------------------------


class _Flat:
    """A bounds-checked reader of one flatbuffer (Arrow has verified its structure already when
    it framed the message; every read here still checks its bounds)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _read(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise StreamError("body", "broken Arrow IPC stream: message metadata out of bounds")
        return int(struct.unpack_from(fmt, self.buf, pos)[0])

    def root(self) -> int:
        return self._read("<I", 0)

    def field(self, table: int, index: int) -> int | None:
        """The position of field `index` of the table at `table`, or None when it is absent."""
        vtable = table - self._read("<i", table)
        vsize = self._read("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self._read("<H", vtable + slot)
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._read(fmt, pos)

    def ref(self, table: int, index: int) -> int | None:
        """The target of an offset field (a sub-table or a vector), or None when absent."""
        pos = self.field(table, index)
        return None if pos is None else pos + self._read("<I", pos)

    def vector_of_pairs(self, vec: int | None) -> list[tuple[int, int]]:
        """A vector of 16-byte structs of two int64 (FieldNode, Buffer)."""
        if vec is None:
            return []
        n = self._read("<I", vec)
        if vec + 4 + 16 * n > len(self.buf):
            raise StreamError("body", "broken Arrow IPC stream: message metadata out of bounds")
        flat = struct.unpack_from(f"<{2 * n}q", self.buf, vec + 4)
        return list(zip(flat[::2], flat[1::2], strict=True))


@dataclass
class _BatchHeader:
    rows: int
    buffers: list[tuple[int, int]]  # (offset, length) in the message body
    compressed: bool


def _batch_header(metadata: bytes) -> tuple[int, _BatchHeader | None]:
    """(message header type, the record batch header when it is one)."""
    fb = _Flat(metadata)
    message = fb.root()
    kind = fb.scalar(message, 1, "<B")
    if kind != _RECORD_BATCH:
        return kind, None
    batch = fb.ref(message, 2)
    if batch is None:
        raise StreamError("body", "broken Arrow IPC stream: a record batch message without its header")
    return kind, _BatchHeader(
        rows=fb.scalar(batch, 0, "<q"),
        buffers=fb.vector_of_pairs(fb.ref(batch, 2)),
        compressed=fb.ref(batch, 3) is not None,
    )


def _decoded_bytes(header: _BatchHeader, body: memoryview) -> int:
    """The bytes the batch's buffers take once decoded (their uncompressed lengths if compressed)."""
    total = 0
    for offset, length in header.buffers:
        if offset < 0 or length < 0 or offset + length > len(body):
            raise StreamError("body", "broken Arrow IPC stream: a buffer lies outside the message body")
        if not header.compressed or length == 0:
            total += length
            continue
        if length < 8:
            raise StreamError("body", "broken Arrow IPC stream: a compressed buffer without its length")
        declared = struct.unpack_from("<q", body, offset)[0]
        if declared < -1:
            raise StreamError("body", "broken Arrow IPC stream: a negative uncompressed length")
        total += length - 8 if declared == -1 else declared  # -1: this buffer was left uncompressed
    return total


# ---------------------------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------------------------


def _scalar_ok(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    )


def vector_float_ok(t: pa.DataType) -> bool:
    """The element types of a vector: float32 and float64 (float16 is not taken: numpy and the
    transform would widen it anyway; a client sends float32)."""
    return t in (pa.float32(), pa.float64())


def type_ok(t: pa.DataType) -> bool:
    """A column type a request may use (see ACCEPTED_TYPES)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        v = t.value_type
        return (
            pa.types.is_integer(v)
            or pa.types.is_string(v)
            or pa.types.is_large_string(v)
            or pa.types.is_null(v)
            or vector_float_ok(v)
        )
    if pa.types.is_fixed_size_list(t):  # a vector feature's natural type
        return vector_float_ok(t.value_type)
    return _scalar_ok(t)


ACCEPTED_TYPES = (
    "integers, floats, booleans, strings, nulls, lists (list / large_list) of integers, strings or "
    "nulls, and vectors: list / large_list / fixed_size_list of float32 or float64"
)


def check_schema(schema: pa.Schema, where: str = "candidates") -> None:
    names = schema.names
    if any(not n for n in names):
        raise StreamError(where, "a column without a name", status=422)
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise StreamError(f"{where}.{dup[0]}", "duplicate column name", status=422)
    for f in schema:
        if not type_ok(f.type):
            raise StreamError(
                f"{where}.{f.name}",
                f"unsupported column type {f.type} (accepted: {ACCEPTED_TYPES})",
                status=422,
            )


# ---------------------------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------------------------


def read_stream(body: bytes, max_decoded_bytes: int, max_rows: int) -> pa.Table:
    """Check, decode and fully validate an IPC stream (see the module docstring). StreamError on
    anything the server must not touch."""
    buf = pa.py_buffer(body)
    try:
        messages = pa.ipc.MessageReader.open_stream(buf)
        schema_msg = messages.read_next_message()
    except StopIteration:
        raise StreamError("body", "empty Arrow IPC stream (no schema message)") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        raise StreamError("body", f"broken Arrow IPC stream: {e}") from None
    if _batch_header(schema_msg.metadata.to_pybytes())[0] != _SCHEMA:
        raise StreamError("body", "broken Arrow IPC stream: it does not start with a schema")
    try:
        schema = pa.ipc.read_schema(schema_msg)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise StreamError("body", f"broken Arrow IPC stream: unreadable schema ({e})") from None
    check_schema(schema)

    decoded = rows = 0
    checked: list[pa.ipc.Message] = []
    while True:
        try:
            msg = messages.read_next_message()
        except StopIteration:
            break
        except (pa.ArrowException, OSError, ValueError) as e:
            raise StreamError("body", f"broken Arrow IPC stream: {e}") from None
        kind, header = _batch_header(msg.metadata.to_pybytes())
        if kind == _DICTIONARY_BATCH:
            raise StreamError("body", "dictionary batches are not accepted (send plain columns)", status=422)
        if header is None:
            raise StreamError("body", f"broken Arrow IPC stream: unexpected message type {kind}")
        checked.append(msg)
        if len(checked) > MAX_BATCHES:
            raise StreamError("body", f"more than {MAX_BATCHES} record batches; send the candidates in fewer")
        rows += max(header.rows, 0)
        if header.rows < 0 or rows > max_rows:
            raise StreamError(
                "candidates", f"{rows} candidates is over this server's limit of {max_rows} per request", 422
            )
        decoded += _decoded_bytes(header, memoryview(msg.body) if msg.body is not None else memoryview(b""))
        if decoded > max_decoded_bytes:
            raise StreamError(
                "body",
                f"decodes to more than {max_decoded_bytes} bytes (runtime.max_body_bytes, which bounds the "
                "decompressed size)",
                status=413,
            )

    try:  # the messages already read and checked: decoded, not framed a second time
        table = pa.Table.from_batches([pa.ipc.read_record_batch(m, schema) for m in checked], schema)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise StreamError("body", f"broken Arrow IPC stream: {e}") from None
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            col.validate(full=True)
        except (pa.ArrowException, ValueError) as e:
            raise StreamError(f"candidates.{name}", f"invalid Arrow data: {e}") from None
    return table
