"""Probability calibration of the binary tasks: the maths, the file format and the export-side layer.

A ranking model trained with log loss ranks well but its probabilities drift: on the 800k-row
synthetic benchmark HoME predicted 0.93x the observed CTR and 1.13x the observed CVR. Bids and
budgets multiply these numbers, so a map from the model's probability to a calibrated one is fitted
on held-out rows after training and shipped inside the exported artifact (docs/METHODS.md,
"Calibration").

The map works in logit space: for a head task t with model logit s, the calibrated logit is f_t(s)
and the probability sigmoid(f_t(s)). Every map is a `LogitMap`: piecewise linear between strictly
increasing knots (x_k, z_k), continued below the first and above the last knot by a line of
positive slope. It is therefore strictly increasing, so the order of any two rows is kept and AUC
and GAUC are exactly unchanged (a plain isotonic step function would tie rows and change them).

- isotonic (Zadrozny & Elkan, KDD 2002): pool-adjacent-violators (PAV) on the rows sorted by s, with
  each block's rate smoothed as (positives + 1/2) / (rows + 1) (Jeffreys) so that no block's rate
  is 0 or 1 and every knot's logit is finite, and blocks pooled until the rates strictly increase.
  Knots: (mean s of the block, logit of its smoothed rate); outside them slope 1 (the end blocks'
  offset is kept: no extrapolated steepness from a handful of tail rows). The knots' logits are
  then corrected so each block's rows, mapped, average the block's rate (linear interpolation in
  logit space would over-predict low rates: the sigmoid is convex there), and the whole map is
  shifted by a constant so the mean calibrated probability equals the fitting rows' observed rate
  (`_match_means`, `_mean_shift`). Tied scores form one group; more than MAX_GROUPS distinct
  scores are pooled into MAX_GROUPS equal-count groups first (a block may then start only every
  N / MAX_GROUPS rows), which keeps the fit about a second.
- platt (Platt, 1999): logistic regression of the label on s, f(s) = a s + b, with Platt's target
  smoothing (positives count (N+ + 1) / (N+ + 2), negatives 1 / (N- + 2)); a must come out positive.

Product tasks (`product_of`, ESMM's ctcvr = ctr x cvr) get no map of their own: their calibrated
probability is the product of the calibrated factors, so they stay consistent with them by
construction (their ranking can move a little: the product of two separately mapped factors is not
a monotone function of the raw product).

Which rows: a task's evaluation rows (`eval_mask`: CVR on clicked rows) of held-out days. Reported
"after" numbers are out-of-fold (`out_of_fold`): the rows are split into `folds` by a hash of the
user id and each fold is calibrated by the map fitted on the others, so the reported improvement is
not the map reading its own labels; the after-AUC is that of the saved map, which is fitted on all
rows (`fit_and_report` gives both: `HeldOutCalibration`).

Who calls what: `recsys_mtl.trainer.evaluate_run` (RUN/calibration.json after `recsys-mtl train`),
`pipelines.new_vs_serving.evaluate_pair` (the nightly job, on day D), `recsys_mtl.evaluation.evaluate_days`
(before/after of a saved map), `recsys_mtl.export` (`CalibratedModel` around the scripted model).

calibration.json (RUN/calibration.json; also the manifest's `calibration` entry):

    format          "recsys-mtl-calibration", format_version 1
    method          "isotonic" | "platt"
    maps            head task -> {x: [...], z: [...], slope_below, slope_above, rows, positives}
    products        product task -> [factor tasks]
    fitted_on       {days: [...], rows: {task: n}, positives: {task: n}, skipped: {task: reason}}
    report          {kind: "out_of_fold", folds, tasks: {task: {before: SUMMARY, after: SUMMARY}}}
                    SUMMARY = {rows, ece, pred_obs_ratio, logloss, auc}
"""

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.atomic_files import write_json_atomic
from recsys_mtl.curves import reliability_bins
from recsys_mtl.hashing import hash_ints, hash_strings, salt_for
from recsys_mtl.metrics import auc, calibration, logloss
from recsys_mtl.recipe import Recipe

