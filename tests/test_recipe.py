"""Recipes load, and a wrong recipe fails at load with the field's path and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys_mtl.recipe import RecipeError, load_recipe, recipe_from_dict
from tests.conftest import RECIPE_PATH


def base() -> dict[str, Any]:
    return yaml.safe_load(RECIPE_PATH.read_text())


def test_shipped_recipe(recipe) -> None:
    assert [t.name for t in recipe.tasks] == ["ctr", "cvr", "ctcvr", "hazard_short", "hazard_long"]
    assert [t.name for t in recipe.head_tasks] == ["ctr", "cvr", "hazard_short", "hazard_long"]
    assert recipe.task("ctcvr").product_of == ["ctr", "cvr"]
    assert recipe.task("hazard_short").num_intervals == 14
    assert recipe.task("hazard_long").num_intervals == 16
    assert {f.name for f in recipe.sequence_features} == {"clicked_items", "converted_items"}
    assert {f.group for f in recipe.features} == {"user", "item", "context"}
    # sequences share the creative table so a clicked item lands on the candidate's row
    assert {f.table_name for f in recipe.features if f.name in ("clicked_items", "creative_id")} == {
        "creative"
    }
    assert recipe.model.type == "home"


def edit(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(base())
    keys = path.split(".")
    node: Any = d
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


_DELETE = object()

BAD = [
    # (edit path, value, text the error must contain)
    ("features.0.hash_size", -3, "features.0.hash_size: Input should be greater than or equal to 2"),
    ("features.0.embedding_dim", "wide", "features.0.embedding_dim: Input should be a valid integer"),
    (
        "features.0.kind",
        "idd",
        "features.0.kind: Input should be 'id', 'multi_id', 'sequence', 'dense' or 'vector'",
    ),
    ("features.0.hahs_size", 10, "features.0.hahs_size: Extra inputs are not permitted"),
    ("features.5.max_len", _DELETE, "features.5: a 'sequence' feature needs `max_len`"),
    ("features.0.embedding_dim", _DELETE, "features.0: a 'id' feature needs `embedding_dim`"),
    ("features.5.hash_size", 99, "share table 'creative' but differ in num_rows"),
    ("features.0.column", "oracle_ctr", "oracle_* columns are ground truth"),
    ("tasks.3.grid", [0, 2, 1], "tasks.3: `grid` boundaries must be strictly increasing"),
    ("tasks.3.interval_column", _DELETE, "tasks.3: a hazard task needs `interval_column`"),
    ("tasks.2.product_of", ["ctr", "nope"], "task 'ctcvr': product_of names unknown task 'nope'"),
    ("tasks.0.loss_weight", -1, "tasks.0.loss_weight: Input should be greater than or equal to 0"),
    ("tasks.0.grid", [0, 1], "tasks.0: `grid` applies to hazard tasks"),
    ("tasks.0.hazard_head", "shared", "tasks.0: `hazard_head` applies to hazard tasks"),
    ("tasks.3.hazard_head", "free", "tasks.3.hazard_head: Input should be 'shared' or 'independent'"),
    ("model.type", "transformer", "model: Input tag 'transformer' found using 'type' does not match"),
    ("model.num_levels", 2, "model.home.num_levels: Extra inputs are not permitted"),
    ("training.batch_size", 0, "training.batch_size: Input should be greater than or equal to 1"),
    ("training.sharding_types", ["diagonal"], "training.sharding_types.0: Input should be"),
    ("tasks", [], "tasks: List should have at least 1 item"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD, ids=[b[0] for b in BAD])
def test_wrong_recipe_names_the_field(path: str, value: Any, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(edit(path, value), "test.yaml")
    assert expected in str(e.value), str(e.value)
    assert "invalid recipe test.yaml" in str(e.value)


def test_duplicate_feature_names() -> None:
    d = base()
    d["features"].append(dict(d["features"][0]))
    with pytest.raises(RecipeError, match="duplicate feature names: \\['user_id'\\]"):
        recipe_from_dict(d)


def test_yaml_and_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe(bad)


def test_every_model_type_validates() -> None:
    for t in ["shared_bottom", "mmoe", "ple", "home", "dtrn"]:
        d = base()
        d["model"] = {"type": t}
        assert recipe_from_dict(d).model.type == t


def test_round_trip() -> None:
    r = recipe_from_dict(base())
    assert recipe_from_dict(r.to_dict()) == r
