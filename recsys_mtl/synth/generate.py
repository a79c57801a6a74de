"""The streaming writer: impressions drawn from the synthetic world, written as day-partitioned Parquet
``OUT/dt=YYYY-MM-DD/part-NNNNN.parquet`` with the columns of `SCHEMA`.

How a run goes:

1. build the world (O(vocabulary)), draw creative lifetimes, calibrate the CTR and CVR biases on a
   sample of impressions so the mean CTR and conversion rate hit their targets;
2. pass 1: draw only the impression core (user, creative, time, slot, device, click) of every chunk to
   count impressions and clicks per creative and rows and clicks per survival subject (creative,
   day), which `hazard_weight` needs before any row is written (and the creative statistics after
   each day);
3. pass 2: draw each chunk in full (the core again, from the same RNG stream, so it is identical to
   pass 1's; then conversions, features, sequences, labels, oracles) and stream it to Parquet.

Creative statistics (`CreativeStats`): each row carries its creative's mean impressions per day and
its smoothed CTR over the days *before* the row's day, as an ads system's daily statistics job would
serve them: no look-ahead, so they are legitimate features at serving time. They are what lets a
model predict the discontinuation hazard of a creative it has not seen stop (the true hazard rises
with exposure and falls with CTR quality), instead of memorising stop times through the creative id.

Content vectors: each row carries its creative's content vector (`creative_content`,
``fixed_size_list<float32>[content_dim]``, null for the seeded `content_missing_rate` of creatives
without one; no column when ``content_dim`` is 0), what an image/text encoder would store per
creative (`world.content_vectors`). It is taken from the world's per-creative matrix and draws
nothing from the chunk streams, so every other column is the same with or without it.

Survival labels belong to a subject, one creative on one day (`lifetimes.py`): every row of creative
i on day d carries the subject id ``hazard_subject = i * SUBJECT_DAY_STRIDE + d`` (unique for any
vocabulary, `world.SUBJECT_DAY_STRIDE`), the residual-lifetime labels from the start of day d and the
true conditional hazards from there (computed once per distinct subject of a chunk, then copied to
its rows). A subject's rows share its weight: ``hazard_weight`` of a row is the subject's CTR weight
(`ctr_weights`) divided by the subject's rows, so each subject counts once.

Every chunk's randomness is a pure function of (seed, day, chunk): its core comes from
``default_rng([seed, day, chunk, 1])``, the rest from ``[seed, day, chunk, 2]``, the behaviour
sequences from a counter-based hash of (seed, user, event). Memory is flat in the number of rows: one
chunk (`chunk_rows`, 200k by default) is in flight at a time. The run writes into a hidden temporary
directory beside the output and renames it into place at the end, so a crash leaves no half-written
output.

The generator's model, equation by equation: (docs/METHODS.md, "Synthetic data").
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys_mtl.synth.lifetimes import (
    LONG_INTERVALS,
    SHORT_INTERVALS,
    HazardParams,
    Lifetimes,
    ctr_weights,
    draw_lifetimes,
)
from recsys_mtl.synth.world import (
    DEVICES,
    FORMATS,
    N_HOURS,
    SUBJECT_DAY_STRIDE,
    SynthConfig,
    World,
    build_world,
    draw_from_cdf,
    sigmoid,
    world_rng,
)

logger = logging.getLogger(__name__)

# RNG streams of a chunk: default_rng([seed, day, chunk, stream])
CORE_STREAM = 1
REST_STREAM = 2
# world_rng parts used here (world.py uses 1..5 and CONTENT_PART = 8)
_LIFETIME_PART = 6
_CALIBRATION_PART = 7
_CALIBRATION_ROWS = 100_000
_ACTIVITY_NULL_RATE = 0.01
_OTHER_DEVICE_RATE = 0.15
METADATA_FILE = "_synth.json"  # '_' prefix: Parquet dataset readers skip it

_BASE_SCHEMA = pa.schema(
    [
        # --- features ---
        ("user_id", pa.int64()),
        ("user_age_bucket", pa.int64()),
        ("user_gender", pa.int64()),
        ("user_city", pa.int64()),
        ("user_activity", pa.float32()),
        ("clicked_items", pa.list_(pa.int64())),
        ("converted_items", pa.list_(pa.int64())),
        ("creative_id", pa.int64()),
        ("advertiser_id", pa.int64()),
        ("campaign_id", pa.int64()),
        ("category_id", pa.int64()),
        ("format", pa.string()),
        ("creative_age_days", pa.float32()),
        ("bid_price", pa.float32()),
        ("creative_daily_impressions", pa.float32()),  # `CreativeStats`: before this day only
        ("creative_ctr_to_date", pa.float32()),
        ("position", pa.int64()),
        ("hour", pa.int64()),
        ("device", pa.string()),
        # --- labels ---
        ("click", pa.int8()),
        ("conversion", pa.int8()),
        ("hazard_subject", pa.int64()),  # the survival subject: creative_id * 100_000 + day index
        ("hazard_short_interval", pa.int16()),
        ("hazard_short_event", pa.int8()),
        ("hazard_long_interval", pa.int16()),
        ("hazard_long_event", pa.int8()),
        ("hazard_weight", pa.float32()),
        # --- oracle: true values, never features ---
        ("oracle_ctr", pa.float32()),
        ("oracle_cvr", pa.float32()),
        ("oracle_ctcvr", pa.float32()),
        ("oracle_hazard_short", pa.list_(pa.float32())),
        ("oracle_hazard_long", pa.list_(pa.float32())),
        ("oracle_risk_short", pa.float32()),
        ("oracle_risk_long", pa.float32()),
    ]
)
CONTENT_COLUMN = "creative_content"
_CONTENT_AFTER = "creative_ctr_to_date"  # the content column follows the creative features


@functools.cache
def synth_schema(content_dim: int) -> pa.Schema:
    """The columns written with `content_dim` (`SynthConfig.content_dim`): `creative_content`, a
    ``fixed_size_list<float32>[content_dim]``, after the creative features; none when it is 0."""
    if content_dim == 0:
        return _BASE_SCHEMA
    at = _BASE_SCHEMA.get_field_index(_CONTENT_AFTER) + 1
    return _BASE_SCHEMA.insert(at, pa.field(CONTENT_COLUMN, pa.list_(pa.float32(), content_dim)))


SCHEMA = synth_schema(SynthConfig().content_dim)
"""The columns of the default config (a `creative_content` of 32 floats); `synth_schema` for others."""


def _is_float_values(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_floating(t)


@functools.cache
def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode the id, string, small-int label and sequence columns (few distinct values, or
    values repeated across rows); not the float columns and float lists, where it costs time and saves
    nothing. With zstd this writes about 3x faster than pyarrow's defaults at about the same size."""
    return [f.name for f in schema if not _is_float_values(f.type)]


