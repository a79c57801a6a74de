"""The curves behind the metrics, for plotting: ROC points, reliability bins, and predicted survival
against Kaplan-Meier by predicted-risk group. numpy in, numpy out; `recsys_mtl.metrics` holds the
scalar metrics these curves illustrate (AUC, ECE, C-index, IBS), `pipelines.report_plots` draws them.
"""

from __future__ import annotations

import numpy as np

from recsys_mtl.metrics import kaplan_meier, survival_from_hazard


def roc_curve(p: np.ndarray, y: np.ndarray, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); both classes must be present.

    With more than `max_points` points the curve is interpolated onto a fixed FPR grid (about
    max_points / 2 even steps plus a log-spaced run from 1e-4): millions of rows would otherwise make
    a slow, heavy plot that looks the same.
    """
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # ties move together
    tp = np.cumsum(y)[last_of_threshold]
    fp = (last_of_threshold + 1) - tp
    fpr = np.r_[0.0, fp / fp[-1]]
    tpr = np.r_[0.0, tp / tp[-1]]
    if max_points is not None and len(fpr) > max_points:
        grid = np.unique(np.r_[np.linspace(0, 1, max_points // 2), np.geomspace(1e-4, 1, 200)])
        tpr = np.interp(grid, fpr, tpr)
        fpr = grid
    return fpr, tpr


def reliability_bins(p: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted, observed rate) in equal-count bins of the predicted probability.

    Equal-count (quantile) bins rather than the equal-width bins of the ECE metric: CVR and CTCVR
    probabilities sit in the lowest percent, where equal-width bins would put nearly every row into
    one bin and leave nothing to see. Bins are cut by rank, so ties and tiny data never fail.
    """
    n_bins = max(1, min(bins, len(p)))
    chunks = [c for c in np.array_split(np.argsort(p, kind="stable"), n_bins) if len(c)]
    return np.array([p[c].mean() for c in chunks]), np.array([y[c].mean() for c in chunks])


def survival_by_risk_group(
    hazard: np.ndarray, interval: np.ndarray, event: np.ndarray, num_intervals: int, groups: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per predicted-risk group, lowest risk first: (the group's mean predicted survival, the
    Kaplan-Meier curve of its observed lifetimes), both at the grid points t_0..t_L (S(t_0) = 1).

    One subject per row of `hazard` [n, L] (per-interval hazards) with its `interval` and `event`
    labels. Risk is 1 - S(horizon), as the C-index ranks subjects; groups are cut by risk rank, not
    by quantile value, so many tied risks (a model that barely ranks) still give groups of equal size.
    """
    surv = survival_from_hazard(hazard)
    risk = 1.0 - surv[:, -1]
    members = np.array_split(np.argsort(risk, kind="stable"), groups)
    return [
        (
            np.r_[1.0, surv[idx].mean(axis=0)],
            np.r_[1.0, kaplan_meier(interval[idx], event[idx], num_intervals)],
        )
        for idx in members
    ]
