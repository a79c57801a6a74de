"""Calibration of the binary tasks (recsys_mtl/calibration.py, issue 13): the maps (isotonic and
Platt, strictly increasing, ranking metrics exactly unchanged, pred/obs near 1 after), products from
calibrated factors, out-of-fold reporting, the file format; then end to end on a small run: the
trainer fits RUN/calibration.json on the held-out day, the exported artifact (fp32 and int8)
carries it so `LoadedModel.score` returns calibrated probabilities, and `recsys-mtl evaluate`
reports before/after. A few seconds of training in all."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys_mtl.calibration import (
    CALIBRATION_FILE,
    CalibratedModel,
    Calibration,
    CalibrationError,
    LogitMap,
    LogitMapModule,
    fit_and_report,
    fit_calibration,
    fit_isotonic,
    fit_map,
    fit_platt,
    fold_of,
    out_of_fold,
)
from recsys_mtl.cli import main as cli_main
from recsys_mtl.devtools.fixtures import make_raw_table, small_recipe
from recsys_mtl.export import export_run
from recsys_mtl.loader import load_model
from recsys_mtl.metrics import auc, calibration, gauc
from recsys_mtl.recipe import Recipe, RecipeError, keep_tasks, recipe_from_dict
from recsys_mtl.registry import Registry
from recsys_mtl.run import LoadedRun, load_run
from recsys_mtl.trainer import TrainConfig, train
from tests.conftest import write_days

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:TorchScript will treat type annotations:UserWarning"),
]

METHODS = ("isotonic", "platt")
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model probability, label, user): labels drawn from sigmoid(s), the model predicting
    sigmoid(0.6 s - 0.8), under-confident and too low (pred/obs about 0.6), rounded to 3
    decimals so that many scores tie."""
    rng = np.random.default_rng(seed)
    s = rng.normal(-2.0, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-s))).astype(np.float64)
    p = np.round(1 / (1 + np.exp(-(0.6 * s - 0.8))), 3).clip(0.001, 0.999)
    return p, y, rng.integers(0, n // 20, n)


# ---------------------------------------------------------------------------------------------
# one map
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_map_is_strictly_increasing_everywhere(method: str) -> None:
    p, y, _ = miscalibrated(20_000, seed=1)
    m = fit_map(method, p, y)
    assert (np.diff(m.x) > 0).all() and (np.diff(m.z) > 0).all() and len(m.x) >= 2
    grid = np.linspace(-30, 30, 200_001)  # far outside the fitted range on both sides
    assert (np.diff(m.apply_logit(grid)) > 0).all()
    assert np.isfinite(m.apply(np.array([0.0, 1e-30, 0.5, 1.0]))).all()


@pytest.mark.parametrize("method", METHODS)
def test_map_calibrates_and_keeps_auc_and_gauc_exactly(method: str) -> None:
    p, y, users = miscalibrated(100_000, seed=2)
    m = fit_map(method, p, y)
    q_new, y_new, u_new = miscalibrated(100_000, seed=3)  # fresh rows from the same world
    before, after = calibration(q_new, y_new), calibration(m.apply(q_new), y_new)
    assert abs(before["pred_obs_ratio"] - 1) > 0.1  # really miscalibrated
    # about 15k positives: pred/obs carries about 0.01 of sampling noise on fresh rows
    assert abs(after["pred_obs_ratio"] - 1) <= 0.025
    assert after["ece"] <= 0.5 * before["ece"]
    for pp, yy, uu in ((p, y, users), (q_new, y_new, u_new)):
        cal = m.apply(pp)
        assert auc(cal, yy) == auc(pp, yy)  # exactly: the map keeps order and ties
        assert gauc(cal, yy, uu) == gauc(pp, yy, uu)
        # ties stay ties, different scores stay different
        order = np.argsort(pp, kind="stable")
        assert np.array_equal(np.diff(pp[order]) > 0, np.diff(cal[order]) > 0)


def test_isotonic_matches_pav_on_a_hand_example() -> None:
    # scores 1..6 (as probabilities), labels 0 1 0 1 1 1: PAV pools (2, 3) and (4, 5, 6)
    p = 1 / (1 + np.exp(-np.arange(1.0, 7.0)))
    y = np.array([0, 1, 0, 1, 1, 1], dtype=float)
    m = fit_isotonic(p, y)
    np.testing.assert_allclose(m.x, [1.0, 2.5, 5.0], atol=1e-6)  # the blocks' mean logits
    assert (np.diff(m.z) > 0).all()
    # calibration in the large: the fitting rows' mean calibrated probability is their rate
    assert m.apply(p).mean() == pytest.approx(y.mean(), abs=1e-9)
    # slope 1 outside the knots, linear in logit space between them
    assert m.apply_logit(np.array([0.0]))[0] == pytest.approx(m.z[0] - 1.0)
    assert m.apply_logit(np.array([7.0]))[0] == pytest.approx(m.z[-1] + 2.0)
    assert m.apply_logit(np.array([1.75]))[0] == pytest.approx((m.z[0] + m.z[1]) / 2)


def test_isotonic_does_not_overpredict_rare_positives() -> None:
    # CVR-like: 2% positives, a few thousand rows, so PAV finds few wide blocks. Linear
    # interpolation in logit space alone over-predicted such rows by about 10% (the sigmoid is
    # convex below 0.5); the knots are corrected for it (`_match_means`, `_mean_shift`)
    rng = np.random.default_rng(8)
    ratios = []
    for _ in range(20):
        s = rng.normal(-4.0, 1.0, 8000)
        y = (rng.random(len(s)) < 1 / (1 + np.exp(-s))).astype(float)
        p = 1 / (1 + np.exp(-(0.5 * s - 1.0)))
        m = fit_isotonic(p, y, min_positives=20)
        assert m.apply(p).mean() == pytest.approx(y.mean(), rel=1e-9)
        s2 = rng.normal(-4.0, 1.0, 8000)  # fresh rows: pred/obs against the true probabilities
        ratios.append(m.apply(1 / (1 + np.exp(-(0.5 * s2 - 1.0)))).mean() / (1 / (1 + np.exp(-s2))).mean())
    assert abs(float(np.mean(ratios)) - 1) <= 0.03, np.mean(ratios)


def test_platt_recovers_a_known_line_and_refuses_a_backwards_one() -> None:
    rng = np.random.default_rng(4)
    s = rng.normal(0, 2, 200_000)
    y = (rng.random(len(s)) < 1 / (1 + np.exp(-(1.5 * s - 1.0)))).astype(float)
    m = fit_platt(1 / (1 + np.exp(-s)), y)
    assert m.slope_below == pytest.approx(1.5, abs=0.05)
    assert m.apply_logit(np.array([0.0]))[0] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(CalibrationError, match="not positive"):
        fit_platt(1 / (1 + np.exp(s)), y)  # the scores rank backwards


def test_too_few_positives_is_an_error_not_a_bad_map() -> None:
    with pytest.raises(CalibrationError, match="fewer than 20"):
        fit_isotonic(np.full(100, 0.1), np.r_[np.ones(5), np.zeros(95)], min_positives=20)
    with pytest.raises(CalibrationError, match="strictly increasing"):
        LogitMap(x=np.array([0.0, 0.0]), z=np.array([0.0, 1.0]))


def test_torch_layer_equals_the_numpy_map_and_scripts() -> None:
    p, y, _ = miscalibrated(5000, seed=5)
    for method in METHODS:
        m = fit_map(method, p, y)
        s = torch.linspace(-12, 12, 5001, dtype=torch.float32)
        layer = torch.jit.script(LogitMapModule(m))
        got = layer(s).numpy()
        np.testing.assert_allclose(got, m.apply_logit(s.double().numpy()), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# a model's calibration: products, folds, the file
# ---------------------------------------------------------------------------------------------


def fake_predictions(n: int = 40_000, seed: int = 6) -> SimpleNamespace:
    """Predictions-like rows for ctr, cvr (eval on clicked rows) and ctcvr = ctr x cvr."""
    p_ctr, click, users = miscalibrated(n, seed)
    rng = np.random.default_rng(seed + 1)
    s = rng.normal(-1.0, 1.0, n)
    conv = click * (rng.random(n) < 1 / (1 + np.exp(-s)))
    p_cvr = 1 / (1 + np.exp(-(1.4 * s + 0.5)))
    return SimpleNamespace(
        scores={"ctr": p_ctr, "cvr": p_cvr, "ctcvr": p_ctr * p_cvr},
        labels={"ctr": click, "cvr": conv, "ctcvr": conv},
        eval_mask={"ctr": np.ones(n, bool), "cvr": click > 0, "ctcvr": np.ones(n, bool)},
        users=users,
        num_rows=n,
    )


def binary_recipe(recipe: Recipe, **calibration: Any) -> Recipe:
    d = recipe.to_dict()
    d["calibration"] = {**d["calibration"], **calibration}
    return recipe_from_dict(d)


@pytest.mark.parametrize("method", METHODS)
def test_products_are_the_product_of_calibrated_factors(recipe: Recipe, method: str) -> None:
    r = binary_recipe(recipe, method=method)
    preds = fake_predictions()
    cal = fit_calibration(r, preds, ["2026-01-03"])
    assert cal is not None and set(cal.maps) == {"ctr", "cvr"} and cal.products == {"ctcvr": ["ctr", "cvr"]}
    out = cal.apply(preds.scores)
    np.testing.assert_array_equal(out["ctcvr"], out["ctr"] * out["cvr"])
    # CVR was fitted on clicked rows only
    assert cal.fitted_on["rows"] == {
        "ctr": len(preds.labels["ctr"]),
        "cvr": int(preds.eval_mask["cvr"].sum()),
    }
    for t in ("ctr", "cvr"):
        m = preds.eval_mask[t]
        assert abs(calibration(out[t][m], preds.labels[t][m])["pred_obs_ratio"] - 1) <= 0.02


def test_out_of_fold_is_honest_and_the_report_says_so(recipe: Recipe) -> None:
    r = binary_recipe(recipe, folds=2)
    preds = fake_predictions()
    fold = fold_of(preds.users, preds.num_rows, 2)
    for u in np.unique(preds.users)[:50]:  # all of a user's rows in one fold
        assert len(set(fold[preds.users == u])) == 1
    assert 0.4 < fold.mean() < 0.6
    oof = out_of_fold(r, preds)
    full = fit_calibration(r, preds).apply(preds.scores)  # type: ignore[union-attr]
    assert not np.array_equal(oof["ctr"], full["ctr"])  # each fold's map never saw its labels
    # the map of fold 0 (fitted on fold 1) is what fold 0's rows got
    m1 = fit_isotonic(preds.scores["ctr"][fold == 1], preds.labels["ctr"][fold == 1], 20)
    np.testing.assert_allclose(oof["ctr"][fold == 0], m1.apply(preds.scores["ctr"][fold == 0]))
    np.testing.assert_array_equal(oof["ctcvr"], oof["ctr"] * oof["cvr"])
    held = fit_and_report(r, preds, ["2026-01-03"])
    cal = held.calibration
    assert cal is not None and cal.report is not None and cal.report["kind"] == "out_of_fold"
    ctr = cal.report["tasks"]["ctr"]
    assert abs(ctr["after"]["pred_obs_ratio"] - 1) <= 0.02 < abs(ctr["before"]["pred_obs_ratio"] - 1)
    assert ctr["after"]["ece"] <= 0.5 * ctr["before"]["ece"]
    assert set(cal.report["tasks"]) == {"ctr", "cvr", "ctcvr"}
    np.testing.assert_array_equal(held.out_of_fold["ctr"], oof["ctr"])
    # two fold maps reorder rows across folds; the after-AUC is the shipped (single) map's: unchanged
    assert auc(oof["ctr"], preds.labels["ctr"]) != ctr["before"]["auc"]
    for t in ("ctr", "cvr"):
        assert cal.report["tasks"][t]["after"]["auc"] == cal.report["tasks"][t]["before"]["auc"]
    np.testing.assert_array_equal(held.applied["ctr"], cal.apply(preds.scores)["ctr"])


def test_method_none_and_a_task_too_rare_to_fit(recipe: Recipe) -> None:
    preds = fake_predictions()
    assert fit_calibration(binary_recipe(recipe, method="none"), preds) is None
    held = fit_and_report(binary_recipe(recipe, method="none"), preds)
    assert held.calibration is None and held.out_of_fold == {} == held.applied
    cal = fit_calibration(binary_recipe(recipe, min_positives=100_000), preds)
    assert cal is not None and cal.maps == {} and set(cal.fitted_on["skipped"]) == {"ctr", "cvr"}
    # a product with an unfitted factor keeps that factor's raw probability
    only_ctr = Calibration("isotonic", {"ctr": fit_isotonic(preds.scores["ctr"], preds.labels["ctr"])})
    only_ctr.products = {"ctcvr": ["ctr", "cvr"]}
    out = only_ctr.apply(preds.scores)
    np.testing.assert_array_equal(out["ctcvr"], out["ctr"] * preds.scores["cvr"])


def test_a_recipe_without_binary_tasks_has_nothing_to_calibrate(recipe: Recipe) -> None:
    """A survival-only recipe gets no map at all (not an empty one that export and the log would
    then call "calibrated" with no task in it)."""
    d = keep_tasks(recipe.to_dict(), ["hazard_short"])
    d["tasks"][0].update(reads_backbone=True, trains_shared=True)  # the one task must read it
    hazard_only = recipe_from_dict(d)
    assert fit_calibration(hazard_only, fake_predictions()) is None


def test_file_round_trip(recipe: Recipe, tmp_path: Path) -> None:
    preds = fake_predictions()
    for method in METHODS:
        cal = fit_and_report(binary_recipe(recipe, method=method), preds, ["2026-01-03"]).calibration
        assert cal is not None
        path = tmp_path / f"{method}.json"
        cal.save(path)
        doc = json.loads(path.read_text())
        assert doc["format"] == "recsys-mtl-calibration" and doc["format_version"] == 1
        assert doc["method"] == method and doc["fitted_on"]["days"] == ["2026-01-03"]
        back = Calibration.load(path)
        for t in ("ctr", "cvr", "ctcvr"):
            np.testing.assert_array_equal(back.apply(preds.scores)[t], cal.apply(preds.scores)[t])
        assert back.report == json.loads(json.dumps(cal.report))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(CalibrationError, match=r"bad\.json"):
        Calibration.load(tmp_path / "bad.json")


def test_the_recipe_section_is_validated(recipe: Recipe) -> None:
    assert recipe.calibration.method == "isotonic" and recipe.calibration.folds == 2
    assert binary_recipe(recipe, method="platt").calibration.method == "platt"
    with pytest.raises(RecipeError, match=r"calibration\.method"):
        binary_recipe(recipe, method="beta")
    with pytest.raises(RecipeError, match=r"calibration\.folds"):
        binary_recipe(recipe, folds=1)
    with pytest.raises(RecipeError, match=r"calibration\.nope"):
        binary_recipe(recipe, nope=1)


# ---------------------------------------------------------------------------------------------
# end to end: train -> calibration.json -> export -> LoadedModel.score, evaluate
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A small MMoE trained in-process on 3 days of hand-made rows (the last held out), exported
    fp32 with its int8 companion."""
    from recsys_mtl.recipe import load_recipe
    from tests.conftest import RECIPE_PATH

    tmp = tmp_path_factory.mktemp("calibration")
    r = small_recipe(load_recipe(RECIPE_PATH))
    d = r.to_dict()
    d["training"].update(batch_size=256, shuffle_buffer=1000)
    # the binary tasks only: 2 training days leave the hazard tasks no label before the cutoff
    keep_tasks(d, ["ctr", "cvr", "ctcvr"])
    r = recipe_from_dict(d)
    data = write_days(tmp / "data", make_raw_table(r, 6000, seed=3), DAYS)
    run_dir = tmp / "run"
    torch.set_num_threads(1)
    train(r, TrainConfig(data_dir=data, out=run_dir, eval_days=1, threads=1, progress=False, max_steps=20))
    reg = tmp / "registry"
    res = export_run(run_dir, reg, "cal", int8_companion=True)
    return SimpleNamespace(
        recipe=r,
        data=data,
        run_dir=run_dir,
        registry=reg,
        run=load_run(run_dir),
        fp32=load_model(Registry(reg), "cal", res.version),
        int8=load_model(Registry(reg), "cal", res.version, int8=True),
    )


def test_training_with_a_held_out_day_writes_the_map(trained: SimpleNamespace) -> None:
    cal = Calibration.load(trained.run_dir / CALIBRATION_FILE)
    assert cal.method == "isotonic" and set(cal.maps) == {"ctr", "cvr"}
    assert cal.products == {"ctcvr": ["ctr", "cvr"]} and cal.fitted_on["days"] == [DAYS[-1]]
    assert cal.report is not None and set(cal.report["tasks"]) == {"ctr", "cvr", "ctcvr"}
    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    assert metrics["calibration"]["kind"] == "out_of_fold"
    assert metrics["calibration"]["fitted_on_days"] == [DAYS[-1]]
    for t in ("ctr", "cvr", "ctcvr"):
        m = metrics["tasks"][t]
        after = m["calibrated"]
        assert {"ece", "pred_obs_ratio", "logloss", "auc", "reliability"} <= set(after)
        assert sum(b["rows"] for b in m["reliability"]) == m["rows"]
        assert sum(b["rows"] for b in after["reliability"]) == m["rows"]
        if t != "ctcvr":  # a monotone map: the ranking is the same (products may move a little)
            assert after["auc"] == m["auc"]
        # the report in calibration.json holds the same out-of-fold numbers
        assert cal.report["tasks"][t]["after"]["ece"] == pytest.approx(after["ece"])


def calibrated_eager(run: LoadedRun, cal: Calibration, rows: Any) -> dict[str, np.ndarray]:
    """The eager model's raw outputs on `rows`, then the numpy map applied (no torch layer)."""
    b = run.transform(rows)
    with torch.inference_mode():
        raw = {k: v.numpy() for k, v in run.model(b.sparse, b.dense).items()}
    return {**raw, **cal.apply({t: raw[t] for t in ("ctr", "cvr", "ctcvr")})}


def test_the_exported_artifact_applies_the_map(trained: SimpleNamespace) -> None:
    cal = Calibration.load(trained.run_dir / CALIBRATION_FILE)
    day = pq.read_table(trained.data / f"dt={DAYS[-1]}")
    want = calibrated_eager(trained.run, cal, day)
    for model, atol in ((trained.fp32, 1e-5), (trained.int8, 0.05)):
        model.validate()  # the golden outputs (calibrated) reproduce
        got = model.score(day)
        for t in ("ctr", "cvr", "ctcvr"):
            assert float(np.abs(got[t] - want[t]).max()) <= atol, (model.build, t)
        np.testing.assert_allclose(got["ctcvr"], got["ctr"] * got["cvr"], rtol=1e-6)
    # the raw and the calibrated differ: the map is really in the artifact
    raw_b = trained.run.transform(day)
    with torch.inference_mode():
        raw = trained.run.model(raw_b.sparse, raw_b.dense)["ctr"].numpy()
    assert float(np.abs(trained.fp32.score(day)["ctr"] - raw).max()) > 1e-3
    manifest = trained.fp32.manifest["calibration"]
    assert manifest["calibrated"] is True and manifest["method"] == "isotonic"
    assert manifest["fitted_on"]["days"] == [DAYS[-1]] and set(manifest["maps"]) == {"ctr", "cvr"}
    assert manifest["report"]["kind"] == "out_of_fold"


def test_the_scripted_wrapper_equals_the_eager_wrapper(trained: SimpleNamespace) -> None:
    cal = Calibration.load(trained.run_dir / CALIBRATION_FILE)
    day = pq.read_table(trained.data / f"dt={DAYS[-1]}").slice(0, 300)
    b = trained.run.transform(day)
    with torch.inference_mode():
        eager = CalibratedModel(trained.run.model, cal).calibrate(trained.run.model(b.sparse, b.dense))
    want = calibrated_eager(trained.run, cal, day)
    # the layer maps the model's own logit, numpy the logit of its float32 probability: the two
    # differ by float32 rounding, which steep segments of a map fitted on few rows magnify
    for t in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(eager[t].numpy(), want[t], atol=1e-5)
    np.testing.assert_allclose(torch.sigmoid(eager["ctr_logit"]).numpy(), want["ctr"], atol=1e-5)


def test_evaluate_reports_before_and_after(trained: SimpleNamespace, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "m.json"
    args = ["evaluate", "--run", str(trained.run_dir), "--data", str(trained.data)]
    # the held-out day the map was fitted on: after-numbers out-of-fold
    assert cli_main([*args, "--start", DAYS[-1], "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibration (isotonic, out_of_fold): before -> after" in text
    assert "reliability ctr:" in text and "reliability cvr:" in text
    m = json.loads(out.read_text())
    assert m["calibration"]["kind"] == "out_of_fold" and "calibrated" in m["tasks"]["cvr"]
    # another day: the saved map applied
    assert cli_main([*args, "--start", DAYS[0], "--end", DAYS[0], "--out", str(out)]) == 0
    assert "calibration (isotonic, applied)" in capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m["calibration"]["kind"] == "applied"
    assert m["tasks"]["ctr"]["calibrated"]["auc"] == m["tasks"]["ctr"]["auc"]


def test_without_held_out_days_there_is_no_map(
    trained: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="recsys_mtl"):
        train(
            trained.recipe,
            TrainConfig(
                data_dir=trained.data, out=run_dir, eval_days=0, threads=1, progress=False, max_steps=5
            ),
        )
    assert not (run_dir / CALIBRATION_FILE).exists()
    assert "calibration: no map (no held-out days" in caplog.text
    res = export_run(run_dir, tmp_path / "reg", "cal")
    manifest = load_model(Registry(tmp_path / "reg"), "cal", res.version).manifest["calibration"]
    assert manifest["calibrated"] is False and "no held-out days" in manifest["reason"]