_FORMAT_VALUES = pa.array(FORMATS, pa.string())
_DEVICE_VALUES = pa.array(DEVICES, pa.string())


class OutputExistsError(FileExistsError):
    """The output directory exists and is not empty, and overwriting was not asked for."""


# --------------------------------------------------------------------------------------------
# impressions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayPlan:
    """Which creatives run on one day, and when: the impression distribution over creatives."""

    day: int
    a0: np.ndarray  # float64, each creative's age at the start of the day (whole days; < 0: not launched)
    span: np.ndarray  # float64, the part of the day it runs, from the day's start (0: not running)
    cdf: np.ndarray  # float64, cumulative impression share: popularity x running time that day


def day_plan(world: World, life: Lifetimes, day: int) -> DayPlan:
    """Creatives running at the start of day `day` (launched by then, whole-day launches, and not
    yet stopped: ``a0 >= 0`` and ``T > a0``), each shown in proportion to its popularity times the
    part of the day it runs, ``min(T - a0, 1)`` from the day's start. These are exactly the
    survival subjects of the day (lifetimes.py)."""
    a0 = float(day) - world.creative_launch
    running = (a0 >= 0.0) & (life.lifetime > a0)
    span = np.where(running, np.minimum(life.lifetime - a0, 1.0), 0.0)
    weight = world.creative_pop * span
    if not weight.any():
        raise ValueError(f"no creative runs on day {day}: raise --creatives or lower --days")
    cdf = np.cumsum(weight)
    cdf /= cdf[-1]  # creatives not running have zero width: searchsorted "right" never lands on them
    return DayPlan(day=day, a0=a0, span=span, cdf=cdf)


