"""The nightly gate's statistics (recsys_mtl/metric_intervals.py) and rules (pipelines/gate.py).

The intervals are checked against what they estimate: the point estimate equals `metrics.auc` /
`metrics.c_index`; the row bootstrap's spread matches DeLong's variance of a paired AUC difference
(an independent closed form, written out here); where rows cluster by user, the user bootstrap
keeps its coverage and the row bootstrap does not. The gate is then driven with predictions built
by hand: equal models pass under the interval rule where the point rule rejects them on noise, a
clearly worse model is rejected with a sentence that says why, report-only tasks never reject.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipelines.gate import GateError, gate_table_lines, quality_gate
from recsys_mtl.evaluation import Predictions
from recsys_mtl.metric_intervals import auc_interval, c_index_interval, weighted_auc, weighted_c_index
from recsys_mtl.metrics import auc, c_index
from recsys_mtl.recipe import Recipe, RecipeError, keep_tasks, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
Z90 = 1.6448536269514722  # the standard normal's 95th percentile


# --------------------------------------------------------------------------------------------
# the statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_statistics_at_unit_weights_are_the_metrics(ties: bool) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    score = rng.normal(0, 1, n)
    score = np.round(score, 1) if ties else score
    label = rng.random(n) < 1 / (1 + np.exp(-score))
    assert weighted_auc(score, label, np.arange(n))(np.ones((1, n)))[0] == pytest.approx(
        auc(score, label), abs=1e-12
    )
    time = rng.integers(0, 12, n)
    event = rng.random(n) < 0.4
    risk = np.round(-time + rng.normal(0, 3, n), 0 if ties else 6)
    got = weighted_c_index(time, event, risk, np.arange(n))(np.ones((1, n)))[0]
    assert got == pytest.approx(c_index(time, event, risk), abs=1e-12)


def test_weights_are_multiplicities() -> None:
    """A weight of 2 on a row is the row counted twice: the statistic of the data with duplicates."""
    rng = np.random.default_rng(2)
    n = 400
    score, label = rng.normal(0, 1, n), rng.random(n) < 0.3
    time, event, risk = rng.integers(0, 8, n), rng.random(n) < 0.5, rng.normal(0, 1, n)
    w = rng.poisson(1.0, n)
    rows = np.repeat(np.arange(n), w)
    assert weighted_auc(score, label, np.arange(n))(w[None, :].astype(float))[0] == pytest.approx(
        auc(score[rows], label[rows]), abs=1e-12
    )
    assert weighted_c_index(time, event, risk, np.arange(n))(w[None, :].astype(float))[0] == pytest.approx(
        c_index(time[rows], event[rows], risk[rows]), abs=1e-12
    )


def _delong_variance_of_difference(s1: np.ndarray, s2: np.ndarray, y: np.ndarray) -> float:
    """DeLong, DeLong & Clarke-Pearson (1988): the variance of AUC(s1) - AUC(s2) on the same rows,
    from the structural components, by brute force over all positive x negative pairs."""
    comps = []
    for s in (s1, s2):
        x, z = s[y][:, None], s[~y][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))  # V10 per positive, V01 per negative
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    s10, s01 = np.cov(v10), np.cov(v01)
    contrast = np.array([1.0, -1.0])
    return float(contrast @ (s10 / v10.shape[1] + s01 / v01.shape[1]) @ contrast)


def test_the_row_bootstrap_agrees_with_delong() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    signal = rng.normal(0, 1, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(signal - 1)))
    s1 = signal + rng.normal(0, 1.0, n)
    s2 = signal + rng.normal(0, 1.3, n)
    iv = auc_interval([s1, s2], y, None, confidence=0.9, resamples=4000, seed=0)
    assert iv.estimate == pytest.approx(auc(s1, y) - auc(s2, y), abs=1e-12)
    delong_width = 2 * Z90 * np.sqrt(_delong_variance_of_difference(s1, s2, y))
    assert iv.width == pytest.approx(delong_width, rel=0.12)
    assert iv.low < iv.estimate < iv.high


def _clustered(seed: int, users: int = 40, rows_per_user: int = 200) -> tuple[np.ndarray, ...]:
    """Two equally good models whose errors are mostly per user (each model misjudges a user as a
    whole): rows of a user are not independent evidence about the models' difference."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), rows_per_user)
    truth = rng.normal(0, 1, len(user))
    y = rng.random(len(user)) < 1 / (1 + np.exp(-(truth - 1)))
    s1 = truth + rng.normal(0, 1.0, users)[user] + rng.normal(0, 0.2, len(user))
    s2 = truth + rng.normal(0, 1.0, users)[user] + rng.normal(0, 0.2, len(user))
    return s1, s2, y, user


