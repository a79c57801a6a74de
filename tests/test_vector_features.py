"""The `vector` feature kind (a creative's image/text embedding): recipe rules, the transform's
values and its errors (column and row named), the reader naming the file and row of a bad vector,
the partition type check, and the model reading vectors through a learned projection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.models import build_model
from recsys_mtl.partitions import DataError, inspect_partitions
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import FeatureSpec, Recipe, RecipeError, recipe_from_dict
from recsys_mtl.transform import FeatureTransform, TransformError
from tests.conftest import make_raw_table

VEC = {"name": "content", "kind": "vector", "dim": 3, "embedding_dim": 2}


def vec(**kw: object) -> FeatureSpec:
    return FeatureSpec.model_validate({**VEC, **kw})


def fixed(rows: list[list[float] | None], dim: int = 3) -> pa.Array:
    return pa.array(rows, pa.list_(pa.float32(), dim))


# ---------------------------------------------------------------------------------------------
# recipe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dim": None}, "needs `dim`"),
        ({"embedding_dim": None}, "needs `embedding_dim`"),
        ({"hash_size": 10}, "`hash_size` does not apply to kind 'vector'"),
        ({"log": True}, "`log` does not apply to kind 'vector'"),
        ({"kind": "dense", "embedding_dim": None, "dim": 4}, "`dim` applies to vector features"),
        (
            {"kind": "dense", "embedding_dim": None, "dim": None, "normalize": "l2"},
            "`normalize` applies to vector",
        ),
        ({"dim": 0}, "dim"),
    ],
)
def test_recipe_rules_name_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vec(**spec)


def test_layout_puts_scalars_first_then_each_vector_block(recipe: Recipe) -> None:
    d = recipe.to_dict()
    d["features"].append({**VEC, "missing": "error"})
    r = recipe_from_dict(d)
    layout = r.dense_layout
    scalars = [f.name for f in r.dense_features]
    assert [layout[n] for n in scalars] == [(i, 1) for i in range(len(scalars))]
    # the shipped creative_content (32 values + its missing flag), then ours (no flag: missing: error)
    assert layout["creative_content"] == (len(scalars), 33)
    assert layout["content"] == (len(scalars) + 33, 3)
    # a spec survives the manifest's round trip (every field dumped) unchanged
    f = r.feature("content")
    assert FeatureSpec.model_validate(f.model_dump(mode="json")) == f


def test_tower_features_may_name_a_vector(recipe: Recipe) -> None:
    d = recipe.to_dict()
    hazard = next(t for t in d["tasks"] if t["kind"] == "hazard")
    hazard["tower_features"] = ["creative_content"]
    assert recipe_from_dict(d).task(hazard["name"]).tower_features == ["creative_content"]
    hazard["tower_features"] = ["user_id"]
    with pytest.raises(RecipeError, match="not a dense or vector feature"):
        recipe_from_dict(d)


# ---------------------------------------------------------------------------------------------
# transform
# ---------------------------------------------------------------------------------------------


def test_values_missing_indicator_and_every_input_type() -> None:
    t = FeatureTransform([vec()])
    rows = [[1.0, 2.0, 3.0], None, [0.0, -1.0, 0.5]]
    want = np.array([[1, 2, 3, 0], [0, 0, 0, 1], [0, -1, 0.5, 0]], np.float32)
    for col in (
        fixed(rows),
        pa.array(rows, pa.list_(pa.float64())),
        pa.array(rows, pa.large_list(pa.float32())),
        pa.array([[1, 2, 3], None, [0, -1, 0.5]]),  # JSON-like: ints and floats mixed
    ):
        assert np.array_equal(t({"content": col}).dense.numpy(), want), col.type
    # a sliced array (non-zero offset, a null before the slice) reads the right rows
    sliced = fixed([None, *rows]).slice(1)
    assert np.array_equal(t({"content": sliced}).dense.numpy(), want)
    # an all-null column: every row missing
    assert np.array_equal(t({"content": pa.nulls(2)}).dense.numpy()[:, -1], [1, 1])


def test_l2_normalisation_and_the_shared_broadcast() -> None:
    t = FeatureTransform([vec(normalize="l2"), FeatureSpec(name="x", kind="dense")])
    b = t({"x": [1.0, 2.0]}, shared={"content": fixed([[3.0, 0.0, 4.0]])})
    assert torch.allclose(b.dense, torch.tensor([[1.0, 0.6, 0.0, 0.8, 0.0], [2.0, 0.6, 0.0, 0.8, 0.0]]))
    zero = t({"x": [1.0], "content": fixed([[0.0, 0.0, 0.0]])}).dense
    assert torch.equal(zero, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]))  # no division by zero


@pytest.mark.parametrize(
    ("col", "row", "message"),
    [
        (pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]]), 1, r"row 1: has 2 values, expected 3 \(dim\)$"),
        (
            pa.array([[1.0, None, 3.0], [1.0, 2.0, 3.0], [None, 1.0, 1.0]]),
            0,
            r"row 0: value 1 of its vector is null; send null .* \(2 rows at fault\)$",
        ),
        (
            pa.array([[1.0, 2.0, 3.0], [1.0, float("nan"), 3.0]]),
            1,
            r"row 1: value 1 of its vector is nan: NaN, infinite or beyond the float32 range",
        ),
        (fixed([None, [1.0, float("inf"), 3.0]]), 1, "row 1: value 1 of its vector is inf"),
        (pa.array([[1.0, 2.0, 3.0], [1e39, 2.0, 3.0]]), 1, "row 1: value 0 of its vector is 1e[+]39"),
        (
            pa.array([None, ["a", "b", "c"]]),
            1,
            "row 1: expected a vector of 3 numbers, got a list of strings",
        ),
        (pa.array([1.0, 2.0]), 0, r"row 0: expected a vector of 3 numbers .*got a number \(double\)"),
        (
            fixed([[1.0, 2.0]], dim=2),
            0,
            "row 0: has 2 values, expected 3 \\(dim\\); the column is fixed_size_list",
        ),
    ],
)
def test_bad_vectors_name_the_column_and_row(col: pa.Array, row: int | None, message: str) -> None:
    with pytest.raises(TransformError, match=f"^content: {message}") as e:
        FeatureTransform([vec()])({"content": col})
    assert e.value.field == "content" and e.value.row == row
    assert not e.value.message.startswith("row")  # each caller says where the row is, once


def test_missing_error_refuses_a_null_vector() -> None:
    t = FeatureTransform([vec(missing="error")])
    assert t.dense_width == 3
    with pytest.raises(TransformError, match="row 1: no vector \\(null\\), and feature content has") as e:
        t({"content": fixed([[1.0, 2.0, 3.0], None])})
    assert e.value.row == 1 and e.value.rows == 1


# ---------------------------------------------------------------------------------------------
# files: the partition check and the reader
# ---------------------------------------------------------------------------------------------


def _write_day(root: Path, recipe: Recipe, table: pa.Table, day: str = "2026-01-01") -> Path:
    d = root / f"dt={day}"
    d.mkdir(parents=True)
    path = d / "part-0.parquet"
    pq.write_table(table, path, row_group_size=50)
    return path


def test_reader_names_file_row_group_and_row_of_a_bad_vector(tmp_path: Path, recipe: Recipe) -> None:
    table = make_raw_table(recipe, 200, seed=1)
    i = table.schema.get_field_index("creative_content")
    vals = table.column(i).combine_chunks()
    flat = vals.values.to_numpy(zero_copy_only=False).copy()  # every slot, null rows included
    present = np.flatnonzero(~vals.is_null().to_numpy(zero_copy_only=False))
    bad_row = int(present[present >= 120][0])  # in row group 2 (rows 100-149)
    flat[bad_row * 32 + 5] = np.nan
    arr = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), 32, mask=vals.is_null())
    path = _write_day(tmp_path, recipe, table.set_column(i, "creative_content", arr))
    reader = ParquetReader(recipe, tmp_path, batch_size=64, shuffle_buffer=0)
    with pytest.raises(DataError) as e:
        list(reader)
    msg = str(e.value)
    assert str(path) in msg and "creative_content" in msg
    assert f"row group 2, row {bad_row - 100}: value 5 of its vector is nan" in msg
    assert msg.count(f"row {bad_row - 100}") == 1  # said once


def test_partition_check_names_a_column_of_the_wrong_type(tmp_path: Path, recipe: Recipe) -> None:
    table = make_raw_table(recipe, 20)
    i = table.schema.get_field_index("creative_content")
    table = table.set_column(i, "creative_content", pa.array([["x"]] * 20))
    _write_day(tmp_path, recipe, table)
    with pytest.raises(DataError, match=r"creative_content.*expected vectors"):
        inspect_partitions(recipe, tmp_path, dt.date(2026, 1, 1), dt.date(2026, 1, 1))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


def test_the_model_reads_the_vector_and_its_missing_flag(recipe: Recipe) -> None:
    d = recipe.to_dict()  # and a hazard tower that reads it raw (tower_features)
    hazard = next(t for t in d["tasks"] if t["name"] == "hazard_long")
    hazard["tower_features"] = [*hazard["tower_features"], "creative_content"]
    recipe = recipe_from_dict(d)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    b = FeatureTransform.from_recipe(recipe)(make_raw_table(recipe, 16, seed=2))
    start, width = recipe.dense_layout["creative_content"]
    assert width == 33
    proj = model.dense_input.projections[0]
    assert (proj.in_features, proj.out_features) == (width, 16)
    with torch.no_grad():
        base = model(b.sparse, b.dense)
        other = b.dense.clone()
        other[:, start : start + 32] = torch.randn(16, 32)
        moved = model(b.sparse, other)
        flagged = b.dense.clone()
        flagged[:, start + 32] = 1.0 - flagged[:, start + 32]
        flag = model(b.sparse, flagged)
    for task in ("ctr", "hazard_long"):  # the shared input, and the hazard tower that reads it raw
        assert not torch.allclose(base[task], moved[task]), task
        assert not torch.allclose(base[task], flag[task]), task


def test_a_recipe_without_vectors_keeps_its_state_dict(recipe: Recipe) -> None:
    """Checkpoints of runs from before vectors existed load: no new parameters without a vector."""
    d = recipe.to_dict()
    d["features"] = [f for f in d["features"] if f["kind"] != "vector"]
    for t in d["tasks"]:
        if "tower_features" in t:
            t["tower_features"] = [f for f in t["tower_features"] if f != "creative_content"]
    r = recipe_from_dict(d)
    keys = set(build_model(r).state_dict())
    assert not any(k.startswith("dense_input") for k in keys)
    assert FeatureTransform.from_recipe(r).dense_width == len(r.dense_features)


def test_train_noise_reaches_the_vector_values_in_training_only(recipe: Recipe) -> None:
    d = recipe.to_dict()
    next(f for f in d["features"] if f["name"] == "creative_content")["train_noise"] = 0.5
    r = recipe_from_dict(d)
    torch.manual_seed(0)
    model = build_model(r)
    b = FeatureTransform.from_recipe(r)(make_raw_table(r, 64, seed=3))
    noisy = model.dense_input.augment(b.dense)
    start, width = r.dense_layout["creative_content"]
    assert width == 33
    changed = (noisy != b.dense).any(dim=0)
    assert changed[start : start + 32].all()  # every value of the vector
    assert not changed[start + 32] and not changed[:start].any()  # not its flag, not the scalars
    assert (noisy - b.dense)[:, start : start + 32].std().item() == pytest.approx(0.5, rel=0.1)
    model.eval()  # evaluation and the exported model: no noise
    assert torch.equal(model.dense_input.augment(b.dense), b.dense)
    with torch.no_grad():
        first, second = model(b.sparse, b.dense), model(b.sparse, b.dense)
    assert all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match="`train_noise` applies to vector features"):
        FeatureSpec(name="x", kind="dense", train_noise=0.1)
