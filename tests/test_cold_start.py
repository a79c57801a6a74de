"""Cold start (issue 18 item 5): items held out of training by a stable hash (`data.holdout_items`),
new vs known items in evaluation, `recsys-mtl evaluate`, the nightly's new-vs-serving scoring and
its report.

The data are conftest's hand-made raw rows with 300 creatives seen on every day (and a few null
ids), so the held-out day has both known and new items; one small in-process training run (a few
seconds) is shared by the tests that need a trained model.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.report import REPORT_NAME, write_report
from recsys_mtl import trainer
from recsys_mtl.cold_start import (
    ColdStartSplit,
    KnownItems,
    held_out,
    item_keys,
    new_item_mask,
    training_items,
)
from recsys_mtl.evaluation import COLD_START_KEYS, Predictions, compute_metrics, format_metrics
from recsys_mtl.partitions import DataError
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.trainer import TrainConfig, train
from tests.conftest import ROOT, make_raw_table, write_days

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
HOLDOUT = 0.2
BATCH = 128


def with_holdout(recipe: Recipe, fraction: float = HOLDOUT, **training: object) -> Recipe:
    """The shipped recipe with `data.holdout_items`, a small MMoE and small batches."""
    d = recipe.to_dict()
    d["model"] = {"type": "mmoe", "num_experts": 2, "expert_hidden": [16], "tower_hidden": [8]}
    # 2 training days give hazard_long's weekly grid no label: allowed (its head is not tested)
    d["training"].update(batch_size=BATCH, shuffle_buffer=1000, allow_untrained_tasks=True, **training)
    d["data"]["holdout_items"] = fraction
    return recipe_from_dict(d)


def repeated_items(recipe: Recipe, n: int, seed: int) -> pa.Table:
    """conftest's raw rows with 300 creatives, each seen on every day, and 2% null item ids."""
    table = make_raw_table(recipe, n, seed=seed)
    rng = np.random.default_rng(seed)
    col = recipe.data.item_column
    items = pa.array(rng.integers(0, 300, n), mask=rng.random(n) < 0.02)
    return table.set_column(table.schema.get_field_index(col), col, items)


def day_rows(table: pa.Table, day: int) -> pa.Table:
    """The rows `write_days` puts into DAYS[day] (it splits the table in order, two files a day)."""
    parts = np.array_split(np.arange(table.num_rows), len(DAYS) * 2)
    return table.take(np.concatenate(parts[2 * day : 2 * day + 2]))


# --------------------------------------------------------------------------------------------
# the hash and the new/known rule
# --------------------------------------------------------------------------------------------


def test_the_hash_is_stable_across_processes_and_holds_out_about_the_fraction() -> None:
    ints = np.arange(20_000)
    strings = np.array([f"creative-{i}" for i in range(20_000)], dtype=object)
    for ids in (ints, strings):
        assert 0.09 < held_out(ids, 0.1).mean() < 0.11  # about the fraction of the items
        assert not (held_out(ids, 0.05) & ~held_out(ids, 0.1)).any()  # a larger fraction adds items
        assert not held_out(ids, 0.0).any()
    # pinned: a change of the hash or its salt would silently move every measurement's items
    assert np.flatnonzero(held_out(np.arange(100), 0.1)).tolist() == [9, 11, 52, 62, 77, 83]
    code = (
        "import json, numpy as np; from recsys_mtl.cold_start import held_out; "
        "s = np.array([f'creative-{i}' for i in range(20000)], dtype=object); "
        "print(json.dumps([np.flatnonzero(held_out(np.arange(20000), 0.1)).tolist(), "
        "np.flatnonzero(held_out(s, 0.1)).tolist()]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4321"}  # Python's own hash() would differ here
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        np.flatnonzero(held_out(ints, 0.1)).tolist(),
        np.flatnonzero(held_out(strings, 0.1)).tolist(),
    ]
    # one item, one decision, however it arrives: 42, "42", 42.0, int32, dictionary-encoded
    held = ints[held_out(ints, 0.1)][:50]
    for form in (
        pa.array([str(i) for i in held]),
        pa.array(held.astype(np.float64)),
        pa.array(held, pa.int32()),
        pa.array([str(i) for i in held]).dictionary_encode(),
        pa.chunked_array([held[:10], held[10:]]),
    ):
        assert held_out(form, 0.1).all(), form.type
    # a row without an item id is never held out
    assert not held_out(pa.array([None, None], pa.int64()), 0.9).any()
    assert not held_out(np.array([np.nan, np.nan]), 0.9).any()
    with pytest.raises(DataError, match="integers or strings"):
        held_out(pa.array([True, False]), 0.5)


