"""Valid requests, as JSON and as Arrow IPC streams: the server must score every one (200).

`valid_requests` draws a request inside the schema from the model's columns (`ValidRequest`);
`valid_json` and `valid_arrow` make the cases of it. The Arrow helpers (`arrow_table`,
`request_metadata`, `write_stream`, `valid_arrow_requests`) are also the starting point of the
Arrow mutations and of the bombs and size cases.

A vector column's values (`vector_column`) are made from a drawn seed with numpy, not drawn value
by value (64 candidates x 32 floats would overrun Hypothesis' buffer): float32 values at scales
from 1e-30 to 1e29, small integers (JSON integer literals), null vectors where the feature allows
them, and now and then one vector of Hypothesis-drawn float32 edge values (subnormals, -0.0,
+-1e30). Values stay within +-1e30 (`MAX_VECTOR_VALUE`): a vector near the float32 limit is finite
but overflows the model's forward, which the server answers with a 422, not a score. In Arrow a
vector column is a fixed_size_list<float32>, a fixed_size_list or list of float64, or a
large_list<float32>.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import strategies as st

from serving.request import encode_arrow_request
from tests.fuzz.shape import OK, Case, Column, ModelShape, _arrow_headers, _json_headers, one_in
from tests.fuzz.values import INT64_MAX, INT64_MIN


def id_values(c: Column) -> st.SearchStrategy[Any]:
    if c.value_type == "string":
        known = list(c.vocabulary or ["ios", "android"])
        return st.one_of(st.sampled_from(known), st.text(max_size=16), st.none())
    return st.one_of(st.integers(0, 1000), st.integers(INT64_MIN, INT64_MAX), st.none())


def valid_values(c: Column) -> st.SearchStrategy[Any]:
    """One valid value of a column: an id (int64 or string), a finite number, a list of ids; or null."""
    if c.kind == "dense":
        return st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53), st.none()
        )
    if c.is_list:
        return st.one_of(st.lists(id_values(c), max_size=25), st.none())
    return id_values(c)


# Valid vector values stay within this: far beyond it (near the float32 limit, 3.4e38) the model's
# float32 forward overflows, and the server refuses the candidate (422) rather than score it NaN.
MAX_VECTOR_VALUE = float(np.float32(1e30))  # float32-exact (Hypothesis' bounds of width 32)


@st.composite
def vector_column(draw: st.DrawFn, c: Column, n: int) -> list[Any]:
    """`n` valid vectors of column `c` (see the module docstring): lists of `dim` finite float32
    values (or small integers), some null when the feature allows a missing vector."""
    assert c.dim is not None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(one_in(6)):  # integer literals in JSON (list<int64> once decoded)
        rows: list[Any] = rng.integers(-3, 4, (n, c.dim)).tolist()
    else:
        scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3, 1e-30, 1e29]))  # |x| < 1e30
        rows = (rng.normal(0.0, 1.0, (n, c.dim)) * scale).astype(np.float32).tolist()
    if c.missing == "zeros":
        share = draw(st.sampled_from([0.0, 0.0, 0.2, 0.5, 1.0]))
        for i in np.flatnonzero(rng.random(n) < share):
            rows[int(i)] = None
    if draw(one_in(4)):  # one vector of drawn float32 edge values
        edge = st.floats(-MAX_VECTOR_VALUE, MAX_VECTOR_VALUE, allow_nan=False, width=32)
        rows[draw(st.integers(0, n - 1))] = draw(st.lists(edge, min_size=c.dim, max_size=c.dim))
    return rows


def counts(shape: ModelShape) -> st.SearchStrategy[int]:
    """Candidate counts: mostly a few, sometimes up to the server's limit."""
    return st.one_of(st.integers(1, 6), st.integers(1, shape.max_candidates))


@dataclass
class ValidRequest:
    """A request the server must score: per-request and per-candidate values, and the user."""

    user_id: Any
    features: dict[str, Any]
    candidates: dict[str, list[Any]]
    n: int
    tasks: list[str] | None
    rows: bool  # JSON candidates as a list of row objects instead of columns

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": self.user_id}
        if self.features:
            body["features"] = self.features
        if self.rows:
            body["candidates"] = [{k: v[i] for k, v in self.candidates.items()} for i in range(self.n)]
        else:
            body["candidates"] = self.candidates
        if self.tasks is not None:
            body["tasks"] = self.tasks
        return body


@st.composite
def valid_requests(draw: st.DrawFn, shape: ModelShape) -> ValidRequest:
    """A request inside the schema: user and context features once in `features` (or, sometimes,
    per candidate), item features per candidate, columnar or as rows; the user id either given as
    the model's user feature or as a numeric `user_id` that fills it."""
    n = draw(counts(shape))
    features: dict[str, Any] = {}
    candidates: dict[str, list[Any]] = {}
    user_feature_given = draw(st.booleans())
    for c in shape.columns:
        if c.name == shape.user_column and not user_feature_given:
            continue
        once = c.per_request and draw(st.sampled_from([True, True, True, False]))
        if c.kind == "vector":
            if once:
                features[c.name] = draw(vector_column(c, 1))[0]
            else:
                candidates[c.name] = draw(vector_column(c, n))
        elif once:
            features[c.name] = draw(valid_values(c))
        else:
            candidates[c.name] = draw(st.lists(valid_values(c), min_size=n, max_size=n))
    if user_feature_given:
        user_id: Any = draw(st.one_of(st.text(min_size=1, max_size=40), st.integers(INT64_MIN, INT64_MAX)))
    else:  # fills the model's (integer) user feature
        user_id = draw(st.one_of(st.integers(INT64_MIN, INT64_MAX), st.integers(0, 10**6).map(str)))
    tasks = draw(st.none() | st.lists(st.sampled_from(shape.tasks), min_size=1, unique=True))
    rows = draw(st.booleans())
    return ValidRequest(user_id, features, candidates, n, tasks, rows)


