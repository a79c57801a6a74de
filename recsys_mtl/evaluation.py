"""Offline evaluation of a multi-task model on Parquet days: predictions first, metrics second.

The two steps are kept apart on purpose:

1. `predict(model, reader) -> Predictions` runs the model (eval mode, no gradients) over every row
   the reader yields and keeps plain numpy arrays: per task the prediction, label, event and
   evaluation mask, plus the user and item ids, each hazard task's survival subject ids and the
   `oracle_*` ground truth where the data has them. A distributed evaluation gathers each rank's
   `Predictions` to rank 0 and joins them with `Predictions.concat`, so the metrics are those of all
   rows together (the AUC over every rank's predictions, never an average of per-rank AUCs).
2. `compute_metrics(recipe, preds) -> dict` turns them into the JSON-able metrics dict:

   binary task   auc, gauc (by the recipe's user column), logloss, ece, pred_obs_ratio, rows, and
                 on synthetic data oracle_auc, oracle_gauc, oracle_logloss and
                 oracle_lift = (auc - 0.5) / (oracle_auc - 0.5): the share of the achievable
                 ranking quality above chance that the model reaches; and expected_auc,
                 oracle_expected_auc, expected_lift: the same against the true probabilities
                 instead of the drawn labels (`metrics.expected_auc`), free of label noise, which
                 dominates where positives are few (CVR). Only the task's eval_mask rows count
                 (CVR: clicked rows). reliability: 10 equal-count bins of the prediction (mean
                 predicted, observed rate, rows). With calibrated scores (`recsys_mtl.calibration`):
                 calibrated = the same auc, gauc, logloss, ece, pred_obs_ratio and reliability
                 after the map; the top-level "calibration" says how they were made (out-of-fold,
                 or a saved map applied).
   hazard task   per survival subject (see below): c_index (Harrell's in lifelines' convention,
                 risk = 1 - S(horizon) of the task's grid; `metrics.c_index`), td_auc (the
                 cumulative/dynamic AUC with IPCW at the grid's horizon), ibs (integrated Brier
                 score), subjects (and its old name creatives), subject_column (the column that
                 identifies them; null when each row was its own subject), events, calibration
                 (mean predicted survival vs the Kaplan-Meier curve at each interval end), and
                 oracle_c_index, oracle_lift = (c - 0.5) / (oracle_c - 0.5), oracle_ibs; and
                 expected_auc, oracle_expected_auc, expected_lift: the AUC of the risk for "stops
                 within the grid's horizon" against the true probability of that (the oracle's
                 risk), free of the event draws and of censoring, which make one day's C-index
                 carry +-0.1 of lift at a few hundred events.

   Oracle keys exist only where the data has the task's oracle column (real data has none: the
   keys are absent, not null). Undefined values (one class only, no rows) are null, never NaN.

   cold start    with a `ColdStartSplit` (`recsys_mtl.cold_start`: a row's item is new when the
                 hash holds it out, `data.holdout_items`, or no training row has it) and some new
                 rows: "cold_start" = {"new": {task: ...}, "known": {task: ...}, "rows": {"new",
                 "known"}, "items": {"new", "known"} (distinct ids), "holdout_items", "train_days"
                 (whose items are known; null when unknown and the hash alone decided)}. Per task
                 the metrics of `compute_metrics` on those rows alone (`cold_start_metrics`):
                 binary rows, auc, logloss, oracle_auc, oracle_lift, expected_lift; hazard
                 subjects, events, c_index, oracle_c_index, oracle_lift, expected_lift (oracle
                 keys where the oracle is).

Hazard tasks are evaluated per survival subject (a creative on a day, by default a creative), not
per impression: the survival label belongs to the subject and repeats on each of its rows, so a
subject shown 1,000 times must not count 1,000 times. Rows are grouped by the task's subject column
(`Recipe.subject_column`: its `subject_column`, by default the recipe's item column; the first
row's label is the subject's). The model's prediction for a subject is the mean of its predicted
hazards over the subject's rows (choice): the hazard head sees row-level context (user, position,
creative age at the impression), and averaging per interval keeps a proper hazard in [0, 1] whose
survival curve summarises all the contexts the subject was seen in. The oracle hazard is the
subject's own, the same on each row, so its mean is itself. Data without the subject column is
evaluated one row per subject. (The key ``creatives`` repeats ``subjects`` for older readers.)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.calibration import Calibration, fit_and_report, reliability_table
from recsys_mtl.cold_start import ColdStartSplit, KnownItems, count_items
from recsys_mtl.metrics import (
    auc,
    c_index,
    calibration,
    cumulative_dynamic_auc,
    expected_auc,
    gauc,
    integrated_brier_score,
    kaplan_meier,
    logloss,
    survival_from_hazard,
)
from recsys_mtl.partitions import DataError, inspect_partitions
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import Recipe, TaskSpec
from recsys_mtl.transform import FeatureTransform

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Step 1: predictions
# --------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per-row model outputs, targets and ground truth, as numpy arrays of equal length N.

    scores     task -> binary: probability [N]; hazard: hazard per interval [N, L] (float32)
    labels     task -> binary: 0/1 float [N]; hazard: interval index int64 [N]
    events     hazard task -> 1/0 float [N] (0 = censored in that interval)
    eval_mask  task -> bool [N]: rows that count in evaluation (label present, `eval_on` set)
    oracle     task -> the oracle column's values (binary [N], hazard [N, L]) where the data has it
    users      the recipe's user column [N] (GAUC groups), None when the data lacks it
    items      the recipe's item column [N] (creatives), None when the data lacks it
    subjects   hazard task -> its subject column [N] (`Recipe.subject_column`: the survival subjects
               hazard metrics group by) where the data has it
    """

    scores: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    events: dict[str, np.ndarray]
    eval_mask: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray] = field(default_factory=dict)
    users: np.ndarray | None = None
    items: np.ndarray | None = None
    subjects: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.eval_mask.values()))) if self.eval_mask else 0

    def replace_scores(self, scores: dict[str, np.ndarray]) -> Predictions:
        """The same rows with other predictions (e.g. the oracle's, to check a metric's ceiling)."""
        return Predictions(
            {**self.scores, **scores},
            self.labels,
            self.events,
            self.eval_mask,
            self.oracle,
            self.users,
            self.items,
            self.subjects,
        )

    def subset(self, rows: np.ndarray) -> Predictions:
        """The rows `rows` selects (a bool mask or row indexes), in every field alike."""
        return Predictions(
            scores={k: v[rows] for k, v in self.scores.items()},
            labels={k: v[rows] for k, v in self.labels.items()},
            events={k: v[rows] for k, v in self.events.items()},
            eval_mask={k: v[rows] for k, v in self.eval_mask.items()},
            oracle={k: v[rows] for k, v in self.oracle.items()},
            users=self.users[rows] if self.users is not None else None,
            items=self.items[rows] if self.items is not None else None,
            subjects={k: v[rows] for k, v in self.subjects.items()},
        )

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        """Rows of all `parts` in order (e.g. every rank's predictions gathered on rank 0).

        The parts must hold the same tasks and oracle columns; user (item) ids are kept only if every
        part has them, a hazard task's subject ids likewise. Empty parts are skipped so their
        placeholder dtypes never change the ids'.
        """
        if not parts:
            raise ValueError("Predictions.concat needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if p.scores.keys() != first.scores.keys() or p.oracle.keys() != first.oracle.keys():
                raise ValueError("Predictions.concat: parts differ in their tasks or oracle columns")
        rows = [p for p in parts if p.num_rows > 0] or [first]

        def cat(get: Callable[[Predictions], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            return {k: np.concatenate([get(p)[k] for p in rows]) for k in get(first)}

        def ids(get: Callable[[Predictions], np.ndarray | None]) -> np.ndarray | None:
            arrays = [get(p) for p in rows]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)  # type: ignore[arg-type]

        return cls(
            scores=cat(lambda p: p.scores),
            labels=cat(lambda p: p.labels),
            events=cat(lambda p: p.events),
            eval_mask=cat(lambda p: p.eval_mask),
            oracle=cat(lambda p: p.oracle),
            users=ids(lambda p: p.users),
            items=ids(lambda p: p.items),
            subjects={
                k: np.concatenate([p.subjects[k] for p in rows])
                for k in first.subjects
                if all(k in p.subjects for p in rows)
            },
        )


def evaluation_columns(recipe: Recipe, schema_names: Sequence[str]) -> list[str]:
    """The extra columns evaluation reads, among those the data has: the user column (GAUC), the
    item column, each hazard task's subject column (per-subject survival) and each task's oracle
    column."""
    subjects = [recipe.subject_column(t) for t in recipe.tasks if t.kind == "hazard"]
    wanted = [
        recipe.data.user_column,
        recipe.data.item_column,
        *subjects,
        *(t.oracle_prefix for t in recipe.tasks),
    ]
    have = set(schema_names)
    return [c for c in dict.fromkeys(wanted) if c in have]


def evaluation_reader(
    recipe: Recipe,
    data_dir: str | Path,
    *,
    transform: FeatureTransform | None = None,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    holdout_items: float = 0.0,
) -> ParquetReader:
    """A reader over [start, end] in storage order (no shuffling, every row once) that also reads
    the `evaluation_columns` present in every file. `rank`/`world_size` split the row groups for a
    distributed evaluation. `holdout_items` > 0 drops the held-out items' rows (early stopping's
    validation reader; an evaluation keeps every row: the default)."""
    files = inspect_partitions(recipe, data_dir, start, end)
    common = set(files[0].schema.names).intersection(*(f.schema.names for f in files[1:]))
    return ParquetReader(
        recipe,
        data_dir,
        start=start,
        end=end,
        transform=transform,
        batch_size=batch_size,
        shuffle_buffer=0,
        rank=rank,
        world_size=world_size,
        extra_columns=evaluation_columns(recipe, sorted(common)),
        holdout_items=holdout_items,
    )


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _model_inputs(features: Any, device: torch.device) -> tuple[KeyedJaggedTensor, torch.Tensor]:
    """(sparse, dense) of a `FeatureBatch`, moved to the model's device when it is not the CPU."""
    sparse, dense = features.sparse, features.dense
    if device.type != "cpu":
        sparse, dense = sparse.to(device), dense.to(device)
    return sparse, dense


def predict(model: torch.nn.Module, reader: ParquetReader) -> Predictions:
    """Run `model` over every batch of `reader` and collect `Predictions` (see its fields).

    Eval mode under `torch.no_grad`; the model's training mode is restored afterwards. The reader
    should come from `evaluation_reader` (storage order, extra columns); whichever of the user, item,
    subject and oracle columns it reads are collected. A hazard oracle must hold L values per row.
    """
    recipe = reader.recipe
    extras = set(reader.extra_columns)
    oracle_cols = {t.name: t.oracle_prefix for t in recipe.tasks if t.oracle_prefix in extras}
    user_col = recipe.data.user_column if recipe.data.user_column in extras else None
    item_col = recipe.data.item_column if recipe.data.item_column in extras else None
    hazard = {t.name: t.num_intervals for t in recipe.tasks if t.kind == "hazard"}
    subject_cols = {n: recipe.subject_column(n) for n in hazard if recipe.subject_column(n) in extras}

    acc: dict[tuple[str, str], list[np.ndarray]] = {}

    def add(kind: str, key: str, value: np.ndarray) -> None:
        acc.setdefault((kind, key), []).append(value)

    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in reader:
                out = model(*_model_inputs(batch.features, device))
                tg = batch.targets
                for t in recipe.tasks:
                    add("score", t.name, out[t.name].detach().float().cpu().numpy())
                    add("label", t.name, tg.labels[t.name].numpy())
                    add("mask", t.name, tg.eval_mask[t.name].numpy().astype(bool))
                    if t.name in tg.events:
                        add("event", t.name, tg.events[t.name].numpy())
                for name, col in oracle_cols.items():
                    o = np.asarray(batch.extras[col])
                    if name in hazard and (o.ndim != 2 or o.shape[1] != hazard[name]):
                        raise DataError(
                            f"oracle hazards must be lists of {hazard[name]} numbers per row", None, col
                        )
                    add("oracle", name, o.astype(np.float32))
                if user_col:
                    add("ids", "users", batch.extras[user_col])
                if item_col:
                    add("ids", "items", batch.extras[item_col])
                for col in dict.fromkeys(subject_cols.values()):
                    add("subject", col, batch.extras[col])
    finally:
        model.train(was_training)

    def joined(kind: str, key: str, empty: np.ndarray) -> np.ndarray:
        parts = acc.get((kind, key))
        return np.concatenate(parts) if parts else empty

    def empty_for(t: TaskSpec) -> np.ndarray:
        return np.zeros((0, hazard[t.name]) if t.name in hazard else 0, np.float32)

    subject_ids = {c: joined("subject", c, np.zeros(0, np.int64)) for c in set(subject_cols.values())}

    return Predictions(
        scores={t.name: joined("score", t.name, empty_for(t)) for t in recipe.tasks},
        labels={t.name: joined("label", t.name, np.zeros(0)) for t in recipe.tasks},
        events={n: joined("event", n, np.zeros(0, np.float32)) for n in hazard},
        eval_mask={t.name: joined("mask", t.name, np.zeros(0, bool)) for t in recipe.tasks},
        oracle={n: joined("oracle", n, empty_for(recipe.task(n))) for n in oracle_cols},
        users=joined("ids", "users", np.zeros(0, np.int64)) if user_col else None,
        items=joined("ids", "items", np.zeros(0, np.int64)) if item_col else None,
        subjects={n: subject_ids[col] for n, col in subject_cols.items()},
    )


# --------------------------------------------------------------------------------------------
# Step 2: metrics
# --------------------------------------------------------------------------------------------


def oracle_lift(score: float, oracle_score: float) -> float:
    """(score - 0.5) / (oracle - 0.5): 0 at chance, 1 at the oracle. NaN when the oracle is not
    better than chance (the ratio would mean nothing) or either value is undefined."""
    if not (math.isfinite(score) and math.isfinite(oracle_score)) or oracle_score <= 0.5:
        return float("nan")
    return (score - 0.5) / (oracle_score - 0.5)


def _binary_metrics(
    name: str, preds: Predictions, calibrated: np.ndarray | None = None, ranking: np.ndarray | None = None
) -> dict[str, Any]:
    """Ranking and calibration metrics of a binary task on its eval_mask rows; with `calibrated`
    (the task's calibrated probabilities on all rows) the same after calibration under "calibrated",
    AUC and GAUC there from `ranking` when given (the shipped map's scores; see
    `calibration.HeldOutCalibration`)."""
    m = preds.eval_mask[name]
    p = preds.scores[name][m].astype(np.float64)
    y = preds.labels[name][m].astype(np.float64)
    users = preds.users[m] if preds.users is not None else None
    res: dict[str, Any] = {"auc": auc(p, y)}
    if users is not None:
        res["gauc"] = gauc(p, y, users)
    res["logloss"] = logloss(p, y)
    cal = calibration(p, y)
    res["ece"], res["pred_obs_ratio"] = cal["ece"], cal["pred_obs_ratio"]
    res["reliability"] = reliability_table(p, y)
    if calibrated is not None:
        q = np.asarray(calibrated, dtype=np.float64)[m]
        r = q if ranking is None else np.asarray(ranking, dtype=np.float64)[m]
        after = calibration(q, y)
        res["calibrated"] = {
            "auc": auc(r, y),
            **({"gauc": gauc(r, y, users)} if users is not None else {}),
            "logloss": logloss(q, y),
            "ece": after["ece"],
            "pred_obs_ratio": after["pred_obs_ratio"],
            "reliability": reliability_table(q, y),
        }
    res["rows"] = int(m.sum())
    if name in preds.oracle:
        o = preds.oracle[name][m].astype(np.float64)
        ok = np.isfinite(o)  # a row without an oracle value leaves the oracle metrics only
        res["oracle_auc"] = auc(o[ok], y[ok])
        if users is not None:
            res["oracle_gauc"] = gauc(o[ok], y[ok], users[ok])
        res["oracle_logloss"] = logloss(o[ok], y[ok])
        res["oracle_lift"] = oracle_lift(res["auc"], res["oracle_auc"])
        # the same against the true probabilities instead of one draw of the labels: far less
        # noisy where positives are few (the oracle comparison with the label noise removed)
        res["expected_auc"] = expected_auc(p[ok], o[ok])
        res["oracle_expected_auc"] = expected_auc(o[ok], o[ok])
        res["expected_lift"] = oracle_lift(res["expected_auc"], res["oracle_expected_auc"])
    return res


@dataclass
class SubjectTable:
    """One row per survival subject (a creative on a day in the product; whatever the task's subject
    column identifies in other data): its survival label and mean predicted (and oracle) hazards."""

    interval: np.ndarray  # int64 [C]
    event: np.ndarray  # bool [C]
    hazard: np.ndarray  # float64 [C, L], mean over the subject's rows
    oracle: np.ndarray | None  # float64 [C, L] or None
    rows: np.ndarray  # int64 [C], rows behind each subject


def per_subject(name: str, preds: Predictions) -> SubjectTable:
    """Group a hazard task's eval rows per survival subject: by ``preds.subjects[name]``, the task's
    subject column, each row on its own without one; the first row's label, and hazards averaged
    over the rows (module docstring)."""
    idx = np.flatnonzero(preds.eval_mask[name])
    subjects = preds.subjects.get(name)
    if subjects is None:
        rows, starts = idx, np.arange(len(idx))
    else:
        it = subjects[idx]
        order = np.argsort(it, kind="stable")  # stable: a subject's first row stays first
        rows = idx[order]
        sorted_items = it[order]
        starts = np.flatnonzero(np.r_[True, sorted_items[1:] != sorted_items[:-1]]) if len(rows) else rows
    counts = np.diff(np.r_[starts, len(rows)]).astype(np.int64)
    first = rows[starts]

    def mean(h: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, h.shape[1]))
        return np.add.reduceat(h[rows].astype(np.float64), starts, axis=0) / counts[:, None]

    return SubjectTable(
        interval=preds.labels[name][first].astype(np.int64),
        event=preds.events[name][first] > 0,
        hazard=mean(preds.scores[name]),
        oracle=mean(preds.oracle[name]) if name in preds.oracle else None,
        rows=counts,
    )


# the names before subjects were named for what they are (bench/, pipelines/ and tests import them)
CreativeTable = SubjectTable
per_creative = per_subject


def _hazard_metrics(task: TaskSpec, preds: Predictions, subject_column: str | None = None) -> dict[str, Any]:
    """Per-subject C-index, time-dependent AUC, integrated Brier score and survival calibration of a
    hazard task. `subject_column` names what the subjects are (None: each row its own subject)."""
    c = per_subject(task.name, preds)
    assert task.grid is not None
    widths = np.diff(np.asarray(task.grid, dtype=np.float64))
    surv = survival_from_hazard(c.hazard)
    risk = 1.0 - surv[:, -1] if len(surv) else np.zeros(0)
    res: dict[str, Any] = {"c_index": c_index(c.interval, c.event, risk)}
    res["td_auc"] = cumulative_dynamic_auc(c.interval, c.event, risk, task.num_intervals - 1)
    o_surv = None
    if c.oracle is not None:
        o_surv = survival_from_hazard(c.oracle)
        o_risk = 1.0 - o_surv[:, -1] if len(o_surv) else np.zeros(0)
        res["oracle_c_index"] = c_index(c.interval, c.event, o_risk)
        res["oracle_lift"] = oracle_lift(res["c_index"], res["oracle_c_index"])
        res["expected_auc"] = expected_auc(risk, o_risk)
        res["oracle_expected_auc"] = expected_auc(o_risk, o_risk)
        res["expected_lift"] = oracle_lift(res["expected_auc"], res["oracle_expected_auc"])
    res["subjects"] = len(c.interval)
    res["subject_column"] = subject_column if task.name in preds.subjects else None
    res["creatives"] = res["subjects"]  # the old name, for readers of older metrics
    res["events"] = int(c.event.sum())
    empty = len(c.interval) == 0
    res["ibs"] = float("nan") if empty else integrated_brier_score(c.interval, c.event, surv, widths)
    if o_surv is not None:
        res["oracle_ibs"] = (
            float("nan") if empty else integrated_brier_score(c.interval, c.event, o_surv, widths)
        )
    observed = kaplan_meier(c.interval, c.event, task.num_intervals)
    predicted = surv.mean(axis=0) if not empty else np.full(task.num_intervals, np.nan)
    cal: dict[str, Any] = {
        "time": list(task.grid[1:]),
        "unit": task.unit,
        "predicted": predicted,
        "observed": observed if not empty else np.full(task.num_intervals, np.nan),
        "max_abs_error": float(np.abs(predicted - observed).max()) if not empty else float("nan"),
    }
    if o_surv is not None:
        cal["oracle"] = o_surv.mean(axis=0) if not empty else np.full(task.num_intervals, np.nan)
    res["calibration"] = cal
    return res


def to_json(value: Any) -> Any:
    """A JSON-able copy: numpy scalars and arrays become Python numbers and lists, and NaN / inf
    become None, so `json.dumps(..., allow_nan=False)` accepts the result."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compute_metrics(
    recipe: Recipe,
    preds: Predictions,
    experts: dict[str, Any] | None = None,
    *,
    calibrated: Mapping[str, np.ndarray] | None = None,
    calibrated_ranking: Mapping[str, np.ndarray] | None = None,
    calibration_info: Mapping[str, Any] | None = None,
    cold_start: ColdStartSplit | None = None,
) -> dict[str, Any]:
    """The metrics dict (module docstring) of every recipe task, JSON-able with allow_nan=False.

    `experts` (from `expert_diagnostics`) is passed through under "experts"; {} when not given.
    `calibrated` (binary task -> calibrated probabilities on all rows) adds each such task's
    after-calibration metrics (AUC / GAUC from `calibrated_ranking` where given), and
    `calibration_info` (how they were made) goes under "calibration". `cold_start` (which rows are
    new items) adds "cold_start" when some row is new (`cold_start_metrics`).
    """
    out: dict[str, Any] = {
        "tasks": _task_metrics(recipe, preds, calibrated, calibrated_ranking),
        "experts": experts or {},
    }
    if calibration_info is not None:
        out["calibration"] = dict(calibration_info)
    if cold_start is not None and (split := cold_start_metrics(recipe, preds, cold_start)) is not None:
        out["cold_start"] = split
    return to_json(out)


def _task_metrics(
    recipe: Recipe,
    preds: Predictions,
    calibrated: Mapping[str, np.ndarray] | None = None,
    calibrated_ranking: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    cal, rank = calibrated or {}, calibrated_ranking or {}
    for t in recipe.tasks:
        if t.kind == "binary":
            tasks[t.name] = _binary_metrics(t.name, preds, cal.get(t.name), rank.get(t.name))
        else:
            tasks[t.name] = _hazard_metrics(t, preds, recipe.subject_column(t))
    return tasks


# what "cold_start" keeps of each task's metrics on the new / known rows
COLD_START_KEYS = {
    "binary": ("rows", "auc", "logloss", "oracle_auc", "oracle_lift", "expected_lift"),
    "hazard": ("subjects", "events", "c_index", "oracle_c_index", "oracle_lift", "expected_lift"),
}


def cold_start_metrics(recipe: Recipe, preds: Predictions, split: ColdStartSplit) -> dict[str, Any] | None:
    """Each task's metrics on the new items' rows and on the known items' rows apart (module
    docstring, "cold start"): the same numbers `compute_metrics` gives on each subset of the rows.
    None when no row is new (nothing to compare) or the predictions carry no item ids."""
    if preds.items is None:
        return None
    new = np.asarray(split.new, dtype=bool)
    if len(new) != preds.num_rows:
        raise ValueError(f"the cold-start split has {len(new)} rows, the predictions {preds.num_rows}")
    if not new.any():
        return None
    out: dict[str, Any] = {}
    for group, rows in (("new", new), ("known", ~new)):
        tasks = _task_metrics(recipe, preds.subset(rows))
        out[group] = {
            name: {k: m[k] for k in COLD_START_KEYS[recipe.task(name).kind] if k in m}
            for name, m in tasks.items()
        }
    out["rows"] = {"new": int(new.sum()), "known": int((~new).sum())}
    out["items"] = {"new": count_items(preds.items, new), "known": count_items(preds.items, ~new)}
    out["holdout_items"] = split.holdout_items
    out["train_days"] = split.train_days
    return to_json(out)


def calibrated_scores(
    recipe: Recipe, preds: Predictions, cal: Calibration, days: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(calibrated probabilities, the ranking scores, how they were made) of a model with the saved
    calibration `cal` on predictions of `days`: out-of-fold (`calibration.fit_and_report`,
    refitted with the saved map's method) when `days` overlap the days the map was fitted on (the
    map applied there would read its own labels), ranked by the saved map; else the saved map
    applied, for both."""
    fitted = set(cal.fitted_on.get("days") or [])
    info: dict[str, Any] = {"method": cal.method, "fitted_on_days": sorted(fitted)}
    applied = cal.apply(preds.scores)
    if fitted & set(days):
        spec = recipe.calibration.model_copy(update={"method": cal.method})
        held = fit_and_report(recipe.model_copy(update={"calibration": spec}), preds, days)
        info.update(kind="out_of_fold", folds=spec.folds)
        return held.out_of_fold, applied, info
    info["kind"] = "applied"
    return applied, applied, info


