"""The one stable hash that maps raw categorical values to embedding rows.

Training and serving must agree on every row, across processes, machines and Python versions, so
nothing here depends on Python's `hash()` (salted per process) or on dict order. Integers go through
the SplitMix64 finaliser (Steele et al., 2014), strings through 64-bit FNV-1a over their UTF-8 bytes
followed by the same finaliser; both are mixed with a per-table salt so two tables sharing raw ids do
not collide in the same pattern. Row 0 of every table is reserved for missing and out-of-vocabulary
values, so hashed rows live in [1, num_rows).

Everything is vectorised over numpy arrays: strings are dictionary-encoded first, so each distinct
string is hashed once, and FNV runs one numpy pass per byte position rather than one loop per row.
What counts as an id, and its canonical form, is `recsys_mtl.ids`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def salt_for(table: str) -> np.uint64:
    """A 64-bit salt derived from the table name (blake2b: stable everywhere)."""
    return np.uint64(int.from_bytes(hashlib.blake2b(table.encode(), digest_size=8).digest(), "little"))


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array, in place (and returned); wrapping arithmetic is
    intended. Also the synthetic generator's counter-based random source."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 (Steele et al., 2014) of each value: golden-ratio increment, then the finaliser."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
    return mix64(z)


def hash_ints(values: np.ndarray, salt: np.uint64) -> np.ndarray:
    """64-bit hashes of int64 values (two's complement bits, so negative ids are fine)."""
    return splitmix64(values.astype(np.int64, copy=False).view(np.uint64) ^ salt)


def fnv1a_strings(arr: pa.Array) -> np.ndarray:
    """64-bit FNV-1a of each string's UTF-8 bytes; nulls hash as the empty string (callers mask them).

    FNV is sequential within a string, so the loop runs over byte positions, each a numpy pass over
    the strings still that long. With the strings sorted longest first those form a prefix, so
    each pass is a plain slice (no boolean mask over all strings): the cost is the total number of
    bytes plus about a microsecond per position of the longest string. Callers bound that length
    (the server's `runtime.max_id_bytes`).
    """
    arr = arr.cast(pa.large_string()) if not pa.types.is_large_string(arr.type) else arr
    n = len(arr)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts, desc = offsets[:-1][order], lengths[order]
    # still[p] = how many strings are longer than p: the active prefix at byte position p
    still = np.searchsorted(-desc, -np.arange(int(desc[0])), side="left")
    hs = h[order]
    with np.errstate(over="ignore"):
        for p, k in enumerate(still.tolist()):
            hs[:k] ^= data[starts[:k] + p]
            hs[:k] *= _FNV_PRIME
    h[order] = hs
    return h


def hash_strings(arr: pa.Array, salt: np.uint64) -> np.ndarray:
    """Hashes of a string array: each distinct value is hashed once (dictionary encoding)."""
    enc = pc.dictionary_encode(arr)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    uniq = splitmix64(fnv1a_strings(enc.dictionary) ^ salt)
    idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return uniq[idx] if len(uniq) else np.zeros(len(arr), np.uint64)


def to_rows(hashes: np.ndarray, num_rows: int) -> np.ndarray:
    """Map 64-bit hashes into [1, num_rows): row 0 stays reserved for missing values."""
    return (hashes % np.uint64(num_rows - 1)).astype(np.int64) + 1
