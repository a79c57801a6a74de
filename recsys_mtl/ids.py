"""The one parser of categorical ids: what an id may look like, and its canonical form.

Every place that turns a raw id into something that decides an outcome goes through here: the
feature transform (offline reader and server alike) before hashing to an embedding row, the server's
request decoding for `user_id`, and the A/B assignment, which hashes the same canonical string. So
one id always lands in the same embedding row AND the same A/B bucket, whichever way it travelled.

Rules:
- Integer ids are int64. A number outside [-2^63, 2^63) is an error (never wrapped around); so is a
  float that is not integral (1.5), and a boolean (true is not the id 1).
- An integer id may also arrive as a string, because JSON clients in JavaScript cannot hold 64-bit
  integers as numbers: only its canonical decimal spelling is accepted, `^(0|-?[1-9][0-9]*)$` in
  ASCII. "42" is 42; " 42", "042", "+42", "4_2", "４２" (fullwidth) and "-0" are refused, because
  Python's `int()` would accept them and give one row but several A/B buckets.
- String ids are taken as given (their UTF-8 bytes are hashed); an integer sent for a string id
  becomes its canonical decimal string, so 42 and "42" are one id there too.

Everything is columnar (pyarrow compute), no loop over rows. Errors name the first offending
position, so a caller can say which candidate was wrong.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# RE2 syntax (pyarrow compute) and Python's re agree on this pattern.
CANONICAL_INT = r"^(0|-?[1-9][0-9]*)$"
_CANONICAL_INT_RE = re.compile(r"(0|-?[1-9][0-9]*)", re.ASCII)
# float64 values in [-2^63, 2^63) are exactly the integral floats that fit int64 (2^63 itself does not).
_F_LO, _F_HI = float(INT64_MIN), float(2**63)


class IdError(ValueError):
    """A value that is not a valid id; `index` is the first offending position (None: a scalar)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"{message} (at index {index})")
        self.index = index


def _first(mask: pa.Array | pa.ChunkedArray) -> int:
    m = np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    return int(np.flatnonzero(m)[0])


def canonical_scalar(value: object, max_bytes: int) -> str:
    """A request-level id (`user_id`) as its canonical string: an int within int64 -> its decimal
    spelling; a string -> itself (1 to `max_bytes` UTF-8 bytes). IdError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise IdError(f"expected a string or an integer, got {type(value).__name__}")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise IdError(f"integer {value} is outside the int64 range")
        return str(value)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise IdError("not valid Unicode (a lone surrogate)") from None
    if not 1 <= size <= max_bytes:
        raise IdError(f"must be 1 to {max_bytes} bytes of UTF-8, got {size}")
    return value


def int_from_canonical(text: str) -> int:
    """The integer a canonical decimal string spells (IdError for anything else)."""
    if not _CANONICAL_INT_RE.fullmatch(text):
        raise IdError(f"{text[:40]!r} is not an integer id in canonical decimal form (e.g. 42, -7)")
    v = int(text)
    if not INT64_MIN <= v <= INT64_MAX:
        raise IdError(f"integer {text} is outside the int64 range")
    return v


def int_ids(values: pa.Array) -> pa.Array:
    """Integer ids as int64 (nulls kept). Accepts integer, integral float and canonical decimal
    string arrays, and an all-null array; IdError for anything else or out of range."""
    t = values.type
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.int64())
    if pa.types.is_integer(t):
        if t == pa.uint64() and len(values):
            too_big = pc.greater(values, pa.scalar(INT64_MAX, pa.uint64()))
            if pc.any(too_big).as_py():
                raise IdError("integer id above the int64 maximum 2^63-1", _first(too_big))
        return values.cast(pa.int64())
    if pa.types.is_floating(t):
        x = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
        ok = np.isnan(x) | ((x >= _F_LO) & (x < _F_HI) & (x == np.floor(x)))
        if not ok.all():
            raise IdError("expected integer ids within int64, got a non-integral or out-of-range number",
                          int(np.flatnonzero(~ok)[0]))  # fmt: skip
        return pc.cast(values, pa.int64(), safe=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        bad = pc.invert(pc.match_substring_regex(values, CANONICAL_INT))
        if pc.any(bad).as_py():
            raise IdError("expected integer ids; strings must be canonical decimal integers (e.g. \"42\")",
                          _first(bad))  # fmt: skip
        try:
            return pc.cast(values, pa.int64())
        except pa.ArrowInvalid:  # 19 digits or more: find the first one out of range
            long = np.flatnonzero(pc.utf8_length(values).fill_null(0).to_numpy(zero_copy_only=False) >= 19)
            first = next(int(i) for i in long if not INT64_MIN <= int(values[int(i)].as_py()) <= INT64_MAX)
            raise IdError("integer id outside the int64 range", first) from None
    raise IdError(f"expected integer ids, got {t}")


def string_ids(values: pa.Array) -> pa.Array:
    """String ids (nulls kept): strings as they are; integers as their canonical decimal strings
    ("42" and 42 are one id); an all-null array. IdError for anything else."""
    t = values.type
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values
    if pa.types.is_integer(t):
        return values.cast(pa.string())
    raise IdError(f"expected string ids, got {t}")