@dataclass(frozen=True)
class Core:
    """The impression core of a chunk: what clicks depend on, drawn from the chunk's core stream only,
    so the counting pass and the writing pass see the same impressions."""

    user: np.ndarray  # int64
    creative: np.ndarray  # int64
    age_days: np.ndarray  # float64, creative age at the impression
    position: np.ndarray  # int64
    hour: np.ndarray  # int64
    device: np.ndarray  # int64
    ctr_logit: np.ndarray  # float64
    click: np.ndarray  # bool


def draw_core(world: World, plan: DayPlan, rng: np.random.Generator, n: int) -> Core:
    """Draw `n` impressions of day `plan.day`: a user by Zipf popularity, a running creative by the
    day's impression share, a time uniform over the creative's running part of the day (giving the
    hour and the creative's age), a slot, a device (the user's usual one, 15% of the time another),
    and the click ~ Bernoulli(true CTR). The draw order is fixed: it defines the data."""
    user = draw_from_cdf(world.user_cdf, rng.random(n))
    creative = np.searchsorted(plan.cdf, rng.random(n), side="right").astype(np.int64)
    np.minimum(creative, len(plan.cdf) - 1, out=creative)
    offset = rng.random(n) * plan.span[creative]  # time of day, in days from its start
    hour = np.clip(np.floor(offset * N_HOURS).astype(np.int64), 0, N_HOURS - 1)
    age_days = plan.a0[creative] + offset
    position = draw_from_cdf(world.position_cdf, rng.random(n))
    other = rng.random(n) < _OTHER_DEVICE_RATE
    device = np.where(other, rng.integers(0, len(DEVICES), n), world.user_device[user])
    logit = world.ctr_logit(user, creative, position, hour, device, age_days)
    click = rng.random(n) < sigmoid(logit)
    return Core(user, creative, age_days, position, hour, device, logit, click)


def _solve_bias(target: float, mean_at: Callable[[float], float]) -> float:
    """The b in [-30, 30] with mean_at(b) = target, by bisection (mean_at increases in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if mean_at(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def calibrate(world: World, life: Lifetimes, cfg: SynthConfig) -> World:
    """Set the CTR bias so the mean true CTR of impressions is `cfg.ctr`, and the CVR bias so the mean
    true P(conversion | click) over clicks is `cfg.conversion_rate` (unless `cfg.cvr_bias` fixes it),
    measured on a sample of impressions spread evenly over the days, from its own RNG stream."""
    world = world.with_biases(0.0, 0.0)
    rng = world_rng(cfg.seed, _CALIBRATION_PART)
    per_day = max(200, _CALIBRATION_ROWS // cfg.days)
    ctr_parts, cvr_parts = [], []
    for day in range(cfg.days):
        core = draw_core(world, day_plan(world, life, day), rng, per_day)
        ctr_parts.append(core.ctr_logit)
        cvr_parts.append(world.cvr_logit(core.user, core.creative, core.device))
    s, v = np.concatenate(ctr_parts), np.concatenate(cvr_parts)
    ctr_bias = _solve_bias(cfg.ctr, lambda b: float(sigmoid(s + b).mean()))
    if cfg.cvr_bias is not None:
        return world.with_biases(ctr_bias, cfg.cvr_bias)
    p_click = sigmoid(s + ctr_bias)
    cvr_bias = _solve_bias(
        cfg.conversion_rate, lambda b: float((p_click * sigmoid(v + b)).sum() / p_click.sum())
    )
    return world.with_biases(ctr_bias, cvr_bias)


def chunk_sizes(cfg: SynthConfig, day: int) -> list[int]:
    """Rows of each chunk of day `day`: `chunk_rows` each, the last one the remainder."""
    n = cfg.rows_on_day(day)
    sizes = [cfg.chunk_rows] * (n // cfg.chunk_rows)
    if n % cfg.chunk_rows:
        sizes.append(n % cfg.chunk_rows)
    return sizes


def chunk_rng(cfg: SynthConfig, day: int, chunk: int, stream: int) -> np.random.Generator:
    """The RNG of one stream of one chunk: a pure function of (seed, day, chunk, stream)."""
    return np.random.default_rng([cfg.seed, day, chunk, stream])


@dataclass(frozen=True)
class Counts:
    """Pass 1's counts: impressions and clicks per creative over the whole dataset (int64, indexed by
    creative id), and the rows of each survival subject, per day: the creatives shown that day
    (sorted) and their rows. Memory O(creatives + subjects), never a dense creatives x days array."""

    impressions: np.ndarray
    clicks: np.ndarray
    shown: list[np.ndarray]  # int32 where the ids fit
    subject_rows: list[np.ndarray]  # int32 where the counts fit
    subject_clicks: list[np.ndarray]  # the clicks of the same subjects, same type

    def rows_on_day(self, day: int, n_creatives: int) -> np.ndarray:
        """Rows of each creative's subject on day `day` (int64, indexed by creative id; 0: none)."""
        rows = np.zeros(n_creatives, dtype=np.int64)
        rows[self.shown[day]] = self.subject_rows[day]
        return rows


