"""Broken vectors: a valid request (JSON or Arrow) with one vector column made wrong, and nothing
else. The server must refuse each with a 422 naming that column (`Case.error_field`), or a 400 for
a JSON number literal no float holds.

`json_vector_mutations` breaks one candidate's vector: a wrong length (empty, one short, longer),
a null, boolean, string, list or object inside it, a value beyond the float32 range (1e39), a
scalar, string, boolean or object instead of the list, a null vector where the feature has
`missing: error`; or writes a literal no float holds inside it (1e400, NaN: malformed JSON, 400).
`arrow_vector_mutations` sends the column as a type or with values the server does not take: a
fixed_size_list of another size, a list with one row of another length, a null, NaN or infinity
inside a present vector, float64 values beyond float32, float16 or integer fixed-size lists, lists
of strings or booleans, nested lists, plain floats; plain, compressed or in several batches.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import strategies as st

from tests.fuzz.json_text import Raw, encode, to_tree
from tests.fuzz.shape import Case, Column, ModelShape, _arrow_headers, _json_headers, pick
from tests.fuzz.valid import ValidRequest, arrow_table, request_metadata, valid_requests, write_stream

UNPROCESSABLE = frozenset({422})
MALFORMED = frozenset({400})

# (name, what replaces element p of the vector): each makes the vector wrong
BAD_ELEMENTS: list[tuple[str, Any]] = [
    ("null inside", None),
    ("true inside", True),
    ("false inside", False),
    ("string inside", "0.5"),
    ("list inside", [0.5]),
    ("object inside", {"v": 0.5}),
    ("1e39 inside (beyond float32)", 1e39),
    ("-3.5e38 inside (beyond float32)", -3.5e38),
    ("float64 maximum inside", 1.7976931348623157e308),
]
# (name, what replaces the whole vector)
BAD_VECTORS: list[tuple[str, Any]] = [
    ("a number instead of a vector", 0.5),
    ("a string instead of a vector", "0.1,0.2"),
    ("true instead of a vector", True),
    ("an object instead of a vector", {"values": [0.5]}),
]
RAW_LITERALS = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"]


def _vector_in_candidates(draw: st.DrawFn, shape: ModelShape, r: ValidRequest) -> Column | None:
    cols = [c for c in shape.vectors if c.name in r.candidates]
    return pick(draw, cols) if cols else None


@st.composite
def json_vector_mutations(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid JSON request (columns or rows) with one candidate's vector broken (see the module
    docstring): 422 naming `candidates.<column>`, or 400 for a literal no float holds."""
    r = draw(valid_requests(shape))
    c = _vector_in_candidates(draw, shape, r)
    form = "rows" if r.rows else "columns"
    if c is None:  # no vector column sent per candidate: the valid request as it is
        body = orjson.dumps(r.as_dict())
        return Case(
            "json.vector", body, _json_headers(), frozenset({r.n}), frozenset({200}), note="no vector"
        )
    assert c.dim is not None
    r = copy.deepcopy(r)
    i = draw(st.integers(0, r.n - 1))
    vec = r.candidates[c.name][i]
    vec = list(vec) if vec is not None else [0.25] * c.dim
    kinds = ["length", "element", "element", "whole", "raw"] + (["null"] if c.missing == "error" else [])
    kind = draw(st.sampled_from(kinds))
    expect, field, raw = UNPROCESSABLE, f"candidates.{c.name}", None
    if kind == "length":
        size = draw(st.sampled_from([0, c.dim - 1, c.dim + 1]) | st.integers(0, 2 * c.dim + 3))
        if size == c.dim:
            size = c.dim + 1
        vec = (vec * (size // max(1, c.dim) + 1))[:size]
        what = f"{size} values (dim {c.dim})"
    elif kind == "element":
        what, bad = pick(draw, BAD_ELEMENTS)
        vec[draw(st.integers(0, c.dim - 1))] = bad
    elif kind == "whole":
        what, vec = pick(draw, BAD_VECTORS)
    elif kind == "null":
        what, vec = "a null vector (missing: error)", None
    else:
        raw = pick(draw, RAW_LITERALS)
        what = f"the literal {raw} inside"
        vec[draw(st.integers(0, c.dim - 1))] = "@@RAW@@"
        expect, field = MALFORMED, "body"
    r.candidates[c.name][i] = vec
    tree = to_tree(r.as_dict())
    body = encode(tree) if raw is None else encode(tree).replace(b'"@@RAW@@"', Raw(raw).text.encode())
    note = f"{form}: candidates.{c.name}[{i}] = {what}"
    return Case("json.vector", body, _json_headers(), None, expect, note=note, error_field=field)


ARROW_BREAKS = [
    "fixed size", "list length", "null inside", "nan inside", "inf inside", "beyond float32",
    "float16", "int32 fixed", "strings", "booleans", "nested", "plain floats",
]  # fmt: skip


def _broken_vector_column(kind: str, n: int, dim: int, i: int, rng: np.random.Generator) -> pa.Array:
    """A vector column of `n` rows that is wrong at row `i` (or wrong for every row: its type)."""
    x = rng.normal(0.0, 1.0, (n, dim)).astype(np.float32)
    present = rng.random(n) >= 0.2
    present[i] = True
    mask = pa.array(~present)
    p = int(rng.integers(0, dim))
    if kind == "fixed size":
        size = int(rng.choice([s for s in (1, dim - 1, dim + 1, 2 * dim) if s >= 1 and s != dim]))
        return pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * size).astype(np.float32)), size)
    if kind == "list length":
        rows: list[Any] = [v.tolist() if ok else None for v, ok in zip(x, present, strict=True)]
        rows[i] = rows[i][: int(rng.integers(0, dim))] if rng.random() < 0.5 else rows[i] + [0.5]
        return pa.array(rows, pa.list_(pa.float32()))
    if kind == "null inside":
        nulls = np.zeros(n * dim, bool)
        nulls[i * dim + p] = True
        return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), mask=nulls), dim, mask=mask)
    if kind in ("nan inside", "inf inside", "beyond float32"):
        y = x.astype(np.float64)
        y[i, p] = {"nan inside": np.nan, "inf inside": -np.inf, "beyond float32": 1e39}[kind]
        width = pa.float32() if kind != "beyond float32" else pa.float64()
        return pa.FixedSizeListArray.from_arrays(pa.array(y.ravel(), width), dim, mask=mask)
    if kind == "float16":
        return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel().astype(np.float16)), dim, mask=mask)
    if kind == "int32 fixed":
        return pa.FixedSizeListArray.from_arrays(pa.array(np.arange(n * dim, dtype=np.int32)), dim, mask=mask)
    if kind == "strings":
        return pa.array([[str(v) for v in row] for row in x.tolist()], pa.list_(pa.string()))
    if kind == "booleans":
        return pa.array([[v > 0 for v in row] for row in x.tolist()], pa.list_(pa.bool_()))
    if kind == "nested":
        return pa.array([[[v] for v in row] for row in x.tolist()], pa.list_(pa.list_(pa.float32())))
    return pa.array(x[:, 0].astype(np.float64))  # plain floats: one number per candidate


