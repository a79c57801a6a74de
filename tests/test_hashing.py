"""recsys_mtl.hashing on its own: the documented algorithms, checked against a pure-Python reference
written from their definitions (so the hashes cannot drift with numpy, Python's `hash()` or the
machine), published test vectors, the [1, num_rows) range with row 0 reserved, and edge cases:
empty strings, non-ASCII text, negative and extreme int64 ids, sliced and chunked arrays, nulls.

The pinned embedding rows and the cross-process check live in tests/test_transform.py; these are
the unit tests under them. About a second.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from recsys_mtl.hashing import (
    fnv1a_strings,
    hash_ints,
    hash_strings,
    mix64,
    salt_for,
    splitmix64,
    to_rows,
)

MASK = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ---- the reference: the definitions, in plain Python integers --------------------------------------


def ref_salt(table: str) -> int:
    return int.from_bytes(hashlib.blake2b(table.encode(), digest_size=8).digest(), "little")


def ref_mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def ref_splitmix64(x: int) -> int:
    return ref_mix64((x + 0x9E3779B97F4A7C15) & MASK)


def ref_fnv1a(s: str) -> int:
    h = 0xCBF29CE484222325
    for byte in s.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def ref_hash_int(v: int, table: str) -> int:
    return ref_splitmix64((v & MASK) ^ ref_salt(table))  # two's complement bits


def ref_hash_str(s: str, table: str) -> int:
    return ref_splitmix64(ref_fnv1a(s) ^ ref_salt(table))


INTS = [0, 1, -1, 42, -5, 2**31, 2**32 + 7, 2**62, INT64_MAX, INT64_MIN, INT64_MIN + 1]
STRINGS = ["", "a", "ios", "android", "créatif-π", "日本語", "emoji 🙂", "a\x00b", "x" * 300, " ", "A"]


# ---- published test vectors -------------------------------------------------------------------------


def test_splitmix64_matches_the_published_sequence() -> None:
    """SplitMix64 seeded with 0 (Steele et al.; Vigna's splitmix64.c): state += golden ratio, then the
    finaliser. splitmix64(k * golden) is the (k+1)-th output of that generator."""
    golden = 0x9E3779B97F4A7C15
    states = np.array([0, golden, (2 * golden) & MASK], np.uint64)
    assert splitmix64(states).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_fnv1a_matches_the_published_vectors() -> None:
    """FNV-1a 64-bit test vectors (Fowler, Noll and Vo's reference test suite)."""
    got = fnv1a_strings(pa.array(["", "a", "foobar"])).tolist()
    assert got == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]


# ---- against the reference -------------------------------------------------------------------------


def test_salt_is_blake2b_of_the_table_name() -> None:
    for table in ["user_id", "creative_id", "", "日本", "x" * 200]:
        assert int(salt_for(table)) == ref_salt(table)
        assert salt_for(table).dtype == np.uint64
    assert salt_for("user_id") != salt_for("user_id ")  # no normalisation of the name


def test_mix64_is_the_finaliser_in_place() -> None:
    x = np.array([0, 1, 2**63, MASK, 0x0123456789ABCDEF], np.uint64)
    want = [ref_mix64(int(v)) for v in x]
    out = mix64(x)
    assert out is x and x.tolist() == want  # in place, and returned
    assert ref_mix64(0) == 0  # the finaliser alone fixes 0: why splitmix64 adds the golden ratio


def test_splitmix64_copies_and_accepts_signed_input() -> None:
    x = np.array([5, -1], np.int64)
    out = splitmix64(x)
    assert x.tolist() == [5, -1]  # the input is left alone
    assert out.dtype == np.uint64 and out.tolist() == [ref_splitmix64(5), ref_splitmix64(MASK)]


def test_hash_ints_match_the_reference_for_every_edge() -> None:
    s = salt_for("user_id")
    got = hash_ints(np.array(INTS, np.int64), s)
    assert got.dtype == np.uint64
    assert got.tolist() == [ref_hash_int(v, "user_id") for v in INTS]


def test_hash_ints_depend_on_the_value_not_the_dtype() -> None:
    """int32 or uint8 input hashes like the same value as int64 (negatives sign-extended)."""
    s = salt_for("t")
    vals = [0, 1, 7, -3, 127]
    want = hash_ints(np.array(vals, np.int64), s).tolist()
    assert hash_ints(np.array(vals, np.int32), s).tolist() == want
    assert hash_ints(np.array([0, 1, 7, 127], np.uint8), s).tolist() == [want[i] for i in (0, 1, 2, 4)]
    assert hash_ints(np.array([], np.int64), s).tolist() == []


def test_fnv1a_strings_match_the_reference_over_utf8_bytes() -> None:
    got = fnv1a_strings(pa.array(STRINGS)).tolist()
    assert got == [ref_fnv1a(s) for s in STRINGS]
    # string and large_string arrays, sliced or not, hash alike
    assert fnv1a_strings(pa.array(STRINGS, pa.large_string())).tolist() == got
    sliced = pa.array(["skip", *STRINGS, "tail"]).slice(1, len(STRINGS))
    assert fnv1a_strings(sliced).tolist() == got


def test_fnv1a_strings_of_no_strings_and_only_empty_ones() -> None:
    assert fnv1a_strings(pa.array([], pa.string())).tolist() == []
    assert fnv1a_strings(pa.array(["", ""])).tolist() == [0xCBF29CE484222325] * 2  # no data buffer use
    # nulls hash as the empty string (callers mask them)
    empty, a = ref_fnv1a(""), ref_fnv1a("a")
    assert fnv1a_strings(pa.array([None, "a", None])).tolist() == [empty, a, empty]


def test_hash_strings_match_the_reference() -> None:
    s = salt_for("device")
    got = hash_strings(pa.array(STRINGS), s)
    assert got.dtype == np.uint64
    assert got.tolist() == [ref_hash_str(v, "device") for v in STRINGS]


def test_hash_strings_do_not_depend_on_neighbours_duplicates_nulls_or_chunks() -> None:
    """Dictionary encoding is an optimisation only: a value's hash is the same alone, repeated, in
    another order, beside nulls (whose own hashes callers mask), or split over chunks."""
    s = salt_for("t")
    alone = {v: hash_strings(pa.array([v]), s).tolist()[0] for v in ["b", "a", "c"]}
    arr = pa.array(["b", "a", None, "b", "c", None, "a", "a"])
    got = hash_strings(arr, s).tolist()
    for v, h in zip(arr.to_pylist(), got, strict=True):
        if v is not None:
            assert h == alone[v]
    chunked = pa.chunked_array([["b", "a"], [None, "b", "c"], [None, "a", "a"]])
    got_chunked = hash_strings(chunked, s).tolist()
    assert [h for v, h in zip(arr.to_pylist(), got_chunked, strict=True) if v is not None] == [
        h for v, h in zip(arr.to_pylist(), got, strict=True) if v is not None
    ]
    assert hash_strings(pa.array([], pa.string()), s).tolist() == []
    assert hash_strings(pa.array([None, None], pa.string()), s).shape == (2,)  # all null: one per row


def test_hashes_are_stable_across_calls() -> None:
    s = salt_for("user_id")
    ids = np.arange(-1000, 1000, dtype=np.int64)
    assert np.array_equal(hash_ints(ids, s), hash_ints(ids.copy(), salt_for("user_id")))
    strs = pa.array([str(i) for i in range(500)])
    assert np.array_equal(hash_strings(strs, s), hash_strings(strs, s))


# ---- salts ------------------------------------------------------------------------------------------


def test_tables_sharing_raw_ids_do_not_share_a_row_pattern() -> None:
    """The same raw ids in two tables of the same size land in unrelated rows."""
    ids = np.arange(10_000, dtype=np.int64)
    a = to_rows(hash_ints(ids, salt_for("advertiser_id")), 1000)
    b = to_rows(hash_ints(ids, salt_for("campaign_id")), 1000)
    assert np.mean(a == b) < 0.01  # about 1/999 by chance
    sa = to_rows(hash_strings(pa.array([str(i) for i in range(2000)]), salt_for("a")), 1000)
    sb = to_rows(hash_strings(pa.array([str(i) for i in range(2000)]), salt_for("b")), 1000)
    assert np.mean(sa == sb) < 0.01


def test_an_integer_and_its_decimal_string_are_different_inputs_here() -> None:
    """hash_ints hashes the int64 bits, hash_strings the UTF-8 bytes: 42 and "42" differ. Making them
    one id is the caller's job (recsys_mtl.ids turns an int sent for a string id into its string)."""
    s = salt_for("t")
    assert hash_ints(np.array([42]), s).tolist() != hash_strings(pa.array(["42"]), s).tolist()


# ---- rows ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_rows", [2, 3, 1000, 16411, 2**31 + 11, 2**62])
def test_rows_stay_in_1_to_num_rows(num_rows: int) -> None:
    hashes = np.concatenate(
        [
            np.array([0, 1, 2**63, MASK, MASK - 1, num_rows - 2, num_rows - 1], np.uint64),
            hash_ints(np.arange(5000, dtype=np.int64), salt_for("r")),
        ]
    )
    rows = to_rows(hashes, num_rows)
    assert rows.dtype == np.int64
    assert rows.min() >= 1 and rows.max() <= num_rows - 1  # row 0 is never a hashed row
    want = [int(h) % (num_rows - 1) + 1 for h in hashes.tolist()]
    assert rows.tolist() == want


def test_a_two_row_table_puts_every_value_in_row_1() -> None:
    assert to_rows(hash_ints(np.arange(100, dtype=np.int64), salt_for("t")), 2).tolist() == [1] * 100


def test_every_row_is_reachable() -> None:
    rows = to_rows(hash_ints(np.arange(20_000, dtype=np.int64), salt_for("t")), 101)
    assert set(rows.tolist()) == set(range(1, 101))
