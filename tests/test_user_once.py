"""User-side work once per request: the grouped forward (user rows + candidate rows) equals the
per-candidate forward on every backbone, eager and exported, in both layouts the transform makes
(one user for all candidates; one user per row), and through the batch merging and chunking the
server does (`FeatureBatch.concat`, `slice_rows`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.export import script_model
from recsys_mtl.loader import load_model
from recsys_mtl.models import build_model
from recsys_mtl.models.model import MultiTaskModel
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.transform import FeatureBatch, FeatureTransform
from tests.conftest import make_raw_table
from tests.test_models import MODELS, small_recipe

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:TorchScript will treat type annotations:UserWarning"),
]

TOL = 1e-5
# the shipped HoME form (no bottom, feature-gates on every expert) and a bottom MLP under PLE
CASES: dict[str, dict[str, Any]] = {
    **MODELS,
    "home_shipped": {
        "type": "home",
        "expert_hidden": [16, 8],
        "tower_hidden": [8],
        "feature_gate_zero_init": False,
    },
    "ple_bottom": {
        "type": "ple",
        "num_levels": 1,
        "expert_hidden": [16],
        "tower_hidden": [8],
        "bottom_hidden": [24],
    },
    "shared_bottom_flat": {"type": "shared_bottom", "hidden": [], "tower_hidden": [8]},
}


def _with_user_vector(recipe: Recipe) -> Recipe:
    """The recipe plus a request-level vector feature and a user statistic read by a tower, so every
    kind of column has a request-level member."""
    d = recipe.to_dict()
    d["features"].append(
        {"name": "user_taste", "kind": "vector", "group": "user", "dim": 4, "embedding_dim": 3}
    )
    for t in d["tasks"]:
        if t["name"] == "ctr":
            t["tower_features"] = ["user_activity", "user_taste", "bid_price"]
    return recipe_from_dict(d)


def _model(recipe: Recipe, name: str) -> tuple[Recipe, MultiTaskModel, FeatureTransform]:
    r = small_recipe(_with_user_vector(recipe), CASES[name])
    torch.manual_seed(3)
    model = build_model(r)
    with torch.no_grad():  # random parameters everywhere (zero-initialised gates would hide a wrong split)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return r, model.eval(), FeatureTransform.from_recipe(r)


def _table(r: Recipe, n: int, seed: int) -> pa.Table:
    return make_raw_table(r, n, seed=seed)  # every feature of the recipe, vectors included


def _split_request(r: Recipe, table: pa.Table) -> tuple[pa.Table, dict[str, pa.Array]]:
    """A score request made of `table`'s rows: the request-level features once (row 0's values),
    the item features per candidate."""
    shared = {
        f.source: table.column(f.source).slice(0, 1).combine_chunks() for f in r.features if f.request_level
    }
    return table.drop_columns(list(shared)), shared


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        diff = float((got[k] - want[k]).abs().max())
        assert diff <= TOL, f"{k}: {diff}"


@pytest.mark.parametrize("name", list(CASES))
def test_grouped_forward_equals_per_candidate(recipe: Recipe, name: str) -> None:
    r, model, tf = _model(recipe, name)
    table = _table(r, 24, seed=1)
    with torch.inference_mode():
        # one user per row (a file of rows, or a request sending user features per candidate)
        per_row = tf(table)
        grouped = tf.grouped(table)
        assert grouped.user_rows == 24 and grouped.batch_size == 24
        # a per-row batch moved into that layout (what a loaded model does with one) is the same
        moved = tf.as_grouped(per_row)
        assert torch.equal(moved.sparse.lengths(), grouped.sparse.lengths())
        assert torch.equal(moved.sparse.values(), grouped.sparse.values())
        _assert_close(
            model.forward_grouped(moved.sparse, moved.dense, moved.group),
            model(per_row.sparse, per_row.dense),
        )
        _assert_close(
            model.forward_grouped(grouped.sparse, grouped.dense, grouped.group),
            model(per_row.sparse, per_row.dense),
        )
        # one user for all candidates (a score request)
        cands, shared = _split_request(r, table)
        tiled = tf(cands, shared=shared)
        once = tf.grouped(cands, shared=shared)
        assert once.user_rows == 1 and once.batch_size == 24
        want = model(tiled.sparse, tiled.dense)
        _assert_close(model.forward_grouped(once.sparse, once.dense, once.group), want)
        # diagnostics read the same gates and experts from the grouped forward
        _, gates, experts = model.forward_grouped_with_internals(once.sparse, once.dense, once.group)
        _, gates_ref, experts_ref = model.forward_with_internals(tiled.sparse, tiled.dense)
        _assert_close(gates, gates_ref)
        _assert_close(experts, experts_ref)


@pytest.mark.parametrize(
    "name", ["mmoe", "ple", "home_shipped", "dtrn_mmoe", "mmoe_cross", "shared_bottom_flat"]
)
def test_exported_grouped_forward_equals_eager(recipe: Recipe, name: str) -> None:
    r, model, tf = _model(recipe, name)
    scripted = script_model(model)
    table = _table(r, 40, seed=2)
    cands, shared = _split_request(r, table)
    with torch.inference_mode():
        for batch, ref in (
            (tf.grouped(cands, shared=shared), tf(cands, shared=shared)),
            (tf.grouped(table), tf(table)),
        ):
            for n in (1, 7, 40):  # tracing must not freeze a row count
                part, ref_part = batch.slice_rows(0, n), ref.slice_rows(0, n)
                _assert_close(
                    scripted(part.sparse, part.dense, part.group), model(ref_part.sparse, ref_part.dense)
                )


def test_merged_and_chunked_requests_score_as_alone(recipe: Recipe) -> None:
    """The server merges concurrent requests into one grouped batch and cuts it into forwards of
    bounded size: every candidate keeps its own user's scores."""
    r, model, tf = _model(recipe, "mmoe")
    requests = [_split_request(r, _table(r, n, seed=10 + n)) for n in (5, 1, 9)]
    alone = [tf.grouped(c, shared=s) for c, s in requests]
    merged = FeatureBatch.concat(alone)
    assert merged.user_rows == 3 and merged.batch_size == 15
    assert merged.group.tolist() == [0] * 5 + [1] + [2] * 9  # type: ignore[union-attr]
    with torch.inference_mode():
        want = torch.cat([model(*_per_row(tf, c, s)).get("ctr") for c, s in requests])
        got = model.forward_grouped(merged.sparse, merged.dense, merged.group)["ctr"]
        assert float((got - want).abs().max()) <= TOL
        for lo, hi in ((0, 4), (4, 6), (5, 15), (3, 12)):
            part = merged.slice_rows(lo, hi)
            assert part.batch_size == hi - lo
            chunk = model.forward_grouped(part.sparse, part.dense, part.group)["ctr"]
            assert float((chunk - want[lo:hi]).abs().max()) <= TOL
        # a request that sends its user per candidate (one user per row) merges with the others
        table = _table(r, 6, seed=30)
        mixed = FeatureBatch.concat([alone[0], tf.grouped(table)])
        assert mixed.user_rows == 1 + 6 and mixed.batch_size == 5 + 6
        got = model.forward_grouped(mixed.sparse, mixed.dense, mixed.group)["ctr"]
        want = torch.cat([want[:5], model(*_per_row(tf, table, {}))["ctr"]])
        assert float((got - want).abs().max()) <= TOL