# --------------------------------------------------------------------------------------------
# Both steps
# --------------------------------------------------------------------------------------------


def expert_usage(model: torch.nn.Module, reader: ParquetReader, batches: int) -> dict[str, Any]:
    """`expert_diagnostics` on the reader's first `batches` batches; {} for models without gates
    (shared_bottom, DTRN without MMoE) or when `batches` is 0."""
    from recsys_mtl.models import expert_diagnostics

    if batches <= 0 or not getattr(model, "gate_experts", None):
        return {}
    device = _device(model)
    inputs = (_model_inputs(b.features, device) for b in islice(iter(reader), batches))
    return expert_diagnostics(model, inputs)  # type: ignore[arg-type]


def evaluate_days(
    model: torch.nn.Module,
    recipe: Recipe,
    transform: FeatureTransform | None,
    data_dir: str | Path,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    batch_size: int | None = None,
    diagnostics_batches: int = 20,
    calibration: Calibration | None = None,
    known_items: KnownItems | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on the days [start, end] of `data_dir`: {"tasks": ..., "experts": ...}.

    `transform` must be the one the model was trained with (its dense statistics); None builds it
    from the recipe. Expert diagnostics cover the first `diagnostics_batches` batches. With the
    model's saved `calibration` (RUN/calibration.json), binary tasks also get their metrics after
    it (`calibrated_scores`: out-of-fold on the days it was fitted on, else applied). Every row is
    evaluated; the rows of new items (held out by the recipe's `data.holdout_items`, or not among
    `known_items`, the model's training items, where given) are also reported apart ("cold_start").
    """
    t0 = time.perf_counter()
    reader = evaluation_reader(
        recipe, data_dir, transform=transform, start=start, end=end, batch_size=batch_size
    )
    preds = predict(model, reader)
    experts = expert_usage(model, reader, diagnostics_batches)
    calibrated = ranking = info = None
    if calibration is not None:
        days = sorted({f.day.isoformat() for f in reader.files})
        calibrated, ranking, info = calibrated_scores(recipe, preds, calibration, days)
    split = None
    if preds.items is not None:
        split = ColdStartSplit.of(preds.items, recipe.data.holdout_items, known_items)
    metrics = compute_metrics(
        recipe,
        preds,
        experts,
        calibrated=calibrated,
        calibrated_ranking=ranking,
        calibration_info=info,
        cold_start=split,
    )
    log.info("evaluated %d rows in %.1fs", preds.num_rows, time.perf_counter() - t0)
    return metrics


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _calibration_lines(metrics: dict[str, Any], binary: dict[str, Any]) -> list[str]:
    """Before/after calibration per binary task (ECE, pred/obs, AUC) and the reliability tables
    side by side (per bin: mean predicted / observed rate (rows)), when the metrics have them."""
    done = {n: r for n, r in binary.items() if "calibrated" in r}
    if not done:
        return []
    info = metrics.get("calibration") or {}
    lines = [
        f"calibration ({info.get('method', '?')}, {info.get('kind', '?')}): before -> after",
        f"{'task':<14} {'ECE':>17} {'pred/obs':>15} {'AUC':>17}",
    ]
    for n, r in done.items():
        c = r["calibrated"]
        lines.append(
            f"{n:<14} {_fmt(r['ece']):>7} -> {_fmt(c['ece']):<7} {_fmt(r['pred_obs_ratio'], '.3f'):>6} -> "
            f"{_fmt(c['pred_obs_ratio'], '.3f'):<6} {_fmt(r['auc']):>7} -> {_fmt(c['auc']):<7}"
        )
    for n, r in done.items():
        lines.append(f"reliability {n}: bin  predicted / observed (rows), before  |  after")
        before, after = r.get("reliability") or [], r["calibrated"].get("reliability") or []
        for i, (b, a) in enumerate(zip(before, after, strict=False)):
            lines.append(
                f"  {i:>2}  {_fmt(b['predicted'], '.5f')} / {_fmt(b['observed'], '.5f')} ({b['rows']:,})  |  "
                f"{_fmt(a['predicted'], '.5f')} / {_fmt(a['observed'], '.5f')} ({a['rows']:,})"
            )
    return lines


def _subjects_label(hazard_metrics: dict[str, Any]) -> str:
    """The hazard table's subject-count header: "subjects (COLUMN)", or "subjects (rows)" when
    each row was its own subject; plain "subjects" for metrics written before the key existed."""
    if "subject_column" not in hazard_metrics:
        return "subjects"
    return f"subjects ({hazard_metrics['subject_column'] or 'rows'})"


def _cold_start_lines(metrics: dict[str, Any]) -> list[str]:
    """New vs known items per task (AUC or C-index, oracle lift, logloss), when the metrics have
    a cold-start split."""
    cs = metrics.get("cold_start")
    if not cs:
        return []
    days = cs.get("train_days")
    known = (
        f" or absent from the training days {days[0]}..{days[-1]}"
        if days
        else " (training days unknown: the held-out hash alone decides)"
    )
    rows, items = cs["rows"], cs["items"]
    lines = [
        f"cold start: new items = held out (data.holdout_items {cs['holdout_items']:g}){known}; "
        f"new {items['new']:,} items / {rows['new']:,} rows, known {items['known']:,} items / "
        f"{rows['known']:,} rows",
        f"{'task':<14} {'metric':>7} {'new':>7} {'known':>7} {'lift new':>8} {'lift known':>10} "
        f"{'logloss new':>11} {'logloss known':>13}",
    ]
    for name, new in cs["new"].items():
        known_m = cs["known"].get(name, {})
        key, label = ("auc", "AUC") if "auc" in new else ("c_index", "C-index")
        lines.append(
            f"{name:<14} {label:>7} {_fmt(new.get(key)):>7} {_fmt(known_m.get(key)):>7} "
            f"{_fmt(new.get('oracle_lift'), '.2f'):>8} {_fmt(known_m.get('oracle_lift'), '.2f'):>10} "
            f"{_fmt(new.get('logloss')):>11} {_fmt(known_m.get('logloss')):>13}"
        )
    return lines


def format_metrics(metrics: dict[str, Any]) -> str:
    """A compact per-task table of a metrics dict (binary tasks, then hazard tasks, then experts)."""
    tasks = metrics.get("tasks", {})
    binary = {n: r for n, r in tasks.items() if "auc" in r}
    hazard = {n: r for n, r in tasks.items() if "c_index" in r}
    lines: list[str] = []
    if binary:
        lines.append(
            f"{'task':<14} {'rows':>10} {'AUC':>7} {'GAUC':>7} {'logloss':>8} {'ECE':>7} "
            f"{'pred/obs':>8} {'oracleAUC':>9} {'lift':>6} {'vs truth':>8}"
        )
        for n, r in binary.items():
            lines.append(
                f"{n:<14} {r['rows']:>10,} {_fmt(r['auc']):>7} {_fmt(r.get('gauc')):>7} "
                f"{_fmt(r['logloss']):>8} {_fmt(r['ece']):>7} {_fmt(r['pred_obs_ratio'], '.3f'):>8} "
                f"{_fmt(r.get('oracle_auc')):>9} {_fmt(r.get('oracle_lift'), '.2f'):>6} "
                f"{_fmt(r.get('expected_lift'), '.2f'):>8}"
            )
        lines += _calibration_lines(metrics, binary)
    for col in dict.fromkeys(_subjects_label(r) for r in hazard.values()):
        w = max(10, len(col))
        lines.append(
            f"{'task':<14} {col:>{w}} {'events':>7} {'C-index':>7} {'td-AUC':>7} {'IBS':>7} {'S err':>8} "
            f"{'oracle C':>8} {'lift':>6} {'vs truth':>8}"
        )
        for n, r in hazard.items():
            if _subjects_label(r) != col:
                continue
            subjects = r.get("subjects", r.get("creatives"))
            lines.append(
                f"{n:<14} {subjects:>{w},} {r['events']:>7,} {_fmt(r['c_index']):>7} "
                f"{_fmt(r.get('td_auc')):>7} {_fmt(r['ibs']):>7} "
                f"{_fmt(r['calibration']['max_abs_error']):>8} "
                f"{_fmt(r.get('oracle_c_index')):>8} {_fmt(r.get('oracle_lift'), '.2f'):>6} "
                f"{_fmt(r.get('expected_lift'), '.2f'):>8}"
            )
    lines += _cold_start_lines(metrics)
    zero = metrics.get("experts", {}).get("zero_share", {})
    if zero:
        worst = max(zero, key=lambda k: zero[k])
        lines.append(f"experts: {len(zero)}, highest zero-activation share {zero[worst]:.3f} ({worst})")
    return "\n".join(lines)
