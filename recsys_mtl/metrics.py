"""Ranking, calibration and survival metrics, vectorised over numpy arrays.

- AUC: Mann-Whitney with average ranks for ties (equals scikit-learn's roc_auc_score); the
  expected AUC under Bernoulli(p) labels, for ranking against known true probabilities.
- GAUC: AUC per group (user) weighted by the group's rows; groups with one class are skipped
  (the GAUC of the industry papers: a per-user ranking that one heavy user cannot dominate).
- logloss, ECE (equal-width bins, weighted by bin size) and the predicted/observed ratio.
- Harrell's C-index in lifelines' convention (`lifelines.utils.concordance_index`, equal to it to
  1e-12 on the same data): a pair (i, j) is comparable when i had the event and T_i < T_j, or
  T_i = T_j and j was censored (a subject censored in the interval of an event survived it);
  two events at the same time are not comparable; concordant when risk_i > risk_j; ties in risk
  count one half (Harrell et al., 1982; the risk is 1 - S(horizon)).
- Cumulative/dynamic AUC at a horizon with IPCW (Uno et al., 2007): how well the risk separates
  the subjects that had the event by the horizon from those known to survive it.
- Discrete-time survival: Kaplan-Meier curve, IPCW Brier score per interval and the integrated
  Brier score (the calibration and accuracy of predicted survival curves, not only their ranking).

Equations, papers and our choices (tie handling of the C-index included): (docs/METHODS.md, "Metrics").
"""

from __future__ import annotations

import numpy as np