def count_impressions(world: World, life: Lifetimes, cfg: SynthConfig) -> Counts:
    """Pass 1: impressions and clicks per creative and rows per (creative, day), from the core streams
    alone, which are cheap to draw."""
    impressions = np.zeros(world.n_creatives, dtype=np.int64)
    clicks = np.zeros(world.n_creatives, dtype=np.int64)
    shown: list[np.ndarray] = []
    subject_rows: list[np.ndarray] = []
    subject_clicks: list[np.ndarray] = []
    # the per-day lists are what grows with days x creatives: half the memory in int32
    int32_max = np.iinfo(np.int32).max
    id_type = np.int32 if world.n_creatives <= int32_max else np.int64
    row_type = np.int32 if cfg.rows_on_day(0) <= int32_max else np.int64
    for day in range(cfg.days):
        plan = day_plan(world, life, day)
        on_day = np.zeros(world.n_creatives, dtype=np.int64)
        clicks_on_day = np.zeros(world.n_creatives, dtype=np.int64)
        for chunk, n in enumerate(chunk_sizes(cfg, day)):
            core = draw_core(world, plan, chunk_rng(cfg, day, chunk, CORE_STREAM), n)
            on_day += np.bincount(core.creative, minlength=world.n_creatives)
            clicks_on_day += np.bincount(core.creative[core.click], minlength=world.n_creatives)
        impressions += on_day
        clicks += clicks_on_day
        ids = np.flatnonzero(on_day)
        shown.append(ids.astype(id_type))
        subject_rows.append(on_day[ids].astype(row_type))
        subject_clicks.append(clicks_on_day[ids].astype(row_type))
    return Counts(impressions, clicks, shown, subject_rows, subject_clicks)


# prior weight (in impressions) of the smoothed CTR: a creative's first hundred impressions move
# its `creative_ctr_to_date` about half way from the dataset's target CTR to its own
CTR_PRIOR_IMPRESSIONS = 100.0


@dataclass
class CreativeStats:
    """Each creative's statistics over the days before the current one (float64 arrays indexed by
    creative id), advanced a day at a time by `advance`:

    - ``daily_impressions``: mean impressions per day over the earlier days it was shown; 0 before
      its first day (a new creative, or any creative on the data's first day: the window has no
      earlier history);
    - ``ctr_to_date``: ``(clicks + m * ctr) / (impressions + m)`` over those days, the dataset's
      target CTR ``ctr`` before any impression, ``m = CTR_PRIOR_IMPRESSIONS``.
    """

    impressions: np.ndarray
    clicks: np.ndarray
    days_shown: np.ndarray
    prior_ctr: float

    @classmethod
    def empty(cls, n_creatives: int, prior_ctr: float) -> CreativeStats:
        zeros = np.zeros(n_creatives, dtype=np.float64)
        return cls(zeros, zeros.copy(), zeros.copy(), prior_ctr)

    def daily_impressions(self) -> np.ndarray:
        return np.where(self.days_shown > 0, self.impressions / np.maximum(self.days_shown, 1.0), 0.0)

    def ctr_to_date(self) -> np.ndarray:
        m = CTR_PRIOR_IMPRESSIONS
        return (self.clicks + m * self.prior_ctr) / (self.impressions + m)

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """(daily_impressions, ctr_to_date) as float32, indexed by creative id: computed once per
        day, then taken per row by every chunk of the day."""
        return self.daily_impressions().astype(np.float32), self.ctr_to_date().astype(np.float32)

    def advance(self, counts: Counts, day: int) -> None:
        """Add day `day`'s impressions and clicks (pass 1's counts)."""
        ids = counts.shown[day]
        self.impressions[ids] += counts.subject_rows[day]
        self.clicks[ids] += counts.subject_clicks[day]
        self.days_shown[ids] += 1.0