log = logging.getLogger(__name__)

FORMAT = "recsys-mtl-calibration"
FORMAT_VERSION = 1
CALIBRATION_FILE = "calibration.json"
METHODS = ("isotonic", "platt")
# probabilities are clipped to [EPS, 1 - EPS] before their logit is taken (float32 outputs reach 1.0)
EPS = 1e-7
RELIABILITY_BINS = 10
# isotonic fits pool the sorted distinct scores into at most this many groups first (`fit_isotonic`)
MAX_GROUPS = 20_000
_FOLD_SALT = salt_for("calibration-fold")


class CalibrationError(ValueError):
    """A map that cannot be fitted (too few rows of a class, a model that ranks backwards) or a
    calibration file that is not ours."""


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped to [EPS, 1 - EPS]."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow warnings."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# --------------------------------------------------------------------------------------------
# one task's map
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitMap:
    """A strictly increasing map of logits: linear between the knots (x, z), both strictly
    increasing with at least two knots, and lines of slope `slope_below` / `slope_above` (> 0)
    beyond them. `rows` / `positives`: what it was fitted on (for the record)."""

    x: np.ndarray
    z: np.ndarray
    slope_below: float = 1.0
    slope_above: float = 1.0
    rows: int = 0
    positives: int = 0

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64)
        z = np.asarray(self.z, dtype=np.float64)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "z", z)
        if x.ndim != 1 or x.shape != z.shape or len(x) < 2:
            raise CalibrationError("a map needs two or more knots, x and z of equal length")
        if not (np.isfinite(x).all() and np.isfinite(z).all()):
            raise CalibrationError("a map's knots must be finite")
        if not ((np.diff(x) > 0).all() and (np.diff(z) > 0).all()):
            raise CalibrationError("a map's knots must be strictly increasing")
        if not (self.slope_below > 0 and self.slope_above > 0):
            raise CalibrationError("a map's end slopes must be positive")

    def apply_logit(self, s: np.ndarray) -> np.ndarray:
        """The calibrated logit f(s) of logits `s` (float64)."""
        s = np.asarray(s, dtype=np.float64)
        x, z = self.x, self.z
        mid = np.interp(s, x, z)
        below = z[0] + self.slope_below * (s - x[0])
        above = z[-1] + self.slope_above * (s - x[-1])
        return np.where(s < x[0], below, np.where(s > x[-1], above, mid))

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of probabilities `p` (through their clipped logit)."""
        return sigmoid(self.apply_logit(logit(p)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.tolist(),
            "z": self.z.tolist(),
            "slope_below": float(self.slope_below),
            "slope_above": float(self.slope_above),
            "rows": int(self.rows),
            "positives": int(self.positives),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LogitMap":
        try:
            return cls(
                x=np.asarray(d["x"], dtype=np.float64),
                z=np.asarray(d["z"], dtype=np.float64),
                slope_below=float(d.get("slope_below", 1.0)),
                slope_above=float(d.get("slope_above", 1.0)),
                rows=int(d.get("rows", 0)),
                positives=int(d.get("positives", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CalibrationError):
                raise
            raise CalibrationError(f"not a calibration map: {e}") from None


def _check_classes(y: np.ndarray, min_positives: int) -> tuple[int, int]:
    pos = int(y.sum())
    neg = len(y) - pos
    if pos < min_positives or neg < min_positives:
        raise CalibrationError(
            f"{pos} positive and {neg} negative rows: fewer than {min_positives} of a class to fit on"
        )
    return pos, neg


def fit_isotonic(p: np.ndarray, y: np.ndarray, min_positives: int = 1) -> LogitMap:
    """Isotonic regression of `y` on the logit of `p` by pool-adjacent-violators, as a strictly
    increasing `LogitMap` (module docstring: Jeffreys-smoothed block rates, knots at the blocks'
    mean logit, slope 1 beyond them, then `_match_means`)."""
    y = np.asarray(y, dtype=np.float64)
    pos, _ = _check_classes(y, min_positives)
    s = logit(p)
    # tied scores must share one calibrated value: group them first
    _, row_group = np.unique(s, return_inverse=True)
    n = np.bincount(row_group).astype(np.float64)
    k = np.bincount(row_group, weights=y)
    sx = np.bincount(row_group, weights=s)
    if len(n) > MAX_GROUPS:
        # pool adjacent distinct scores into MAX_GROUPS groups of about equal rows: this only
        # restricts where a block may start (every ~N/MAX_GROUPS rows), and bounds the Python loop
        group = ((np.cumsum(n) - n) * MAX_GROUPS // n.sum()).astype(np.int64)
        n, k, sx = (np.bincount(group, weights=w) for w in (n, k, sx))
        keep = n > 0
        n, k, sx = n[keep], k[keep], sx[keep]
        row_group = (np.cumsum(keep) - 1)[group[row_group]]
    # PAV with a stack of blocks (rows, positives, sum of s, groups); pooled while the smoothed
    # rate does not strictly increase. Plain Python lists: about a microsecond per group.
    bn: list[float] = []
    bk: list[float] = []
    bs: list[float] = []
    bg: list[int] = []
    for ni, ki, si in zip(n.tolist(), k.tolist(), sx.tolist(), strict=True):
        bn.append(ni)
        bk.append(ki)
        bs.append(si)
        bg.append(1)
        while len(bn) > 1 and (bk[-2] + 0.5) / (bn[-2] + 1.0) >= (bk[-1] + 0.5) / (bn[-1] + 1.0):
            ni2, ki2, si2, gi2 = bn.pop(), bk.pop(), bs.pop(), bg.pop()
            bn[-1] += ni2
            bk[-1] += ki2
            bs[-1] += si2
            bg[-1] += gi2
    rows = np.asarray(bn)
    x = np.asarray(bs) / rows
    rate = (np.asarray(bk) + 0.5) / (rows + 1.0)
    z = logit(rate)
    if len(x) == 1:  # one block: a constant shift of the logit (slope 1 through the block)
        x, z = np.r_[x, x + 1.0], np.r_[z, z + 1.0]
    else:
        block = np.repeat(np.arange(len(bg)), bg)[row_group]
        z = _match_means(x, z, s, block, rows, rate)
    z = z + _mean_shift(LogitMap(x=x, z=z), s, float(y.mean()))
    return LogitMap(x=x, z=z, slope_below=1.0, slope_above=1.0, rows=len(y), positives=pos)


def _match_means(
    x: np.ndarray, z: np.ndarray, s: np.ndarray, block: np.ndarray, rows: np.ndarray, rate: np.ndarray
) -> np.ndarray:
    """The knots' logits corrected once so that each block's rows, mapped, average the block's
    rate: interpolating linearly in logit space and taking the sigmoid over-predicts where the
    sigmoid is convex (p < 0.5; Jensen), by up to 10% on wide blocks of rare positives (CVR). One
    step z_k += logit(rate_k) - logit(mean mapped p of block k); kept only if the knots stay
    strictly increasing (else the uncorrected ones, and `_mean_shift` alone)."""
    mapped = sigmoid(LogitMap(x=x, z=z).apply_logit(s))
    mean = np.bincount(block, weights=mapped, minlength=len(rows)) / rows
    corrected = z + logit(rate) - logit(mean)
    return corrected if (np.diff(corrected) > 0).all() and np.isfinite(corrected).all() else z


def _mean_shift(m: LogitMap, s: np.ndarray, target: float, iterations: int = 20) -> float:
    """The constant d for which the mean of sigmoid(m(s) + d) equals `target` (the observed rate
    of the fitting rows: calibration in the large), by Newton's method on a monotone function.
    Adding a constant keeps the map strictly increasing."""
    f = m.apply_logit(s)
    d = 0.0
    for _ in range(iterations):
        q = sigmoid(f + d)
        gap = float(q.mean()) - target
        slope = float((q * (1.0 - q)).mean())
        if abs(gap) <= 1e-12 * max(target, 1e-12) or slope <= 0:
            break
        d -= gap / slope
    return d


def fit_platt(p: np.ndarray, y: np.ndarray, min_positives: int = 1, iterations: int = 50) -> LogitMap:
    """Platt scaling: logistic regression of `y` on s = logit(p), f(s) = a s + b, by Newton's
    method from the identity (a = 1, b = 0), with Platt's smoothed targets. A slope a <= 0 (the
    model ranks backwards on these rows) raises CalibrationError: the map must keep the order."""
    y = np.asarray(y, dtype=np.float64)
    pos, neg = _check_classes(y, min_positives)
    s = logit(p)
    t = np.where(y > 0, (pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0))
    a, b = 1.0, 0.0

    def nll(a_: float, b_: float) -> float:
        f = a_ * s + b_
        return float(np.sum(np.logaddexp(0.0, f) - t * f))

    cur = nll(a, b)
    for _ in range(iterations):
        q = sigmoid(a * s + b)
        r = q - t
        w = q * (1.0 - q)
        g = np.array([np.dot(r, s), r.sum()])
        h = np.array([[np.dot(w, s * s), np.dot(w, s)], [np.dot(w, s), w.sum()]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        lr = 1.0
        while lr > 1e-6:  # step halving keeps every iteration a descent
            na, nb = a - lr * step[0], b - lr * step[1]
            new = nll(na, nb)
            if new <= cur:
                break
            lr /= 2
        else:
            break
        done = abs(cur - new) <= 1e-10 * max(1.0, abs(cur))
        a, b, cur = na, nb, new
        if done:
            break
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise CalibrationError(f"Platt slope {a:.3g} is not positive: the scores rank backwards here")
    return LogitMap(
        x=np.array([0.0, 1.0]),
        z=np.array([b, a + b]),
        slope_below=a,
        slope_above=a,
        rows=len(y),
        positives=pos,
    )


def fit_map(method: str, p: np.ndarray, y: np.ndarray, min_positives: int = 1) -> LogitMap:
    """The map of `method` ("isotonic" or "platt") fitted on probabilities `p` and labels `y`."""
    if method == "isotonic":
        return fit_isotonic(p, y, min_positives)
    if method == "platt":
        return fit_platt(p, y, min_positives)
    raise CalibrationError(f"unknown calibration method {method!r} (have {list(METHODS)})")


# --------------------------------------------------------------------------------------------
# a model's calibration: maps per head task, products
# --------------------------------------------------------------------------------------------


def calibrated_tasks(recipe: Recipe) -> tuple[list[str], dict[str, list[str]]]:
    """(binary head tasks, which get maps; product tasks -> their factors) of a recipe."""
    heads = [t.name for t in recipe.tasks if t.kind == "binary" and not t.product_of]
    products = {t.name: list(t.product_of) for t in recipe.tasks if t.kind == "binary" and t.product_of}
    return heads, products


@dataclass
class Calibration:
    """A model's calibration (the module docstring's file format): maps per head task; product
    tasks recomputed from the calibrated factors; a task without a map is left as it is."""

    method: str
    maps: dict[str, LogitMap]
    products: dict[str, list[str]] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None

    def apply(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated probabilities of every mapped and product task found in `scores` (task ->
        probabilities); other tasks are not returned."""
        out: dict[str, np.ndarray] = {}
        for task, m in self.maps.items():
            if task in scores:
                out[task] = m.apply(scores[task])
        for task, factors in self.products.items():
            if all(f in scores for f in factors):
                prod = np.ones(len(scores[factors[0]]), dtype=np.float64)
                for f in factors:
                    prod = prod * (out[f] if f in out else np.asarray(scores[f], dtype=np.float64))
                out[task] = prod
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "maps": {t: m.to_dict() for t, m in self.maps.items()},
            "products": {t: list(f) for t, f in self.products.items()},
            "fitted_on": self.fitted_on,
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise CalibrationError(f"not a {FORMAT} document")
        if d.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(f"{FORMAT} version {d.get('format_version')!r} (this code reads 1)")
        return cls(
            method=str(d["method"]),
            maps={str(t): LogitMap.from_dict(m) for t, m in dict(d.get("maps") or {}).items()},
            products={str(t): [str(f) for f in fs] for t, fs in dict(d.get("products") or {}).items()},
            fitted_on=dict(d.get("fitted_on") or {}),
            report=d.get("report"),
        )

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically (readers never see half a file)."""
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError, CalibrationError) as e:
            raise CalibrationError(f"{p}: {e}") from None


def load_run_calibration(run_dir: str | Path) -> Calibration | None:
    """RUN/calibration.json, or None when the run has none (no held-out days, or method none)."""
    p = Path(run_dir) / CALIBRATION_FILE
    return Calibration.load(p) if p.is_file() else None


# --------------------------------------------------------------------------------------------
# fitting on predictions, out-of-fold reporting
# --------------------------------------------------------------------------------------------


def fold_of(users: np.ndarray | None, n: int, folds: int) -> np.ndarray:
    """Each row's fold in [0, folds): a stable hash of its user id (all of a user's rows in one
    fold, so no fold is calibrated with its own users' labels), or of the row index without ids."""
    if users is None:
        h = hash_ints(np.arange(n, dtype=np.int64), _FOLD_SALT)
    else:
        u = np.asarray(users)
        if u.dtype.kind in "iub":
            h = hash_ints(u.astype(np.int64), _FOLD_SALT)
        else:
            h = hash_strings(pa.array([None if v is None else str(v) for v in u], pa.string()), _FOLD_SALT)
    return (h % np.uint64(folds)).astype(np.int64)


