"""The synthetic world: users, ad creatives, their attributes and latent tastes, and the true click
and conversion probabilities of any (user, creative, context) impression.

Everything here is a pure function of the seed and the vocabulary sizes, and is built once per
`generate` run in O(vocabulary) memory; rows are drawn from it in chunks by `generate.py`.

The ground truth (the oracle_* columns; README, "A five-minute tour"):

- users have an age bucket, a gender, a city (Zipf), an activity level (log-normal), a preferred
  device and a latent taste ``z_u = m + N(0, I_k)``; the shared mean ``m`` makes some creatives broadly
  appealing, which is what gives a creative a mean CTR of its own;
- creatives belong to a campaign, which belongs to an advertiser; they have a category (mostly their
  campaign's), a format, a base bid, a launch day (a whole number of days from the window start: a
  creative launches at the start of a day, so its age at the start of every day is a whole number of
  days and lines up with the daily hazard grid of `lifetimes.py`) and a latent vector
  ``z_i = sqrt(0.6) c_category + sqrt(0.4) N(0, I_k)``, so the category carries signal;
- user, creative, city and category ids have Zipf popularity with the ranks randomly permuted, so an
  id's value says nothing about its popularity;
- true CTR logit = bias + <z_u, A z_i> + user effects + creative effects (category, format, quality)
  + device + hour + position bias (decreasing in the slot) - wear-out * creative age;
- true CVR logit (P(conversion | click)) = bias + <z_u, B z_i> + its own effects, with
  ``B = rho A + sqrt(1 - rho^2) A'`` and ``A'`` independent of ``A``: ``rho`` is the correlation of
  the two tasks' interaction terms, negative values make the tasks conflict;
- each creative has a content vector (`content_vectors`), what a compressed image/text embedding of
  it would be: its hidden attributes (z_i, format, category and quality effects, and the q_i and e_i
  of its discontinuation hazard) standardised, projected to ``content_dim`` dimensions by a fixed
  random semi-orthogonal matrix, and mixed with independent noise at ``content_signal``; a seeded
  ``content_missing_rate`` of the creatives have none (null in the data);
- behaviour sequences come from each user's category affinities (see `World.history`).

The two biases are set afterwards by calibration (`generate.py`) so the mean CTR and the mean
conversion rate per click hit their targets whatever the other knobs are.

Equations: (docs/METHODS.md, "World", "Clicks and conversions", "Behaviour sequences").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys_mtl.hashing import mix64  # SplitMix64's finaliser, as a counter-based RNG

FORMATS: tuple[str, ...] = ("image", "video", "carousel", "text")
DEVICES: tuple[str, ...] = ("ios", "android", "web")
N_AGE_BUCKETS = 8
N_GENDERS = 3
N_POSITIONS = 10
N_HOURS = 24

# The "day" slot of the world's RNG seeds: `generate` seeds chunk streams with
# [seed, day, chunk, stream], and no real day reaches this value, so world and chunk streams never meet.
WORLD_STREAM = 0xFFFF_0000
# hazard_subject = creative_id * SUBJECT_DAY_STRIDE + day: one survival subject per (creative, day).
# Unique while day < SUBJECT_DAY_STRIDE (`SynthConfig.validate` caps `days` there) and free of int64
# overflow while creatives < 2**63 / SUBJECT_DAY_STRIDE (about 9e13, also checked).
SUBJECT_DAY_STRIDE = 100_000
# The world_rng part of the creatives' content vectors (build_world uses parts 1..5, generate.py 6 and
# 7): a stream of its own, so the content draws shift no other part of the world.
CONTENT_PART = 8

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# How many of a user's most-liked categories the behaviour sequences draw from, and how often a
# sequence item is an off-taste category drawn by global popularity instead (exploration noise).
_TOP_CATEGORIES = 8
_EXPLORE = 0.1
_AFFINITY_TEMPERATURE = 0.25


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the synthetic data; the same config and seed give byte-identical data.

    The defaults fit a laptop (about 100k rows in seconds); vocabulary sizes go up to millions.
    """

    rows: int = 100_000
    days: int = 7
    seed: int = 0
    rho: float = 0.5
    """Correlation of the CTR and CVR interaction terms (task relatedness), in [-1, 1]."""
    ctr: float = 0.05
    """Target mean click-through rate (the CTR bias is calibrated to hit it)."""
    conversion_rate: float = 0.1
    """Target mean P(conversion | click); e.g. 0.01 makes conversions a rare, sparse task."""
    cvr_bias: float | None = None
    """An explicit CVR logit bias; when set it replaces the calibration to `conversion_rate`."""
    users: int = 20_000
    creatives: int = 5_000
    advertisers: int = 500
    campaigns: int = 2_000
    categories: int = 200
    cities: int = 500
    click_seq_len: int = 20
    conv_seq_len: int = 5
    latent_dim: int = 16
    content_dim: int = 32
    """Dimensions of each creative's content vector (the `creative_content` column); 0 writes none."""
    content_signal: float = 0.5
    """Share of each content dimension's variance that comes from the creative's hidden attributes, in
    [0, 1] (the rest is independent noise; 0: pure noise). 0.5 makes the vector informative but far
    from an oracle: with the default dimensions a least-squares read-out recovers about
    0.65-0.75 of the variance of a creative's CTR effects and hazard driver (0.8-0.86 at 0.7, 0.94-0.96
    at 0.9; tests/test_synth_content.py)."""
    content_missing_rate: float = 0.02
    """Share of creatives, chosen by the seed, whose content vector is missing (null)."""
    start_date: str = "2026-01-01"
    rows_per_file: int = 1_000_000
    chunk_rows: int = 200_000
    """Rows per RNG chunk; part of the data's identity (changing it changes the data)."""
    hazard_weight_alpha: float = 20.0
    """Pseudo-impressions of the empirical-Bayes CTR smoothing behind `hazard_weight`."""
    # --- creative lifetimes (see lifetimes.py) ---
    label_follow_up_days: float = 28.0
    """Days after the last generated day during which discontinuations are still observed for the
    survival labels (real labels mature after the impressions: a creative shown on the last day is
    followed up like any other). Subjects are censored at last day + this. With 28, the daily grid
    (14 days) is fully observed for every subject and the weekly grid (16 weeks) is censored."""
    pre_window_days: float = 112.0
    """Creatives launched before the window are spread over this many days before it."""
    launch_in_window_frac: float = 0.3
    """Share of creatives that launch during the generated window rather than before it."""
    hazard_base: float = -5.0
    """Daily hazard logit of an average creative at launch (see lifetimes.py)."""
    hazard_cut: float = 2.0
    """Cut-out: how much a low-CTR creative's hazard rises in its first weeks."""
    hazard_age: float = 0.25
    """Wear-out: hazard logit added per 28 days of age."""
    hazard_exposure: float = 0.6
    """Wear-out: hazard logit added per standard deviation of log popularity (exposure)."""

    @property
    def start(self) -> dt.date:
        """The first generated day."""
        return dt.date.fromisoformat(self.start_date)

    def rows_on_day(self, day: int) -> int:
        """Rows of day `day`: `rows` split evenly, the first `rows % days` days one row more."""
        return self.rows // self.days + (1 if day < self.rows % self.days else 0)

    def validate(self) -> None:
        """Raise ValueError naming the first knob that cannot work."""
        positive = [
            "rows",
            "days",
            "users",
            "creatives",
            "advertisers",
            "campaigns",
            "categories",
            "cities",
            "latent_dim",
            "rows_per_file",
            "chunk_rows",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.rows < self.days:
            raise ValueError(f"rows ({self.rows}) must be >= days ({self.days}): every day gets rows")
        if self.days > SUBJECT_DAY_STRIDE:
            raise ValueError(f"days must be <= {SUBJECT_DAY_STRIDE} (hazard_subject ids), got {self.days}")
        if self.creatives >= 2**63 // SUBJECT_DAY_STRIDE:
            raise ValueError(f"creatives must be < {2**63 // SUBJECT_DAY_STRIDE} (hazard_subject ids)")
        if self.label_follow_up_days < 0:
            raise ValueError(f"label_follow_up_days must be >= 0, got {self.label_follow_up_days}")
        if not -1.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [-1, 1], got {self.rho}")
        if not 0.0 < self.ctr < 1.0:
            raise ValueError(f"ctr must be in (0, 1), got {self.ctr}")
        if not 0.0 < self.conversion_rate < 1.0:
            raise ValueError(f"conversion_rate must be in (0, 1), got {self.conversion_rate}")
        if self.campaigns < self.advertisers:
            raise ValueError("campaigns must be >= advertisers (each advertiser runs a campaign)")
        for name in ("click_seq_len", "conv_seq_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        dim = self.content_dim
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 0:
            raise ValueError(f"content_dim must be an integer >= 0 (0: no content column), got {dim!r}")
        for name in ("content_signal", "content_missing_rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.hazard_weight_alpha < 0:
            raise ValueError("hazard_weight_alpha must be >= 0")
        if self.pre_window_days < 0 or not 0.0 <= self.launch_in_window_frac <= 1.0:
            raise ValueError("pre_window_days must be >= 0 and launch_in_window_frac in [0, 1]")
        try:
            self.start  # noqa: B018
        except ValueError as e:
            raise ValueError(f"start_date must be YYYY-MM-DD, got {self.start_date!r}") from e


# --------------------------------------------------------------------------------------------
# small numeric helpers
# --------------------------------------------------------------------------------------------


def world_rng(seed: int, part: int) -> np.random.Generator:
    """The RNG of one part of the world (users, creatives, ...): independent of every other part,
    so adding a draw to one part never shifts another."""
    return np.random.default_rng([seed, WORLD_STREAM, part, 0])


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, computed without overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Popularity of ids 0..n-1: ``1 / rank^exponent`` with ranks randomly permuted over the ids (so an
    id's value is not its rank), normalised to sum to 1."""
    by_rank = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    w = by_rank[rng.permutation(n)]
    return w / w.sum()


def cdf_of(weights: np.ndarray) -> np.ndarray:
    """Cumulative distribution of `weights` with the last value exactly 1, for inverse-CDF sampling
    with ``np.searchsorted(cdf, u, side="right")``."""
    cdf = np.cumsum(weights, dtype=np.float64)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def draw_from_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: index of the first cdf entry above each uniform u in [0, 1) (int64)."""
    idx = np.searchsorted(cdf, u, side="right")
    np.minimum(idx, len(cdf) - 1, out=idx)
    return idx.astype(np.int64, copy=False)


def _standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std, with std 0 treated as 1."""
    sd = float(x.std())
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


# --------------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The entities and the true CTR/CVR functions. Arrays are indexed by id (users, creatives, ...)."""

    cfg: SynthConfig
    # --- users ---
    user_age: np.ndarray  # int64, 0..7
    user_gender: np.ndarray  # int64, 0..2
    user_city: np.ndarray  # int64, Zipf over cities
    user_activity: np.ndarray  # float32, log-normal
    user_device: np.ndarray  # int64, preferred device (index into DEVICES)
    user_cdf: np.ndarray  # float64, cumulative Zipf popularity (impression share)
    user_z: np.ndarray  # float32 (users, k), latent taste
    user_eff_ctr: np.ndarray  # float64, user attribute effects on the CTR logit
    user_eff_cvr: np.ndarray  # float64, ... on the CVR logit
    hist_rate: np.ndarray  # float64, clicks per day feeding the behaviour sequence
    hist_days: np.ndarray  # float64, days of history before the window (account age)
    click_key: np.ndarray  # uint64, per-user key of the click-history hash stream
    conv_key: np.ndarray  # uint64, per-user key of the conversion-history hash stream
    click_cats: np.ndarray  # int32 (users, K), the user's top categories by CTR-side affinity
    click_cat_cdf: np.ndarray  # float32 (users, K), their cumulative softmax probabilities
    conv_cats: np.ndarray  # int32 (users, K), top categories by CVR-side affinity
    conv_cat_cdf: np.ndarray  # float32 (users, K)
    # --- creatives ---
    creative_advertiser: np.ndarray  # int64
    creative_campaign: np.ndarray  # int64
    creative_category: np.ndarray  # int64
    creative_format: np.ndarray  # int64, index into FORMATS
    creative_bid: np.ndarray  # float32, base bid
    creative_launch: np.ndarray  # float64, whole-day launch time in days from the window start (< days)
    creative_pop: np.ndarray  # float64, Zipf popularity (impression share among live creatives)
    creative_az: np.ndarray  # float32 (creatives, k), A z_i
    creative_bz: np.ndarray  # float32 (creatives, k), B z_i
    creative_eff_ctr: np.ndarray  # float64, creative effects on the CTR logit
    creative_eff_cvr: np.ndarray  # float64, ... on the CVR logit
    creative_quality: np.ndarray  # float64, standardised mean CTR logit of the creative (q_i)
    creative_exposure: np.ndarray  # float64, standardised log popularity
    creative_content: np.ndarray  # float32 (creatives, content_dim), content vectors; 0 where missing
    creative_content_missing: np.ndarray  # bool (creatives,), no content vector (null in the data)
    # --- categories, for the behaviour sequences ---
    cat_cdf: np.ndarray  # float64 (categories,), cumulative global category popularity
    cat_order: np.ndarray  # int64, creative ids sorted by category
    cat_cum: np.ndarray  # float64, cumulative popularity along cat_order
    cat_lo: np.ndarray  # float64 (categories,), cat_cum before the category's segment
    cat_mass: np.ndarray  # float64 (categories,), the category's total popularity
    cat_start: np.ndarray  # int64 (categories,), first index of the category in cat_order
    cat_end: np.ndarray  # int64 (categories,), one past its last index
    # --- context effects ---
    position_eff: np.ndarray  # float64 (10,), CTR position bias, decreasing in the slot
    position_cdf: np.ndarray  # float64 (10,), how often each slot is served
    hour_eff: np.ndarray  # float64 (24,), diurnal CTR effect
    device_eff_ctr: np.ndarray  # float64 (3,)
    device_eff_cvr: np.ndarray  # float64 (3,)
    wear_per_28_days: float  # CTR logit lost per 28 days of creative age
    ctr_bias: float = 0.0
    cvr_bias: float = 0.0

    @property
    def n_users(self) -> int:
        return len(self.user_age)

    @property
    def n_creatives(self) -> int:
        return len(self.creative_category)

    def with_biases(self, ctr_bias: float, cvr_bias: float) -> World:
        """This world with the calibrated CTR and CVR logit biases."""
        return dataclasses.replace(self, ctr_bias=float(ctr_bias), cvr_bias=float(cvr_bias))

    def ctr_logit(
        self,
        user: np.ndarray,
        creative: np.ndarray,
        position: np.ndarray,
        hour: np.ndarray,
        device: np.ndarray,
        age_days: np.ndarray,
    ) -> np.ndarray:
        """True click logit of each impression (float64): bias + <z_u, A z_i> + user, creative,
        device, hour and position effects - wear-out * creative age."""
        inter = np.einsum("ij,ij->i", self.user_z[user], self.creative_az[creative], dtype=np.float64)
        inter += self.ctr_bias
        inter += self.user_eff_ctr[user]
        inter += self.creative_eff_ctr[creative]
        inter += self.position_eff[position]
        inter += self.hour_eff[hour]
        inter += self.device_eff_ctr[device]
        inter -= self.wear_per_28_days / 28.0 * age_days
        return inter

    def cvr_logit(self, user: np.ndarray, creative: np.ndarray, device: np.ndarray) -> np.ndarray:
        """True logit of P(conversion | click) of each impression (float64): bias + <z_u, B z_i> + user,
        creative and device effects. The slot and hour matter for the click, not after it."""
        inter = np.einsum("ij,ij->i", self.user_z[user], self.creative_bz[creative], dtype=np.float64)
        inter += self.cvr_bias
        inter += self.user_eff_cvr[user]
        inter += self.creative_eff_cvr[creative]
        inter += self.device_eff_cvr[device]
        return inter

    def history(
        self, user: np.ndarray, day: int, kind: Literal["click", "conversion"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The behaviour sequence of each row's user at the start of `day`, newest first.

        Returns Arrow-style ``offsets`` (int32, len(user) + 1) and ``values`` (int64 creative ids).

        Each user has a stream of past events at ``hist_rate`` per day (conversions at a tenth of it)
        that began ``hist_days`` before the window; on day d the sequence is the newest
        ``min(max_len, n)`` of the ``n = floor(rate * (hist_days + d))`` events so far, so new or
        inactive users have short sequences and a sequence grows day by day. Event j's item is a pure
        function of (seed, user, j) through a counter-based hash: the same user has the same sequence
        on every row of a day, and yesterday's items shift one place back as new ones arrive.
        An item is drawn as: a category from the user's softmax affinity over category centroids
        (``<z_u, A c>`` for clicks, ``<z_u, B c>`` for conversions; the top categories, with a
        10% chance of a globally popular one instead), then a creative of that category by popularity.
        """
        # A user's sequence is the same on all their rows of the day: draw it once per distinct user
        # of the chunk (Zipf traffic repeats users many times), then copy it to each row.
        distinct, inverse = np.unique(user, return_inverse=True)
        u_offsets, u_items = self._distinct_history(distinct, day, kind)
        lengths = np.diff(u_offsets)[inverse]
        offsets = np.zeros(len(user) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        shift = np.repeat(u_offsets[:-1][inverse] - offsets[:-1], lengths)
        shift += np.arange(int(offsets[-1]), dtype=np.int64)
        return offsets.astype(np.int32), u_items[shift]

    def _distinct_history(
        self, user: np.ndarray, day: int, kind: Literal["click", "conversion"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`history` for distinct users: offsets (int64) and item ids (int64)."""
        cfg = self.cfg
        if kind == "click":
            max_len, rate_scale, key = cfg.click_seq_len, 1.0, self.click_key
            cats, cat_cdf = self.click_cats, self.click_cat_cdf
        else:
            max_len, rate_scale, key = cfg.conv_seq_len, 0.1, self.conv_key
            cats, cat_cdf = self.conv_cats, self.conv_cat_cdf
        n_events = np.floor(rate_scale * self.hist_rate[user] * (self.hist_days[user] + day)).astype(np.int64)
        lengths = np.minimum(n_events, max_len)
        offsets = np.zeros(len(user) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        row = np.repeat(np.arange(len(user), dtype=np.int64), lengths)
        slot = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[:-1][row]
        u = user[row]
        event = (n_events[row] - 1 - slot).astype(np.uint64)
        h = mix64(key[u] + event * _GOLDEN)
        u_cat = (h >> np.uint64(40)).astype(np.float64) * 2.0**-24
        u_mix = ((h >> np.uint64(32)) & np.uint64(0xFF)).astype(np.float64) * 2.0**-8
        u_item = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
        del h
        # category: the k-th of the user's top categories, k by inverse CDF over their K columns
        k = (u_cat[:, None] >= cat_cdf[u]).sum(axis=1)
        np.minimum(k, cats.shape[1] - 1, out=k)
        category = cats[u, k].astype(np.int64)
        explore = u_mix < _EXPLORE
        if explore.any():
            category[explore] = draw_from_cdf(self.cat_cdf, u_cat[explore])
        # creative: inverse CDF of popularity inside the category's segment of cat_order
        target = self.cat_lo[category] + u_item * self.cat_mass[category]
        idx = np.searchsorted(self.cat_cum, target, side="right")
        np.clip(idx, self.cat_start[category], self.cat_end[category] - 1, out=idx)
        return offsets, self.cat_order[idx]


def _top_categories(
    user_z: np.ndarray, centroid_mapped: np.ndarray, nonempty: np.ndarray, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top-K categories by affinity ``<z_u, M c>`` (M c given as `centroid_mapped`, shape
    (categories, k)) and the cumulative softmax probabilities (temperature 0.25) of those K,
    renormalised. Only categories holding creatives are eligible. Chunked over users: O(chunk x
    categories) memory whatever the number of users."""
    eligible = np.flatnonzero(nonempty)
    k_top = min(_TOP_CATEGORIES, len(eligible))
    m = centroid_mapped[eligible].T.astype(np.float32)  # (k, eligible)
    n = len(user_z)
    cats = np.empty((n, k_top), dtype=np.int32)
    cdf = np.empty((n, k_top), dtype=np.float32)
    for lo in range(0, n, chunk):
        aff = (user_z[lo : lo + chunk] @ m) / _AFFINITY_TEMPERATURE  # (chunk, eligible)
        rows = np.arange(len(aff))
        top = np.empty((len(aff), k_top), dtype=np.int64)
        a = np.empty((len(aff), k_top), dtype=np.float64)
        # K rounds of argmax, best first: several times faster than argpartition + argsort here
        for j in range(k_top):
            best = aff.argmax(axis=1)
            top[:, j] = best
            a[:, j] = aff[rows, best]
            aff[rows, best] = -np.inf
        p = np.exp(a - a[:, :1])
        c = np.cumsum(p, axis=1)
        c /= c[:, -1:]
        c[:, -1] = 1.0
        cats[lo : lo + chunk] = eligible[top]
        cdf[lo : lo + chunk] = c
    return cats, cdf


def _unit_interaction(
    a: np.ndarray, user_z: np.ndarray, item_z: np.ndarray, rng: np.random.Generator, n: int = 20_000
) -> np.ndarray:
    """`a` rescaled so <z_u, a z_i> has standard deviation 1 over random (user, creative) pairs."""
    u = rng.integers(0, len(user_z), n)
    i = rng.integers(0, len(item_z), n)
    sd = float(np.einsum("ij,ij->i", user_z[u], item_z[i] @ a.T).std())
    return a / (sd if sd > 0 else 1.0)


def _semi_orthogonal(g: np.ndarray) -> np.ndarray:
    """The orthogonal polar factor ``U V^T`` of `g` = ``U S V^T`` (thin SVD): orthonormal rows when
    `g` is wide, orthonormal columns when it is tall. Unique for a full-rank `g` (no sign choice)."""
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    return u @ vt


def content_vectors(
    attributes: list[np.ndarray],
    dim: int,
    signal: float,
    missing_rate: float,
    rng: np.random.Generator,
    chunk: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Content vectors of n creatives from their hidden `attributes` (arrays of n rows, 1-D or 2-D):
    ``(vectors float32 (n, dim), missing bool (n,))``.

    ``x_i`` = the attributes' columns side by side, each standardised over the creatives (p columns);
    ``s_i = x_i W`` with ``W`` (p x dim) the orthogonal polar factor of a standard Gaussian matrix (a
    random rotation onto ``dim`` dimensions: nothing is lost when ``dim >= p``), each of its ``dim``
    columns standardised over the creatives; then

        v_i = sqrt(signal) s_i + sqrt(1 - signal) eps_i,   eps_i ~ N(0, I_dim),

    so every dimension has mean 0, variance 1 and a share `signal` of it from the attributes. A
    creative is missing with probability `missing_rate` (its vector is zeros here, null in the data).

    Draw order from `rng`: the missing uniforms (n), W (p x dim), the noise (n x dim, by chunks of
    rows). Changing `signal` or `missing_rate` therefore changes nothing else: the same creatives get
    the same W and noise, and a lower rate's missing creatives are a subset of a higher rate's.
    Vectorised over chunks of creatives: O(n x dim) output plus O(chunk x p) working memory."""
    blocks = [np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in attributes]
    n = len(blocks[0])
    missing = rng.random(n) < missing_rate
    out = np.zeros((n, dim), dtype=np.float32)
    if dim == 0 or n == 0:
        return out, missing
    mean = np.concatenate([b.mean(axis=0) for b in blocks])
    sd = np.concatenate([b.std(axis=0) for b in blocks])
    sd[~(sd > 0)] = 1.0  # a constant column (e.g. a format no creative has) stays 0
    w = _semi_orthogonal(rng.standard_normal((len(mean), dim)))
    for lo in range(0, n, chunk):
        x = np.concatenate([b[lo : lo + chunk] for b in blocks], axis=1)
        x -= mean
        x /= sd
        out[lo : lo + chunk] = x @ w
    s_mean = out.mean(axis=0, dtype=np.float64)
    s_sd = out.std(axis=0, dtype=np.float64)
    s_sd[~(s_sd > 0)] = 1.0
    scale = (math.sqrt(signal) / s_sd).astype(np.float32)
    shift = (s_mean * math.sqrt(signal) / s_sd).astype(np.float32)
    noise_scale = np.float32(math.sqrt(1.0 - signal))
    for lo in range(0, n, chunk):
        part = out[lo : lo + chunk]
        part *= scale
        part -= shift
        part += noise_scale * rng.standard_normal(part.shape, dtype=np.float32)
    out[missing] = 0.0
    return out, missing


def build_world(cfg: SynthConfig) -> World:
    """Draw every entity of the world from `cfg.seed` (biases left at 0 for calibration)."""
    cfg.validate()
    k = cfg.latent_dim
    seed = cfg.seed

    # --- categories ---
    rng = world_rng(seed, 1)
    centroids = rng.standard_normal((cfg.categories, k))
    cat_pop = zipf_weights(cfg.categories, 0.9, rng)
    cat_eff_ctr = rng.normal(0.0, 0.3, cfg.categories)
    cat_eff_cvr = rng.normal(0.0, 0.3, cfg.categories)

    # --- advertisers and campaigns ---
    rng = world_rng(seed, 2)
    adv_pop = zipf_weights(cfg.advertisers, 1.0, rng)
    camp_adv = draw_from_cdf(cdf_of(adv_pop), rng.random(cfg.campaigns))
    camp_adv[: cfg.advertisers] = rng.permutation(cfg.advertisers)  # every advertiser runs a campaign
    camp_adv = camp_adv[rng.permutation(cfg.campaigns)]
    camp_cat = draw_from_cdf(cdf_of(cat_pop), rng.random(cfg.campaigns))
    adv_bid = rng.lognormal(0.0, 0.5, cfg.advertisers)

    # --- creatives ---
    rng = world_rng(seed, 3)
    n_c = cfg.creatives
    campaign = draw_from_cdf(cdf_of(zipf_weights(cfg.campaigns, 1.0, rng)), rng.random(n_c))
    category = np.where(
        rng.random(n_c) < 0.85, camp_cat[campaign], draw_from_cdf(cdf_of(cat_pop), rng.random(n_c))
    )
    fmt = draw_from_cdf(cdf_of(np.array([0.45, 0.25, 0.15, 0.15])), rng.random(n_c))
    item_z = math.sqrt(0.6) * centroids[category] + math.sqrt(0.4) * rng.standard_normal((n_c, k))
    creative_pop = zipf_weights(n_c, 1.0, rng)
    quality_ctr = rng.normal(0.0, 0.3, n_c)
    quality_cvr = rng.normal(0.0, 0.3, n_c)
    bid = (adv_bid[camp_adv[campaign]] * rng.lognormal(0.0, 0.3, n_c)).astype(np.float32)
    in_window = rng.random(n_c) < cfg.launch_in_window_frac
    # whole days (floor): in-window launches on days 0..days-1, earlier ones on days -1..-ceil(pre)
    launch = np.floor(
        np.where(in_window, rng.random(n_c) * cfg.days, -rng.random(n_c) * cfg.pre_window_days)
    ).astype(np.float64)

    # --- users ---
    rng = world_rng(seed, 4)
    n_u = cfg.users
    age = draw_from_cdf(cdf_of(np.array([0.05, 0.15, 0.22, 0.2, 0.15, 0.11, 0.08, 0.04])), rng.random(n_u))
    gender = draw_from_cdf(cdf_of(np.array([0.48, 0.48, 0.04])), rng.random(n_u))
    city = draw_from_cdf(cdf_of(zipf_weights(cfg.cities, 1.0, rng)), rng.random(n_u))
    activity = rng.lognormal(0.0, 0.8, n_u).astype(np.float32)
    device = draw_from_cdf(cdf_of(np.array([0.45, 0.4, 0.15])), rng.random(n_u))
    user_cdf = cdf_of(zipf_weights(n_u, 0.8, rng))
    taste_mean = rng.normal(0.0, 0.5, k)
    user_z = (taste_mean + rng.standard_normal((n_u, k))).astype(np.float32)
    hist_rate = 0.5 * activity.astype(np.float64)
    hist_days = rng.exponential(40.0, n_u)
    keys = rng.integers(0, 2**63, 2, dtype=np.int64).astype(np.uint64)
    ids = np.arange(n_u, dtype=np.uint64) * _GOLDEN
    click_key = mix64(ids ^ keys[0])
    conv_key = mix64(ids ^ keys[1])
    age_eff = rng.normal(0.0, 0.2, (2, N_AGE_BUCKETS))
    gender_eff = rng.normal(0.0, 0.1, (2, N_GENDERS))
    city_eff = rng.normal(0.0, 0.15, (2, cfg.cities))
    log_act = np.log(activity.astype(np.float64))
    user_eff_ctr = age_eff[0][age] + gender_eff[0][gender] + city_eff[0][city] + 0.15 * log_act
    user_eff_cvr = age_eff[1][age] + gender_eff[1][gender] + city_eff[1][city] + 0.1 * log_act

    # --- the interaction matrices: A for CTR, B = rho A + sqrt(1 - rho^2) A' for CVR ---
    rng = world_rng(seed, 5)
    a_unit = _unit_interaction(rng.standard_normal((k, k)), user_z, item_z, rng)
    a_prime = _unit_interaction(rng.standard_normal((k, k)), user_z, item_z, rng)
    a = 0.9 * a_unit
    b = 0.9 * (cfg.rho * a_unit + math.sqrt(max(0.0, 1.0 - cfg.rho**2)) * a_prime)
    az = (item_z @ a.T).astype(np.float32)
    bz = (item_z @ b.T).astype(np.float32)

    fmt_eff_ctr = np.array([0.0, 0.25, 0.1, -0.3])
    fmt_eff_cvr = np.array([0.0, -0.1, 0.15, 0.05])
    creative_eff_ctr = cat_eff_ctr[category] + fmt_eff_ctr[fmt] + quality_ctr
    creative_eff_cvr = cat_eff_cvr[category] + fmt_eff_cvr[fmt] + quality_cvr
    # q_i: the creative's mean CTR logit over the user population (the interaction term averages to
    # <z_bar, A z_i> because it is linear in z_u), standardised; low q means early cut-out.
    weights_u = np.diff(user_cdf, prepend=0.0)
    z_bar = weights_u @ user_z.astype(np.float64)
    quality = _standardise(creative_eff_ctr + az.astype(np.float64) @ z_bar)
    exposure = _standardise(np.log(creative_pop))
    # the content vector: what the creative's image/text shows of its hidden attributes (the ones
    # behind its CTR and CVR, and the q_i and e_i of its discontinuation hazard), from its own stream
    content, content_missing = content_vectors(
        [
            item_z,
            np.eye(len(FORMATS))[fmt],
            cat_eff_ctr[category],
            cat_eff_cvr[category],
            quality_ctr,
            quality_cvr,
            quality,
            exposure,
        ],
        cfg.content_dim,
        cfg.content_signal,
        cfg.content_missing_rate,
        world_rng(seed, CONTENT_PART),
    )

    # --- categories for the behaviour sequences ---
    counts = np.bincount(category, minlength=cfg.categories)
    nonempty = counts > 0
    order = np.argsort(category, kind="stable").astype(np.int64)
    cum = np.cumsum(creative_pop[order])
    cat_end = np.cumsum(counts).astype(np.int64)
    cat_start = cat_end - counts
    cat_lo = np.concatenate([[0.0], cum])[cat_start]
    cat_mass = np.bincount(category, weights=creative_pop, minlength=cfg.categories)
    click_cats, click_cdf = _top_categories(user_z, math.sqrt(0.6) * centroids @ a.T, nonempty)
    conv_cats, conv_cdf = _top_categories(user_z, math.sqrt(0.6) * centroids @ b.T, nonempty)

    positions = np.arange(N_POSITIONS, dtype=np.float64)
    hours = np.arange(N_HOURS, dtype=np.float64)
    return World(
        cfg=cfg,
        user_age=age,
        user_gender=gender,
        user_city=city,
        user_activity=activity,
        user_device=device,
        user_cdf=user_cdf,
        user_z=user_z,
        user_eff_ctr=user_eff_ctr,
        user_eff_cvr=user_eff_cvr,
        hist_rate=hist_rate,
        hist_days=hist_days,
        click_key=click_key,
        conv_key=conv_key,
        click_cats=click_cats,
        click_cat_cdf=click_cdf,
        conv_cats=conv_cats,
        conv_cat_cdf=conv_cdf,
        creative_advertiser=camp_adv[campaign],
        creative_campaign=campaign,
        creative_category=category,
        creative_format=fmt,
        creative_bid=bid,
        creative_launch=launch,
        creative_pop=creative_pop,
        creative_az=az,
        creative_bz=bz,
        creative_eff_ctr=creative_eff_ctr,
        creative_eff_cvr=creative_eff_cvr,
        creative_quality=quality,
        creative_exposure=exposure,
        creative_content=content,
        creative_content_missing=content_missing,
        cat_cdf=cdf_of(cat_mass),
        cat_order=order,
        cat_cum=cum,
        cat_lo=cat_lo,
        cat_mass=cat_mass,
        cat_start=cat_start,
        cat_end=cat_end,
        position_eff=-np.log1p(0.5 * positions),
        position_cdf=cdf_of(np.exp(-0.15 * positions)),
        hour_eff=0.2 * np.sin(2.0 * np.pi * (hours - 9.0) / 24.0),
        device_eff_ctr=np.array([0.1, 0.0, -0.2]),
        device_eff_cvr=np.array([0.0, -0.1, 0.3]),
        wear_per_28_days=0.15,
    )