def subject_weights(counts: Counts, subject_weight: np.ndarray, day: int) -> np.ndarray:
    """`hazard_weight` of a row of each creative on day `day` (float64, indexed by creative id): its
    subject's weight over the subject's rows, so the rows of a subject sum to its weight."""
    rows = counts.rows_on_day(day, len(subject_weight))
    return np.where(rows > 0, subject_weight / np.maximum(rows, 1), 0.0)


def subject_ids(creative: np.ndarray, day: int) -> np.ndarray:
    """`hazard_subject` of rows of `creative` on day `day`: ``creative * SUBJECT_DAY_STRIDE + day``."""
    return creative * SUBJECT_DAY_STRIDE + day


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, value_type))


def _fixed_lists(matrix: np.ndarray) -> pa.Array:
    """A (rows, width) float32 matrix as a list<float32> column."""
    rows, width = matrix.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
    return _list_array(offsets, matrix.ravel(), pa.float32())


def _content_array(world: World, creative: np.ndarray) -> pa.Array:
    """The `creative_content` column of rows of `creative`: a numpy take of the per-creative matrix
    into one flat float32 buffer, null where the creative has no vector."""
    matrix = world.creative_content
    values = matrix.take(creative, axis=0).reshape(-1)
    missing = world.creative_content_missing.take(creative)
    mask = pa.array(missing) if missing.any() else None
    return pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), matrix.shape[1], mask=mask)


def chunk_table(
    world: World,
    life: Lifetimes,
    row_weight: np.ndarray,
    stats: tuple[np.ndarray, np.ndarray],
    plan: DayPlan,
    cfg: SynthConfig,
    chunk: int,
    n: int,
) -> pa.Table:
    """Pass 2: chunk `chunk` of day `plan.day` in full, as an Arrow table with
    ``synth_schema(cfg.content_dim)``.
    `row_weight` is `subject_weights` of the day, `stats` the creatives' statistics before it
    (`CreativeStats.columns`)."""
    day = plan.day
    core = draw_core(world, plan, chunk_rng(cfg, day, chunk, CORE_STREAM), n)
    rng = chunk_rng(cfg, day, chunk, REST_STREAM)
    u, i = core.user, core.creative
    # a chunk lies within one day: its distinct creatives are its distinct survival subjects
    distinct, inverse = np.unique(i, return_inverse=True)
    sub = life.subjects(distinct, plan.a0[distinct]).take(inverse)
    ctr = sigmoid(core.ctr_logit).astype(np.float32)
    cvr = sigmoid(world.cvr_logit(u, i, core.device)).astype(np.float32)
    conversion = core.click & (rng.random(n) < cvr)
    bid = world.creative_bid[i] * np.exp(0.1 * rng.standard_normal(n, dtype=np.float32))
    activity_null = rng.random(n) < _ACTIVITY_NULL_RATE
    click_offsets, click_items = world.history(u, day, "click")
    conv_offsets, conv_items = world.history(u, day, "conversion")
    columns = [
        pa.array(u),
        pa.array(world.user_age[u]),
        pa.array(world.user_gender[u]),
        pa.array(world.user_city[u]),
        pa.array(world.user_activity[u], pa.float32(), mask=activity_null),
        _list_array(click_offsets, click_items, pa.int64()),
        _list_array(conv_offsets, conv_items, pa.int64()),
        pa.array(i),
        pa.array(world.creative_advertiser[i]),
        pa.array(world.creative_campaign[i]),
        pa.array(world.creative_category[i]),
        _FORMAT_VALUES.take(pa.array(world.creative_format[i])),
        pa.array(core.age_days.astype(np.float32)),
        pa.array(bid.astype(np.float32)),
        pa.array(stats[0][i]),
        pa.array(stats[1][i]),
        *([_content_array(world, i)] if cfg.content_dim > 0 else []),
        pa.array(core.position),
        pa.array(core.hour),
        _DEVICE_VALUES.take(pa.array(core.device)),
        pa.array(core.click.astype(np.int8)),
        pa.array(conversion.astype(np.int8)),
        pa.array(subject_ids(i, day)),
        pa.array(sub.short_interval),
        pa.array(sub.short_event),
        pa.array(sub.long_interval),
        pa.array(sub.long_event),
        pa.array(row_weight[i].astype(np.float32)),
        pa.array(ctr),
        pa.array(cvr),
        pa.array((ctr.astype(np.float64) * cvr).astype(np.float32)),
        _fixed_lists(sub.oracle_short),
        _fixed_lists(sub.oracle_long),
        pa.array(sub.risk_short),
        pa.array(sub.risk_long),
    ]
    return pa.Table.from_arrays(columns, schema=synth_schema(cfg.content_dim))


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


