"""Task targets from label columns: what the losses and metrics compare predictions against.

Per task (recipe order):
- binary: `labels[t]` float 0/1; a list-of-columns label is their product (CTCVR = click AND
  conversion).
- hazard: `labels[t]` int64 interval index, `events[t]` float 1/0 (0 = censored in that interval),
  read from the task's `interval_column`, or binned from its `time_column` (`interval_from_time`);
  under the task's `label_cutoff` "training_end" censored as known at the end of the last training
  day (`censor_at_cutoff`), under "none" taken as given.
- `weights[t]`: the row's loss weight: 0 where a label is missing or the row is outside the task's
  `train_on` sample space, times the task's `weight_column` (the per-creative CTR weight for hazard
  tasks).
- `eval_mask[t]`: rows that count in evaluation: label present and the task's `eval_on` column set
  (CVR is evaluated on clicked rows only; it is trained over all impressions through CTCVR).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from recsys_mtl.recipe import Recipe, TaskSpec


@dataclass
class Targets:
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    events: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    eval_mask: dict[str, torch.Tensor] = field(default_factory=dict)

    def slice_rows(self, start: int, stop: int) -> Targets:
        def cut(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[start:stop] for k, v in d.items()}

        return Targets(cut(self.labels), cut(self.events), cut(self.weights), cut(self.eval_mask))


def _num(table: pa.Table | pa.RecordBatch, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Column as float64 with a validity mask (null or non-finite = invalid)."""
    x = table.column(col).cast(pa.float64()).to_numpy(zero_copy_only=False)
    if isinstance(x, list):  # pragma: no cover - defensive, ChunkedArray.to_numpy returns ndarray
        x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x)
    return np.where(valid, x, 0.0), valid


# Days per grid unit. A month and a year are the Julian calendar's means (365.25 / 12 and 365.25
# days), the usual convention of survival software for durations given in months or years.
UNIT_DAYS = {"hours": 1.0 / 24.0, "days": 1.0, "weeks": 7.0, "months": 30.4375, "years": 365.25}
DAY_COLUMN = "__day__"  # days since 1970-01-01 of each row's partition, added by the reader


def interval_from_time(
    grid: list[float] | np.ndarray, time: np.ndarray, event: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(interval, event, valid) of durations on a grid t_0 < ... < t_L (same unit as `time`).

    The product's convention (docs/DESIGN.md, "The hazard label convention") has intervals
    (t_k, t_{k+1}] and reads "censored in interval k" as "survived interval k". So:

    - an event at t in (t_k, t_{k+1}] is an event in k (at exactly t_0: in interval 0);
    - a censoring at t counts the intervals that had fully elapsed by t: censored in the largest k
      with t_{k+1} <= t (survived k). A censoring before t_1 says nothing the likelihood can use
      and is no label (valid False), as under a label cutoff (`censor_at_cutoff`);
    - a time beyond t_L, event or not, is censored in the last interval (survived the horizon);
    - a time below t_0, negative, NaN or missing is no label.
    """
    b = np.asarray(grid, dtype=np.float64)
    last = len(b) - 2
    t = np.asarray(time, dtype=np.float64)
    d = np.asarray(event, dtype=bool)
    ok = np.asarray(valid, dtype=bool) & np.isfinite(t) & (t >= b[0]) & (t >= 0)
    # event: first k with t <= t_{k+1}; censoring: intervals whose end is <= t, minus one
    k_event = np.searchsorted(b[1:], t, side="left")
    k_censor = np.searchsorted(b[1:], t, side="right") - 1
    beyond = t > b[-1]
    d = d & ~beyond
    k = np.where(d, k_event, np.minimum(k_censor, last))
    ok &= k >= 0
    return np.where(ok, np.clip(k, 0, last), 0).astype(np.int64), d & ok, ok


def censor_at_cutoff(
    task: TaskSpec, interval: np.ndarray, event: np.ndarray, observable_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Survival labels as they were known at a label cutoff (no look-ahead; for tasks whose
    `label_cutoff` is "training_end").

    A subject whose origin is the start of its day was observable for `observable_days` days at the
    cutoff (the end of the last training day). Intervals that had not fully elapsed by then are not
    known: a label beyond them becomes "censored in the last fully observed interval" (survived it),
    and a subject with no fully observed interval drops out (third result False). Without this, a
    creative's label on an early training day reveals when it stopped, possibly during the held-out
    days, and the model learns the future through the creative's id.
    """
    ends = np.asarray(task.grid[1:], dtype=np.float64) * UNIT_DAYS[task.unit]  # interval ends, days
    full = np.searchsorted(ends, observable_days, side="right")  # intervals fully observed
    late = interval >= full
    return np.where(late, full - 1, interval), event & ~late, full > 0


def _task_targets(
    task: TaskSpec, table: pa.Table | pa.RecordBatch, out: Targets, observable_days: np.ndarray | None
) -> None:
    n = table.num_rows
    if task.kind == "binary":
        y, valid = np.ones(n), np.ones(n, bool)
        for c in task.label_columns:
            v, ok = _num(table, c)
            y, valid = y * (v > 0), valid & ok
        out.labels[task.name] = torch.from_numpy(y.astype(np.float32))
        w = valid.astype(np.float32)
    else:
        assert task.event_column and task.grid is not None
        d, ok_d = _num(table, task.event_column)
        if task.time_column:
            time, ok_t = _num(table, task.time_column)
            k_int, event, valid = interval_from_time(task.grid, time, d > 0, ok_t & ok_d)
            k = k_int.astype(np.float64)
        else:
            assert task.interval_column
            k, ok_k = _num(table, task.interval_column)
            valid = ok_k & ok_d & (k >= 0) & (k < task.num_intervals)
            event = d > 0
        if observable_days is not None and task.label_cutoff_mode == "training_end":
            k, event, seen = censor_at_cutoff(task, k, event, observable_days)
            valid &= seen
        out.labels[task.name] = torch.from_numpy(np.where(valid, k, 0).astype(np.int64))
        out.events[task.name] = torch.from_numpy(event.astype(np.float32))
        w = valid.astype(np.float32)
    if task.weight_column:
        wc, ok_w = _num(table, task.weight_column)
        w = w * np.where(ok_w & (wc > 0), wc, 0.0).astype(np.float32)
    if task.train_on:
        s, ok_s = _num(table, task.train_on)
        w = w * (ok_s & (s > 0)).astype(np.float32)
    out.weights[task.name] = torch.from_numpy(w)
    mask = valid
    if task.eval_on:
        e, ok_e = _num(table, task.eval_on)
        mask = mask & ok_e & (e > 0)
    out.eval_mask[task.name] = torch.from_numpy(mask)


def targets_from_table(
    recipe: Recipe, table: pa.Table | pa.RecordBatch, label_cutoff: dt.date | None = None
) -> Targets:
    """Targets of every task for the rows of `table` (vectorised; no per-row Python).

    With `label_cutoff`, the labels of hazard tasks whose `label_cutoff` is "training_end" are
    censored as of the end of that day (`censor_at_cutoff`); the table must then carry the reader's
    `__day__` column. Tasks with `label_cutoff: none` keep their labels as given.
    """
    observable = None
    cut = [t for t in recipe.tasks if t.kind == "hazard" and t.label_cutoff_mode == "training_end"]
    if label_cutoff is not None and cut:
        day = table.column(DAY_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)
        cutoff = (label_cutoff - dt.date(1970, 1, 1)).days
        observable = cutoff - day + 1.0
    out = Targets()
    for t in recipe.tasks:
        _task_targets(t, table, out, observable)
    return out