def _per_row(tf: FeatureTransform, cands: pa.Table, shared: dict[str, pa.Array]) -> tuple[Any, Any]:
    b = tf(cands, shared=shared)
    return b.sparse, b.dense


LEGACY = Path(__file__).parent / "data" / "legacy_registry"


def test_a_model_exported_before_grouped_batches_still_serves(tmp_path: Path) -> None:
    """A registry version exported by the previous code (forward(sparse, dense); made by
    tests/data/make_legacy_registry.py) loads, passes its golden check and scores what it scored
    then, also when a request sends its user once (transformed once, broadcast per row)."""
    shutil.copytree(LEGACY, tmp_path / "registry")
    model = load_model(tmp_path / "registry", "legacy", "1")
    assert not model.artifact.grouped
    model.validate()
    rows = pq.read_table(LEGACY / "rows.parquet")
    want = json.loads((LEGACY / "scores.json").read_text())
    got = model.score(rows)
    for k, v in want.items():
        assert float(np.abs(got[k] - np.asarray(v, np.float32)).max()) <= 1e-6, k
    cands, shared = model.transform.request_of(rows)
    tiled = rows
    for name, col in shared.items():
        tiled = tiled.set_column(tiled.schema.get_field_index(name), name, pa.repeat(col[0], rows.num_rows))
    once, alone = model.score(cands, shared=shared), model.score(tiled)
    for k in want:
        assert float(np.abs(once[k] - alone[k]).max()) <= 1e-6, k
    model.warm_up(batch_sizes=(3,))
