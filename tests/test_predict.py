"""Batch predictions (`recsys_mtl.batch_predict`, `recsys-mtl predict`): from a registry version and
from a training run, equal to the server loader's `LoadedModel.score` on the same rows, every row
written once and in order per day, hazards and survival curves on request, streaming in bounded
batches, atomic day files, and clear errors. A small model (the shipped recipe with small tables,
a few training steps) is published and saved as a run directory by hand: no trainer, a few seconds.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl import batch_predict
from recsys_mtl.batch_predict import (
    OUTPUT_FILE,
    PredictOptions,
    model_from_registry,
    model_from_run,
    predict,
)
from recsys_mtl.cli import main as cli_main
from recsys_mtl.devtools.fixtures import NAME, make_raw_table, small_recipe
from recsys_mtl.export import export_model
from recsys_mtl.loader import LoadedModel
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.partitions import DataError
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import Registry
from recsys_mtl.run import CHECKPOINTS, LATEST, RUN_FILE
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform
from tests.conftest import write_days

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
ROWS = 1500  # 250 per file, 2 files a day, row groups of 128 rows

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:TorchScript will treat type annotations:UserWarning"),
]


@dataclass
class Setup:
    recipe: Recipe
    data: Path
    registry: Path
    run: Path
    model: LoadedModel  # the registry version, as the server loads it


def _write_run(run: Path, recipe: Recipe, transform: FeatureTransform, net: torch.nn.Module) -> None:
    """A finished training run's directory as the trainer leaves it: run.json and a DCP checkpoint."""
    import torch.distributed.checkpoint as dcp

    ck = run / CHECKPOINTS / "step-00000003"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "torch.distributed is disabled": intended
        dcp.save({"model": net.state_dict()}, checkpoint_id=str(ck), no_dist=True)
    (ck / "progress.json").write_text(json.dumps({"step": 3}))
    (run / CHECKPOINTS / LATEST).write_text(json.dumps({"step": 3, "dir": ck.name}))
    info = {"status": "finished", "recipe": recipe.to_dict(), "transform": transform.spec(), "steps": 3}
    (run / RUN_FILE).write_text(json.dumps(info))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    from recsys_mtl.recipe import load_recipe
    from tests.conftest import RECIPE_PATH

    tmp = tmp_path_factory.mktemp("predict")
    recipe = small_recipe(load_recipe(RECIPE_PATH))
    torch.manual_seed(3)
    net = build_model(recipe)
    transform = FeatureTransform.from_recipe(recipe)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for step in range(3):  # non-trivial weights
        table = make_raw_table(recipe, 256, seed=300 + step)
        b = transform(table)
        loss, _ = total_loss(recipe, net(b.sparse, b.dense), targets_from_table(recipe, table))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    reg = tmp / "registry"
    export_model(net, recipe, transform, Registry(reg), NAME, promote=True)
    _write_run(tmp / "run", recipe, transform, net)
    data = write_days(tmp / "data", make_raw_table(recipe, ROWS, seed=9), DAYS, row_group_size=128)
    return Setup(recipe, data, reg, tmp / "run", model_from_registry(reg, NAME))


def _day_input(setup: Setup, day: str) -> pa.Table:
    files = sorted((setup.data / f"dt={day}").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _hazard_tasks(model: LoadedModel) -> list[str]:
    return [t.name for t in model.tasks if t.kind == "hazard"]


def test_registry_scores_equal_the_server_loaders_every_row_once_in_order(
    setup: Setup, tmp_path: Path
) -> None:
    m = setup.model
    days = predict(m, setup.data, tmp_path / "out")
    assert [str(d.day) for d in days] == DAYS
    binary = [t.name for t in m.tasks if t.kind == "binary"]
    hazard = _hazard_tasks(m)
    assert binary and hazard  # the shipped recipe has both kinds
    for d in days:
        got = pq.read_table(tmp_path / "out" / f"dt={d.day}" / OUTPUT_FILE)
        raw = _day_input(setup, str(d.day))
        # kept by default: the recipe's user and item columns, then every task's score
        assert got.column_names == ["user_id", "creative_id", *binary, *(f"{h}_risk" for h in hazard)]
        assert got.num_rows == raw.num_rows == d.rows
        # every row once, in input order: the kept ids match row for row
        for c in ("user_id", "creative_id"):
            assert got.column(c).equals(raw.column(c))
        want = m.score(raw)  # the whole day at once, as one server call
        for t in binary:
            assert got.schema.field(t).type == pa.float32()
            np.testing.assert_allclose(got.column(t).to_numpy(), want[t], rtol=0, atol=1e-6)
        for h in hazard:
            np.testing.assert_allclose(
                got.column(f"{h}_risk").to_numpy(), want[f"{h}_risk"], rtol=0, atol=1e-6
            )
    # nothing but the day files: the temporary names were renamed away
    assert sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    ) == [f"dt={day}/{OUTPUT_FILE}" for day in DAYS]