def test_where_rows_cluster_the_user_bootstrap_keeps_its_coverage_and_the_row_bootstrap_does_not() -> None:
    """Equal models: the true difference is 0. A 90% interval should miss it ~10% of the time."""
    miss = {"users": 0, "rows": 0}
    trials = 120
    for seed in range(trials):
        s1, s2, y, user = _clustered(seed)
        for unit, clusters in (("users", user), ("rows", None)):
            iv = auc_interval([s1, s2], y, clusters, confidence=0.9, resamples=300, seed=seed)
            miss[unit] += not (iv.low <= 0.0 <= iv.high)
    assert 0.02 <= miss["users"] / trials <= 0.2, miss
    assert miss["rows"] / trials > 0.3, miss  # far too narrow: it counts 8,000 rows as independent


def test_intervals_are_deterministic_given_the_seed() -> None:
    s1, s2, y, user = _clustered(7)
    a = auc_interval([s1, s2], y, user, confidence=0.9, resamples=200, seed=5)
    assert a == auc_interval([s1, s2], y, user, confidence=0.9, resamples=200, seed=5)
    assert a != auc_interval([s1, s2], y, user, confidence=0.9, resamples=200, seed=6)


def test_a_model_against_itself_differs_by_exactly_nothing() -> None:
    s1, _, y, user = _clustered(8)
    iv = auc_interval([s1, s1], y, user, confidence=0.9, resamples=200, seed=0)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    t, e, r = rng.integers(0, 5, 300), rng.random(300) < 0.5, rng.normal(0, 1, 300)
    iv = c_index_interval([r, r], t, e, confidence=0.9, resamples=200, seed=0)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)


def test_undefined_statistics_give_undefined_bounds() -> None:
    y = np.zeros(50, bool)  # one class only: no AUC
    iv = auc_interval([np.arange(50.0)], y, None, confidence=0.9, resamples=100, seed=0)
    assert np.isnan(iv.estimate) and np.isnan(iv.low) and np.isnan(iv.high)


# --------------------------------------------------------------------------------------------
# the gate
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Recipe:
    return load_recipe(ROOT / "configs" / "ads_ranker.yaml")


def gate_recipe(shipped: Recipe, **gate: Any) -> Recipe:
    d = shipped.to_dict()
    d["nightly"]["gate"] = {"resamples": 300, **gate}
    return Recipe.model_validate(d)


@dataclass
class Day:
    """A held-out day: per row a true logit, a click and a user; per survival subject a true risk
    and the interval / event it produced (higher risk, earlier stop)."""

    truth: np.ndarray
    click: np.ndarray
    user: np.ndarray
    subject: np.ndarray  # per row
    risk: np.ndarray  # per subject
    interval: np.ndarray  # per subject
    event: np.ndarray  # per subject


def make_day(seed: int, rows: int = 6000, users: int = 300, subjects: int = 600) -> Day:
    rng = np.random.default_rng(seed)
    truth = rng.normal(-1.0, 1.2, rows)
    risk = rng.normal(0, 1, subjects)
    stop = rng.exponential(6 * np.exp(-risk))
    censor = rng.uniform(0, 20, subjects)
    return Day(
        truth=truth,
        click=(rng.random(rows) < 1 / (1 + np.exp(-truth))).astype(np.float64),
        user=rng.integers(0, users, rows),
        subject=rng.integers(0, subjects, rows),
        risk=risk,
        interval=np.minimum(np.minimum(stop, censor), 15).astype(np.int64),
        event=(stop <= censor) & (stop < 16),
    )


