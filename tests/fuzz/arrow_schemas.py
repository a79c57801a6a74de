"""Arrow streams with random schemas, and compression bombs.

`arrow_types` draws Arrow types of every family (nested up to 3 deep) and `random_array` values
of them; `arrow_random_schemas` swaps a valid request's columns for such columns or builds a
schema of random columns with random metadata (`metadata_values`); `arrow_bombs` writes a
compressed body a few KB on the wire that inflates past the server's body limit.
"""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import strategies as st

from tests.fuzz.json_text import encode
from tests.fuzz.shape import TOO_LARGE, Case, ModelShape, _arrow_headers, one_in
from tests.fuzz.valid import arrow_table, request_metadata, valid_arrow_requests, valid_requests, write_stream
from tests.fuzz.values import json_values

FIXED_WIDTH = [
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
    pa.float16(), pa.float32(), pa.float64(), pa.date32(), pa.date64(), pa.time32("s"), pa.time64("ns"),
    pa.timestamp("s"), pa.timestamp("ns", tz="UTC"), pa.timestamp("us", tz="Asia/Kolkata"),
    pa.duration("ms"), pa.decimal128(10, 2), pa.decimal128(38, 0), pa.decimal256(76, 10),
    pa.month_day_nano_interval(),
]  # fmt: skip
VARIABLE = [pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.binary(3)]
VIEWS = [t() for t in (getattr(pa, "string_view", None), getattr(pa, "binary_view", None)) if t is not None]


def arrow_types() -> st.SearchStrategy[pa.DataType]:
    """Arrow types of every family: ints/floats/decimals/temporals, bool, null, strings and binaries
    (incl. views), and nested ones up to 3 deep: list, large_list, list_view, fixed_size_list,
    struct, map, dictionary, sparse and dense union, run-end encoded."""
    leaves = st.sampled_from([*FIXED_WIDTH, *VARIABLE, *VIEWS, pa.bool_(), pa.null()])

    def nested(kids: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
        names = st.text(max_size=4)
        opts: list[st.SearchStrategy[pa.DataType]] = [
            kids.map(pa.list_),
            kids.map(pa.large_list),
            st.builds(pa.list_, kids, st.integers(1, 3)),
            st.lists(st.builds(pa.field, names, kids), min_size=1, max_size=3).map(pa.struct),
            st.builds(pa.map_, st.sampled_from([pa.int32(), pa.string()]), kids),
            st.builds(
                pa.dictionary,
                st.sampled_from([pa.int8(), pa.int32(), pa.uint16(), pa.int64()]),
                st.sampled_from([pa.string(), pa.int64(), pa.float64(), pa.binary()]),
            ),
            st.lists(st.builds(pa.field, names, kids), min_size=1, max_size=3).map(
                lambda fs: pa.sparse_union(fs)
            ),
            st.lists(st.builds(pa.field, names, kids), min_size=1, max_size=3).map(
                lambda fs: pa.dense_union(fs)
            ),
            st.builds(
                pa.run_end_encoded,
                st.sampled_from([pa.int16(), pa.int32()]),
                st.sampled_from([pa.int64(), pa.float64(), pa.string()]),  # its constructor validates
            ),
        ]
        if hasattr(pa, "list_view"):
            opts += [kids.map(pa.list_view), kids.map(pa.large_list_view)]
        return st.one_of(*opts)

    return st.recursive(leaves, nested, max_leaves=4)


def _validity(draw: st.DrawFn, n: int) -> pa.Array | None:
    if draw(st.booleans()):
        return None
    return pa.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), pa.bool_())


def _offsets(draw: st.DrawFn, n: int) -> tuple[list[int], int]:
    lengths = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    offsets = [0, *np.cumsum(lengths).tolist()] if n else [0]
    return offsets, offsets[-1]


def _is_view(t: pa.DataType, name: str) -> bool:
    factory = getattr(pa, name, None)
    return factory is not None and t == factory()


