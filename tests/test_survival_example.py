"""The GBSG2 survival example (bench/survival/): the converter's split is fixed and reproducible, one
row per patient, with the columns and types configs/survival_gbsg2.yaml reads; and the metric the
benchmark ranks everybody by is Harrell's C on durations. Needs lifelines (the dev extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("lifelines", reason="the GBSG2 data ship inside the lifelines wheel (dev extra)")

from recsys_mtl.partitions import inspect_partitions
from recsys_mtl.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ holds scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.survival.convert import (  # noqa: E402
    CATEGORICAL,
    DAYS,
    EVENT,
    NUM_ROWS,
    NUMERIC,
    SPLIT_SEED,
    SUBJECT,
    TIME,
    convert,
    split_indices,
)
from bench.survival.reference import harrell_c  # noqa: E402
from bench.survival.run import rmst  # noqa: E402

RECIPE = ROOT / "configs" / "survival_gbsg2.yaml"
# floor(0.6 n), floor(0.75 n) - floor(0.6 n), the rest, of n = 686 patients
SIZES = {"train": 411, "validation": 103, "test": 172}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gbsg2") / "data"
    convert(out)
    return out


def _day(data: Path, split: str) -> pa.Table:
    return pq.read_table(data / f"dt={DAYS[split]}" / "part-00000.parquet")


def test_split_is_fixed_disjoint_and_one_row_per_patient(data: Path) -> None:
    assert SPLIT_SEED == 2026
    idx = split_indices()
    assert {k: len(v) for k, v in idx.items()} == SIZES
    # the documented rule, recomputed here
    perm = np.random.default_rng(2026).permutation(NUM_ROWS)
    np.testing.assert_array_equal(np.concatenate([idx["train"], idx["validation"], idx["test"]]), perm)
    pids = {s: _day(data, s).column(SUBJECT).to_numpy() for s in DAYS}
    for s in DAYS:
        np.testing.assert_array_equal(pids[s], idx[s])  # rows in the permutation's order
        assert len(set(pids[s])) == len(pids[s])
    everyone = np.concatenate(list(pids.values()))
    assert sorted(everyone) == list(range(NUM_ROWS))  # every patient once, in exactly one split


def test_a_second_conversion_is_byte_identical_in_content(data: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    convert(again)
    for s in DAYS:
        assert _day(again, s).equals(_day(data, s))


def test_columns_match_the_recipe_and_the_source(data: Path) -> None:
    from lifelines.datasets import load_gbsg2

    recipe = load_recipe(RECIPE)
    files = inspect_partitions(recipe, data)  # every recipe column present with a usable type
    assert [f.day.isoformat() for f in files] == list(DAYS.values())
    t = _day(data, "train")
    assert t.column_names == [SUBJECT, *CATEGORICAL, *NUMERIC, TIME, EVENT]
    assert t.schema.field(TIME).type == pa.float64() and t.schema.field(EVENT).type == pa.int8()
    (task,) = recipe.tasks
    assert (task.kind, task.time_column, task.event_column, task.label_cutoff) == (
        "hazard",
        TIME,
        EVENT,
        "none",
    )
    assert recipe.data.item_column == SUBJECT
    # the values are the source's, row for row (pid = position in the source)
    src = load_gbsg2()
    pid = t.column(SUBJECT).to_numpy()
    np.testing.assert_array_equal(t.column(TIME).to_numpy(), src["time"].to_numpy()[pid])
    np.testing.assert_array_equal(t.column(EVENT).to_numpy(), src["cens"].to_numpy()[pid])
    np.testing.assert_array_equal(
        t.column("hor_th").to_numpy(zero_copy_only=False), src["horTh"].to_numpy()[pid]
    )
    np.testing.assert_array_equal(t.column("pnodes").to_numpy(), src["pnodes"].to_numpy()[pid])


def test_harrell_c_is_on_durations_with_risk_descending() -> None:
    time_ = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1])
    assert harrell_c(time_, np.array([4.0, 3.0, 2.0, 1.0]), event) == 1.0  # earlier events, higher risk
    assert harrell_c(time_, np.array([1.0, 2.0, 3.0, 4.0]), event) == 0.0
    # RMST of a flat curve is the horizon; of a curve that drops to 0 at once, half the first interval
    grid = [0.0, 10.0, 20.0]
    np.testing.assert_allclose(rmst(np.array([[1.0, 1.0], [0.0, 0.0]]), grid), [20.0, 5.0])
