"""The nightly report (pipelines/report.py) on small synthetic predictions of the shipped recipe.

No model is trained: Predictions are built by hand with random scores and labels, so the tests are
fast and cover what real runs rarely produce on demand: no serving model, no experts, no loss
history, a task with one class only, a task with no held-out rows, NaN metrics and tiny data.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest

from pipelines.gate import quality_gate
from pipelines.report import REPORT_NAME, risk_groups, write_report
from recsys_mtl.evaluation import Predictions, compute_metrics
from recsys_mtl.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe(ROOT / "configs" / "ads_ranker.yaml")


def make_preds(recipe: Recipe, rows: int, subjects: int, seed: int, signal: float = 1.0) -> Predictions:
    """Random predictions with some signal: binary scores lean towards the label, hazards are higher
    for subjects that stop early. CVR counts clicked rows only, as the recipe says."""
    rng = np.random.default_rng(seed)
    click = (rng.random(rows) < 0.3).astype(np.float64)
    conv = click * (rng.random(rows) < 0.2)
    labels: dict[str, np.ndarray] = {"ctr": click, "cvr": conv, "ctcvr": click * conv}
    masks = {"ctr": np.ones(rows, bool), "cvr": click > 0, "ctcvr": np.ones(rows, bool)}
    scores: dict[str, np.ndarray] = {}
    events: dict[str, np.ndarray] = {}
    subject_ids: dict[str, np.ndarray] = {}
    for t in ("ctr", "cvr", "ctcvr"):
        logit = rng.normal(-1.5, 1.0, rows) + signal * labels[t]
        scores[t] = (1 / (1 + np.exp(-logit))).astype(np.float32)
    subject = rng.integers(0, subjects, rows)
    for t in recipe.tasks:
        if t.kind != "hazard":
            continue
        length = t.num_intervals
        # One label per subject, repeated on its rows, as the data has it.
        interval = rng.integers(0, length, subjects)
        event = (rng.random(subjects) < 0.6).astype(np.float32)
        base = 0.05 + 0.3 * (1 - interval / length) * signal
        hazard = np.clip(base[:, None] + rng.normal(0, 0.03, (subjects, length)), 0.001, 0.999)
        labels[t.name] = interval[subject]
        events[t.name] = event[subject]
        scores[t.name] = hazard[subject].astype(np.float32)
        masks[t.name] = np.ones(rows, bool)
        subject_ids[t.name] = subject
    return Predictions(
        scores=scores,
        labels=labels,
        events=events,
        eval_mask=masks,
        users=rng.integers(0, 40, rows),
        items=subject,
        subjects=subject_ids,
    )


def home_experts(recipe: Recipe) -> dict[str, Any]:
    """An expert_diagnostics-shaped dict: tasks gate over different expert subsets, as in HoME."""
    shared = ["L2/shared_0", "L2/shared_1"]
    gate_experts = {t.name: [*shared, f"L2/task_{t.name}_0"] for t in recipe.head_tasks}
    gate_weights = {t: [0.5, 0.3, 0.2] for t in gate_experts}
    zero_share = {
        e: 0.1 * i for i, e in enumerate(dict.fromkeys(e for names in gate_experts.values() for e in names))
    }
    zero_share["L1/shared_0"] = 1.0
    return {"gate_weights": gate_weights, "gate_experts": gate_experts, "zero_share": zero_share, "rows": 900}


def decision_for(recipe: Recipe, new: Predictions, serving: Predictions | None, passed: bool) -> dict:
    """The real gate's decision on these predictions, its verdict forced to `passed` (the report
    shows what it is given; the gate's own rules are tested in test_gate.py)."""
    gate = recipe.nightly.gate.model_copy(update={"resamples": 100})
    fast = recipe.model_copy(update={"nightly": recipe.nightly.model_copy(update={"gate": gate})})
    decision = quality_gate(fast, new, serving, "20260106-000000" if serving is not None else None)
    reason = "all tasks within tolerance" if passed else "ctr AUC dropped by more than <0.005>"
    return {**decision, "passed": passed, "reason": reason}


def run_report(
    out: Path,
    recipe: Recipe,
    new: Predictions,
    serving: Predictions | None,
    *,
    experts: dict[str, Any],
    loss: list[dict[str, Any]],
    passed: bool,
    metrics: tuple[dict[str, Any], dict[str, Any] | None] | None = None,
) -> tuple[list[Path], str]:
    if metrics is None:
        metrics = (
            compute_metrics(recipe, new, experts),
            compute_metrics(recipe, serving) if serving is not None else None,
        )
    new_m, old_m = metrics
    paths = write_report(
        out,
        name="ads_ranker",
        date="2026-01-07",
        recipe=recipe,
        decision=decision_for(recipe, new, serving, passed),
        new_preds=new,
        serving_preds=serving,
        new_metrics=new_m,
        serving_metrics=old_m,
        experts=experts,
        loss_history=loss,
        validation={
            "passed": True,
            "rows": new.num_rows,
            "checks": [
                {"name": "rows", "value": new.num_rows, "bounds": [100, None], "passed": True},
                {"name": "ctr_rate", "value": float("nan"), "bounds": [0.01, 0.5], "passed": False},
            ],
        },
        timings={"validate": 0.4, "train": 52.1, "evaluate": 3.2, "export": 1.0},
    )
    return paths, (out / REPORT_NAME).read_text()


