"""Confidence intervals for AUC and Harrell's C-index, alone or as a paired difference of two
models scored on the same rows: a cluster bootstrap with Poisson weights.

Why a bootstrap over clusters. One day of impressions is not a set of independent rows: a user's
rows share the user (their clicks and the model's errors move together), and a hazard task's rows
are already grouped into survival subjects. Resampling rows would understate the noise where rows
cluster, so each resample weighs every cluster (a user for a binary task, a survival subject for a
hazard task; a row when the data has no such column) by an independent Poisson(1) count and all of
the cluster's rows by it (the Poisson bootstrap: the multinomial bootstrap's large-sample twin,
drawn independently per cluster). Paired: both models see the same weights in a resample, so what
they share (which users happened to be on the day) cancels in their difference, and its interval is
far narrower than either model's own. The interval is the percentile interval of the resampled
statistic; the point estimate is the statistic on the data as is (weights 1), equal to
`recsys_mtl.metrics.auc` / `c_index` on the same rows.

How it stays fast. The rows are sorted by score once per model; a resample only changes weights,
so the weighted statistic is a few passes of cumulative sums over the sorted weights, vectorised
over a block of resamples (no per-row Python, no re-sorting):

    AUC_w = sum_i w_i y_i (N_below(i) + N_tied(i) / 2) / (W_pos W_neg)

with N_below(i) the weight of negatives scored below row i, and for the C-index the same per event
time u over the subjects still at risk after u (`recsys_mtl.metrics.c_index` with weights).
Deterministic given the data, the seed and the number of resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Resamples are weighed in blocks whose weight matrix stays below this many elements (float64:
# 8 bytes each), so 1M rows take blocks of 4 resamples and 30,000 subjects blocks of 133.
_BLOCK_ELEMENTS = 4_000_000

Statistic = Callable[[np.ndarray], np.ndarray]  # cluster weights [b, K] -> statistic [b]


@dataclass(frozen=True)
class MetricInterval:
    """A statistic (or a difference new - serving), its percentile interval and what it rests on."""

    estimate: float
    values: tuple[float, ...]  # each model's statistic on the data as is (new[, serving])
    low: float
    high: float
    confidence: float  # two-sided level of [low, high]
    resamples: int  # bootstrap resamples with a defined statistic
    clusters: int  # independent units resampled (users, subjects or rows)
    rows: int
    positives: int  # positives (binary task) or events (hazard task)

    @property
    def width(self) -> float:
        return self.high - self.low

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "width": self.width}


def _exclusive_cumsum(w: np.ndarray) -> np.ndarray:
    """[b, m] -> [b, m + 1]: column k holds the sum of the first k columns of w."""
    out = np.zeros((w.shape[0], w.shape[1] + 1))
    np.cumsum(w, axis=1, out=out[:, 1:])
    return out


class _Concordance:
    """The weighted concordance of "cases" against "controls": sum over cases i of
    w_i (W(controls scored below i) + W(controls tied with i) / 2), and the weight of all pairs.

    The controls are sorted once; a case's tied range [lo, hi) among them is found once; a
    resample then costs one gather and one cumulative sum over the controls and a gather over the
    cases: with C the exclusive cumulative sum of the sorted controls' weights, the case's term is
    w_i (C[lo] + C[hi]) / 2.
    """

    def __init__(self, case_score: np.ndarray, case_cluster: np.ndarray, control_score: np.ndarray,
                 control_cluster: np.ndarray) -> None:  # fmt: skip
        order = np.argsort(control_score, kind="stable")
        sorted_controls = control_score[order]
        self.control_cluster = control_cluster[order]
        self.case_cluster = case_cluster
        self.lo = np.searchsorted(sorted_controls, case_score, side="left")
        self.hi = np.searchsorted(sorted_controls, case_score, side="right")

    def __call__(self, cluster_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = _exclusive_cumsum(cluster_weights[:, self.control_cluster])
        w = cluster_weights[:, self.case_cluster]
        concordant = 0.5 * (w * (c[:, self.lo] + c[:, self.hi])).sum(axis=1)
        return concordant, w.sum(axis=1) * c[:, -1]


def weighted_auc(score: np.ndarray, label: np.ndarray, cluster_of_row: np.ndarray) -> Statistic:
    """The AUC of `score` for `label` under cluster weights [b, K] (row i weighs its cluster's):
    Mann-Whitney with ties counted 1/2, positives the cases and negatives the controls."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(label) > 0
    pairs = _Concordance(s[y], cluster_of_row[y], s[~y], cluster_of_row[~y])

    def statistic(cluster_weights: np.ndarray) -> np.ndarray:
        concordant, total = pairs(cluster_weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            return concordant / total

    return statistic


def weighted_c_index(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, cluster_of_row: np.ndarray
) -> Statistic:
    """Harrell's C-index under cluster weights [b, K], as `recsys_mtl.metrics.c_index` counts it
    (lifelines' convention): pair (i, j) comparable when i had its event and T_i < T_j, or T_i = T_j
    and j is censored; concordant when risk_i > risk_j, ties in risk 1/2; two events at the same
    time not comparable. Per distinct event time u the subjects with their event at u are the cases
    and those that outlived u (later, or censored at u) the controls: O(U n) per resample."""
    t = np.asarray(time, dtype=np.float64)
    d = np.asarray(event) > 0
    r = np.asarray(risk, dtype=np.float64)
    per_time = []
    for u in np.unique(t[d]):
        cases, later = d & (t == u), (t > u) | ((t == u) & ~d)
        if later.any():
            per_time.append(_Concordance(r[cases], cluster_of_row[cases], r[later], cluster_of_row[later]))

    def statistic(cluster_weights: np.ndarray) -> np.ndarray:
        concordant = np.zeros(len(cluster_weights))
        comparable = np.zeros(len(cluster_weights))
        for pairs in per_time:
            c, n = pairs(cluster_weights)
            concordant += c
            comparable += n
        with np.errstate(invalid="ignore", divide="ignore"):
            return concordant / comparable

    return statistic


def cluster_index(clusters: np.ndarray | None, rows: int) -> tuple[np.ndarray, int]:
    """Each row's cluster as 0..K-1 and K; every row its own cluster when `clusters` is None."""
    if clusters is None:
        return np.arange(rows), rows
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    return index.reshape(-1), int(index.max()) + 1 if rows else 0


def poisson_weights(
    num_clusters: int, rows: int, resamples: int, seed: int, block_elements: int = _BLOCK_ELEMENTS
) -> Iterator[np.ndarray]:
    """Cluster weights [b, K] in blocks of resamples, each an independent Poisson(1) count; a block
    is sized so that gathering it onto the rows stays within `block_elements`."""
    rng = np.random.default_rng(seed)
    block = max(1, block_elements // max(1, rows, num_clusters))
    for first in range(0, resamples, block):
        yield rng.poisson(1.0, size=(min(block, resamples - first), num_clusters)).astype(np.float64)


def bootstrap_interval(
    stats: Sequence[Statistic],
    num_clusters: int,
    rows: int,
    *,
    confidence: float,
    resamples: int,
    seed: int,
    positives: int,
) -> MetricInterval:
    """The interval of stats[0], or of stats[0] - stats[1] (new - serving, paired: both under the
    same weights). Resamples where the statistic is undefined (e.g. no positive drawn)
    are left out; NaN bounds when fewer than half of them define it."""
    if len(stats) not in (1, 2):
        raise ValueError(f"one statistic or a pair, not {len(stats)}")

    def statistic(w: np.ndarray) -> np.ndarray:
        return stats[0](w) - stats[1](w) if len(stats) == 2 else stats[0](w)

    ones = np.ones((1, num_clusters))
    values = tuple(float(s(ones)[0]) for s in stats)
    estimate = values[0] - values[1] if len(values) == 2 else values[0]
    draws = [statistic(w) for w in poisson_weights(num_clusters, rows, resamples, seed)]
    resampled = np.concatenate(draws) if draws else np.zeros(0)
    resampled = resampled[np.isfinite(resampled)]
    alpha = (1.0 - confidence) / 2.0
    if len(resampled) < max(1, resamples // 2) or not np.isfinite(estimate):
        low = high = float("nan")
    else:
        low, high = (float(q) for q in np.quantile(resampled, [alpha, 1.0 - alpha]))
    return MetricInterval(
        estimate=estimate,
        values=values,
        low=low,
        high=high,
        confidence=confidence,
        resamples=len(resampled),
        clusters=num_clusters,
        rows=rows,
        positives=positives,
    )


def auc_interval(
    scores: Sequence[np.ndarray],
    label: np.ndarray,
    clusters: np.ndarray | None,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> MetricInterval:
    """AUC of scores[0], or AUC(scores[0]) - AUC(scores[1]) on the same rows, resampling the
    `clusters` (e.g. users; None: rows)."""
    index, k = cluster_index(clusters, len(label))
    return bootstrap_interval(
        [weighted_auc(s, label, index) for s in scores],
        k,
        len(label),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        positives=int((np.asarray(label) > 0).sum()),
    )


def c_index_interval(
    risks: Sequence[np.ndarray],
    time: np.ndarray,
    event: np.ndarray,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> MetricInterval:
    """C-index of risks[0], or the difference with risks[1], one row per survival subject (each
    subject is resampled on its own)."""
    index, k = cluster_index(None, len(time))
    return bootstrap_interval(
        [weighted_c_index(time, event, r, index) for r in risks],
        k,
        len(time),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        positives=int((np.asarray(event) > 0).sum()),
    )
