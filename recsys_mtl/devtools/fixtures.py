"""Small real models and the data and requests around them, for the tests and the benchmarks:
hand-made raw rows that match a recipe, a small model trained for a few steps and published into a
real registry, a serving config for it, Arrow IPC request bodies.

The raw tables are built here, independently of the synthetic generator, with the awkward values
real data has (nulls, NaN, inf, empty and over-long lists, unknown strings), so the transform and
reader tests do not depend on the generator's choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml

from recsys_mtl.export import ExportResult, export_model
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.registry import Registry
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform

NAME = "ads_ranker"


def _list_column(rng: np.random.Generator, n: int, max_len: int, vocab: int) -> pa.Array:
    lengths = rng.integers(0, max_len + 5, n)  # some rows longer than max_len: truncation
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    values = pa.array(rng.integers(0, vocab, offsets[-1]), mask=rng.random(offsets[-1]) < 0.02)
    mask = pa.array(rng.random(n) < 0.05)  # some null lists
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def make_raw_table(recipe: Recipe, n: int, seed: int = 0) -> pa.Table:
    """Raw rows with every recipe column: features, labels, weights, plus an oracle column."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {}
    for f in recipe.features:
        if f.kind == "dense":
            x = rng.lognormal(0, 1, n)
            x[rng.random(n) < 0.02] = np.nan
            x[rng.random(n) < 0.01] = np.inf
            cols[f.source] = pa.array(x, mask=rng.random(n) < 0.02)
        elif f.kind == "vector":
            assert f.dim is not None
            flat = pa.array(rng.normal(0, 1, n * f.dim).astype(np.float32))
            mask = pa.array(rng.random(n) < 0.05) if f.missing == "zeros" else None  # some missing
            cols[f.source] = pa.FixedSizeListArray.from_arrays(flat, f.dim, mask=mask)
        elif f.kind == "id" and f.value_type == "string":
            choices = np.array([*(f.vocabulary or ["ios", "android", "web"]), "never-seen"])
            cols[f.source] = pa.array(rng.choice(choices, n), mask=rng.random(n) < 0.02)
        elif f.kind == "id":
            cols[f.source] = pa.array(rng.integers(0, 10 * f.num_rows, n), mask=rng.random(n) < 0.02)
        else:
            assert f.max_len is not None
            cols[f.source] = _list_column(rng, n, f.max_len, 1000)
    click = (rng.random(n) < 0.1).astype(np.int8)
    cols["click"] = pa.array(click)
    cols["conversion"] = pa.array((click * (rng.random(n) < 0.3)).astype(np.int8))
    for t in recipe.tasks:
        if t.kind == "hazard":
            cols[t.interval_column] = pa.array(rng.integers(0, t.num_intervals, n).astype(np.int16))
            cols[t.event_column] = pa.array((rng.random(n) < 0.5).astype(np.int8))
    cols["hazard_weight"] = pa.array(rng.random(n).astype(np.float32))
    cols["oracle_ctr"] = pa.array(rng.random(n).astype(np.float32))
    return pa.table(cols)


def small_recipe(recipe: Recipe) -> Recipe:
    """The shipped recipe with small tables and layers: exports in about a second."""
    d = recipe.to_dict()
    for f in d["features"]:
        if f.get("hash_size"):
            f["hash_size"] = min(f["hash_size"], 211)
    d["model"] = {"type": "mmoe", "num_experts": 3, "expert_hidden": [16], "tower_hidden": [8]}
    return recipe_from_dict(d)


def train_small_model(recipe: Recipe, seed: int) -> tuple[torch.nn.Module, FeatureTransform]:
    """A model of `recipe` after a few Adam steps on random rows (non-trivial weights), in eval
    mode, with its transform: what `publish` exports (tests keep it for eager parity checks)."""
    torch.manual_seed(seed)
    net = build_model(recipe)
    transform = FeatureTransform.from_recipe(recipe)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for step in range(3):
        table = make_raw_table(recipe, 256, seed=seed * 100 + step)
        b = transform(table)
        loss, _ = total_loss(recipe, net(b.sparse, b.dense), targets_from_table(recipe, table))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), transform


def publish(
    registry: Path, recipe: Recipe, seed: int, *, promote: bool = True, int8_companion: bool = False
) -> ExportResult:
    """Train a small model for a few steps on random rows (non-trivial weights) and publish it."""
    net, transform = train_small_model(recipe, seed)
    return export_model(
        net, recipe, transform, Registry(registry), NAME, promote=promote, int8_companion=int8_companion
    )


def write_config(path: Path, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "runtime": {
            "torch_threads": 1,
            "reload_interval_s": 0.3,
            "warm_up_batch_sizes": [1, 64],
            "max_body_bytes": 4 * 1024 * 1024,
        },
        "experiments": [
            {
                "name": "exp",
                "salt": "test-salt",
                "variants": [
                    {"name": "control", "weight": 1, "model": NAME},
                    {"name": "treatment", "weight": 1, "model": NAME},
                ],
            }
        ],
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


def ipc_stream(
    table: pa.Table,
    meta: Mapping[str, str] | None = None,
    compression: str | None = None,
    batch_rows: int | None = None,
) -> bytes:
    """An Arrow IPC stream of `table` with schema metadata `meta` (default: user_id 7), optionally
    compressed or written in batches of `batch_rows`: what a client sends, hostile ones included."""
    table = table.replace_schema_metadata(dict(meta or {"user_id": "7"}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=batch_rows)
    return sink.getvalue().to_pybytes()
