"""JSON text with what Python's json cannot write: repeated keys and raw number literals.

`JObj` (an object as (key, value) pairs, so a key may appear twice) and `Raw` (text written as
is: 1e400, NaN, 5,000-deep nesting) make the JSON tree the perturbations edit; `to_tree` builds
one from plain Python, `dump`/`encode` write it, and `candidate_counts` reads every candidate count
a server could take from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


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
