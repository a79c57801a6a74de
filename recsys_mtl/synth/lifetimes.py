"""Creative lifetimes: the true daily discontinuation hazard, lifetimes drawn from it, censoring at
the end of the observation (`window_end`: the generator passes the last generated day plus
`label_follow_up_days`), and the residual-lifetime survival labels and oracle hazards of each
survival subject.

Time is in days from the creative's launch ("age"). Launches (`world.py`) and stops are whole days: a
creative launches at the start of a day and stops at the end of one. Day ``a`` of a creative's life
is the age interval ``(a - 1, a]``; its true daily hazard is

    h_i(a) = sigmoid(base - cut * q_i * exp(-a / 7) + age_slope * a / 28 + exposure * e_i)

with ``q_i`` the creative's standardised mean CTR logit (low CTR -> stopped early: cut-out, fading
over the first weeks) and ``e_i`` its standardised log popularity (heavily shown creatives wear out
sooner); the ``a / 28`` term is wear-out with age. ``h_i(a)`` is P(stop at the end of day a |
running at age a - 1), so a lifetime ``T = a`` is a stop in day a (the discrete-time hazard the
models' hazard heads learn, recsys_mtl/models/heads.py).

Survival subjects. What serving needs is the hazard of a running creative *from now*, so a survival
subject is one creative on one day partition, not the creative from its launch: its origin is the
start of day d, at the whole-number age ``a0 = d - launch``, and the creative has rows on day d only
if it is running then (``T > a0``). Labelling from launch instead would leak: a row seen at age a has
by construction survived a days, so ``creative_age_days`` alone would nearly give the label away.

Grids (the recipe's `hazard_short` / `hazard_long` tasks), in days from the subject's origin:

- short: 14 intervals of one day, interval l (0-based) = residual time (l, l + 1];
- long: 16 intervals of one week (112 days), interval l = residual time (7 l, 7 l + 7].

Labels of a subject with residual observed time ``r = min(T, C) - a0`` (lifetime T, censoring time
C = window end - launch, both whole days from launch; r >= 1 since T > a0 and C - a0 = days - d >= 1)
on a grid of L intervals of width w: interval ``k = min(ceil(r / w) - 1, L - 1)`` and event ``d = 1`` only if
the stop was observed inside the grid (``T <= C`` and ``r <= L w``). Every row of the subject
carries them. The window bounds r by ``days - d``: a 7-day window labels only the first week
(interval 0 of the long grid); later intervals need a longer window.

Oracle of a subject: its true conditional hazards from the origin, ``h_i(a0 + j + 1)`` for the
short grid's day j, ``1 - prod_{a = a0 + 7 w + 1}^{a0 + 7 w + 7} (1 - h_i(a))`` for the long grid's
week w, and the risk ``1 - prod (1 - hazard)`` over each grid: P(stop within the grid | running at
the origin).

Censoring convention: a subject censored in interval k (d = 0) is treated as having survived
interval k, i.e. its loss includes the ``(1 - d) log(1 - h_k)`` term. On the daily grid censoring
falls at an interval's end (whole days), so this is exact; on the weekly grid it slightly overstates
survival for a subject censored early in a week, which is the standard discrete-time choice. A
subject still running past the end of the grid is censored in the last interval, having survived it.

Equations: (docs/METHODS.md, "Creative lifetimes and survival labels", "CTR weighting").
"""

from __future__ import annotations

