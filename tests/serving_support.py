"""Helpers for the serving tests: small real models published into a real registry, a real
`recsys-mtl serve` process on a free loopback port, and request builders."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml

from recsys_mtl.export import ExportResult, export_model
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.registry import Registry
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform
from serving.process import ServerProcess, running_server
from tests.conftest import make_raw_table

NAME = "ads_ranker"


def small_recipe(recipe: Recipe) -> Recipe:
    """The shipped recipe with small tables and layers: exports in about a second."""
    d = recipe.to_dict()
    for f in d["features"]:
        if f.get("hash_size"):
            f["hash_size"] = min(f["hash_size"], 211)
    d["model"] = {"type": "mmoe", "num_experts": 3, "expert_hidden": [16], "tower_hidden": [8]}
    return recipe_from_dict(d)


def publish(
    registry: Path, recipe: Recipe, seed: int, *, promote: bool = True, int8_companion: bool = False
) -> ExportResult:
    """Train a small model for a few steps on random rows (non-trivial weights) and publish it."""
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
    net.eval()
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


def nulls_for_nonfinite(table: pa.Table) -> pa.Table:
    """NaN and inf in float columns -> null: the server refuses NaN (422) and the transform treats
    null, NaN and inf alike as missing, so offline scores of the original rows stay comparable."""
    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type):
            col = table.column(i)
            table = table.set_column(i, f.name, pc.if_else(pc.is_finite(col), col, None))
    return table


def request_from_table(table: pa.Table, user_id: str, columns: list[str]) -> dict[str, Any]:
    """A columnar JSON request whose candidates are the table's rows (every feature per candidate).
    NaN and inf become null: JSON has no NaN, and the transform treats all three as missing."""

    def values(c: str) -> list[Any]:
        return [
            None if isinstance(v, float) and not math.isfinite(v) else v for v in table.column(c).to_pylist()
        ]

    return {"user_id": user_id, "candidates": {c: values(c) for c in columns}}


Server = ServerProcess


@contextmanager
def serve(registry: Path, config: Path, log_path: Path, token: str = "test-token") -> Iterator[ServerProcess]:
    """A real `recsys-mtl serve` process on a free loopback port, ready, stopped on exit."""
    with running_server(registry, config, log_path, env={"RECSYS_MTL_ADMIN_TOKEN": token}) as server:
        yield server


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


def forge_offsets(body: bytes, valid: list[int], forged: list[int]) -> bytes:
    """The stream with one int32 offsets buffer (`valid`) rewritten to `forged`: what a hostile
    client sends (Arrow's writers never produce it)."""
    old = np.array(valid, np.int32).tobytes()
    assert body.count(old) == 1, "the offsets to forge must occur once in the stream"
    return body.replace(old, np.array(forged, np.int32).tobytes())