@st.composite
def arrow_vector_mutations(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid Arrow request with its vector column replaced by a broken one (see the module
    docstring), plain, compressed or in several batches: 422 naming `candidates.<column>`."""
    r = draw(valid_requests(shape))
    c = _vector_in_candidates(draw, shape, r)
    table = arrow_table(shape, r)
    compression = draw(st.sampled_from([None, None, "zstd", "lz4"]))
    chunk = draw(st.none() | st.integers(1, max(1, r.n)))
    if c is None:
        body = write_stream(table, request_metadata(r), compression, chunk)
        return Case(
            "arrow.vector", body, _arrow_headers(), frozenset({r.n}), frozenset({200}), note="no vector"
        )
    assert c.dim is not None
    kind = draw(st.sampled_from(ARROW_BREAKS))
    i = draw(st.integers(0, r.n - 1))
    col = _broken_vector_column(kind, r.n, c.dim, i, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    table = table.set_column(table.schema.get_field_index(c.name), c.name, col)
    body = write_stream(table, request_metadata(r), compression, chunk)
    note = f"candidates.{c.name} = {kind} at row {i} ({col.type}), n={r.n}, {compression}, chunk={chunk}"
    return Case(
        "arrow.vector",
        body,
        _arrow_headers(),
        None,
        UNPROCESSABLE,
        note=note,
        error_field=f"candidates.{c.name}",
    )