def test_new_items_are_held_out_or_absent_from_the_training_days(tmp_path: Path, recipe: Recipe) -> None:
    r = with_holdout(recipe)
    table = repeated_items(recipe, 3000, seed=2)
    data = write_days(tmp_path / "data", table, DAYS)
    known = training_items(r, data, DAYS[:2])
    assert known.days == DAYS[:2]
    col = recipe.data.item_column
    train_ids = pa.concat_tables([day_rows(table, 0), day_rows(table, 1)]).column(col).to_pylist()
    eval_ids = day_rows(table, 2).column(col)

    def held(i: int) -> bool:
        return bool(held_out(np.array([i]), HOLDOUT)[0])

    seen = {i for i in train_ids if i is not None and not held(i)}  # what the model trained on
    assert len(known.keys) == len(seen)
    expected = [i is not None and (held(i) or i not in seen) for i in eval_ids.to_pylist()]
    mask = new_item_mask(eval_ids, HOLDOUT, known)
    assert mask.tolist() == expected
    assert 0 < mask.sum() < len(mask)
    # the same from numpy ids, as Predictions hold them (an int column with nulls: floats, NaN)
    as_numpy = eval_ids.to_numpy(zero_copy_only=False)
    assert as_numpy.dtype.kind == "f" and new_item_mask(as_numpy, HOLDOUT, known).tolist() == expected
    # integer and string ids are one key space: "42" is the item 42
    ints = KnownItems(np.unique(item_keys(np.array([42, 7]))[0]), ["2026-01-01"], "x")
    assert new_item_mask(pa.array(["42", "7", "8", None]), 0.0, ints).tolist() == [False, False, True, False]
    with pytest.raises(DataError, match="not found"):
        training_items(r, data, ["2025-12-31", DAYS[0]])