def _task_rows(preds: Any, task: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A task's (scores, labels) on its eval rows, restricted to `rows` when given."""
    m = np.asarray(preds.eval_mask[task], dtype=bool)
    if rows is not None:
        m = m & rows
    return preds.scores[task][m], preds.labels[task][m]


def fit_calibration(recipe: Recipe, preds: Any, days: Sequence[str] = ()) -> Calibration | None:
    """The recipe's calibration (`recipe.calibration`) fitted on all rows of `preds`
    (`evaluation.Predictions` of held-out `days`; each head task on its eval rows). None when the
    method is "none" or the recipe has no binary head task. A head task whose map cannot be fitted
    (too few positives, a backwards Platt slope) is left uncalibrated and named in
    `fitted_on.skipped`."""
    spec = recipe.calibration
    heads, products = calibrated_tasks(recipe)
    if spec.method == "none" or not heads:  # e.g. a survival-only recipe: nothing to calibrate
        return None
    maps: dict[str, LogitMap] = {}
    fitted: dict[str, Any] = {"days": list(days), "rows": {}, "positives": {}, "skipped": {}}
    for task in heads:
        p, y = _task_rows(preds, task)
        try:
            maps[task] = fit_map(spec.method, p, y, spec.min_positives)
        except CalibrationError as e:
            fitted["skipped"][task] = str(e)
            log.warning("calibration: no map for %s (%s): it stays uncalibrated", task, e)
            continue
        fitted["rows"][task] = len(y)
        fitted["positives"][task] = int(y.sum())
    return Calibration(method=spec.method, maps=maps, products=products, fitted_on=fitted)


def out_of_fold(recipe: Recipe, preds: Any) -> dict[str, np.ndarray]:
    """Out-of-fold calibrated probabilities of every binary task on all rows of `preds`: the rows
    split into `recipe.calibration.folds` folds by user (`fold_of`), each fold mapped by the map
    fitted on the other folds' eval rows; products from the calibrated factors. A fold whose map
    cannot be fitted keeps its raw scores for that task (logged)."""
    spec = recipe.calibration
    heads, products = calibrated_tasks(recipe)
    n = preds.num_rows
    fold = fold_of(preds.users, n, spec.folds)
    out: dict[str, np.ndarray] = {}
    for task in heads:
        cal = np.asarray(preds.scores[task], dtype=np.float64).copy()
        for k in range(spec.folds):
            p, y = _task_rows(preds, task, fold != k)
            try:
                m = fit_map(spec.method, p, y, spec.min_positives)
            except CalibrationError as e:
                log.warning("calibration: fold %d of %s keeps its raw scores (%s)", k, task, e)
                continue
            apply = fold == k
            cal[apply] = m.apply(preds.scores[task][apply])
        out[task] = cal
    for task, factors in products.items():
        prod = np.ones(n, dtype=np.float64)
        for f in factors:
            prod = prod * out[f]
        out[task] = prod
    return out


@dataclass
class HeldOutCalibration:
    """What `fit_and_report` gives: the map to save, and two sets of calibrated probabilities of
    every binary task on all rows.

    out_of_fold  each fold mapped by the other folds' map (`out_of_fold`): the honest after-numbers
                 of calibration (ECE, pred/obs, logloss, reliability)
    applied      the saved map applied to every row: the ranking that ships, so after-AUC / GAUC
                 are read here (one monotone map: equal to before for head tasks; two fold maps
                 would reorder rows across the folds, which no served model does)
    """

    calibration: Calibration | None
    out_of_fold: dict[str, np.ndarray]
    applied: dict[str, np.ndarray]

    def metrics_info(self) -> dict[str, Any] | None:
        """metrics.json's top-level `calibration` entry for these after-numbers (None: no map)."""
        cal = self.calibration
        if cal is None:
            return None
        folds = (cal.report or {}).get("folds")
        days = list(cal.fitted_on.get("days") or [])
        return {"method": cal.method, "kind": "out_of_fold", "folds": folds, "fitted_on_days": days}


def fit_and_report(recipe: Recipe, preds: Any, days: Sequence[str] = ()) -> HeldOutCalibration:
    """The map to save (`fit_calibration`, on all rows) with its out-of-fold before/after summary
    attached as `report`, and the calibrated probabilities after-numbers are read from (see
    `HeldOutCalibration`). Empty when the recipe's method is "none"."""
    cal = fit_calibration(recipe, preds, days)
    if cal is None:
        return HeldOutCalibration(None, {}, {})
    oof = out_of_fold(recipe, preds)
    applied = cal.apply(preds.scores)
    cal.report = {
        "kind": "out_of_fold",
        "folds": recipe.calibration.folds,
        "tasks": before_after(recipe, preds, oof, ranking=applied, detail=False),
    }
    return HeldOutCalibration(cal, oof, applied)


def reliability_table(p: np.ndarray, y: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """Equal-count bins of the predicted probability (`curves.reliability_bins`, lowest first):
    mean predicted, observed rate and rows per bin."""
    if len(p) == 0:
        return []
    pred, obs = reliability_bins(np.asarray(p, np.float64), np.asarray(y, np.float64), bins)
    n_bins = max(1, min(bins, len(p)))
    sizes = [len(c) for c in np.array_split(np.arange(len(p)), n_bins) if len(c)]
    return [
        {"predicted": float(a), "observed": float(b), "rows": int(c)}
        for a, b, c in zip(pred, obs, sizes, strict=True)
    ]


def calibration_summary(
    p: np.ndarray, y: np.ndarray, *, ranking: np.ndarray | None = None, detail: bool = True
) -> dict[str, Any]:
    """rows, ece, pred_obs_ratio, logloss of probabilities `p` against labels `y`, and auc of
    `ranking` (default `p`); with `detail` also the reliability table."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cal = calibration(p, y)
    res: dict[str, Any] = {
        "rows": len(p),
        "ece": cal["ece"],
        "pred_obs_ratio": cal["pred_obs_ratio"],
        "logloss": logloss(p, y) if len(p) else float("nan"),
        "auc": auc(p if ranking is None else np.asarray(ranking, dtype=np.float64), y),
    }
    # undefined values (one class, no rows) as None: the summary goes into JSON files
    res = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in res.items()}
    if detail:
        res["reliability"] = reliability_table(p, y)
    return res


def before_after(
    recipe: Recipe,
    preds: Any,
    calibrated: Mapping[str, np.ndarray],
    *,
    ranking: Mapping[str, np.ndarray] | None = None,
    detail: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per binary task in `calibrated`: {before, after} `calibration_summary` on its eval rows; the
    after-AUC from `ranking` where given (`HeldOutCalibration.applied`)."""
    res: dict[str, dict[str, Any]] = {}
    for t in recipe.tasks:
        if t.kind != "binary" or t.name not in calibrated:
            continue
        m = np.asarray(preds.eval_mask[t.name], dtype=bool)
        y = preds.labels[t.name][m]
        res[t.name] = {
            "before": calibration_summary(preds.scores[t.name][m], y, detail=detail),
            "after": calibration_summary(
                np.asarray(calibrated[t.name])[m],
                y,
                ranking=np.asarray(ranking[t.name])[m] if ranking and t.name in ranking else None,
                detail=detail,
            ),
        }
    return res


def describe(cal: Calibration | None, reason: str = "") -> dict[str, Any]:
    """The manifest's `calibration` entry: {"calibrated": true, ...calibration.json} or
    {"calibrated": false, "reason": ...}."""
    if cal is None or not cal.maps:
        why = reason or ("no task could be fitted" if cal is not None else "no calibration map")
        return {"calibrated": False, "reason": why}
    return {"calibrated": True, **cal.to_dict()}


# --------------------------------------------------------------------------------------------
# the export-side layer (TorchScript)
# --------------------------------------------------------------------------------------------


class LogitMapModule(nn.Module):
    """A `LogitMap` as a TorchScript-able module: logits in, calibrated logits out (float64
    inside, so the float32 model's order survives the map)."""

    def __init__(self, m: LogitMap) -> None:
        super().__init__()
        self.register_buffer("x", torch.tensor(m.x, dtype=torch.float64))
        self.register_buffer("z", torch.tensor(m.z, dtype=torch.float64))
        self.slope_below: float = float(m.slope_below)
        self.slope_above: float = float(m.slope_above)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        s = s.to(torch.float64).contiguous()
        x, z = self.x, self.z
        n = x.shape[0]
        i = torch.searchsorted(x, s).clamp(1, n - 1)
        x0, x1, z0, z1 = x[i - 1], x[i], z[i - 1], z[i]
        mid = z0 + (z1 - z0) / (x1 - x0) * (s - x0)
        below = z[0] + self.slope_below * (s - x[0])
        above = z[n - 1] + self.slope_above * (s - x[n - 1])
        return torch.where(s < x[0], below, torch.where(s > x[n - 1], above, mid))


class CalibratedModel(nn.Module):
    """The model's outputs with the calibration applied (the export-side wrapper; the model's own
    forward is the same in training and export): each mapped head task's `<t>_logit` becomes the
    calibrated logit and `<t>` its sigmoid; each product task is recomputed from its (calibrated)
    factors; every other output passes through unchanged. Scripted around the scripted model, whose
    forward is the grouped one (`MultiTaskModel.forward_grouped`); `calibrate` applies the maps to
    any outputs (the export's eager reference: the per-candidate forward's)."""

    def __init__(self, model: nn.Module, cal: Calibration) -> None:
        super().__init__()
        self.model = model
        self.maps = nn.ModuleDict({t: LogitMapModule(m) for t, m in cal.maps.items()})
        self.products: dict[str, list[str]] = {t: list(f) for t, f in cal.products.items()}

    def forward(
        self, sparse: KeyedJaggedTensor, dense: torch.Tensor, group: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.calibrate(self.model(sparse, dense, group))

    def calibrate(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's outputs with the maps applied (class docstring)."""
        res: dict[str, torch.Tensor] = {}
        for k, v in out.items():
            res[k] = v
        for name, m in self.maps.items():
            raw = out[name + "_logit"]
            z = m(raw)
            res[name + "_logit"] = z.to(raw.dtype)
            res[name] = torch.sigmoid(z).to(out[name].dtype)
        for name, factors in self.products.items():
            p = res[factors[0]]
            for f in factors[1:]:
                p = p * res[f]
            res[name] = p
        return res
