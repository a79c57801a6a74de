"""Values to put in a request, the ordinary and the nasty.

Integers at and past the int32/int64/uint64 edges, number literals no float holds, number-like
and any unicode text (lone surrogates, non-BMP, very long), deep nesting, object keys near the
model's column names, any JSON value, and `user_id` of every shape.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.fuzz.json_text import JObj, Raw
from tests.fuzz.shape import ModelShape

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