def model(day: Day, seed: int, noise: float, hazard_noise: float) -> Predictions:
    """A model that sees the day's truth through noise: ctr scored, hazard_long per subject; the
    recipe's other tasks have no evaluation rows on this day."""
    rng = np.random.default_rng(seed)
    n = len(day.click)
    p = 1 / (1 + np.exp(-(day.truth + rng.normal(0, noise, n))))
    seen = day.risk + rng.normal(0, hazard_noise, len(day.risk))
    hazard = np.repeat((1 / (1 + np.exp(2 - seen)))[day.subject][:, None], 16, axis=1)
    none, everything = np.zeros(n, bool), np.ones(n, bool)
    interval, event = day.interval[day.subject], day.event[day.subject].astype(np.float64)
    return Predictions(
        scores={"ctr": p, "cvr": p, "ctcvr": p, "hazard_short": hazard[:, :14], "hazard_long": hazard},
        labels={
            "ctr": day.click,
            "cvr": day.click,
            "ctcvr": day.click,
            "hazard_short": interval,
            "hazard_long": interval,
        },
        events={"hazard_short": event, "hazard_long": event},
        eval_mask={
            "ctr": everything,
            "cvr": none,
            "ctcvr": none,
            "hazard_short": none,
            "hazard_long": everything,
        },
        users=day.user,
        subjects={"hazard_short": day.subject, "hazard_long": day.subject},
    )


def rows_by_task(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["task"]: r for r in decision["rows"]}


def test_equal_models_pass_the_interval_rule_where_the_point_rule_rejects_them_on_noise(
    shipped: Recipe,
) -> None:
    """Two equally good models (the same noise level, independent draws) on a small day: one day's
    C-index difference is noise larger than the tolerance. The interval rule sees that it is."""
    day = make_day(11)
    new, serving = model(day, 1, 1.0, 1.0), model(day, 3, 1.0, 1.0)
    point = quality_gate(gate_recipe(shipped, rule="point"), new, serving, "3")
    interval = quality_gate(gate_recipe(shipped), new, serving, "3")
    assert rows_by_task(point)["hazard_long"]["estimate"] < -0.005  # the noise this day drew
    assert not point["passed"] and "hazard_long C-index" in point["reason"]
    assert interval["passed"], interval["reason"]
    long = rows_by_task(interval)["hazard_long"]
    assert long["low"] < long["estimate"] < -0.005 < long["high"]
    assert long["unit"] == "subjects" and long["clusters"] == len(np.unique(day.subject))
    ctr = rows_by_task(interval)["ctr"]
    assert (
        ctr["unit"] == "users"
        and ctr["clusters"] == len(np.unique(day.user))
        and ctr["rows"] == len(day.click)
    )
    # tasks without evaluation rows on the day are shown as not judged, never as failures
    assert rows_by_task(interval)["cvr"]["measurable"] is False and rows_by_task(interval)["cvr"]["passed"]


def test_a_clearly_worse_model_is_rejected_with_a_sentence_that_says_why(shipped: Recipe) -> None:
    day = make_day(12)
    new, serving = model(day, 1, 3.0, 1.0), model(day, 2, 1.0, 1.0)
    decision = quality_gate(gate_recipe(shipped), new, serving, "3")
    ctr = rows_by_task(decision)["ctr"]
    assert ctr["high"] < -0.005 and ctr["verdict"] == "reject" and not decision["passed"]
    assert decision["reason"].startswith("rejected: ctr AUC new - serving v3 = -0.")
    assert "95% interval" in decision["reason"] and "its upper end is below -0.005" in decision["reason"]
    assert f"{len(np.unique(day.user)):,} users" in decision["reason"]
    # the same table in the log as in the report: header, then one line per task
    lines = gate_table_lines(decision)
    assert lines[0].split()[:4] == ["task", "metric", "new", "serving"] and len(lines) == 1 + len(
        shipped.tasks
    )
    assert any(line.startswith("ctr") and line.rstrip().endswith("reject") for line in lines)


