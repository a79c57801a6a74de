"""Shared fixtures: the shipped recipe and small hand-made raw tables that match it.

The raw tables come from `recsys_mtl.devtools.fixtures.make_raw_table` (the benchmarks use it
too), built independently of the synthetic generator with the awkward values real data has (nulls,
NaN, inf, empty and over-long lists, unknown strings), so the transform and reader tests do not
depend on the generator's choices.
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

from recsys_mtl.devtools.fixtures import make_raw_table
from recsys_mtl.recipe import Recipe, load_recipe

__all__ = ["BIN", "RECIPE_PATH", "ROOT", "cli", "make_raw_table", "write_days"]

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
