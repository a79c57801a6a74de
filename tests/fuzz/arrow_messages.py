"""Arrow IPC streams mutated where it matters: the messages' declared lengths and the buffers.

`messages` locates each message of a stream we wrote (its flatbuffer's int64 fields as `Slot`s,
its body buffers) and `buffer_roles` names each buffer, so `arrow_byte_mutations` can rewrite
what the headers declare (row counts, null counts, buffer offsets and lengths, uncompressed sizes)
as well as overwrite, truncate and splice bytes, and `arrow_bad_offsets` can rewrite list and
string offsets in place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

from tests.fuzz.shape import OK, Case, ModelShape, _arrow_headers, one_in, pick
from tests.fuzz.valid import arrow_table, request_metadata, valid_arrow_requests, valid_requests, write_stream
from tests.fuzz.values import INT64_MAX, INT64_MIN


@dataclass
class Slot:
    """An int64 in an IPC message's flatbuffer (a declared length, null count, buffer offset...)."""

    what: str
    pos: int  # absolute byte position in the stream


@dataclass
class Message:
    """One IPC message of a stream, located: the fields a mutation may rewrite."""

    kind: str  # "schema" | "dictionary" | "record batch" | "other"
    start: int
    body_start: int
    body_len: int
    slots: list[Slot]
    buffers: list[tuple[int, int]]  # (absolute start, length) of each body buffer
    compressed: bool


def _u16(b: bytes, p: int) -> int:
    return struct.unpack_from("<H", b, p)[0]


def _u32(b: bytes, p: int) -> int:
    return struct.unpack_from("<I", b, p)[0]


def _i32(b: bytes, p: int) -> int:
    return struct.unpack_from("<i", b, p)[0]


def _i64(b: bytes, p: int) -> int:
    return struct.unpack_from("<q", b, p)[0]


def _field(b: bytes, table: int, i: int) -> int | None:
    """Absolute position of field `i` of the flatbuffer table at `table`, None when absent."""
    vt = table - _i32(b, table)
    if 4 + 2 * i >= _u16(b, vt):
        return None
    off = _u16(b, vt + 4 + 2 * i)
    return table + off if off else None


def _deref(b: bytes, p: int) -> int:
    return p + _u32(b, p)


def messages(data: bytes) -> list[Message]:
    """The messages of an IPC stream we wrote ourselves (Message -> RecordBatch flatbuffers).

    Layout (format/Message.fbs): Message{version, header_type, header, bodyLength, ...};
    RecordBatch{length, nodes: [FieldNode{length, null_count}], buffers: [Buffer{offset, length}],
    compression}; DictionaryBatch{id, data: RecordBatch, isDelta}.
    """
    out: list[Message] = []
    pos = 0
    while pos + 8 <= len(data):
        if _u32(data, pos) != 0xFFFFFFFF:
            break
        meta_len = _i32(data, pos + 4)
        if meta_len == 0:
            break
        meta = pos + 8
        root = _deref(data, meta)
        htype_at = _field(data, root, 1)
        htype = data[htype_at] if htype_at is not None else 0
        body_len_at = _field(data, root, 3)
        body_len = _i64(data, body_len_at) if body_len_at is not None else 0
        body_start = meta + meta_len
        kind = {1: "schema", 2: "dictionary", 3: "record batch"}.get(htype, "other")
        slots: list[Slot] = [] if body_len_at is None else [Slot("bodyLength", body_len_at)]
        buffers: list[tuple[int, int]] = []
        compressed = False
        header_at = _field(data, root, 2)
        rb = _deref(data, header_at) if header_at is not None and htype in (2, 3) else None
        if rb is not None and htype == 2:
            data_at = _field(data, rb, 1)
            rb = _deref(data, data_at) if data_at is not None else None
        if rb is not None:
            if (p := _field(data, rb, 0)) is not None:
                slots.append(Slot("length", p))
            if (p := _field(data, rb, 1)) is not None:
                vec = _deref(data, p)
                for i in range(_u32(data, vec)):
                    e = vec + 4 + 16 * i
                    slots += [Slot(f"node[{i}].length", e), Slot(f"node[{i}].null_count", e + 8)]
            if (p := _field(data, rb, 2)) is not None:
                vec = _deref(data, p)
                for i in range(_u32(data, vec)):
                    e = vec + 4 + 16 * i
                    slots += [Slot(f"buffer[{i}].offset", e), Slot(f"buffer[{i}].length", e + 8)]
                    buffers.append((body_start + _i64(data, e), _i64(data, e + 8)))
            compressed = _field(data, rb, 3) is not None
        out.append(Message(kind, pos, body_start, body_len, slots, buffers, compressed))
        pos = body_start + body_len
    return out


