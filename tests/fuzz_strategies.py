"""Hypothesis strategies for fuzzing `POST /score` (tests/test_fuzz_server.py): request bodies
inside and outside the request schema, as JSON and as Arrow IPC streams, and the headers around them.

Every strategy here yields a `Case`: the body bytes, the headers, and what the fuzz suite may
assume about the answer (the candidate counts a 2xx may report, or the statuses that are right).
The generators derive their valid requests from the model's input columns (`ModelShape`), so a
change of recipe changes what they send, not this file.

Nothing here talks to a server; the strategies only build bytes.
"""

from __future__ import annotations

import gzip
import itertools
import json
import string
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import strategies as st

from recsys_mtl.loader import LoadedModel
from serving.request import ARROW_STREAM, JSON, encode_arrow_request

# ---------------------------------------------------------------------------------------------
# what a generator knows about the model, and what it produces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One raw input column of the model, as a client sends it."""

    name: str
    kind: str  # "id" | "multi_id" | "sequence" | "dense"
    value_type: str  # "int" | "string" (categorical kinds)
    per_request: bool  # a user or context feature: normally sent once, in `features`
    vocabulary: tuple[Any, ...] | None

    @property
    def is_list(self) -> bool:
        return self.kind in ("multi_id", "sequence")


@dataclass(frozen=True, repr=False)
class ModelShape:
    """The model's input columns and tasks plus the server limits the generators aim at."""

    columns: tuple[Column, ...]
    user_column: str | None
    tasks: tuple[str, ...]
    binary_tasks: tuple[str, ...]
    max_candidates: int
    max_body_bytes: int

    @classmethod
    def of(cls, model: LoadedModel, max_candidates: int, max_body_bytes: int) -> ModelShape:
        columns: dict[str, Column] = {}
        for f in model.transform.features:
            columns.setdefault(
                f.source,
                Column(
                    f.source,
                    f.kind,
                    f.value_type,
                    f.group in ("user", "context"),
                    tuple(f.vocabulary) if f.vocabulary is not None else None,
                ),
            )
        user_col = model.manifest.get("recipe", {}).get("data", {}).get("user_column", "user_id")
        return cls(
            columns=tuple(columns.values()),
            user_column=user_col if user_col in columns else None,
            tasks=tuple(t.name for t in model.tasks),
            binary_tasks=tuple(t.name for t in model.tasks if t.kind == "binary"),
            max_candidates=max_candidates,
            max_body_bytes=max_body_bytes,
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __repr__(self) -> str:
        return f"ModelShape({len(self.columns)} columns, max_candidates={self.max_candidates})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis prints dataclasses field by field
        p.text(repr(self))


@dataclass(repr=False)
class Case:
    """One request to send, and what a correct server may answer to it.

    `candidates`: the candidate counts a 2xx may report (None: not known, e.g. after random byte
    overwrites). `expect`: the correct statuses (200 for a valid request, 413 for a body over
    the limit; 413 or 422 where a server may refuse a bigger-than-allowed body for what its schema
    declares before it inflates it), None when any status the contract allows will do.
    """

    generator: str
    body: bytes
    headers: dict[str, str]
    candidates: frozenset[int] | None = None
    expect: frozenset[int] | None = None
    chunked: bool = False  # sent with Transfer-Encoding: chunked (no Content-Length)
    note: str = ""  # how the body was made, for the failure report
    steps: list[str] = field(default_factory=list)

    def describe(self, limit: int = 600) -> str:
        """How the case was made, its headers, and the first `limit` bytes of its body."""
        head = f"[{self.generator}] {self.note}{'; ' if self.steps else ''}{'; '.join(self.steps)}"
        if limit <= 0:
            return head
        body = self.body if len(self.body) <= limit else self.body[:limit] + b"..."
        return f"{head}\n  headers={self.headers!r} chunked={self.chunked} ({len(self.body)} bytes) {body!r}"

    def __repr__(self) -> str:
        return f"Case({self.describe(300)})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis prints dataclasses field by field
        p.text(repr(self))


OK = frozenset({200})
TOO_LARGE = frozenset({413})


def pick(draw: st.DrawFn, items: Sequence[Any]) -> Any:
    """One of `items` (which depend on earlier draws: no strategy repr of a big list)."""
    return items[draw(st.integers(0, len(items) - 1))]


def one_in(k: int) -> st.SearchStrategy[bool]:
    """True about once in `k` draws (Hypothesis draws small integers far more often than 1/k)."""
    return st.sampled_from([False] * (k - 1) + [True])


def _json_headers() -> dict[str, str]:
    return {"content-type": JSON}


def _arrow_headers() -> dict[str, str]:
    return {"content-type": ARROW_STREAM}


# ---------------------------------------------------------------------------------------------
# JSON text with what Python's json cannot write: repeated keys and raw number literals
# ---------------------------------------------------------------------------------------------


class JObj:
    """A JSON object as (key, value) pairs, so a key may appear twice."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: Sequence[tuple[str, Any]]) -> None:
        self.pairs: list[tuple[str, Any]] = list(pairs)

    def __repr__(self) -> str:
        return f"JObj({self.pairs!r})"


class Raw:
    """JSON text written as is: numbers with no Python value (1e400, 10**30 as text), deep nesting."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


def to_tree(v: Any) -> Any:
    """Plain Python (dicts, lists, scalars) -> the JSON tree the perturbations edit."""
    if isinstance(v, dict):
        return JObj([(k, to_tree(x)) for k, x in v.items()])
    if isinstance(v, list):
        return [to_tree(x) for x in v]
    return v


def dump(v: Any, ascii_only: bool = True) -> str:
    """The JSON text of a tree. Lone surrogates stay (escaped, or raw when not `ascii_only`)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # finite floats only: the strategies keep inf/NaN as Raw text
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=ascii_only)
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, JObj):
        return "{" + ",".join(f"{dump(k, ascii_only)}:{dump(x, ascii_only)}" for k, x in v.pairs) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dump(x, ascii_only) for x in v) + "]"
    raise TypeError(f"not a JSON tree node: {type(v).__name__}")


def encode(v: Any, ascii_only: bool = True) -> bytes:
    return dump(v, ascii_only).encode("utf-8", errors="surrogatepass")


def candidate_counts(tree: Any) -> frozenset[int]:
    """Every candidate count a server could read from a request tree (any of repeated keys)."""
    out: set[int] = set()
    if not isinstance(tree, JObj):
        return frozenset()
    for k, cands in tree.pairs:
        if k != "candidates":
            continue
        if isinstance(cands, list):
            out.add(len(cands))
        elif isinstance(cands, JObj):
            out.update(len(col) for _, col in cands.pairs if isinstance(col, list))
    return frozenset(out)


# ---------------------------------------------------------------------------------------------
# values: the ordinary and the nasty
# ---------------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXTREME_INTS = [
    0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, INT64_MAX, 2**63, INT64_MIN, INT64_MIN - 1,
    2**64 - 1, 2**64, 10**30, -(10**30), 10**300,
]  # fmt: skip
BOUNDARY_INTS = [2**63, 2**64 - 1, INT64_MIN - 1, 2**63 - 1, INT64_MIN, 10**30, -(10**30), 2**53 + 1, -1]
NUMBER_LITERALS = [
    "1e400", "-1e400", "1e-400", "-0", "-0.0", "0e0", "1E+2", "123456789012345678901234567890",
    "-123456789012345678901234567890.5", "9007199254740993", "18446744073709551616",
    "-9223372036854775809", "4.9e-324", "1.7976931348623157e308", "NaN", "Infinity", "-Infinity",
    "01", "1.", ".5", "+1", "0x10",
]  # fmt: skip
NUMBER_LIKE_TEXT = [
    "１２３", "1_000", " 12 ", "12 ", "\t7\n", "٣", "١٢٣", "+5", "-0", "0x10", "1e3", "NaN", "inf",
    "Infinity", "", " ", "00012", "12\x00", "\u200b12", "9" * 400, "-9223372036854775809",
    "18446744073709551615", "True", "null", "𝟙𝟚𝟛",
]  # fmt: skip


def extreme_ints() -> st.SearchStrategy[int]:
    """Integers of any size: the int32/int64/uint64 edges, 10**30, and Hypothesis' unbounded ints."""
    return st.one_of(st.sampled_from(EXTREME_INTS), st.integers())


def floats_and_literals() -> st.SearchStrategy[Any]:
    """Finite floats of any magnitude, plus number literals no float holds (1e400, NaN, 01, ...)."""
    return st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([1e308, -1e308, 5e-324, 2.0**63, 2.0**64, -0.0, 0.5]),
        st.sampled_from(NUMBER_LITERALS).map(Raw),
    )