def test_a_run_scores_like_its_exported_version(setup: Setup, tmp_path: Path) -> None:
    """A run is scored through the export path: the same numbers as the published version of the
    same weights, and no registry left behind."""
    m = model_from_run(setup.run)
    assert m.task_names == setup.model.task_names
    assert m.version == "run" and m.name == "run"
    opts = PredictOptions(hazards=True, survival=True, batch_size=300)
    a = predict(m, setup.data, tmp_path / "from_run.parquet", start=DAYS[1], options=opts)
    b = predict(setup.model, setup.data, tmp_path / "from_reg.parquet", start=DAYS[1], options=opts)
    assert [d.rows for d in a] == [d.rows for d in b]
    ta, tb = pq.read_table(tmp_path / "from_run.parquet"), pq.read_table(tmp_path / "from_reg.parquet")
    assert ta.schema == tb.schema
    for c in ta.column_names:
        x, y = ta.column(c), tb.column(c)
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=0, atol=1e-6)
        elif pa.types.is_list(x.type):
            np.testing.assert_allclose(x.combine_chunks().flatten(), y.combine_chunks().flatten(), atol=1e-6)
        else:
            assert x.equals(y), c
    assert not list(setup.run.glob("**/manifest.json"))  # the throw-away registry is not in the run


def test_hazards_and_survival_curves_on_request(setup: Setup, tmp_path: Path) -> None:
    m = setup.model
    hazard = _hazard_tasks(m)
    opts = PredictOptions(tasks=hazard, hazards=True, survival=True, keep=["user_id", "click"])
    predict(m, setup.data, tmp_path / "out", start=DAYS[0], end=DAYS[0], options=opts)
    got = pq.read_table(tmp_path / "out" / f"dt={DAYS[0]}" / OUTPUT_FILE)
    cols = ["user_id", "click"]
    for h in hazard:
        cols += [f"{h}_risk", f"{h}_hazard", f"{h}_survival"]
    assert got.column_names == cols
    raw = _day_input(setup, DAYS[0])
    assert got.column("click").equals(raw.column("click"))  # a label copied through
    want = m.score(raw, hazard)
    for h in hazard:
        n_int = next(t.num_intervals for t in m.tasks if t.name == h)
        for suffix, key in (("_hazard", h), ("_survival", f"{h}_survival")):
            col = got.column(f"{h}{suffix}")
            assert col.type == pa.list_(pa.float32())
            assert set(col.combine_chunks().value_lengths().to_numpy()) == {n_int}
            arr = np.stack(col.to_numpy(zero_copy_only=False))
            np.testing.assert_allclose(arr, want[key], rtol=0, atol=1e-6)
        surv = np.stack(got.column(f"{h}_survival").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got.column(f"{h}_risk").to_numpy(), 1 - surv[:, -1], atol=1e-6)