class _PartWriter:
    """Writes one day's tables into part-00000.parquet, part-00001.parquet, ... of at most
    `rows_per_file` rows each (one row group per chunk, split at file boundaries)."""

    def __init__(self, day_dir: Path, rows_per_file: int, schema: pa.Schema) -> None:
        self.day_dir = day_dir
        self.rows_per_file = rows_per_file
        self.schema = schema
        self.files: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def write(self, table: pa.Table, close: bool = False) -> None:
        """Append `table`, rolling to a new file at `rows_per_file`; then close the file if `close`."""
        while table.num_rows:
            if self._writer is None:
                path = self.day_dir / f"part-{len(self.files):05d}.parquet"
                self._writer = pq.ParquetWriter(
                    path, self.schema, compression="zstd", use_dictionary=_dictionary_columns(self.schema)
                )
                self.files.append(path)
                self._rows_in_file = 0
            piece = table.slice(0, self.rows_per_file - self._rows_in_file)
            self._writer.write_table(piece)
            self._rows_in_file += piece.num_rows
            table = table.slice(piece.num_rows)
            if self._rows_in_file >= self.rows_per_file:
                self.close()
        if close:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or a non-empty directory unless `overwrite`. Even with
    `overwrite`, refuse a directory holding anything but ``dt=*`` partitions and ``_``/``.`` files:
    a mistyped ``--out ~ --overwrite`` must not delete a home directory."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory")
    if not _is_nonempty_dir(out):
        return
    if not overwrite:
        raise OutputExistsError(f"{out} is not empty; pass --overwrite to replace it")
    foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(("dt=", "_", ".")))
    if foreign:
        raise OutputExistsError(
            f"{out} holds {foreign[:3]} besides dt=* partitions; not replacing it even with "
            "--overwrite, remove it yourself"
        )


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished `tmp` directory to `out`, replacing an old `out` only when `overwrite`."""
    check_output(out, overwrite)
    if _is_nonempty_dir(out):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)  # an empty directory is replaced atomically


def _dates(cfg: SynthConfig) -> Iterator[tuple[int, str]]:
    """(day index, ISO date) of every generated day."""
    for day in range(cfg.days):
        yield day, (cfg.start + dt.timedelta(days=day)).isoformat()


class _Pipeline:
    """One background thread that runs file writes in submission order, at most one behind the main
    thread: Parquet encoding (C++, GIL released) overlaps with drawing the next chunk, memory stays at
    two chunks, and an error in a write surfaces at the next `submit` or at `drain`."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer")
        self._pending: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self.drain()
        self._pending = self._pool.submit(fn, *args)

    def drain(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)