def valid_json(shape: ModelShape) -> st.SearchStrategy[Case]:
    """Valid JSON requests (columnar or rows): the server must answer 200 with `n` scores each."""

    def case(r: ValidRequest) -> Case:
        form = "rows" if r.rows else "columns"
        return Case("json.valid", orjson.dumps(r.as_dict()), _json_headers(), frozenset({r.n}), OK, note=form)

    return valid_requests(shape).map(case)


# the Arrow types a vector column is sent as (see `arrow_table`)
VECTOR_TYPES = (
    "fixed_size_list<float32>",
    "fixed_size_list<float64>",
    "list<float64>",
    "large_list<float32>",
)


def arrow_type(c: Column, vector_type: str = VECTOR_TYPES[0]) -> pa.DataType:
    base = pa.string() if c.value_type == "string" else pa.int64()
    if c.kind == "dense":
        return pa.float64()
    if c.kind == "vector":
        assert c.dim is not None
        return {
            "fixed_size_list<float32>": pa.list_(pa.float32(), c.dim),
            "fixed_size_list<float64>": pa.list_(pa.float64(), c.dim),
            "list<float64>": pa.list_(pa.float64()),
            "large_list<float32>": pa.large_list(pa.float32()),
        }[vector_type]
    return pa.list_(base) if c.is_list else base


def arrow_table(shape: ModelShape, r: ValidRequest, vector_type: str = VECTOR_TYPES[0]) -> pa.Table:
    """The request's candidates as typed columns; vectors as `vector_type` (one of VECTOR_TYPES)."""
    by_name = {c.name: c for c in shape.columns}
    cols = {}
    for name, values in r.candidates.items():
        c = by_name[name]
        if c.kind == "dense":
            values = [None if v is None else float(v) for v in values]
        cols[name] = pa.array(values, type=arrow_type(c, vector_type))
    return pa.table(cols)


def request_metadata(r: ValidRequest, drop: str | None = None) -> dict[bytes, bytes]:
    """The Arrow schema metadata of a request (as `encode_arrow_request` writes it), without the
    request-level feature `drop` (sent as a column instead)."""
    out = {b"user_id": str(r.user_id).encode()}
    features = {k: v for k, v in r.features.items() if k != drop}
    if features:
        out[b"features"] = orjson.dumps(features)
    if r.tasks:
        out[b"tasks"] = orjson.dumps(r.tasks)
    return out


def write_stream(
    table: pa.Table,
    metadata: dict[bytes, bytes] | None,
    compression: str | None = None,
    chunk: int | None = None,
) -> bytes:
    """An Arrow IPC stream of `table` with schema `metadata`, optionally compressed and split into
    record batches of `chunk` rows."""
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=opts) as w:
        w.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


@dataclass
class ValidArrow:
    """A valid Arrow request and how it was written."""

    request: ValidRequest
    body: bytes
    table: pa.Table
    compression: str | None
    chunk: int | None
    vector_type: str = VECTOR_TYPES[0]


@st.composite
def valid_arrow_requests(draw: st.DrawFn, shape: ModelShape) -> ValidArrow:
    """A valid Arrow IPC request: candidates as typed columns (int64 ids, float64 numbers, string,
    list<int64>, vectors as one of VECTOR_TYPES), user/context features as JSON in the schema
    metadata; plain (through `encode_arrow_request`), zstd/lz4-compressed, or split into several
    record batches."""
    r = draw(valid_requests(shape))
    vector_type = draw(st.sampled_from(VECTOR_TYPES)) if shape.vectors else VECTOR_TYPES[0]
    table = arrow_table(shape, r, vector_type)
    compression = draw(st.sampled_from([None, None, "zstd", "lz4"]))
    chunk = draw(st.none() | st.integers(1, max(1, r.n)))
    if compression is None and chunk is None:
        body = encode_arrow_request(table, str(r.user_id), r.features, r.tasks)
    else:
        body = write_stream(table, request_metadata(r), compression, chunk)
    return ValidArrow(r, body, table, compression, chunk, vector_type)


def valid_arrow(shape: ModelShape) -> st.SearchStrategy[Case]:
    """Valid Arrow requests: the server must answer 200 with `n` scores each."""

    def case(a: ValidArrow) -> Case:
        note = f"compression={a.compression} chunk={a.chunk} vectors={a.vector_type}"
        return Case("arrow.valid", a.body, _arrow_headers(), frozenset({a.request.n}), OK, note=note)

    return valid_arrow_requests(shape).map(case)
