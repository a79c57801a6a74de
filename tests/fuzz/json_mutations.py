"""JSON outside the schema: valid requests edited as trees and broken at the byte level.

`perturbed_json` sets feature values to nasty ones and deletes, adds, repeats, renames, wraps
and resizes nodes (`set_value`, `perturb`); `raw_json_text` writes repeated keys, truncations,
byte edits, trailing garbage, BOMs, UTF-16, invalid UTF-8, NaN literals, non-object documents,
deep nesting and random bytes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.fuzz.json_text import JObj, Raw, candidate_counts, dump, encode, to_tree
from tests.fuzz.shape import Case, ModelShape, _json_headers, one_in, pick
from tests.fuzz.valid import valid_requests
from tests.fuzz.values import BOUNDARY_INTS, deep_nesting, json_values, keys, scalars, user_ids


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
