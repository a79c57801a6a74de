"""The one feature transform: stable hashing, reserved row, truncation, finite dense values, and
a KJT that a real TorchRec EmbeddingBagCollection accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

from recsys_mtl.hashing import fnv1a_strings, hash_ints, hash_strings, salt_for, to_rows
from recsys_mtl.recipe import DenseStats, FeatureSpec
from recsys_mtl.transform import FeatureTransform, TransformError


def kjt_dict(batch) -> dict[str, tuple[list[int], list[int]]]:
    return {k: (jt.values().tolist(), jt.lengths().tolist()) for k, jt in batch.sparse.to_dict().items()}


def test_deterministic(recipe, raw_table) -> None:
    a = FeatureTransform.from_recipe(recipe)(raw_table)
    b = FeatureTransform.from_recipe(recipe)(raw_table)
    assert kjt_dict(a) == kjt_dict(b)
    assert torch.equal(a.dense, b.dense)


# Pinned values: a change here silently re-maps every trained embedding row, so it must be a
# deliberate, versioned decision, never an accident.
GOLDEN_INT = [(0, 2010), (1, 13121), (42, 15174), (-5, 10192), (2**62, 7794)]
GOLDEN_STR = [("", 5821), ("ios", 12751), ("android", 9197), ("créatif-π", 3447)]


def test_golden_hashes() -> None:
    s = salt_for("golden")
    ints = np.array([v for v, _ in GOLDEN_INT], np.int64)
    assert to_rows(hash_ints(ints, s), 16411).tolist() == [r for _, r in GOLDEN_INT]
    strs = pa.array([v for v, _ in GOLDEN_STR])
    assert to_rows(hash_strings(strs, s), 16411).tolist() == [r for _, r in GOLDEN_STR]


def test_fnv1a_matches_reference() -> None:
    def ref(s: str) -> int:
        h = 0xCBF29CE484222325
        for byte in s.encode():
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h

    words = ["", "a", "ios", "android", "créatif-π", "x" * 40]
    assert fnv1a_strings(pa.array(words)).tolist() == [ref(w) for w in words]
    sliced = pa.array(["zz", *words]).slice(1)  # arrays with an offset, as slices of batches are
    assert fnv1a_strings(sliced).tolist() == [ref(w) for w in words]


_CHILD = """
import json, sys
import numpy as np, pyarrow as pa
from recsys_mtl.hashing import hash_ints, hash_strings, salt_for
s = salt_for("user_id")
ints = hash_ints(np.arange(-50, 50), s).tolist()
print(json.dumps([ints, hash_strings(pa.array(["a", "bb", "ios"]), s).tolist()]))
"""


def test_same_hash_in_other_processes() -> None:
    here = json.loads(
        subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout
    )
    for seed in ("1", "12345"):  # Python's own hash() would differ between these
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, check=True
        )
        assert json.loads(out.stdout) == here
    s = salt_for("user_id")
    assert hash_ints(np.arange(-50, 50), s).tolist() == here[0]


def test_hash_rows_spread_and_avoid_reserved_row() -> None:
    rows = to_rows(hash_ints(np.arange(100_000), salt_for("t")), 1001)
    assert rows.min() >= 1 and rows.max() <= 1000
    counts = np.bincount(rows, minlength=1001)[1:]
    assert counts.std() / counts.mean() < 0.15  # near-uniform buckets


def spec(**kw) -> FeatureSpec:
    return FeatureSpec.model_validate(kw)


def test_reserved_row_for_missing_and_unknown() -> None:
    t = FeatureTransform(
        [
            spec(name="a", kind="id", hash_size=101, embedding_dim=4),
            spec(name="fmt", kind="id", value_type="string", vocabulary=["image", "video"], embedding_dim=4),
            spec(name="dev", kind="id", value_type="string", hash_size=11, embedding_dim=4),
        ]
    )
    b = t({"a": [5, None, 5], "fmt": ["video", "banner", None], "dev": ["ios", None, "ios"]})
    d = kjt_dict(b)
    assert d["a"][0][1] == 0 and d["a"][0][0] == d["a"][0][2] != 0
    assert d["fmt"][0] == [2, 0, 0]  # vocabulary position + 1; unknown and missing -> 0
    assert d["dev"][0][1] == 0 and d["dev"][0][0] == d["dev"][0][2] != 0
    assert d["a"][1] == [1, 1, 1]


def test_string_feature_accepts_numeric_ids() -> None:
    t = FeatureTransform([spec(name="s", kind="id", value_type="string", hash_size=97, embedding_dim=4)])
    assert kjt_dict(t({"s": [42, 7]})) == kjt_dict(t({"s": ["42", "7"]}))


def test_sequences_truncated_newest_first_and_nulls() -> None:
    t = FeatureTransform([spec(name="seq", kind="sequence", hash_size=1009, embedding_dim=4, max_len=3)])
    raw = [[1, 2, 3, 4, 5], None, [], [7, None], [1, 2, 3]]
    vals, lens = kjt_dict(t({"seq": raw}))["seq"]
    assert lens == [3, 0, 0, 2, 3]
    first, fourth, last = vals[0:3], vals[3:5], vals[5:8]
    assert first == last  # the first max_len (newest) values are kept
    assert fourth[1] == 0  # a null element maps to the reserved row


def test_dense_made_finite_log_standardise_clip() -> None:
    t = FeatureTransform(
        [
            spec(name="x", kind="dense", default=1.0),
            spec(name="y", kind="dense", log=True, stats={"mean": 1.0, "std": 2.0}, clip=0.4),
        ]
    )
    b = t({"x": [np.nan, np.inf, -np.inf, None, 3.0], "y": [0.0, np.e - 1, None, 1e9, -np.inf]})
    d = b.dense.numpy()
    assert np.isfinite(d).all()
    assert d[:, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 3.0]
    # y: log1p then (v - 1) / 2, clipped to +-0.4
    np.testing.assert_allclose(d[:, 1], [-0.4, 0.0, -0.4, 0.4, -0.4], atol=1e-6)


def test_fit_dense_stats_standardises(recipe, raw_table) -> None:
    t = FeatureTransform.from_recipe(recipe)
    stats = t.fit_dense_stats(raw_table)
    d = t.with_dense_stats(stats)(raw_table).dense.numpy()
    names = t.dense_names
    for i, n in enumerate(names):
        f = recipe.feature(n)
        if f.clip is None:
            assert abs(d[:, i].mean()) < 1e-4 and abs(d[:, i].std() - 1) < 1e-3
    assert isinstance(stats[names[0]], DenseStats)


def test_spec_round_trip(recipe, raw_table) -> None:
    t = FeatureTransform.from_recipe(recipe)
    t = t.with_dense_stats(t.fit_dense_stats(raw_table))
    t2 = FeatureTransform.from_spec(json.loads(json.dumps(t.spec())))
    a, b = t(raw_table), t2(raw_table)
    assert kjt_dict(a) == kjt_dict(b) and torch.equal(a.dense, b.dense)


def test_table_and_dict_inputs_agree(recipe, raw_table) -> None:
    t = FeatureTransform.from_recipe(recipe)
    as_lists = {c: raw_table.column(c).to_pylist() for c in t.input_columns}
    a, b = t(raw_table), t(as_lists)
    assert kjt_dict(a) == kjt_dict(b) and torch.equal(a.dense, b.dense)


def test_feeds_a_real_embedding_bag_collection(recipe, raw_table) -> None:
    t = FeatureTransform.from_recipe(recipe)
    b = t(raw_table.slice(0, 64))
    tables = {}
    for f in recipe.sparse_features:
        tables.setdefault(f.table_name, (f, []))[1].append(f.name)
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=n, embedding_dim=f.embedding_dim, num_embeddings=f.num_rows, feature_names=fs
            )
            for n, (f, fs) in tables.items()
        ]
    )
    out = ebc(b.sparse)
    assert out.values().shape == (64, sum(f.embedding_dim for f in recipe.sparse_features))
    assert b.sparse.values().max() < max(f.num_rows for f in recipe.sparse_features)


BAD_INPUT = [
    ({"a": ["x", "y"]}, "a: expected integer ids; strings must be canonical decimal integers"),
    ({"a": [1.5, 2.0]}, "a: expected integer ids within int64, got a non-integral or out-of-range number"),
    ({"a": [1.0, 2.0**63]}, "out-of-range number (at index 1)"),
    (
        {"a": pa.array([1, 2**64 - 1], pa.uint64())},
        "above the int64 maximum 2^63-1 (at index 1)",
    ),
    ({"a": ["42", "9223372036854775808"]}, "a: integer id outside the int64 range (at index 1)"),
    ({"a": [True, False]}, "a: expected integer ids, got bool"),
    ({"a": pa.array([b"1", b"2"])}, "a: expected integer ids, got binary"),
    ({"a": [[1], [2]]}, "a: expected one value per row, got a list"),
    ({"a": [1, 2], "seq": [1, 2]}, "seq: expected a list of values per row"),
    ({"a": [1, 2], "seq": [[1], [2]], "x": ["1", "2"]}, "x: expected numbers, got string"),
    ({"a": [1, 2], "seq": [[1]], "x": [1.0, 2.0]}, "seq: has 1 values, expected 2"),
    ({"seq": [[1], [2]], "x": [1.0, 2.0]}, "a: missing column"),
]


@pytest.mark.parametrize(("cols", "msg"), BAD_INPUT)
def test_bad_input_names_the_field(cols, msg) -> None:
    t = FeatureTransform(
        [
            spec(name="a", kind="id", hash_size=101, embedding_dim=4),
            spec(name="seq", kind="sequence", hash_size=101, embedding_dim=4, max_len=3),
            spec(name="x", kind="dense"),
        ]
    )
    with pytest.raises(TransformError) as e:
        t(cols)
    assert msg in str(e.value)


# Spellings Python's int() accepts that are not the canonical decimal form: each would give one
# embedding row but a different A/B bucket than "12", so they are refused, never reinterpreted.
NON_CANONICAL = [" 12", "12 ", "012", "+12", "1_2", "１２", "-0", "", "12.0", "0x0c"]


@pytest.mark.parametrize("text", NON_CANONICAL)
def test_integer_ids_refuse_non_canonical_spellings(text: str) -> None:
    t = FeatureTransform([spec(name="a", kind="id", hash_size=101, embedding_dim=4)])
    with pytest.raises(TransformError, match="a: expected integer ids; strings must be canonical"):
        t({"a": ["12", text]})


def test_an_integer_id_is_one_row_however_it_travels() -> None:
    """42 as int64, uint8, an integral float and the string "42": one row; huge ids as strings work."""
    t = FeatureTransform([spec(name="a", kind="id", hash_size=100003, embedding_dim=4)])
    big = 2**63 - 1
    forms = [
        pa.array([42, big, -(2**63)], pa.int64()),
        pa.array([42.0, None, None]),
        pa.array(["42", str(big), str(-(2**63))]),
    ]
    rows = [t({"a": f}).sparse.values().tolist() for f in forms]
    assert rows[0] == rows[2]
    assert rows[1][0] == rows[0][0] and rows[1][1:] == [0, 0]
    assert t({"a": pa.array([42], pa.uint8())}).sparse.values().tolist() == rows[0][:1]


def test_string_ids_take_integers_as_their_decimal_strings() -> None:
    t = FeatureTransform([spec(name="d", kind="id", value_type="string", hash_size=101, embedding_dim=4)])
    assert t({"d": [42, -7]}).sparse.values().tolist() == t({"d": ["42", "-7"]}).sparse.values().tolist()


def test_dense_values_beyond_int64_are_numbers_not_errors() -> None:
    t = FeatureTransform([spec(name="x", kind="dense", log=True)])
    out = t({"x": pa.array([2**64 - 1, 0], pa.uint64())}).dense
    assert torch.isfinite(out).all() and out[0, 0] > 40  # log1p(1.8e19) = 44.4