# --------------------------------------------------------------------------------------------
# the reader: held-out rows never read, step counts that every rank has
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("world_size", "shuffle_buffer"), [(2, 0), (2, 500), (5, 300)])
def test_ranks_read_only_the_kept_rows_and_count_them(
    tmp_path: Path, recipe: Recipe, world_size: int, shuffle_buffer: int
) -> None:
    """Each rank's `num_rows` is the rows it yields once held-out items are dropped, so the trainer's
    steps per epoch (the minimum over ranks of num_rows // batch) are batches every rank has. With
    5 ranks the 12 row groups are cut into row ranges (the reader's uneven-split rule)."""
    table = repeated_items(recipe, 2000, seed=3)
    data = write_days(tmp_path / "data", table, DAYS)
    held = held_out(table.column(recipe.data.item_column), HOLDOUT)
    assert 0.1 < held.mean() < 0.3
    bs = 32

    def readers(drop_last: bool) -> list[ParquetReader]:
        return [
            ParquetReader(recipe, data, batch_size=bs, shuffle_buffer=shuffle_buffer, rank=r,
                          world_size=world_size, drop_last=drop_last, holdout_items=HOLDOUT)
            for r in range(world_size)
        ]  # fmt: skip

    ranks = readers(drop_last=True)
    assert sum(rd.num_rows for rd in ranks) == int((~held).sum())
    assert sum(rd.rows_dropped for rd in ranks) == int(held.sum())
    steps = min(rd.num_rows // bs for rd in ranks)  # trainer._steps_per_epoch's rule
    assert steps > 0
    for rd in ranks:
        for epoch in (0, 1):
            rd.set_epoch(epoch)
            tables = list(rd.iter_tables())
            assert len(tables) == rd.num_rows // bs >= steps
            assert all(t.num_rows == bs for t in tables)
            assert not held_out(pa.concat_tables(tables).column(recipe.data.item_column), HOLDOUT).any()
        assert sum(b.num_rows for b in rd.iter_batches()) == rd.num_rows // bs * bs
    # without drop_last every kept row is read once, by one rank
    every = [t for rd in readers(drop_last=False) for t in rd.iter_tables()]
    assert sum(t.num_rows for t in every) == int((~held).sum())
    # evaluation readers keep every row
    assert ParquetReader(recipe, data, shuffle_buffer=0).num_rows == table.num_rows


def test_a_holdout_that_leaves_no_rows_fails_naming_the_field(tmp_path: Path, recipe: Recipe) -> None:
    table = make_raw_table(recipe, 600, seed=4)
    one = next(i for i in range(1000) if held_out(np.array([i]), 0.5)[0])  # a held-out item
    col = recipe.data.item_column
    table = table.set_column(table.schema.get_field_index(col), col, pa.array(np.full(600, one)))
    data = write_days(tmp_path / "data", table, DAYS)
    with pytest.raises(DataError, match=r"data\.holdout_items = 0\.5 leaves no rows to read"):
        ParquetReader(recipe, data, holdout_items=0.5)
    with pytest.raises(DataError, match=r"data\.holdout_items = 0\.5 leaves no training rows"):
        train(with_holdout(recipe, 0.5), TrainConfig(data_dir=data, out=tmp_path / "run", progress=False))


# --------------------------------------------------------------------------------------------
# a real training run
# --------------------------------------------------------------------------------------------


@dataclass
class Trained:
    table: pa.Table
    data: Path
    run: Path
    info: dict[str, Any]
    items_read: dict[str, list[pa.ChunkedArray]]  # "train" (training + validation), "eval"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, recipe: Recipe) -> Trained:
    """A 2-epoch run with early stopping's per-epoch validation, recording the item ids of every
    row each reader turned into model inputs, during training and in the final evaluation."""
    root = tmp_path_factory.mktemp("cold_start")
    table = repeated_items(recipe, 2400, seed=5)
    data = write_days(root / "data", table, DAYS)
    items_read: dict[str, list[pa.ChunkedArray]] = {"train": [], "eval": []}
    phase = ["train"]
    to_batch, evaluate_run = ParquetReader.to_batch, trainer.evaluate_run

    def recording_to_batch(self: ParquetReader, t: pa.Table) -> Any:
        items_read[phase[0]].append(t.column(recipe.data.item_column))
        return to_batch(self, t)

    def final_evaluation(*args: Any, **kwargs: Any) -> Any:
        phase[0] = "eval"
        return evaluate_run(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ParquetReader, "to_batch", recording_to_batch)
        mp.setattr(trainer, "evaluate_run", final_evaluation)
        cfg = TrainConfig(data_dir=data, out=root / "run", eval_days=1, threads=1, progress=False)
        info = train(with_holdout(recipe, epochs=2, early_stopping_patience=2), cfg)
    return Trained(table, data, root / "run", info, items_read)


def test_held_out_items_never_reach_a_training_batch(trained: Trained, recipe: Recipe) -> None:
    col = recipe.data.item_column
    train_days = pa.concat_tables([day_rows(trained.table, 0), day_rows(trained.table, 1)]).column(col)
    assert held_out(train_days, HOLDOUT).sum() > 100  # the training days do have held-out items
    read = pa.chunked_array([c for chunk in trained.items_read["train"] for c in chunk.chunks])
    assert len(read) >= trained.info["steps"] * BATCH
    assert not held_out(read, HOLDOUT).any()  # neither in training nor in validation batches
    # steps per epoch count the kept rows, not the rows in the Parquet footers
    kept = int((~held_out(train_days, HOLDOUT)).sum())
    history = trained.info["early_stopping"]["history"]
    assert [h["step"] for h in history] == [kept // BATCH, 2 * (kept // BATCH)]
    assert trained.info["steps"] == 2 * (kept // BATCH) < 2 * (len(train_days) // BATCH)
    # the final evaluation keeps every row of the held-out day, the held-out items' included
    eval_day = day_rows(trained.table, 2).column(col)
    final = pa.chunked_array([c for chunk in trained.items_read["eval"] for c in chunk.chunks])
    assert held_out(final, HOLDOUT).sum() >= held_out(eval_day, HOLDOUT).sum() > 0
    m = json.loads((trained.run / "metrics.json").read_text())
    assert m["tasks"]["ctr"]["rows"] == len(eval_day)
    cs = m["cold_start"]
    assert cs["rows"]["new"] + cs["rows"]["known"] == len(eval_day)
    assert cs["rows"]["new"] >= int(held_out(eval_day, HOLDOUT).sum())
    assert cs["holdout_items"] == HOLDOUT and cs["train_days"] == DAYS[:2]
    assert set(cs["new"]) == set(cs["known"]) == {t.name for t in recipe.tasks}


# --------------------------------------------------------------------------------------------
# metrics, evaluate, the nightly's scoring and its report
# --------------------------------------------------------------------------------------------


def hand_predictions(recipe: Recipe, n: int = 3000, seed: int = 0) -> Predictions:
    """Informative random predictions with oracle columns for every task of `recipe`; 400 items
    (floats with NaN for missing ones, as an integer column with nulls reads), survival subjects
    an item on one of 3 days."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 400, n).astype(np.float64)
    items[rng.random(n) < 0.02] = np.nan
    subject = np.nan_to_num(items, nan=999).astype(np.int64) * 100_000 + rng.integers(0, 3, n)
    _, sub = np.unique(subject, return_inverse=True)
    click = (rng.random(n) < 0.2).astype(np.float32)
    scores, labels, events, mask, oracle = {}, {}, {}, {}, {}
    for t in recipe.tasks:
        if t.kind == "binary":
            y = click if t.name == "ctr" else (click * (rng.random(n) < 0.3)).astype(np.float32)
            truth = np.clip(0.2 + 0.5 * y + 0.3 * rng.random(n), 0, 1) * 0.9
            scores[t.name] = np.clip(truth + rng.normal(0, 0.3, n), 0.01, 0.99).astype(np.float32)
            labels[t.name], oracle[t.name] = y, truth.astype(np.float32)
            mask[t.name] = click > 0 if t.eval_on else np.ones(n, bool)
        else:
            L = t.num_intervals
            k = rng.integers(0, L, sub.max() + 1)
            base = 0.02 + 0.3 * (L - k) / L
            labels[t.name] = k[sub].astype(np.int64)
            events[t.name] = (rng.random(sub.max() + 1) < 0.6)[sub].astype(np.float32)
            noisy = base[sub, None] + rng.normal(0, 0.05, (n, L))
            scores[t.name] = np.clip(noisy, 0.001, 0.999).astype(np.float32)
            oracle[t.name] = np.repeat(base[sub, None], L, axis=1).astype(np.float32)
            mask[t.name] = np.ones(n, bool)
    subjects = {t.name: subject for t in recipe.tasks if t.kind == "hazard"}
    return Predictions(scores, labels, events, mask, oracle, rng.integers(0, 60, n), items, subjects)


def known_items_below(k: int) -> KnownItems:
    """Items 0..k-1 as a model's training items."""
    return KnownItems(np.unique(item_keys(np.arange(k))[0]), ["2026-01-01", "2026-01-02"], "data")


def test_the_split_metrics_are_compute_metrics_on_each_subset(recipe: Recipe) -> None:
    preds = hand_predictions(recipe)
    split = ColdStartSplit.of(preds.items, 0.1, known_items_below(300))
    m = compute_metrics(recipe, preds, cold_start=split)
    json.dumps(m, allow_nan=False)
    cs = m["cold_start"]
    assert set(cs) == {"new", "known", "rows", "items", "holdout_items", "train_days"}
    assert cs["holdout_items"] == 0.1 and cs["train_days"] == ["2026-01-01", "2026-01-02"]
    items = preds.items
    present = ~np.isnan(items)
    held = held_out(items, 0.1)
    new = present & (held | (np.nan_to_num(items, nan=0) >= 300))
    np.testing.assert_array_equal(split.new, new)
    assert cs["rows"] == {"new": int(new.sum()), "known": int((~new).sum())}
    assert cs["items"] == {"new": len(np.unique(items[new])), "known": len(np.unique(items[~new & present]))}
    for group, rows in (("new", new), ("known", ~new)):
        whole = compute_metrics(recipe, preds.subset(rows))["tasks"]
        for t in recipe.tasks:
            expected = {k: whole[t.name][k] for k in COLD_START_KEYS[t.kind] if k in whole[t.name]}
            assert cs[group][t.name] == expected, (group, t.name)
            wanted = {"auc", "logloss", "oracle_lift"} if t.kind == "binary" else {"c_index", "oracle_lift"}
            assert wanted <= set(expected), (group, t.name)
    # the metrics of all rows are those without a split
    assert {k: v for k, v in m.items() if k != "cold_start"} == compute_metrics(recipe, preds)
    # no new row: nothing to report apart
    none_new = ColdStartSplit(np.zeros(preds.num_rows, bool), 0.0, ["2026-01-01"])
    assert "cold_start" not in compute_metrics(recipe, preds, cold_start=none_new)
    text = format_metrics(m)
    assert "cold start: new items = held out (data.holdout_items 0.1)" in text
    assert "training days 2026-01-01..2026-01-02" in text
    for t in recipe.tasks:
        key, label = ("auc", "AUC") if t.kind == "binary" else ("c_index", "C-index")
        line = next(x for x in text.splitlines() if x.startswith(f"{t.name} ") and label in x)
        assert f"{cs['new'][t.name][key]:.4f}" in line and f"{cs['known'][t.name][key]:.4f}" in line


def test_evaluate_reports_new_and_known_items(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsys_mtl.cli import main

    out = tmp_path / "metrics.json"
    args = ["evaluate", "--data", str(trained.data), "--start", DAYS[2], "--out"]
    assert main([*args, str(out), "--run", str(trained.run)]) == 0
    printed = capsys.readouterr().out
    assert f"absent from the training days {DAYS[0]}..{DAYS[1]}" in printed
    cs = json.loads(out.read_text())["cold_start"]
    # the same split and numbers as the run's own final evaluation (known: run.json's training days)
    assert cs == json.loads((trained.run / "metrics.json").read_text())["cold_start"]
    # a run whose training data moved: the hash alone decides, and the output says so
    moved = tmp_path / "moved"
    shutil.copytree(trained.run, moved)
    info = json.loads((moved / "run.json").read_text())
    info["data"]["dir"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(info))
    assert main([*args, str(out), "--run", str(moved)]) == 0
    assert "training days unknown: the held-out hash alone" in capsys.readouterr().out
    cs = json.loads(out.read_text())["cold_start"]
    eval_day = day_rows(trained.table, 2).column("creative_id")
    assert cs["train_days"] is None and cs["rows"]["new"] == int(held_out(eval_day, HOLDOUT).sum())


def test_the_nightly_scores_both_models_on_the_same_new_and_known_rows(
    trained: Trained, tmp_path: Path, recipe: Recipe
) -> None:
    from pipelines.new_vs_serving import evaluate_pair
    from recsys_mtl.devtools.fixtures import NAME, publish, small_recipe
    from recsys_mtl.registry import Registry

    serving_recipe = small_recipe(recipe)
    version = publish(tmp_path / "registry", serving_recipe, seed=3).version
    day = trained.info["data"]["eval_days"][0]
    registry = Registry(tmp_path / "registry")
    pair = evaluate_pair(
        recipe, trained.run, registry, NAME, version, trained.data, dt.date.fromisoformat(day), 0
    )
    assert pair.cold_start is not None and pair.cold_start.train_days == DAYS[:2]
    new_cs, old_cs = pair.new_metrics["cold_start"], pair.serving_metrics["cold_start"]
    assert new_cs["rows"] == old_cs["rows"] and new_cs["items"] == old_cs["items"]
    assert new_cs == json.loads((trained.run / "metrics.json").read_text())["cold_start"]
    assert pair.serving_preds is not None
    whole = compute_metrics(serving_recipe, pair.serving_preds.subset(pair.cold_start.new))["tasks"]
    assert old_cs["new"]["ctr"]["auc"] == whole["ctr"]["auc"]
    assert old_cs["new"]["hazard_short"]["c_index"] == whole["hazard_short"]["c_index"]


def test_the_report_shows_new_vs_known_per_task_and_model(tmp_path: Path, recipe: Recipe) -> None:
    new = hand_predictions(recipe, seed=1)
    serving = new.replace_scores(hand_predictions(recipe, seed=2).scores)
    split = ColdStartSplit.of(new.items, 0.1, known_items_below(300))
    metrics = {
        "new": compute_metrics(recipe, new, cold_start=split),
        "serving": compute_metrics(recipe, serving, cold_start=split),
    }

    def page(new_metrics: dict[str, Any], out: Path) -> str:
        write_report(
            out, name="ads_ranker", date="2026-01-03", recipe=recipe,
            decision={"passed": True, "reason": "ok", "rows": []},
            new_preds=new, serving_preds=serving, new_metrics=new_metrics,
            serving_metrics=metrics["serving"], experts={}, loss_history=[], validation={}, timings={},
        )  # fmt: skip
        return (out / REPORT_NAME).read_text()

    html = page(metrics["new"], tmp_path / "with")
    assert "<h2>New vs known items</h2>" in html
    for t in recipe.tasks:
        key, label = ("auc", "AUC") if t.kind == "binary" else ("c_index", "C-index")
        for model, m in metrics.items():
            cs = m["cold_start"]
            a, b = cs["new"][t.name][key], cs["known"][t.name][key]
            cells = f"<td>{t.name}</td><td>{model}</td><td>{label}</td><td>{a:.4f}</td><td>{b:.4f}</td>"
            assert f"<tr>{cells}<td>{a - b:+.4f}</td>" in html, (t.name, model)
    rows, items = metrics["new"]["cold_start"]["rows"], metrics["new"]["cold_start"]["items"]
    assert f"{items['new']:,} items, {rows['new']:,} rows" in html
    assert "absent from the new model&#39;s training days 2026-01-01..2026-01-02" in html  # escaped
    # a day without new items says so instead
    plain = {k: v for k, v in metrics["new"].items() if k != "cold_start"}
    html = page(plain, tmp_path / "without")
    assert "<h2>New vs known items</h2>" in html and "No new items on this day" in html
    assert not re.search(r"<td>ctr</td><td>new</td><td>AUC</td>", html)