def test_report_only_tasks_never_reject(shipped: Recipe) -> None:
    day = make_day(12)
    new, serving = model(day, 1, 3.0, 1.0), model(day, 2, 1.0, 1.0)
    decision = quality_gate(gate_recipe(shipped, report_only=["ctr"]), new, serving, "3")
    ctr = rows_by_task(decision)["ctr"]
    assert ctr["verdict"] == "worse (reported only)" and ctr["passed"] and decision["passed"]


def test_the_first_model_is_judged_against_its_floor_by_the_interval(shipped: Recipe) -> None:
    day = make_day(13)
    good, useless = model(day, 1, 0.5, 0.3), model(day, 2, 50.0, 50.0)
    first = quality_gate(gate_recipe(shipped, floors={"hazard_long": 0.55}), good, None, None)
    assert first["passed"] and first["first_model"], first["reason"]
    assert rows_by_task(first)["ctr"]["compared_with"] == "floor"
    bad = quality_gate(gate_recipe(shipped, floor=0.6, floors={"hazard_long": 0.55}), useless, None, None)
    assert not bad["passed"]
    assert "ctr AUC 0.5" in bad["reason"] and "its upper end is below the floor 0.6" in bad["reason"]


def test_a_task_named_in_tasks_that_cannot_be_measured_rejects(shipped: Recipe) -> None:
    day = make_day(14)
    new, serving = model(day, 1, 1.0, 1.0), model(day, 2, 1.0, 1.0)
    decision = quality_gate(gate_recipe(shipped, tasks=["ctr", "cvr"]), new, serving, "3")
    assert not decision["passed"] and "cvr: auc undefined on the day" in decision["reason"]


def test_the_verdict_is_deterministic(shipped: Recipe) -> None:
    day = make_day(15)
    new, serving = model(day, 1, 1.2, 1.0), model(day, 2, 1.0, 1.0)
    r = gate_recipe(shipped, seed=4)
    assert quality_gate(r, new, serving, "3") == quality_gate(r, new, serving, "3")


def test_predictions_of_different_rows_cannot_be_paired(shipped: Recipe) -> None:
    new = model(make_day(16), 1, 1.0, 1.0)
    other = model(make_day(17), 1, 1.0, 1.0)
    with pytest.raises(GateError, match="ctr: the two models' rows carry different labels"):
        quality_gate(gate_recipe(shipped), new, other, "3")


@pytest.mark.parametrize("field", ["tasks", "report_only", "tolerances", "floors"])
def test_the_recipe_names_only_its_own_tasks_in_the_gate(shipped: Recipe, tmp_path: Path, field: str) -> None:
    d = shipped.to_dict()
    d["nightly"]["gate"][field] = {"clicks": 0.01} if field in ("tolerances", "floors") else ["clicks"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(RecipeError, match=rf"nightly.gate.{field} names unknown task\(s\) \['clicks'\]"):
        load_recipe(path)


def test_a_recipe_narrowed_to_fewer_tasks_drops_their_gate_settings(shipped: Recipe) -> None:
    """Copies of a recipe with fewer tasks (single-task baselines, a user trimming the shipped
    recipe through `keep_tasks`) must not keep gate entries for tasks that are gone."""
    d = shipped.to_dict()
    d["nightly"]["gate"].update(report_only=["hazard_long"], tasks=["hazard_long"])
    with pytest.raises(RecipeError, match=r"nightly\.gate\.tasks names unknown task"):
        recipe_from_dict(copy.deepcopy(d) | {"tasks": [t for t in d["tasks"] if t["name"] == "ctr"]})
    narrowed = recipe_from_dict(keep_tasks(d, ["ctr"]))
    gate = narrowed.nightly.gate
    assert [t.name for t in narrowed.tasks] == ["ctr"]
    assert (gate.floors, gate.report_only, gate.tasks) == ({}, [], None)