def check_files(out: Path, paths: list[Path], page: str) -> list[str]:
    """Every returned file exists in `out`, the page is last and references every PNG (and no other),
    every PNG is a PNG that decodes; returns the PNG names."""
    assert paths[-1] == out / REPORT_NAME
    assert all(p.parent == out and p.is_file() for p in paths)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == len(paths) - 1
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in pngs)
    assert not list(out.glob(".*.tmp"))
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    assert referenced == {p.name for p in pngs}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        image = mpimg.imread(p)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # A report sits beside every published model: it must stay small.
    assert sum(p.stat().st_size for p in paths) < 1_000_000
    return [p.name for p in pngs]


def test_full_report(tmp_path: Path, recipe: Recipe) -> None:
    new = make_preds(recipe, rows=3000, subjects=400, seed=1, signal=1.5)
    serving = new.replace_scores(make_preds(recipe, rows=3000, subjects=400, seed=2, signal=0.7).scores)
    loss = [{"step": s, "loss": 0.7 * math.exp(-s / 40) + 0.3, "samples": 2048 * s} for s in range(1, 121)]
    paths, page = run_report(
        tmp_path, recipe, new, serving, experts=home_experts(recipe), loss=loss, passed=True
    )
    names = check_files(tmp_path, paths, page)
    for t in recipe.tasks:
        assert t.name in page
        if t.kind == "binary":
            assert f"roc_{t.name}.png" in names and f"calibration_{t.name}.png" in names
        else:
            assert f"survival_{t.name}.png" in names
    assert {"expert_gates.png", "expert_zero_share.png", "training_loss.png"} <= set(names)
    assert "QUALITY GATE PASSED" in page and 'class="banner published"' in page
    assert "all tasks within tolerance" in page and "20260106-000000" in page
    assert "serving" in page and "GAUC" in page and "C-index" in page and "IBS" in page
    assert "n/a" in page  # the NaN validation value
    assert not re.search(r">\s*[+-]?nan\s*<", page, re.IGNORECASE)
    assert "52.1" in page and "validate" in page  # step timings


def test_first_model_without_experts_or_loss(tmp_path: Path, recipe: Recipe) -> None:
    new = make_preds(recipe, rows=800, subjects=60, seed=3)
    paths, page = run_report(tmp_path, recipe, new, None, experts={}, loss=[], passed=True)
    names = check_files(tmp_path, paths, page)
    assert not any(n.startswith("expert_") for n in names)
    assert "training_loss.png" not in names
    assert "No training loss history" in page and "Not a mixture-of-experts model" in page
    assert "first model" in page and "No serving model" in page
    for t in recipe.tasks:
        assert t.name in page
    # 60 subjects: quintiles, not deciles.
    assert "5 groups" in page and "survival_hazard_short.png" in names


def test_single_class_and_empty_task_rejected(tmp_path: Path, recipe: Recipe) -> None:
    """CTR with negatives only (AUC undefined), CVR and hazard_long with no held-out rows, tiny
    hazard data (one risk group), a NaN training loss."""
    new = make_preds(recipe, rows=40, subjects=7, seed=4)
    new.labels["ctr"] = np.zeros(40)
    serving = new.replace_scores(make_preds(recipe, rows=40, subjects=7, seed=5).scores)
    # compute_metrics cannot take a binary task with zero rows yet (metrics.auc fails on empty
    # input), so the metrics come from the rows before CVR's are removed, with CVR's undefined.
    metrics = (compute_metrics(recipe, new), compute_metrics(recipe, serving))
    for m in metrics:
        m["tasks"]["cvr"] = {k: None for k in m["tasks"]["cvr"]} | {"rows": 0}
    new.eval_mask["cvr"] = np.zeros(40, bool)  # the serving predictions share the mask: same rows
    new.eval_mask["hazard_long"] = np.zeros(40, bool)
    paths, page = run_report(
        tmp_path,
        recipe,
        new,
        serving,
        experts={},
        loss=[{"step": 1, "loss": float("nan"), "samples": 64}, {"step": 2, "loss": 0.69, "samples": 128}],
        passed=False,
        metrics=metrics,
    )
    names = check_files(tmp_path, paths, page)
    assert "roc_ctr.png" not in names and "calibration_ctr.png" in names
    assert "Only negative labels" in page
    assert "roc_cvr.png" not in names and "calibration_cvr.png" not in names
    assert "No held-out rows for this task" in page
    assert {"survival_hazard_short.png", "training_loss.png"} <= set(names)
    assert "too few subjects to split by risk: all 7 in one group" in page
    assert "survival_hazard_long.png" not in names and "no held-out survival subjects" in page
    assert "REJECTED" in page and 'class="banner rejected"' in page
    # The reason is escaped, never markup.
    assert "&lt;0.005&gt;" in page and "<0.005>" not in page
    # The undefined AUCs (null in the metrics, NaN in the gate row) render as n/a.
    assert re.search(r"<td>ctr</td><td>auc</td><td>n/a</td>", page)
    assert not re.search(r">\s*[+-]?nan\s*<", page, re.IGNORECASE)
    for t in recipe.tasks:
        assert t.name in page


def test_risk_groups_scale_with_subjects() -> None:
    assert [risk_groups(n) for n in (0, 1, 19, 20, 49, 50, 199, 200, 10**6)] == [0, 1, 1, 2, 2, 5, 5, 10, 10]
