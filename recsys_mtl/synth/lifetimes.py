"""Creative lifetimes: the true daily discontinuation hazard, lifetimes drawn from it, censoring at
the end of the observed window, the per-grid survival labels and the oracle hazards.

Time is in days from the creative's launch ("age"). Day ``a`` of a creative's life is the age
interval ``(a - 1, a]``; its true daily hazard is

    h_i(a) = sigmoid(base - cut * q_i * exp(-a / 7) + age_slope * a / 28 + exposure * e_i)

with ``q_i`` the creative's standardised mean CTR logit (low CTR -> stopped early: cut-out, fading
over the first weeks) and ``e_i`` its standardised log popularity (heavily shown creatives wear out
sooner); the ``a / 28`` term is wear-out with age. ``h_i(a)`` is P(stop during day a | running at
age a - 1) (METHODS.md, "Discrete-time hazard").

Grids (the recipe's `hazard_short` / `hazard_long` tasks):

- short: 14 intervals of one day, interval l (0-based) = age (l, l + 1];
- long: 16 intervals of one week (112 days), interval l = age (7 l, 7 l + 7].

Labels of a creative with observed time ``o = min(T, C)`` (lifetime T, censoring time C = window end -
launch) on a grid of L intervals of width w: interval ``k = min(ceil(o / w) - 1, L - 1)`` and event
``d = 1`` only if the stop was observed inside the grid (``T <= C`` and ``o <= L w``).

Censoring convention: a creative censored in interval k (d = 0) is treated as having survived
interval k, i.e. its loss includes the ``(1 - d) log(1 - h_k)`` term. This slightly overstates
survival for a creative censored early in an interval, which is the standard discrete-time choice; a
creative still running past the end of the grid is censored in the last interval, having survived it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_mtl.synth.world import SynthConfig

SHORT_INTERVALS = 14
SHORT_WIDTH_DAYS = 1
LONG_INTERVALS = 16
LONG_WIDTH_DAYS = 7
LONG_HORIZON_DAYS = LONG_INTERVALS * LONG_WIDTH_DAYS


@dataclass(frozen=True)
class HazardParams:
    """Coefficients of the true daily hazard (see the module docstring)."""

    base: float = -5.0
    cut: float = 2.0
    age_slope: float = 0.25
    exposure: float = 0.6

    @classmethod
    def from_config(cls, cfg: SynthConfig) -> HazardParams:
        return cls(cfg.hazard_base, cfg.hazard_cut, cfg.hazard_age, cfg.hazard_exposure)


@dataclass(frozen=True)
class Lifetimes:
    """Per-creative lifetimes, labels and oracle hazards (arrays indexed by creative id)."""

    lifetime: np.ndarray  # float64, T_i in days from launch (beyond the horizon: never observed)
    censor: np.ndarray  # float64, C_i = window end - launch
    event: np.ndarray  # bool, T_i <= C_i
    short_interval: np.ndarray  # int16
    short_event: np.ndarray  # int8
    long_interval: np.ndarray  # int16
    long_event: np.ndarray  # int8
    oracle_short: np.ndarray  # float32 (creatives, 14), h_i(a) for a = 1..14
    oracle_long: np.ndarray  # float32 (creatives, 16), weekly hazards
    risk_short: np.ndarray  # float32, 1 - S(14 days)
    risk_long: np.ndarray  # float32, 1 - S(16 weeks)

    @property
    def observed(self) -> np.ndarray:
        """min(T_i, C_i): the creative's observed time, in days from launch."""
        return np.minimum(self.lifetime, self.censor)


def daily_hazard(
    quality: np.ndarray, exposure: np.ndarray, ages: np.ndarray, params: HazardParams
) -> np.ndarray:
    """True hazard h_i(a) of each creative (rows) at each integer age a in `ages` (columns), float32.

    Computed in float32 with in-place operations: for a million creatives over a 120-day horizon this
    is the largest array the generator makes (chunked by the caller), and the oracles are float32."""
    a = ages.astype(np.float32)
    logit = np.multiply.outer((-params.cut * quality).astype(np.float32), np.exp(-a / np.float32(7.0)))
    logit += (params.age_slope / 28.0 * a).astype(np.float32)[None, :]
    logit += (params.base + params.exposure * exposure).astype(np.float32)[:, None]
    logit *= np.float32(0.5)  # sigmoid(x) = (1 + tanh(x / 2)) / 2, in place
    np.tanh(logit, out=logit)
    logit += np.float32(1.0)
    logit *= np.float32(0.5)
    return logit


def grid_labels(
    observed: np.ndarray, event: np.ndarray, width: float, n_intervals: int
) -> tuple[np.ndarray, np.ndarray]:
    """(interval int16, event int8) on a grid of `n_intervals` intervals of `width` days from 0:
    interval ``min(ceil(o / width) - 1, L - 1)``, event only when it happened inside the grid."""
    idx = np.ceil(observed / width).astype(np.int64) - 1
    np.clip(idx, 0, n_intervals - 1, out=idx)
    inside = event & (observed <= width * n_intervals)
    return idx.astype(np.int16), inside.astype(np.int8)