def long_text() -> st.SearchStrategy[str]:
    """One character repeated 1,000 to 100,000 times (cheap to draw, big on the wire)."""
    return st.builds(lambda c, n: c * n, st.characters(), st.integers(1_000, 100_000))


def texts() -> st.SearchStrategy[str]:
    """Any unicode: Hypothesis text (incl. surrogates via lone escapes), non-BMP characters,
    numbers written as text in every way a parser might accept, and very long strings."""
    return st.one_of(
        st.text(max_size=30),
        st.text(st.characters(min_codepoint=0x10000), min_size=1, max_size=10),
        st.sampled_from(NUMBER_LIKE_TEXT),
        st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\ud83d"]),  # lone surrogates
        long_text(),
    )


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), extreme_ints(), floats_and_literals(), texts())


def deep_nesting() -> st.SearchStrategy[Raw]:
    """Lists or objects nested 1 to 5,000 deep, written as text (no recursion on our side)."""

    def build(depth: int, lists: bool, leaf: str) -> Raw:
        if lists:
            return Raw("[" * depth + leaf + "]" * depth)
        return Raw('{"a":' * depth + leaf + "}" * depth)

    return st.builds(build, st.integers(1, 5_000), st.booleans(), st.sampled_from(["1", "null", '"x"', "[]"]))