def buffer_roles(schema: pa.Schema) -> list[tuple[str, str]]:
    """(column, role) of each body buffer, in IPC order, for flat and list-of-flat columns:
    validity, then offsets (strings, lists), then data; a list's child follows it (a fixed-size
    list has no offsets: its validity, then its child's buffers)."""
    out: list[tuple[str, str]] = []

    def visit(name: str, t: pa.DataType) -> None:
        out.append((name, "validity"))
        if pa.types.is_string(t) or pa.types.is_binary(t):
            out.extend([(name, "offsets32"), (name, "data")])
        elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            out.extend([(name, "offsets64"), (name, "data")])
        elif pa.types.is_list(t):
            out.append((name, "offsets32"))
            visit(f"{name}.item", t.value_type)
        elif pa.types.is_large_list(t):
            out.append((name, "offsets64"))
            visit(f"{name}.item", t.value_type)
        elif pa.types.is_fixed_size_list(t):
            visit(f"{name}.item", t.value_type)
        else:
            out.append((name, "data"))

    for f in schema:
        visit(f.name, f.type)
    return out


INT64_EDGES = [-1, 0, 1, 2, 7, 2**31 - 1, 2**31, 2**32, 2**62, INT64_MAX, INT64_MIN, -(2**31)]


@st.composite
def arrow_byte_mutations(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid Arrow request (plain, compressed, several batches) mutated at the byte level:
    random byte overwrites anywhere, truncation, inserted/deleted bytes, and rewrites of what the
    message headers declare: record batch length, per-column lengths and null counts, buffer
    offsets and lengths, body length, and a compressed buffer's uncompressed size."""
    a = draw(valid_arrow_requests(shape))
    data = bytearray(a.body)
    msgs = messages(a.body)
    steps: list[str] = []
    slots = [s for m in msgs for s in m.slots]
    prefixes = [
        (s, ln) for m in msgs if m.compressed for s, ln in m.buffers if ln >= 8
    ]  # compressed buffers start with their uncompressed length
    # what the headers declare first (positions are those of the valid stream), then raw bytes
    header_edits = draw(st.integers(0, 3)) if slots else 0
    for _ in range(header_edits):
        if prefixes and draw(one_in(4)):
            start, _ = pick(draw, prefixes)
            v = draw(st.one_of(st.sampled_from([*INT64_EDGES, 1 << 40, 10**12]), st.integers(-1, 1 << 30)))
            struct.pack_into("<q", data, start, v)
            steps.append(f"uncompressed length of the buffer at byte {start} = {v}")
        else:
            s = pick(draw, slots)
            v = draw(st.one_of(st.sampled_from(INT64_EDGES), st.integers(INT64_MIN, INT64_MAX)))
            struct.pack_into("<q", data, s.pos, v)
            steps.append(f"{s.what} = {v}")
    for _ in range(draw(st.integers(0 if header_edits else 1, 3))):
        op = draw(st.sampled_from(["overwrite", "overwrite", "truncate", "splice"]))
        if op == "truncate":
            cut = draw(st.integers(0, len(data)))
            del data[cut:]
            steps.append(f"truncated at {cut}")
        elif op == "splice":
            pos = draw(st.integers(0, len(data)))
            b = draw(st.binary(max_size=9))
            n = draw(st.integers(0, 9))
            data[pos : pos + n] = b
            steps.append(f"at {pos}: {n} bytes -> {b!r}")
        elif data:
            pos = draw(st.integers(0, len(data) - 1))
            b = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(b)] = b
            steps.append(f"overwrite at {pos}: {b!r}")
    note = f"compression={a.compression} chunk={a.chunk} n={a.request.n}"
    return Case("arrow.bytes", bytes(data), _arrow_headers(), None, note=note, steps=steps)