def _tie_averaged_ranks(score: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of `score` within each group (ties averaged) and the order they refer to."""
    order = np.lexsort((score, group))
    g, s = group[order], score[order]
    n = len(s)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    pos = np.arange(n) - group_start  # 0-based position inside the group
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]
    run_id = np.cumsum(new_run) - 1
    run_mean = np.bincount(run_id, weights=pos) / np.bincount(run_id)
    return run_mean[run_id] + 1.0, order


def grouped_auc(score: np.ndarray, label: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: AUC (NaN where the group has one class) and the group's row count."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label) > 0
    if len(score) == 0:  # e.g. CVR on a day without clicks: no groups, every metric NaN
        return np.zeros(0), np.zeros(0)
    _, gid = np.unique(np.asarray(group), return_inverse=True)
    ranks, order = _tie_averaged_ranks(score, gid)
    g, y = gid[order], label[order]
    n = np.bincount(g).astype(np.float64)
    n_pos = np.bincount(g, weights=y.astype(np.float64))
    n_neg = n - n_pos
    rank_sum = np.bincount(g, weights=ranks * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc, n


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    a, _ = grouped_auc(score, label, np.zeros(len(score), np.int64))
    return float(a[0]) if len(a) else float("nan")


def expected_auc(score: np.ndarray, prob: np.ndarray) -> float:
    """The AUC of `score` when each row's label is Bernoulli(prob) (ratio of expectations).

    Pairs (i, j), i != j, count with weight p_i (1 - p_j): concordant when score_i > score_j,
    one half when tied. With 0/1 `prob` it is the ordinary AUC. With the true probabilities (the
    `oracle_*` columns of synthetic data) it measures the ranking against the truth itself rather
    than against one draw of the labels, so it does not carry the label noise that makes AUC on
    a few positives (CVR: tens of conversions on a day) too noisy to compare models.
    """
    s = np.asarray(score, dtype=np.float64)
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    if len(s) < 2:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s, p = s[order], p[order]
    q = 1.0 - p
    run = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1  # tie groups, ascending score
    pos, neg, self_pairs = np.bincount(run, p), np.bincount(run, q), np.bincount(run, p * q)
    neg_below = np.cumsum(neg) - neg
    concordant = (pos * neg_below).sum() + 0.5 * (pos * neg - self_pairs).sum()
    total = p.sum() * q.sum() - (p * q).sum()
    return float(concordant / total) if total > 0 else float("nan")


def gauc(score: np.ndarray, label: np.ndarray, group: np.ndarray) -> float:
    """Group AUC: per-group AUC averaged with the group's row count as weight."""
    a, n = grouped_auc(score, label, group)
    ok = ~np.isnan(a)
    return float((a[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else float("nan")


def logloss(prob: np.ndarray, label: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(label, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(p) else float("nan")


def calibration(prob: np.ndarray, label: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Expected calibration error (equal-width bins) and mean predicted / observed rate."""
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if len(p) == 0:
        return {"ece": float("nan"), "pred_obs_ratio": float("nan")}
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    cnt = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, p, bins) - np.bincount(b, y, bins))  # |sum p - sum y| per bin
    obs = y.mean()
    return {
        "ece": float(gap.sum() / len(p)),
        "pred_obs_ratio": float(p.mean() / obs) if obs > 0 else float("nan"),
        "nonempty_bins": int((cnt > 0).sum()),
    }


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index in lifelines' convention (`concordance_index(time, -risk, event)`).

    Comparable pairs (i, j): i had its event and T_i < T_j, or T_i = T_j and j is censored (with
    interval indexes: a subject censored in the interval of i's event survived that interval, the
    product's convention, so it outlived i). Two events at the same time are not comparable, nor is
    a pair whose earlier member is censored. Concordant when risk_i > risk_j; ties in risk count 1/2.

    Cost O(U * n log n) for U distinct event times: meant for discrete-time grids (U = intervals).
    """
    t = np.asarray(time, dtype=np.float64)
    d = np.asarray(event) > 0
    r = np.asarray(risk, dtype=np.float64)
    concordant = 0.0
    comparable = 0.0
    for u in np.unique(t[d]):
        later = np.sort(r[(t > u) | ((t == u) & ~d)])
        if len(later) == 0:
            continue
        ri = r[d & (t == u)]
        below = np.searchsorted(later, ri, side="left")
        tied = np.searchsorted(later, ri, side="right") - below
        concordant += below.sum() + 0.5 * tied.sum()
        comparable += len(ri) * len(later)
    return float(concordant / comparable) if comparable else float("nan")


def cumulative_dynamic_auc(
    interval: np.ndarray, event: np.ndarray, risk: np.ndarray, horizon: int | None = None
) -> float:
    """Time-dependent (cumulative/dynamic) AUC at the end of interval `horizon` (default: the last
    interval with a label, i.e. the grid's horizon), with inverse-probability-of-censoring weights
    (H. Uno, T. Cai, L. Tian, L. J. Wei, JASA 102(478), 2007; P. J. Heagerty, T. Lumley, M. S. Pepe,
    Biometrics 56(2), 2000; scikit-survival's `cumulative_dynamic_auc`):

        cases     event in an interval k <= horizon             weight 1 / G(k-)
        controls  known alive at the end of horizon: k > horizon, or censored in horizon (weight 1)
        AUC(h) = sum_cases sum_controls w_i [1(r_i > r_j) + 1/2 1(r_i = r_j)] / (sum_cases w_i * #controls)

    G(k-) is the Kaplan-Meier probability of not being censored before interval k, as in
    `brier_scores`. `risk` should be the predicted risk by the horizon (1 - S_horizon). NaN without
    a case or a control. On the product's grids every subject has k <= L - 1, so at the grid's
    horizon the controls are the subjects censored in the last interval (those that outlived it).
    """
    k = np.asarray(interval, dtype=np.int64)
    d = np.asarray(event) > 0
    r = np.asarray(risk, dtype=np.float64)
    if len(k) == 0:
        return float("nan")
    h = int(k.max()) if horizon is None else int(horizon)
    num = max(int(k.max()) + 1, h + 1)
    inv_g = _inverse_censoring_before(k, d, num)
    cases = d & (k <= h)
    controls = (k > h) | (~d & (k == h))
    if not cases.any() or not controls.any():
        return float("nan")
    w = inv_g[k[cases]]
    ctrl = np.sort(r[controls])
    below = np.searchsorted(ctrl, r[cases], side="left")
    tied = np.searchsorted(ctrl, r[cases], side="right") - below
    return float((w * (below + 0.5 * tied)).sum() / (w.sum() * len(ctrl)))


def _inverse_censoring_before(k: np.ndarray, d: np.ndarray, num_intervals: int) -> np.ndarray:
    """1 / G(l-) per interval l [L] (0 where G is 0): G(l-) = prod_{j<l} (1 - c_j), the Kaplan-Meier
    probability of not being censored before l, c_j = censored in j / (k > j or censored in j)."""
    n = len(k)
    censored = np.bincount(k[~d], minlength=num_intervals)[:num_intervals].astype(np.float64)
    beyond = n - np.cumsum(np.bincount(k, minlength=num_intervals)[:num_intervals])  # k > l
    at_risk = beyond + censored
    c = np.divide(censored, at_risk, out=np.zeros(num_intervals), where=at_risk > 0)
    g_before = np.r_[1.0, np.cumprod(1.0 - c)[:-1]]
    return np.divide(1.0, g_before, out=np.zeros(num_intervals), where=g_before > 0)


# --------------------------------------------------------------------------------------------
# Discrete-time survival: Kaplan-Meier and the (integrated) Brier score
# --------------------------------------------------------------------------------------------
# Labels are on a grid of L intervals: `interval` k (0-based) of the event or of censoring and an
# `event` flag. Censoring convention (recsys_mtl.synth.lifetimes): a creative censored
# in interval k survived interval k, so it is at risk in k and known alive at the end of k.


def survival_from_hazard(hazard: np.ndarray) -> np.ndarray:
    """S at the end of each interval: S_l = prod_{j<=l} (1 - h_j), rows = subjects."""
    return np.cumprod(1.0 - np.asarray(hazard, dtype=np.float64), axis=-1)


def risk_at_horizon(hazard: np.ndarray) -> np.ndarray:
    """1 - S_L per subject [n]: the risk the C-index ranks (empty for no subjects)."""
    h = np.asarray(hazard, dtype=np.float64)
    return 1.0 - survival_from_hazard(h)[:, -1] if len(h) else np.zeros(0)


def kaplan_meier(interval: np.ndarray, event: np.ndarray, num_intervals: int) -> np.ndarray:
    """Kaplan-Meier survival at the end of each interval [L] (the observed curve for calibration).

    At risk in interval l: subjects with k >= l (censored-in-l subjects survived l, so they count
    as at risk and not as events). Intervals after everyone has left keep the last value.
    """
    k = np.asarray(interval, dtype=np.int64)
    d = np.asarray(event) > 0
    events = np.bincount(k[d], minlength=num_intervals)[:num_intervals].astype(np.float64)
    leaving = np.bincount(k, minlength=num_intervals)[:num_intervals]
    at_risk = len(k) - np.r_[0, np.cumsum(leaving)[:-1]]
    h = np.divide(events, at_risk, out=np.zeros(num_intervals), where=at_risk > 0)
    return np.cumprod(1.0 - h)


def brier_scores(interval: np.ndarray, event: np.ndarray, survival: np.ndarray) -> np.ndarray:
    """IPCW Brier score (Graf et al., 1999) at the end of each interval [L], for discrete time.

    At the end of interval l a subject is known dead if it had its event in some k <= l (target 0,
    weight 1 / G(k-)), known alive if k > l or it was censored in l (target 1, weight 1 / G(l-)),
    and unknown otherwise (censored before l: weight 0). G(l-) = prod_{j<l} (1 - c_j) is the
    Kaplan-Meier probability of not being censored before interval l, with c_j the censoring
    hazard among the subjects alive through j. `survival` [n, L] is each subject's predicted S_l.
    """
    s = np.asarray(survival, dtype=np.float64)
    n, num_intervals = s.shape
    if n == 0:
        return np.full(num_intervals, np.nan)
    k = np.asarray(interval, dtype=np.int64)
    d = np.asarray(event) > 0
    inv_g = _inverse_censoring_before(k, d, num_intervals)
    grid = np.arange(num_intervals)
    dead = d[:, None] & (k[:, None] <= grid[None, :])
    alive = (k[:, None] > grid[None, :]) | (~d[:, None] & (k[:, None] == grid[None, :]))
    terms = np.where(dead, s**2 * inv_g[k][:, None], 0.0) + np.where(
        alive, (1.0 - s) ** 2 * inv_g[None, :], 0.0
    )
    return terms.mean(axis=0)


def integrated_brier_score(
    interval: np.ndarray, event: np.ndarray, survival: np.ndarray, widths: np.ndarray | None = None
) -> float:
    """Brier scores at the interval ends averaged with the interval widths as weights (the integral
    of the step function over the grid, divided by its length); lower is better, 0.25 is what a
    constant S = 0.5 scores on uncensored data."""
    bs = brier_scores(interval, event, survival)
    w = np.ones(len(bs)) if widths is None else np.asarray(widths, dtype=np.float64)
    return float((bs * w).sum() / w.sum()) if len(bs) and not np.isnan(bs).any() else float("nan")