def keys(shape: ModelShape) -> st.SearchStrategy[str]:
    """Object keys: the model's columns, the request's fields, near misses and any text."""
    known = [*shape.names, "user_id", "features", "candidates", "tasks", "variant", "request_id"]
    near = [k.upper() for k in known[:4]] + [f" {known[0]}", f"{known[0]}\x00", "ｕｓｅｒ＿ｉｄ", ""]
    return st.one_of(st.sampled_from(known), st.sampled_from(near), st.text(max_size=12))


def json_values(shape: ModelShape) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars of every kind, lists and objects (with repeated keys) a few levels
    deep, and very deep nesting."""
    nested = st.recursive(
        scalars(),
        lambda kids: st.one_of(
            st.lists(kids, max_size=6),
            st.lists(st.tuples(keys(shape), kids), max_size=5).map(JObj),
        ),
        max_leaves=12,
    )
    return st.one_of(nested, deep_nesting())


def user_ids() -> st.SearchStrategy[Any]:
    """`user_id` of every shape: ints of any size, strings of 0 to 300 characters (the limit is
    256), number-like text, floats, bools, null, lists and objects."""
    return st.one_of(
        extreme_ints(),
        texts(),
        st.integers(250, 300).map(lambda n: "u" * n),
        floats_and_literals(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.just(JObj([("id", 1)])),
    )


# ---------------------------------------------------------------------------------------------
# valid requests
# ---------------------------------------------------------------------------------------------


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
        if once:
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


def arrow_type(c: Column) -> pa.DataType:
    base = pa.string() if c.value_type == "string" else pa.int64()
    if c.kind == "dense":
        return pa.float64()
    return pa.list_(base) if c.is_list else base


def arrow_table(shape: ModelShape, r: ValidRequest) -> pa.Table:
    by_name = {c.name: c for c in shape.columns}
    cols = {}
    for name, values in r.candidates.items():
        c = by_name[name]
        if c.kind == "dense":
            values = [None if v is None else float(v) for v in values]
        cols[name] = pa.array(values, type=arrow_type(c))
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


@st.composite
def valid_arrow_requests(draw: st.DrawFn, shape: ModelShape) -> ValidArrow:
    """A valid Arrow IPC request: candidates as typed columns (int64 ids, float64 numbers, string,
    list<int64>), user/context features as JSON in the schema metadata; plain (through
    `encode_arrow_request`), zstd/lz4-compressed, or split into several record batches."""
    r = draw(valid_requests(shape))
    table = arrow_table(shape, r)
    compression = draw(st.sampled_from([None, None, "zstd", "lz4"]))
    chunk = draw(st.none() | st.integers(1, max(1, r.n)))
    if compression is None and chunk is None:
        body = encode_arrow_request(table, str(r.user_id), r.features, r.tasks)
    else:
        body = write_stream(table, request_metadata(r), compression, chunk)
    return ValidArrow(r, body, table, compression, chunk)


def valid_arrow(shape: ModelShape) -> st.SearchStrategy[Case]:
    """Valid Arrow requests: the server must answer 200 with `n` scores each."""

    def case(a: ValidArrow) -> Case:
        note = f"compression={a.compression} chunk={a.chunk}"
        return Case("arrow.valid", a.body, _arrow_headers(), frozenset({a.request.n}), OK, note=note)

    return valid_arrow_requests(shape).map(case)


# ---------------------------------------------------------------------------------------------
# JSON outside the schema
# ---------------------------------------------------------------------------------------------


def _paths(tree: Any, prefix: tuple[Any, ...] = (), out: list[tuple[Any, ...]] | None = None) -> list[Any]:
    """Every node's path (object keys as pair indexes, list indexes); at most a few per list."""
    out = [] if out is None else out
    out.append(prefix)
    if isinstance(tree, JObj):
        for i, (_, v) in enumerate(tree.pairs):
            _paths(v, (*prefix, i), out)
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:3]):
            _paths(v, (*prefix, i), out)
    return out