import dataclasses
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
    """Per-creative lifetimes (arrays indexed by creative id) and what the true hazard needs, so
    `subjects` can label and score any (creative, origin age) pair."""

    lifetime: np.ndarray  # float64, T_i in whole days from launch (beyond the horizon: never observed)
    censor: np.ndarray  # float64, C_i = window end - launch
    event: np.ndarray  # bool, T_i <= C_i
    quality: np.ndarray  # float64, q_i of the true hazard
    exposure: np.ndarray  # float64, e_i of the true hazard
    params: HazardParams

    @property
    def observed(self) -> np.ndarray:
        """min(T_i, C_i): the creative's observed time, in days from launch."""
        return np.minimum(self.lifetime, self.censor)

    def labels(
        self, creative: np.ndarray, a0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(short interval, short event, long interval, long event) of the survival subjects
        (creative[s], origin age a0[s]): `grid_labels` of the residual observed time
        ``r = min(T, C) - a0`` on each grid."""
        r = np.minimum(self.lifetime[creative], self.censor[creative]) - a0
        event = self.event[creative]
        return (
            *grid_labels(r, event, SHORT_WIDTH_DAYS, SHORT_INTERVALS),
            *grid_labels(r, event, LONG_WIDTH_DAYS, LONG_INTERVALS),
        )

    def subjects(self, creative: np.ndarray, a0: np.ndarray, chunk: int = 32_768) -> Subjects:
        """Labels and oracle hazards of the survival subjects (creative[s], origin age a0[s]), one
        per entry; each creative must be running at its origin (``T > a0``). See the module
        docstring. Chunked over subjects: O(chunk x 112) working memory."""
        creative = np.asarray(creative, dtype=np.int64)
        a0 = np.asarray(a0, dtype=np.float64)
        short_interval, short_event, long_interval, long_event = self.labels(creative, a0)
        n = len(creative)
        oracle_short = np.empty((n, SHORT_INTERVALS), dtype=np.float32)
        oracle_long = np.empty((n, LONG_INTERVALS), dtype=np.float32)
        risk_short = np.empty(n, dtype=np.float32)
        risk_long = np.empty(n, dtype=np.float32)
        days = np.arange(1, LONG_HORIZON_DAYS + 1, dtype=np.float64)
        for lo in range(0, n, chunk):
            sl = slice(lo, lo + chunk)
            ages = a0[sl, None] + days[None, :]  # a0 + 1 .. a0 + 112
            i = creative[sl]
            h = daily_hazard(self.quality[i], self.exposure[i], ages, self.params)
            oracle_short[sl], oracle_long[sl], risk_short[sl], risk_long[sl] = grid_oracles(h)
        return Subjects(
            short_interval=short_interval,
            short_event=short_event,
            long_interval=long_interval,
            long_event=long_event,
            oracle_short=oracle_short,
            oracle_long=oracle_long,
            risk_short=risk_short,
            risk_long=risk_long,
        )


@dataclass(frozen=True)
class Subjects:
    """Survival labels and oracle hazards of survival subjects, one entry each (module docstring)."""

    short_interval: np.ndarray  # int16
    short_event: np.ndarray  # int8
    long_interval: np.ndarray  # int16
    long_event: np.ndarray  # int8
    oracle_short: np.ndarray  # float32 (subjects, 14), h_i(a0 + j + 1) for j = 0..13
    oracle_long: np.ndarray  # float32 (subjects, 16), weekly hazards from a0
    risk_short: np.ndarray  # float32, 1 - S(14 days from a0 | running at a0)
    risk_long: np.ndarray  # float32, 1 - S(16 weeks from a0 | running at a0)

    def take(self, idx: np.ndarray) -> Subjects:
        """The entries `idx` (e.g. a chunk's rows from its distinct subjects)."""
        return Subjects(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))


def daily_hazard(
    quality: np.ndarray, exposure: np.ndarray, ages: np.ndarray, params: HazardParams
) -> np.ndarray:
    """True hazard h_i(a) of each creative (rows) at integer ages (columns), float32: `ages` is either
    one age vector shared by every creative or one row of ages per creative (shape (creatives, H)).

    Computed in float32 with in-place operations: for a million creatives over a 120-day horizon this
    is the largest array the generator makes (chunked by the caller), and the oracles are float32."""
    a = np.asarray(ages, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    logit = np.empty((len(quality), a.shape[1]), dtype=np.float32)
    np.divide(-a, np.float32(7.0), out=logit)
    np.exp(logit, out=logit)
    logit *= (-params.cut * quality).astype(np.float32)[:, None]
    logit += np.float32(params.age_slope / 28.0) * a
    logit += (params.base + params.exposure * exposure).astype(np.float32)[:, None]
    logit *= np.float32(0.5)  # sigmoid(x) = (1 + tanh(x / 2)) / 2, in place
    np.tanh(logit, out=logit)
    logit += np.float32(1.0)
    logit *= np.float32(0.5)
    return logit


def grid_oracles(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(short hazards, weekly hazards, 14-day risk, 112-day risk) of daily hazards `h` (rows, >= 112
    days from the origin): ``h[:, :14]``, ``1 - prod`` of each week's daily survival, and
    ``1 - prod (1 - h)`` over each grid."""
    survival = 1.0 - h[:, :LONG_HORIZON_DAYS]
    weekly = np.prod(survival.reshape(len(h), LONG_INTERVALS, LONG_WIDTH_DAYS), axis=2)
    risk_short = 1.0 - np.prod(survival[:, :SHORT_INTERVALS], axis=1)
    return h[:, :SHORT_INTERVALS], 1.0 - weekly, risk_short, 1.0 - np.prod(weekly, axis=1)


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
    """Draw each creative's lifetime from its daily hazard and censor it at `window_end` (the
    generator's: the end of its days plus the label follow-up).

    The stop day D is drawn by inverting the cumulative hazard ``H(a) = sum_{j<=a} -log(1 - h(j))``
    at an Exp(1) draw (D = first a with H(a) >= E, exact for a discrete hazard). The creative stops
    at the end of that day, ``T = D`` (whole days, like launches): a creative running at the start of
    a day runs all of it, so an impression's time of day (its hour, the fraction in
    ``creative_age_days``) says nothing about the stop. With a stop time inside the day, a subject's
    rows would end at the stop and their times of day would give away an event on its first day
    (the oracle, which knows only the start of the day, would again not be a ceiling).

    Hazards are evaluated up to the largest censoring time (or 112 days, whichever is more); a
    creative surviving that long gets a T past every censoring time. Vectorised, chunked over
    creatives so a million creatives need O(chunk x horizon) working memory.
    """
    n = len(launch)
    censor = window_end - launch
    horizon = int(max(LONG_HORIZON_DAYS, np.ceil(censor.max(initial=0.0)))) + 1
    ages = np.arange(1, horizon + 1)
    e = rng.exponential(1.0, n)
    stop_day = np.empty(n, dtype=np.int64)
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        h = daily_hazard(quality[sl], exposure[sl], ages, params)
        cum = np.cumsum(-np.log1p(-h), axis=1)
        stop_day[sl] = (cum < e[sl, None]).sum(axis=1) + 1
    lifetime = stop_day.astype(np.float64)
    return Lifetimes(
        lifetime=lifetime,
        censor=censor,
        event=lifetime <= censor,
        quality=quality,
        exposure=exposure,
        params=params,
    )


def ctr_weights(impressions: np.ndarray, clicks: np.ndarray, alpha: float) -> np.ndarray:
    """Hazard loss weight of each survival subject of each creative (float64, indexed by creative id).

    Kitada et al. (2022) weight each creative's survival loss by its CTR relative to the mean, so
    creatives that drive clicks count more; and a survival subject (a creative on a day) must count
    once, not once per impression. A subject of creative i weighs ``smoothed_ctr_i / mean_ctr`` (this
    function's value); the generator spreads it evenly over the subject's rows, each row getting
    ``(smoothed_ctr_i / mean_ctr) / rows_of_subject``, so the subjects' weights average to about 1.

    ``smoothed_ctr_i = (clicks_i + alpha * global_ctr) / (impressions_i + alpha)`` (impressions and
    clicks over the whole dataset) is the empirical-Bayes (beta-binomial) shrinkage of the raw CTR
    toward the global CTR with ``alpha`` pseudo-impressions: a creative with few impressions or no
    clicks keeps a positive weight near the mean instead of being dropped or blown up by noise.
    ``mean_ctr`` is the mean of ``smoothed_ctr`` over the creatives that have impressions. With no
    clicks at all, every creative weighs 1. Creatives without impressions get 0 (they have no rows).
    """
    impressions = impressions.astype(np.float64)
    shown = impressions > 0
    total = impressions.sum()
    global_ctr = clicks.sum() / total if total > 0 else 0.0
    smoothed = (clicks + alpha * global_ctr) / np.maximum(impressions + alpha, 1e-12)
    mean_ctr = smoothed[shown].mean() if shown.any() else 0.0
    relative = smoothed / mean_ctr if mean_ctr > 0 else np.ones_like(smoothed)
    return np.where(shown, relative, 0.0)