def test_small_batches_stream_a_day_without_reading_it_whole(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --batch-size 50 every day is read, scored and written in batches of at most 50 rows
    (one output row group each); no call ever sees a whole file or day."""
    scored: list[int] = []
    real = LoadedModel.score

    def spy(self: LoadedModel, columns: Any, tasks: Any = None) -> dict[str, np.ndarray]:
        scored.append(columns.num_rows)
        return real(self, columns, tasks)

    monkeypatch.setattr(LoadedModel, "score", spy)
    days = predict(setup.model, setup.data, tmp_path / "out", options=PredictOptions(batch_size=50, keep=[]))
    per_day = ROWS // len(DAYS)
    assert sum(scored) == ROWS and max(scored) <= 50
    for d in days:
        assert d.rows == per_day and d.max_batch_rows <= 50
        # at least one batch per 50 rows of every row group: never the day (500 rows) at once
        assert d.batches >= math.ceil(per_day / 50)
        meta = pq.ParquetFile(d.path).metadata
        assert meta.num_row_groups == d.batches and meta.num_rows == per_day
    assert len(scored) == sum(d.batches for d in days)


def test_one_file_for_all_days_carries_the_day(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    days = predict(setup.model, setup.data, out, options=PredictOptions(tasks=["ctr"], keep=["user_id"]))
    got = pq.read_table(out)
    assert got.column_names == ["dt", "user_id", "ctr"]
    assert got.schema.field("dt").type == pa.date32()
    per_day = [d.rows for d in days]
    want_days = np.repeat(np.array(DAYS, dtype="datetime64[D]"), per_day)
    np.testing.assert_array_equal(got.column("dt").to_numpy(), want_days)
    raw = pa.concat_tables([_day_input(setup, d) for d in DAYS])
    assert got.column("user_id").equals(raw.column("user_id"))


def test_a_failure_mid_day_leaves_finished_days_and_no_partial_file(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = LoadedModel.score

    def flaky(self: LoadedModel, columns: Any, tasks: Any = None) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 13:  # day 1 takes 10 batches of 50: fail inside day 2
            raise RuntimeError("boom")
        return real(self, columns, tasks)

    monkeypatch.setattr(LoadedModel, "score", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        predict(setup.model, setup.data, out, options=PredictOptions(batch_size=50))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [f"dt={DAYS[0]}/{OUTPUT_FILE}"]  # day 2: neither a half file nor a temporary one
    assert pq.read_metadata(out / f"dt={DAYS[0]}" / OUTPUT_FILE).num_rows == ROWS // len(DAYS)


def test_clear_errors_before_anything_is_written(setup: Setup, tmp_path: Path) -> None:
    m = setup.model
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]; this model has \['ctr'"):
        predict(m, setup.data, tmp_path / "o1", options=PredictOptions(tasks=["ctr", "nope"]))
    with pytest.raises(DataError, match=r"column 'order_id': missing column \(asked for with --keep\)"):
        predict(m, setup.data, tmp_path / "o2", options=PredictOptions(keep=["order_id"]))
    # a day whose second file lacks a feature column: named with its file, before day 1 is written
    bad = tmp_path / "bad"
    for day in DAYS[:2]:
        (bad / f"dt={day}").mkdir(parents=True)
        for f in sorted((setup.data / f"dt={day}").glob("*.parquet")):
            t = pq.read_table(f)
            if day == DAYS[1] and f.name.endswith("1.parquet"):
                t = t.drop_columns(["bid_price"])
            pq.write_table(t, bad / f"dt={day}" / f.name)
    with pytest.raises(DataError, match=r"part-00001\.parquet column 'bid_price': missing column"):
        predict(m, bad, tmp_path / "o3")
    with pytest.raises(DataError, match="no 'dt=YYYY-MM-DD' partitions"):
        predict(m, setup.data, tmp_path / "o4", start="2027-01-01")
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        predict(m, setup.data, tmp_path / "o5", options=PredictOptions(batch_size=0))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_cli_from_a_registry_version(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores"
    args = ["predict", "--registry", str(setup.registry), "--name", NAME, "--version", "1"]
    args += ["--data", str(setup.data), "--start", DAYS[2], "--out", str(out)]
    rc = cli_main([*args, "--tasks", "ctr", "hazard_short", "--survival", "--batch-size", "100"])
    assert rc == 0
    assert f"scored {ROWS // 3:,} rows of 1 day(s) with {NAME} version 1" in capsys.readouterr().out
    got = pq.read_table(out / f"dt={DAYS[2]}" / OUTPUT_FILE)
    assert got.column_names == ["user_id", "creative_id", "ctr", "hazard_short_risk", "hazard_short_survival"]
    assert pq.read_metadata(out / f"dt={DAYS[2]}" / OUTPUT_FILE).num_row_groups >= 5

    assert cli_main([*args, "--tasks", "ctr", "oops"]) == 2
    assert "unknown task(s) ['oops']; this model has ['ctr'" in capsys.readouterr().err
    assert cli_main(["predict", "--registry", str(setup.registry), "--data", "x", "--out", "y"]) == 2
    assert "--registry needs --name" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --run and --registry together: argparse refuses
        cli_main(["predict", "--run", "r", "--registry", "g", "--data", "x", "--out", "y"])


def test_predict_is_a_subcommand() -> None:
    from recsys_mtl.cli import SUBCOMMANDS

    assert SUBCOMMANDS["predict"][0] == "predict"
    assert batch_predict.DEFAULT_BATCH_SIZE >= 1