def _node(tree: Any, path: tuple[Any, ...]) -> Any:
    for i in path:
        tree = tree.pairs[i][1] if isinstance(tree, JObj) else tree[i]
    return tree


def _label(tree: Any, path: tuple[Any, ...]) -> str:
    parts = []
    for i in path:
        if isinstance(tree, JObj):
            parts.append(str(tree.pairs[i][0]))
            tree = tree.pairs[i][1]
        else:
            parts.append(f"[{i}]")
            tree = tree[i]
    return ".".join(parts) or "(root)"


def _replace(tree: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    i, rest = path[0], path[1:]
    if isinstance(tree, JObj):
        pairs = list(tree.pairs)
        pairs[i] = (pairs[i][0], _replace(pairs[i][1], rest, new))
        return JObj(pairs)
    items = list(tree)
    items[i] = _replace(items[i], rest, new)
    return items


def _value_paths(tree: JObj) -> list[tuple[int, ...]]:
    """Paths of the feature values in a request tree: each `features` value, the first values of
    each candidate column (columnar) or of each of the first rows (rows)."""
    out: list[tuple[int, ...]] = []
    for i, (k, v) in enumerate(tree.pairs):
        if k == "features" and isinstance(v, JObj):
            out += [(i, j) for j in range(len(v.pairs))]
        elif k == "candidates" and isinstance(v, JObj):
            for j, (_, col) in enumerate(v.pairs):
                if isinstance(col, list):
                    out += [(i, j, m) for m in range(min(3, len(col)))]
        elif k == "candidates" and isinstance(v, list):
            for m, row in enumerate(v[:3]):
                if isinstance(row, JObj):
                    out += [(i, m, j) for j in range(len(row.pairs))]
    return out


def nasty_values(shape: ModelShape) -> st.SearchStrategy[Any]:
    """What a feature value is set to: an integer at or past an int64/uint64 edge, any scalar, or
    any JSON value."""
    return st.one_of(st.sampled_from(BOUNDARY_INTS), scalars(), json_values(shape))


@st.composite
def set_value(draw: st.DrawFn, tree: JObj, shape: ModelShape, steps: list[str]) -> JObj:
    """One feature value (per request, or one candidate's) set to a value from `nasty_values`."""
    values = _value_paths(tree)
    if not values:
        return tree
    path = pick(draw, values)
    value = draw(nasty_values(shape))
    steps.append(f"{_label(tree, path)} = {dump(value)[:80]}")
    return _replace(tree, path, value)


@st.composite
def perturb(draw: st.DrawFn, tree: Any, shape: ModelShape, steps: list[str]) -> Any:
    """One edit of a JSON request tree: a feature value set (see `set_value`), any node replaced
    with any JSON value, a key deleted, added, repeated with another value or renamed, a node
    wrapped in a list or an object, a list grown or shrunk (ragged columns, over the limit)."""
    op = draw(st.sampled_from(["value", "replace", "delete", "add", "repeat", "rename", "wrap", "resize"]))
    if op == "value" and isinstance(tree, JObj):
        return draw(set_value(tree, shape, steps))
    path = pick(draw, _paths(tree))
    node = _node(tree, path)
    where = _label(tree, path)
    if op in ("value", "replace") or (
        op in ("delete", "add", "repeat", "rename") and not isinstance(node, JObj)
    ):
        value = draw(json_values(shape))
        steps.append(f"{where} = {dump(value)[:80]}")
        return _replace(tree, path, value)
    if op in ("delete", "repeat", "rename") and not node.pairs:
        op = "add"
    if op == "delete":
        i = draw(st.integers(0, len(node.pairs) - 1))
        steps.append(f"del {where}.{node.pairs[i][0]}")
        return _replace(tree, path, JObj(node.pairs[:i] + node.pairs[i + 1 :]))
    if op == "add":
        k, v = draw(keys(shape)), draw(json_values(shape))
        steps.append(f"add {where}.{k!r} = {dump(v)[:80]}")
        return _replace(tree, path, JObj([*node.pairs, (k, v)]))
    if op == "repeat":
        i = draw(st.integers(0, len(node.pairs) - 1))
        v = node.pairs[i][1] if draw(st.booleans()) else draw(json_values(shape))
        steps.append(f"repeat key {where}.{node.pairs[i][0]!r} with {dump(v)[:80]}")
        return _replace(tree, path, JObj([*node.pairs, (node.pairs[i][0], v)]))
    if op == "rename":
        i = draw(st.integers(0, len(node.pairs) - 1))
        k = draw(keys(shape))
        steps.append(f"rename {where}.{node.pairs[i][0]!r} -> {k!r}")
        pairs = list(node.pairs)
        pairs[i] = (k, pairs[i][1])
        return _replace(tree, path, JObj(pairs))
    if op == "wrap":
        steps.append(f"wrap {where}")
        return _replace(tree, path, draw(st.sampled_from([[node], JObj([("value", node)])])))
    if not isinstance(node, list):  # resize
        steps.append(f"{where} = [{dump(node)[:40]}] * k")
        return _replace(tree, path, [node] * draw(st.integers(0, shape.max_candidates + 2)))
    size = draw(st.integers(0, shape.max_candidates + 2))
    steps.append(f"resize {where} {len(node)} -> {size}")
    grown = (node * (size // max(1, len(node)) + 1))[:size] if node else [None] * size
    return _replace(tree, path, grown)


@st.composite
def perturbed_json(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid JSON request with a feature value set to something else (`set_value`: wrong types
    per field, integers of any size, huge floats, bools, nulls, any unicode, nesting), now and
    then a user_id of another shape, and 0 to 3 more edits anywhere (`perturb`: missing, unknown
    and repeated fields, wrong types, ragged columns). Written with or without non-ASCII escapes."""
    r = draw(valid_requests(shape))
    tree = to_tree(r.as_dict())
    steps: list[str] = []
    if draw(one_in(4)):  # a bad user_id hides the rest: now and then
        tree = _replace(tree, (0,), draw(user_ids()))
        steps.append(f"user_id = {dump(tree.pairs[0][1])[:80]}")
    tree = draw(set_value(tree, shape, steps))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        tree = draw(perturb(tree, shape, steps))
    ascii_only = draw(st.booleans())
    return Case(
        "json.perturbed",
        encode(tree, ascii_only),
        _json_headers(),
        candidate_counts(tree),
        note=f"{'rows' if r.rows else 'columns'} ascii_only={ascii_only}",
        steps=steps,
    )


@st.composite
def raw_json_text(draw: st.DrawFn, shape: ModelShape) -> Case:
    """JSON at the byte level: a valid request with a key written twice (first or last wins?),
    truncated at any byte, with a byte inserted or deleted, trailing garbage or a second document,
    a BOM, UTF-16, invalid UTF-8, NaN literals; top-level values that are not objects; deep nesting;
    random bytes."""
    r = draw(valid_requests(shape))
    tree = to_tree(r.as_dict())
    text = encode(tree)
    kind = draw(
        st.sampled_from(
            [
                "duplicate key", "truncated", "byte edit", "trailing", "bom", "utf16", "bad utf8",
                "nan", "not an object", "deep", "random bytes",
            ]
        )
    )  # fmt: skip
    counts_: frozenset[int] | None = None
    if kind == "duplicate key":
        path = pick(
            draw, [p for p in _paths(tree) if isinstance(_node(tree, p), JObj) and _node(tree, p).pairs]
        )
        node = _node(tree, path)
        i = draw(st.integers(0, len(node.pairs) - 1))
        k = node.pairs[i][0]
        other = draw(json_values(shape)) if draw(st.booleans()) else node.pairs[i][1]
        first = draw(st.booleans())
        pairs = [(k, other), *node.pairs] if first else [*node.pairs, (k, other)]
        tree = _replace(tree, path, JObj(pairs))
        text = encode(tree)
        counts_ = candidate_counts(tree)
        note = f"key {_label(tree, path)}.{k} twice ({'first' if first else 'last'}: {dump(other)[:60]})"
    elif kind == "truncated":
        cut = draw(st.integers(0, len(text) - 1))
        text, note = text[:cut], f"cut at byte {cut}"
    elif kind == "byte edit":
        pos = draw(st.integers(0, len(text)))
        b = draw(st.binary(min_size=0, max_size=3))
        delete = draw(st.integers(0, 2))
        text = text[:pos] + b + text[pos + delete :]
        note = f"at {pos}: {delete} bytes -> {b!r}"
    elif kind == "trailing":
        tail = draw(st.sampled_from([b" x", b"{}", text, b"\x00", b",", b"]", b"\n\n"]))
        text, note = text + tail, f"+ {tail[:20]!r}"
    elif kind == "bom":
        text, note = b"\xef\xbb\xbf" + text, "UTF-8 BOM"
    elif kind == "utf16":
        enc = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"]))
        text, note = text.decode().encode(enc), enc
    elif kind == "bad utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]))
        text = encode(JObj([*tree.pairs, ("request_id", "@@BAD@@")])).replace(b"@@BAD@@", bad)
        note = f"invalid UTF-8 {bad!r} in request_id"
    elif kind == "nan":
        lit = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf"]))
        dense = [c.name for c in shape.columns if c.kind == "dense"]
        name = pick(draw, dense) if dense else "x"
        text = encode(JObj([*tree.pairs, ("features", JObj([(name, Raw(lit))]))]))
        note = f"features.{name} = {lit}"
    elif kind == "not an object":
        v = draw(json_values(shape).filter(lambda x: not isinstance(x, JObj)))
        text, note = encode(v), f"top level {dump(v)[:60]}"
    elif kind == "deep":
        d = draw(deep_nesting())
        text = encode(JObj([*tree.pairs, ("tasks", d)])) if draw(st.booleans()) else encode(d)
        note = f"nesting {d!r}"
    else:
        text = draw(st.binary(max_size=2000))
        note = "random bytes"
    return Case("json.raw", text, _json_headers(), counts_, note=f"{kind}: {note}")


# ---------------------------------------------------------------------------------------------
# Arrow IPC: the stream's messages, so a mutation can aim at a declared length or a buffer
# ---------------------------------------------------------------------------------------------


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
    validity, then offsets (strings, lists), then data; a list's child follows it."""
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


# ---- random schemas ---------------------------------------------------------------------------

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
    server's body limit: many rows of zeros in an id column, one huge string, one huge list, or a
    huge unknown column next to a valid request. The server must answer 413."""
    a = draw(valid_arrow_requests(shape))
    limit = shape.max_body_bytes
    target = limit * draw(st.integers(2, 16))
    kind = draw(st.sampled_from(["string", "list", "rows", "extra column"]))
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


# ---------------------------------------------------------------------------------------------
# headers and sizes
# ---------------------------------------------------------------------------------------------

JSON_TYPES = [
    JSON, "application/json; charset=utf-8", "Application/JSON", "application/json;charset=latin-1",
    "application/problem+json", "application/vnd.api+json", "text/json", "text/plain", "",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/json, text/plain", "application/jsonx", "application/json  ;  charset=utf-8", ARROW_STREAM,
    "*/*", "application/octet-stream", ";",
    "application/json; charset=utf-16", "application/json;;;", "json",
]  # fmt: skip
ARROW_TYPES = [
    ARROW_STREAM, f"{ARROW_STREAM}; charset=binary", ARROW_STREAM.upper(),
    "application/vnd.apache.arrow.file", "application/octet-stream", JSON, f"{ARROW_STREAM}, {JSON}",
    "application/vnd.apache.arrow.streamx",
]  # fmt: skip
REFUSING = [  # Accept headers that refuse (q=0) one of the two types the server speaks
    f"{ARROW_STREAM};q=0, {JSON}", f"{ARROW_STREAM};q=0", f"{JSON};q=0", f"{ARROW_STREAM}; q=0.0, */*",
    f"{JSON};q=0.001, {ARROW_STREAM};q=0.000", "*/*;q=0", f"{JSON};q=0, {ARROW_STREAM}",
]  # fmt: skip
ACCEPTS = [
    "*/*", JSON, ARROW_STREAM, f"{ARROW_STREAM};q=0, {JSON}", f"{JSON};q=0, {ARROW_STREAM}",
    f"{ARROW_STREAM};q=0", f"{JSON};q=0", f"{ARROW_STREAM}; q=0.0, */*", "text/html", "application/*",
    "application/*;q=0.1, application/json", "*/*;q=0", "garbage,,;;q=abc",
    f"{ARROW_STREAM};q=0.5, {JSON};q=0.9",
    f"{ARROW_STREAM};q=1.5", f"not-{ARROW_STREAM}", ARROW_STREAM.upper(), f"{ARROW_STREAM}-extra",
    f"{JSON};q=0.001, {ARROW_STREAM};q=0.000", "", ",", "q=0",
]  # fmt: skip
# header values as HTTP allows them (h11 refuses leading or trailing whitespace before sending)
HEADER_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + string.punctuation + " \t", max_size=60
).map(str.strip)


@st.composite
def header_variants(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid JSON or Arrow request under content-type variants (parameters, case, other and
    missing types, garbage) and Accept headers (q-values incl. q=0, wildcards, garbage), sometimes
    gzip-encoded with Content-Encoding: gzip."""
    arrow = draw(st.booleans())
    if arrow:
        a = draw(valid_arrow_requests(shape))
        body, n, types = a.body, a.request.n, ARROW_TYPES
    else:
        r = draw(valid_requests(shape))
        body, n, types = orjson.dumps(r.as_dict()), r.n, JSON_TYPES
    headers: dict[str, str] = {}
    # the body's own type half the time, so the Accept variants reach a scored answer
    ct = draw(st.one_of(st.just(types[0]), st.just(types[0]), st.sampled_from(types), HEADER_TEXT, st.none()))
    if ct is not None:
        headers["content-type"] = ct
    accept = draw(st.one_of(st.sampled_from(ACCEPTS), st.sampled_from(REFUSING), HEADER_TEXT, st.none()))
    if accept is not None:
        headers["accept"] = accept
    if draw(one_in(8)):
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    return Case("headers", body, headers, frozenset({n}), note=f"{'arrow' if arrow else 'json'} body")


@st.composite
def body_sizes(draw: st.DrawFn, shape: ModelShape) -> Case:
    """Bodies around the size limit: a valid request padded with whitespace (JSON) or an unknown
    column (Arrow) to just under the limit (must score) or over it (413), sent with a
    Content-Length or chunked."""
    limit = shape.max_body_bytes
    over = draw(st.booleans())
    chunked = draw(st.booleans())
    size = draw(st.integers(limit + 1, limit + 4096) if over else st.integers(limit - 4096, limit))
    if draw(st.booleans()):
        r = draw(valid_requests(shape))
        text = orjson.dumps(r.as_dict())
        body = text[:-1] + b" " * max(0, size - len(text)) + b"}"
        expect = TOO_LARGE if over else OK
        return Case("size", body, _json_headers(), frozenset({r.n}), expect, chunked, f"json {size}")
    a = draw(valid_arrow_requests(shape))
    if not over:  # an unknown padding column would be a 422: only the over-limit Arrow case
        size = draw(st.integers(limit + 1, limit + 4096))
    table = a.table.append_column("padding", pa.array([b"x" * (size // max(1, a.request.n))] * a.request.n))
    meta = request_metadata(a.request)
    body = write_stream(table, meta)
    return Case("size", body, _arrow_headers(), None, TOO_LARGE, chunked, f"arrow {len(body)} bytes")


def chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


GENERATORS: dict[str, Callable[[ModelShape], st.SearchStrategy[Case]]] = {
    "json.valid": valid_json,
    "arrow.valid": valid_arrow,
    "json.perturbed": perturbed_json,
    "json.raw": raw_json_text,
    "arrow.bytes": arrow_byte_mutations,
    "arrow.offsets": arrow_bad_offsets,
    "arrow.schema": arrow_random_schemas,
    "arrow.bomb": arrow_bombs,
    "headers": header_variants,
    "size": body_sizes,
}