def random_array(draw: st.DrawFn, t: pa.DataType, n: int) -> pa.Array:
    """`n` values of type `t`; fixed-width values are random bytes (any bit pattern: NaN, values
    over a decimal's precision, out-of-range dates), nested ones are built from random children."""
    if pa.types.is_null(t):
        return pa.nulls(n)
    if pa.types.is_boolean(t):
        return pa.array(draw(st.lists(st.none() | st.booleans(), min_size=n, max_size=n)), t)
    if pa.types.is_fixed_size_binary(t):
        return pa.array(
            draw(st.lists(st.binary(min_size=t.byte_width, max_size=t.byte_width), min_size=n, max_size=n)), t
        )
    if t in FIXED_WIDTH:
        width = t.bit_width // 8
        data = draw(st.binary(min_size=n * width, max_size=n * width))
        mask = _validity(draw, n)  # True = null
        bitmap = (
            None if mask is None else pa.array([not m for m in mask.to_pylist()], pa.bool_()).buffers()[1]
        )
        return pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(data)], null_count=0 if mask is None else -1)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is_view(t, "string_view"):
        return pa.array(draw(st.lists(st.none() | st.text(max_size=8), min_size=n, max_size=n)), t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or _is_view(t, "binary_view"):
        return pa.array(draw(st.lists(st.none() | st.binary(max_size=8), min_size=n, max_size=n)), t)
    if pa.types.is_dictionary(t):
        size = draw(st.integers(1, 4))
        dictionary = random_array(draw, t.value_type, size).unique()
        size = len(dictionary) or 1
        if len(dictionary) == 0:
            dictionary = random_array(draw, t.value_type, 1)
        idx = pa.array(
            draw(st.lists(st.none() | st.integers(0, size - 1), min_size=n, max_size=n)), t.index_type
        )
        return pa.DictionaryArray.from_arrays(idx, dictionary)
    if pa.types.is_fixed_size_list(t):
        child = random_array(draw, t.value_type, n * t.list_size)
        return pa.FixedSizeListArray.from_arrays(child, t.list_size, mask=_validity(draw, n))
    if pa.types.is_map(t):
        offsets, total = _offsets(draw, n)
        keys_ = random_array(draw, t.key_type, total)
        if keys_.null_count:  # map keys are never null
            keys_ = keys_.fill_null("" if pa.types.is_string(t.key_type) else 0)
        return pa.MapArray.from_arrays(
            pa.array(offsets, pa.int32()), keys_, random_array(draw, t.item_type, total)
        )
    list_like = {
        "list": (pa.types.is_list, pa.ListArray, pa.int32()),
        "large_list": (pa.types.is_large_list, pa.LargeListArray, pa.int64()),
    }
    for is_type, cls, otype in list_like.values():
        if is_type(t):
            offsets, total = _offsets(draw, n)
            child = random_array(draw, t.value_type, total)
            return cls.from_arrays(pa.array(offsets, otype), child, type=t, mask=_validity(draw, n))
    if hasattr(pa.types, "is_list_view") and (pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        offsets, total = _offsets(draw, n)
        sizes = np.diff(offsets).tolist()
        otype = pa.int32() if pa.types.is_list_view(t) else pa.int64()
        cls = pa.ListViewArray if pa.types.is_list_view(t) else pa.LargeListViewArray
        child = random_array(draw, t.value_type, total)
        return cls.from_arrays(pa.array(offsets[:-1], otype), pa.array(sizes, otype), child, type=t)
    if pa.types.is_struct(t):
        kids = [random_array(draw, f.type, n) for f in t]
        return pa.StructArray.from_arrays(kids, fields=list(t), mask=_validity(draw, n))
    if pa.types.is_union(t):
        codes = draw(st.lists(st.integers(0, t.num_fields - 1), min_size=n, max_size=n))
        types = pa.array(codes, pa.int8())
        names = [f.name for f in t]
        if t.mode == "sparse":
            return pa.UnionArray.from_sparse(types, [random_array(draw, f.type, n) for f in t], names)
        per = [codes.count(k) for k in range(t.num_fields)]
        offs, seen = [], [0] * t.num_fields
        for k in codes:
            offs.append(seen[k])
            seen[k] += 1
        kids = [random_array(draw, f.type, m) for f, m in zip(t, per, strict=True)]
        return pa.UnionArray.from_dense(types, pa.array(offs, pa.int32()), kids, names)
    if pa.types.is_run_end_encoded(t):
        runs = draw(st.lists(st.integers(1, 3), min_size=1, max_size=max(1, n))) if n else []
        ends = np.cumsum(runs)
        ends = [*ends[ends < n].tolist(), n] if n else []
        values = random_array(draw, t.value_type, len(ends))
        return pa.RunEndEncodedArray.from_arrays(pa.array(ends, t.run_end_type), values)
    raise AssertionError(f"no generator for {t}")


def metadata_values(shape: ModelShape) -> st.SearchStrategy[bytes]:
    """Schema metadata values: a user id, JSON objects of features (valid and not), JSON that is
    not an object, invalid UTF-8, huge values."""
    return st.one_of(
        st.text(max_size=12).map(str.encode),
        json_values(shape).map(encode),
        st.builds(lambda r: orjson.dumps(r.features), valid_requests(shape)),
        st.sampled_from([b"\xff\xfe", b"\xc3(", b'{"a":', b"[]", b"null", b"1", b'"x"', b"", b"\x00"]),
        st.integers(100_000, 1_000_000).map(lambda n: b"7" * n),
        st.binary(max_size=40),
    )


META_KEYS = [b"user_id", b"features", b"tasks", b"variant", b"request_id", b"candidates"]


@st.composite
def arrow_random_schemas(draw: st.DrawFn, shape: ModelShape) -> Case:
    """Arrow streams with random schemas. Either a valid request with one to three of its columns
    swapped for (or joined by, or repeated as) a column of a random type (see `arrow_types`) and
    now and then a random metadata entry; or a schema of random columns, named after the model's
    inputs or anything, repeats allowed, with random schema metadata (known and unknown keys,
    invalid UTF-8, non-object JSON, huge values). 0 to 4 record batches (none: an empty stream),
    sometimes without the end-of-stream marker (no batches: the schema message only)."""
    meta: dict[bytes, bytes]
    random_meta = st.dictionaries(
        st.one_of(st.sampled_from(META_KEYS), st.binary(max_size=10)), metadata_values(shape), max_size=5
    )
    if draw(st.sampled_from([True, True, False])):  # a valid request, some of it replaced
        r = draw(valid_requests(shape))
        n = r.n
        table = arrow_table(shape, r)
        names, arrays = list(table.column_names), [c.combine_chunks() for c in table.columns]
        types = [a.type for a in arrays]
        for _ in range(draw(st.integers(1, 3))):
            t = draw(arrow_types())
            where = draw(st.sampled_from(["swap", "swap", "swap", "extra", "twice"]))
            i = draw(st.integers(0, len(names) - 1)) if names else 0
            if where == "swap" and names:
                types[i], arrays[i] = t, random_array(draw, t, n)
            elif where == "twice" and names:
                names.append(names[i])
                types.append(t)
                arrays.append(random_array(draw, t, n))
            else:
                names.append(draw(st.one_of(st.sampled_from(shape.names), st.text(max_size=8))))
                types.append(t)
                arrays.append(random_array(draw, t, n))
        meta = request_metadata(r)
        if draw(one_in(4)):
            meta.update(draw(random_meta))
    else:  # random columns and metadata
        n = draw(st.integers(0, shape.max_candidates + 2))
        ncols = draw(st.integers(0, 6))
        names = draw(
            st.lists(
                st.one_of(st.sampled_from(shape.names), st.text(max_size=8)), min_size=ncols, max_size=ncols
            )
        )
        if names and draw(st.booleans()):
            names.append(names[0])  # a column name twice
        types = [draw(arrow_types()) for _ in names]
        arrays = [random_array(draw, t, n) for t in types]
        meta = draw(random_meta)
        if draw(st.booleans()):
            meta.setdefault(b"user_id", b"42")
    schema = pa.schema([pa.field(nm, t) for nm, t in zip(names, types, strict=True)], metadata=meta)
    batches_n = draw(st.integers(0, 4))
    sink = pa.BufferOutputStream()
    compression = draw(st.sampled_from([None, None, "zstd", "lz4"]))
    w = pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression=compression))
    cuts = sorted(
        draw(st.lists(st.integers(0, n), min_size=max(0, batches_n - 1), max_size=max(0, batches_n - 1)))
    )
    bounds = [0, *cuts, n] if batches_n else []
    for lo, hi in itertools.pairwise(bounds):
        w.write_batch(pa.RecordBatch.from_arrays([a.slice(lo, hi - lo) for a in arrays], schema=schema))
    w.close()
    body = sink.getvalue().to_pybytes()
    no_eos = draw(one_in(6))  # cut the end-of-stream marker (no batches: schema only)
    if no_eos and body.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00"):
        body = body[:-8]
    desc = ", ".join(f"{nm!r}: {t}" for nm, t in zip(names, types, strict=True))
    meta_desc = {k[:20]: v[:40] for k, v in meta.items()}
    note = (
        f"n={n} batches={batches_n} compression={compression} no_eos={no_eos} "
        f"cols={{{desc}}} meta={meta_desc}"
    )
    return Case("arrow.schema", body, _arrow_headers(), frozenset({n}) if batches_n else None, note=note)


