"""Task targets from label columns: what the losses and metrics compare predictions against.

Per task (recipe order):
- binary: `labels[t]` float 0/1; a list-of-columns label is their product (CTCVR = click AND
  conversion).
- hazard: `labels[t]` int64 interval index, `events[t]` float 1/0 (0 = censored in that interval).
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


UNIT_DAYS = {"days": 1.0, "weeks": 7.0, "hours": 1.0 / 24.0}
DAY_COLUMN = "__day__"  # days since 1970-01-01 of each row's partition, added by the reader


def censor_at_cutoff(
    task: TaskSpec, interval: np.ndarray, event: np.ndarray, observable_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Survival labels as they were known at a label cutoff (no look-ahead).

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
        assert task.interval_column and task.event_column
        k, ok_k = _num(table, task.interval_column)
        d, ok_d = _num(table, task.event_column)
        valid = ok_k & ok_d & (k >= 0) & (k < task.num_intervals)
        event = d > 0
        if observable_days is not None:
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

    With `label_cutoff`, hazard labels are censored as of the end of that day (`censor_at_cutoff`);
    the table must then carry the reader's `__day__` column.
    """
    observable = None
    if label_cutoff is not None and any(t.kind == "hazard" for t in recipe.tasks):
        day = table.column(DAY_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)
        cutoff = (label_cutoff - dt.date(1970, 1, 1)).days
        observable = cutoff - day + 1.0
    out = Targets()
    for t in recipe.tasks:
        _task_targets(t, table, out, observable)
    return out