@st.composite
def arrow_bad_offsets(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid uncompressed Arrow request whose list or string offsets are rewritten in place:
    non-monotonic ([0, 6, 2]), past the end of the data, negative, huge, not starting at 0; or
    whose list column is built with `pa.ListArray.from_buffers` over such offsets."""
    r = draw(valid_requests(shape))
    table = arrow_table(shape, r)
    steps: list[str] = []
    if draw(st.booleans()):  # a list column built from bad offsets, as pyarrow lets one build it
        n = r.n
        child_len = draw(st.integers(0, 8))
        offsets = draw(st.lists(st.integers(-3, child_len + 4), min_size=n + 1, max_size=n + 1))
        listy = [c for c in shape.columns if c.is_list] or list(shape.columns)
        name = pick(draw, listy).name
        child = pa.array(np.arange(child_len, dtype=np.int64))
        try:
            col = pa.ListArray.from_buffers(
                pa.list_(pa.int64()), n, [None, pa.py_buffer(np.array(offsets, np.int32).tobytes())], 0, 0,
                children=[child],
            )  # fmt: skip
            table = table.drop_columns([name]) if name in table.column_names else table
            table = table.append_column(name, col)
            body = write_stream(table, request_metadata(r, drop=name))
            steps.append(f"{name} = ListArray.from_buffers(offsets={offsets}, values=arange({child_len}))")
            return Case("arrow.offsets", body, _arrow_headers(), None, note=f"n={n}", steps=steps)
        except (pa.ArrowException, ValueError, IndexError) as e:  # pyarrow refused (or its writer did)
            steps.append(f"from_buffers refused ({type(e).__name__}); rewriting bytes instead")
    body = bytearray(write_stream(table, request_metadata(r)))
    roles = buffer_roles(table.schema)
    batches = [m for m in messages(bytes(body)) if m.kind == "record batch"]
    targets = [
        (m, i, roles[i]) for m in batches for i in range(len(m.buffers)) if roles[i][1].startswith("offsets")
    ]
    if not targets:
        return Case("arrow.offsets", bytes(body), _arrow_headers(), frozenset({r.n}), OK, note="no offsets")
    m, i, (col, role) = pick(draw, targets)
    start, length = m.buffers[i]
    width = 4 if role == "offsets32" else 8
    count = length // width
    lo, hi = (-(2**31), 2**31 - 1) if width == 4 else (INT64_MIN, INT64_MAX)
    base = list(np.frombuffer(bytes(body[start : start + length]), f"<i{width}"))
    new = draw(
        st.one_of(
            st.permutations(range(count)).map(lambda p: [base[j] for j in p]),  # non-monotonic
            st.lists(st.integers(-3, (base[-1] if base else 0) + 50), min_size=count, max_size=count),
            st.lists(st.sampled_from([0, -1, lo, hi, 6, 2]), min_size=count, max_size=count),
            st.lists(st.integers(lo, hi), min_size=count, max_size=count),
        )
    )
    struct.pack_into(f"<{count}{'i' if width == 4 else 'q'}", body, start, *new)
    steps.append(f"{col} {role}: {list(map(int, base))} -> {list(map(int, new))}")
    return Case("arrow.offsets", bytes(body), _arrow_headers(), None, note=f"n={r.n}", steps=steps)