@st.composite
def arrow_bombs(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A compressed (zstd/lz4) Arrow body a few KB on the wire that inflates to 2x-16x the
    server's body limit: many rows of zeros in an id column, one huge string, one huge list, a
    vector column of huge fixed-size vectors (fixed_size_list<float32>), or a huge unknown column
    next to a valid request. The server must answer 413."""
    a = draw(valid_arrow_requests(shape))
    limit = shape.max_body_bytes
    target = limit * draw(st.integers(2, 16))
    kind = draw(st.sampled_from(["string", "list", "vector", "rows", "extra column"]))
    compression = draw(st.sampled_from(["zstd", "lz4"]))
    table = a.table
    if kind == "rows":
        name = next((c.name for c in shape.columns if c.kind == "id" and c.value_type == "int"), "x")
        table = pa.table({name: pa.array(np.zeros(target // 8, np.int64))})
    elif kind == "string":
        name = next((c.name for c in shape.columns if c.value_type == "string"), "x")
        one = pa.array(["a" * (target // max(1, table.num_rows))] * table.num_rows, pa.large_string())
        table = table.drop_columns([name]) if name in table.column_names else table
        table = table.append_column(name, one)
    elif kind == "list":
        name = next((c.name for c in shape.columns if c.is_list), "x")
        per = target // 8 // max(1, table.num_rows)
        offsets = pa.array(np.arange(table.num_rows + 1, dtype=np.int64) * per)
        col = pa.LargeListArray.from_arrays(offsets, pa.array(np.zeros(per * table.num_rows, np.int64)))
        table = table.drop_columns([name]) if name in table.column_names else table
        table = table.append_column(name, col)
    elif kind == "vector":  # its floats are counted in the decoded size like any other buffer
        name = next((c.name for c in shape.columns if c.kind == "vector"), "x")
        per = target // 4 // max(1, table.num_rows)
        col = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(per * table.num_rows, np.float32)), per)
        table = table.drop_columns([name]) if name in table.column_names else table
        table = table.append_column(name, col)
    else:
        per = target // 8 // max(1, table.num_rows)
        col = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(per * table.num_rows, np.int64)), per)
        name = "padding"
        table = table.append_column(name, col)
    # the inflating column is the request's only copy of that feature (not also in `features`)
    body = write_stream(table, request_metadata(a.request, drop=name), compression)
    note = (
        f"{kind} ({name}) inflating to {target / 2**20:.0f} MiB, {compression}, {len(body)} bytes on the wire"
    )
    # a schema naming an unknown column, or a batch declaring more rows than allowed, may be refused
    # (422) before anything is inflated; a valid schema and row count leaves only 413
    expect = TOO_LARGE | ({422} if kind in ("rows", "extra column") else set())
    return Case("arrow.bomb", body, _arrow_headers(), None, frozenset(expect), note=note)
