"""Shared fixtures: the shipped recipe and small hand-made raw tables that match it.

The raw tables are built here, independently of the synthetic generator, with the awkward values
real data has (nulls, NaN, inf, empty and over-long lists, unknown strings), so the transform and
reader tests do not depend on the generator's choices.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE_PATH = ROOT / "configs" / "ads_ranker.yaml"
BIN = Path(sys.executable).with_name("recsys-mtl")  # the installed console script


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `recsys-mtl ARGS...` as a user does: a subprocess with no stdin, output captured."""
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # Test tensors are tiny: with 2 intra-op threads on a 2-core machine shared with the
    # subprocesses some tests start, thread hand-offs cost more than the maths.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def recipe() -> Recipe:
    return load_recipe(RECIPE_PATH)


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


def write_days(root: Path, table: pa.Table, days: list[str], row_group_size: int = 256) -> Path:
    """Split `table` evenly over day partitions, two files per day."""
    parts = np.array_split(np.arange(table.num_rows), len(days) * 2)
    for i, idx in enumerate(parts):
        d = root / f"dt={days[i // 2]}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(idx), d / f"part-{i % 2:05d}.parquet", row_group_size=row_group_size)
    return root


@pytest.fixture
def raw_table(recipe: Recipe) -> pa.Table:
    return make_raw_table(recipe, 2000, seed=1)


@pytest.fixture
def data_dir(tmp_path: Path, raw_table: pa.Table) -> Path:
    return write_days(tmp_path / "data", raw_table, ["2026-01-01", "2026-01-02", "2026-01-03"])