def draw_lifetimes(
    quality: np.ndarray,
    exposure: np.ndarray,
    launch: np.ndarray,
    window_end: float,
    params: HazardParams,
    rng: np.random.Generator,
    chunk: int = 32_768,
) -> Lifetimes:
    """Draw each creative's lifetime from its daily hazard and label it against the window.

    The stop day D is drawn by inverting the cumulative hazard ``H(a) = sum_{j<=a} -log(1 - h(j))``
    at an Exp(1) draw (D = first a with H(a) >= E, exact for a discrete hazard); the stop time inside
    that day is uniform, ``T = D - 1 + U`` with U in (0, 1], so T falls in day D's interval (D-1, D].
    Hazards are evaluated up to the largest censoring time (or 112 days, whichever is more); a creative
    surviving that long gets a T past every censoring time. Vectorised, chunked over creatives so a
    million creatives need O(chunk x horizon) working memory.
    """
    n = len(launch)
    censor = window_end - launch
    horizon = int(max(LONG_HORIZON_DAYS, np.ceil(censor.max(initial=0.0)))) + 1
    ages = np.arange(1, horizon + 1)
    e = rng.exponential(1.0, n)
    u = 1.0 - rng.random(n)
    stop_day = np.empty(n, dtype=np.int64)
    oracle_short = np.empty((n, SHORT_INTERVALS), dtype=np.float32)
    oracle_long = np.empty((n, LONG_INTERVALS), dtype=np.float32)
    risk_short = np.empty(n, dtype=np.float32)
    risk_long = np.empty(n, dtype=np.float32)
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        h = daily_hazard(quality[sl], exposure[sl], ages, params)
        cum = np.cumsum(-np.log1p(-h), axis=1)
        stop_day[sl] = (cum < e[sl, None]).sum(axis=1) + 1
        oracle_short[sl] = h[:, :SHORT_INTERVALS]
        weekly_survival = np.prod(
            (1.0 - h[:, :LONG_HORIZON_DAYS]).reshape(-1, LONG_INTERVALS, LONG_WIDTH_DAYS), axis=2
        )
        oracle_long[sl] = 1.0 - weekly_survival
        risk_short[sl] = 1.0 - np.prod(1.0 - h[:, :SHORT_INTERVALS], axis=1)
        risk_long[sl] = 1.0 - np.prod(weekly_survival, axis=1)
    lifetime = stop_day - 1 + u
    event = lifetime <= censor
    observed = np.minimum(lifetime, censor)
    short_interval, short_event = grid_labels(observed, event, SHORT_WIDTH_DAYS, SHORT_INTERVALS)
    long_interval, long_event = grid_labels(observed, event, LONG_WIDTH_DAYS, LONG_INTERVALS)
    return Lifetimes(
        lifetime=lifetime,
        censor=censor,
        event=event,
        short_interval=short_interval,
        short_event=short_event,
        long_interval=long_interval,
        long_event=long_event,
        oracle_short=oracle_short,
        oracle_long=oracle_long,
        risk_short=risk_short,
        risk_long=risk_long,
    )


def ctr_weights(impressions: np.ndarray, clicks: np.ndarray, alpha: float) -> np.ndarray:
    """Per-row hazard loss weight of each creative's rows (float64, indexed by creative id).

    Kitada et al. (2022) weight each creative's survival loss by its CTR relative to the mean, so
    creatives that drive clicks count more; and a creative must count once, not once per impression.
    A row of creative i therefore gets ``(smoothed_ctr_i / mean_ctr) / impressions_i``: its rows sum
    to ``smoothed_ctr_i / mean_ctr``, and the creatives' weights average to 1.

    ``smoothed_ctr_i = (clicks_i + alpha * global_ctr) / (impressions_i + alpha)`` is the empirical-
    Bayes (beta-binomial) shrinkage of the raw CTR toward the global CTR with ``alpha``
    pseudo-impressions: a creative with few impressions or no clicks keeps a positive weight near the
    mean instead of being dropped or blown up by noise. ``mean_ctr`` is the mean of ``smoothed_ctr``
    over the creatives that have impressions. With no clicks at all, every creative weighs 1.
    Creatives without impressions get 0 (they have no rows).
    """
    impressions = impressions.astype(np.float64)
    shown = impressions > 0
    total = impressions.sum()
    global_ctr = clicks.sum() / total if total > 0 else 0.0
    smoothed = (clicks + alpha * global_ctr) / np.maximum(impressions + alpha, 1e-12)
    mean_ctr = smoothed[shown].mean() if shown.any() else 0.0
    relative = smoothed / mean_ctr if mean_ctr > 0 else np.ones_like(smoothed)
    return np.where(shown, relative / np.maximum(impressions, 1.0), 0.0)