def _write_days(
    world: World,
    life: Lifetimes,
    counts: Counts,
    subject_weight: np.ndarray,
    cfg: SynthConfig,
    root: Path,
    progress: bool,
) -> tuple[int, int, int]:
    """Pass 2 over every day and chunk into `root`; returns (files, clicks, conversions)."""
    n_click = n_conv = 0
    writers: list[_PartWriter] = []
    bar = tqdm(
        total=cfg.rows,
        unit="rows",
        unit_scale=True,
        desc="generate",
        disable=not progress or not sys.stderr.isatty(),
    )
    pipeline = _Pipeline()
    stats = CreativeStats.empty(world.n_creatives, cfg.ctr)
    try:
        for day, date in _dates(cfg):
            day_dir = root / f"dt={date}"
            day_dir.mkdir()
            plan = day_plan(world, life, day)
            row_weight = subject_weights(counts, subject_weight, day)
            day_stats = stats.columns()
            writer = _PartWriter(day_dir, cfg.rows_per_file, synth_schema(cfg.content_dim))
            writers.append(writer)
            sizes = chunk_sizes(cfg, day)
            for chunk, n in enumerate(sizes):
                table = chunk_table(world, life, row_weight, day_stats, plan, cfg, chunk, n)
                n_click += int(np.count_nonzero(table["click"].to_numpy()))
                n_conv += int(np.count_nonzero(table["conversion"].to_numpy()))
                # the day's last chunk closes its file in the same job, so the next day's drawing
                # overlaps with both
                pipeline.submit(writer.write, table, chunk == len(sizes) - 1)
                bar.update(n)
            stats.advance(counts, day)
    finally:
        pipeline.close()
        bar.close()
    return sum(len(w.files) for w in writers), n_click, n_conv


def _event_rates(world: World, life: Lifetimes, counts: Counts) -> tuple[int, float, float]:
    """(subjects, short-grid event rate, long-grid event rate) over every survival subject with rows,
    one day at a time."""
    n = short = long = 0
    for day, creative in enumerate(counts.shown):
        labels = life.labels(creative, day - world.creative_launch[creative])
        n += len(creative)
        short += int(np.count_nonzero(labels[1]))
        long += int(np.count_nonzero(labels[3]))
    return n, short / max(n, 1), long / max(n, 1)


def generate(
    cfg: SynthConfig, out: Path | str, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Write the synthetic dataset of `cfg` to `out` (``out/dt=YYYY-MM-DD/part-NNNNN.parquet`` plus
    ``out/_synth.json`` with the config and the calibrated world). Refuses a non-empty `out` unless
    `overwrite` (OutputExistsError, before any work). Returns a summary: rows, days, files, seconds,
    rows_per_second, the label rates, and the survival subjects with their event rates per grid."""
    cfg.validate()
    out = Path(os.path.abspath(out))  # a name and a parent even for "." (symlinks kept)
    check_output(out, overwrite)
    t0 = time.perf_counter()
    world = build_world(cfg)
    life = draw_lifetimes(
        world.creative_quality,
        world.creative_exposure,
        world.creative_launch,
        float(cfg.days) + cfg.label_follow_up_days,
        HazardParams.from_config(cfg),
        world_rng(cfg.seed, _LIFETIME_PART),
    )
    world = calibrate(world, life, cfg)
    counts = count_impressions(world, life, cfg)
    subject_weight = ctr_weights(counts.impressions, counts.clicks, cfg.hazard_weight_alpha)
    logger.debug("world, lifetimes and pass 1 in %.1fs", time.perf_counter() - t0)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        files, n_click, n_conv = _write_days(world, life, counts, subject_weight, cfg, tmp, progress)
        subjects, short_rate, long_rate = _event_rates(world, life, counts)
        stats = {
            "rows": cfg.rows,
            "days": cfg.days,
            "files": files,
            "ctr": n_click / cfg.rows,
            "cvr": n_conv / max(n_click, 1),
            "creatives_shown": int(np.count_nonzero(counts.impressions)),
            "subjects": subjects,
            "short_event_rate": short_rate,
            "long_event_rate": long_rate,
        }
        meta = {
            "config": asdict(cfg),
            "ctr_bias": world.ctr_bias,
            "cvr_bias": world.cvr_bias,
            "grids": {"short_days": SHORT_INTERVALS, "long_weeks": LONG_INTERVALS},
            "hazard_subject": f"creative_id * {SUBJECT_DAY_STRIDE} + day index (0-based)",
            "stats": stats,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    summary = {**stats, "out": str(out), "seconds": round(seconds, 3), "rows_per_second": cfg.rows / seconds}
    logger.info(
        "wrote %d rows over %d days in %d files to %s in %.1fs (%.0f rows/s); CTR %.4f, CVR %.4f",
        cfg.rows,
        cfg.days,
        files,
        out,
        seconds,
        cfg.rows / seconds,
        stats["ctr"],
        stats["cvr"],
    )
    return summary
