"""How many training labels each task keeps, the loud failure when one keeps none, and hazard grids
given as quantiles of the training event times.

Why this exists. A task whose every label is dropped (a hazard task under the label cutoff with one
training day and a weekly grid, a `train_on` column that is never set, a `weight_column` that is 0
everywhere) has a loss of exactly 0 at every step: the run used to train all its steps, exit 0 and
leave an untrained head that still scores. So before the first step the trainer counts, per task,
the labels that will weigh in the loss (`count_labels`, reading only the label, subject and day
columns: Parquet column projection, no features) and `check_labels` raises `LabelError` naming the
task, the reason and the fix when a task with a loss weight keeps none. `recsys-mtl summary` shows
the same counts for the hazard tasks (`data_summary`).

`resolve_grids` turns `grid_quantiles: L` into a concrete `grid` (0 and the L quantiles of the
event times in the training rows), once, before the model is built; the run's recipe (run.json)
then holds that grid, so export, serving and evaluation never see a quantile spec.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_mtl.partitions import DataError, ParquetFileInfo
from recsys_mtl.reader import column_to_numpy
from recsys_mtl.recipe import Recipe, TaskSpec, recipe_from_dict
from recsys_mtl.targets import DAY_COLUMN, UNIT_DAYS, targets_from_table

_EPOCH = dt.date(1970, 1, 1)


class LabelError(DataError):
    """A task that cannot train on the data given: the message names the task, why and the fix."""


@dataclass
class TaskLabelCount:
    """One task's labels in the rows counted.

    labelled   rows with a usable label (present and finite; hazard: an interval on the grid),
               before the label cutoff and the sample space
    after_cutoff  hazard: labelled rows still labelled after the label cutoff (= labelled under
               `label_cutoff: none` or without a cutoff); binary: = labelled
    kept       rows that weigh in the loss: after the cutoff, `train_on` and `weight_column`
    events     kept rows that are positives (binary) or events (hazard)
    subjects   hazard: distinct survival subjects among the kept rows (each row its own subject
               when the data lacks the subject column); None for binary tasks
    subject_events  hazard: those subjects whose (first row's) label is an event
    """

    task: str
    kind: str
    labelled: int = 0
    after_cutoff: int = 0
    kept: int = 0
    events: int = 0
    subjects: int | None = None
    subject_events: int | None = None
    subject_column: str | None = None
    # hazard: subject ids of kept rows and their event flags, per table (first row per subject)
    _ids: list[np.ndarray] = field(default_factory=list, repr=False)
    _ids_event: list[np.ndarray] = field(default_factory=list, repr=False)
    _rows_as_subjects: int = field(default=0, repr=False)

    def as_dict(self) -> dict[str, int | str | None]:
        return {
            "labelled": self.labelled,
            "after_cutoff": self.after_cutoff,
            "kept": self.kept,
            "events": self.events,
            "subjects": self.subjects,
            "subject_events": self.subject_events,
            "subject_column": self.subject_column,
        }


def _usable(task: TaskSpec, table: pa.Table) -> np.ndarray:
    """Binary: every label column present and finite (before `train_on` and the weights)."""
    ok = np.ones(table.num_rows, dtype=bool)
    for c in task.label_columns:
        x = table.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
        ok &= np.isfinite(x)
    return ok


class LabelCounter:
    """Accumulates `TaskLabelCount`s table by table (tables must hold the recipe's label columns,
    `DAY_COLUMN` when `cutoff` is given, and each hazard task's subject column where the data has
    it)."""

    def __init__(self, recipe: Recipe, cutoff: dt.date | None) -> None:
        self.recipe, self.cutoff = recipe, cutoff
        self.counts = {
            t.name: TaskLabelCount(
                t.name, t.kind, subject_column=recipe.subject_column(t) if t.kind == "hazard" else None
            )
            for t in recipe.tasks
        }
        self._done = False

    def add(self, table: pa.Table) -> None:
        as_given = targets_from_table(self.recipe, table)
        cut = targets_from_table(self.recipe, table, self.cutoff) if self.cutoff is not None else as_given
        for t in self.recipe.tasks:
            c = self.counts[t.name]
            kept = cut.weights[t.name].numpy() > 0
            c.kept += int(kept.sum())
            if t.kind == "binary":
                labelled = _usable(t, table)
                c.labelled += int(labelled.sum())
                c.after_cutoff += int(labelled.sum())
                c.events += int((cut.labels[t.name].numpy()[kept] > 0).sum())
                continue
            c.labelled += int(as_given.eval_mask[t.name].numpy().sum())
            c.after_cutoff += int(cut.eval_mask[t.name].numpy().sum())
            event = cut.events[t.name].numpy()[kept] > 0
            c.events += int(event.sum())
            assert c.subject_column is not None
            if c.subject_column in table.schema.names:
                ids = column_to_numpy(table.column(c.subject_column))[kept]
                _, first = np.unique(ids, return_index=True)
                c._ids.append(ids[first])
                c._ids_event.append(event[first])
            else:  # each row is its own subject
                c._rows_as_subjects += int(kept.sum())
                c._ids_event.append(event)

    def result(self) -> dict[str, TaskLabelCount]:
        """The counts (subjects deduplicated across tables: a subject spanning files counts once)."""
        if not self._done:
            for c in self.counts.values():
                if c.kind != "hazard":
                    continue
                if c._ids:
                    ids = np.concatenate(c._ids)
                    ev = np.concatenate(c._ids_event)
                    _, first = np.unique(ids, return_index=True)
                    c.subjects, c.subject_events = len(first), int(ev[first].sum())
                else:
                    c.subjects = c._rows_as_subjects
                    c.subject_events = int(sum(int(e.sum()) for e in c._ids_event))
                c._ids, c._ids_event = [], []
            self._done = True
        return self.counts


def with_day_column(table: pa.Table, day: dt.date) -> pa.Table:
    """`table` with the reader's `DAY_COLUMN` (the partition's day) that the label cutoff needs."""
    return table.append_column(DAY_COLUMN, pa.array(np.full(table.num_rows, (day - _EPOCH).days, np.int32)))


def _read(info: ParquetFileInfo, columns: Sequence[str]) -> pa.Table:
    try:
        return pq.read_table(info.path, columns=list(columns))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read ({e})", info.path) from None


def count_labels(
    recipe: Recipe, files: Sequence[ParquetFileInfo], cutoff: dt.date | None
) -> dict[str, TaskLabelCount]:
    """Per task, the labels of `files` (the training days) as the trainer will use them, censored
    at the end of `cutoff` (the last training day) for hazard tasks whose `label_cutoff` is
    "training_end". Reads only label, subject and sample-space columns."""
    counter = LabelCounter(recipe, cutoff)
    subjects = [recipe.subject_column(t) for t in recipe.tasks if t.kind == "hazard"]
    for info in files:
        names = set(info.schema.names)
        cols = [c for c in dict.fromkeys([*recipe.label_columns(), *subjects]) if c in names]
        table = _read(info, cols)
        counter.add(with_day_column(table, info.day) if cutoff is not None else table)
    return counter.result()


def _days(n: float) -> str:
    return f"{n:g} day" + ("" if n == 1 else "s")


def _no_label_reason(
    recipe: Recipe, task: TaskSpec, c: TaskLabelCount, train_days: Sequence[dt.date]
) -> tuple[str, str]:
    """(reason, fix) for a task that keeps no label."""
    cols = ", ".join(f"`{col}`" for col in task.label_columns)
    if c.labelled == 0:
        if task.kind == "hazard":
            what = (
                f"a time at or after the grid's start {task.grid[0] if task.grid else 0:g} {task.unit} "
                "(a censoring before the first boundary is no label)"
                if task.time_column
                else f"an interval index in 0..{task.num_intervals - 1}"
            )
            reason = f"no training row has a usable label in {cols} ({what}, and an event flag)"
        else:
            reason = f"no training row has a usable label in {cols} (every value is missing or not finite)"
        return reason, "check the label columns the task names against the data (`recsys-mtl summary`)"
    if task.kind == "hazard" and c.after_cutoff == 0:
        assert task.grid is not None
        first_end = (task.grid[1] - task.grid[0]) * UNIT_DAYS[task.unit]
        elapsed = (train_days[-1] - train_days[0]).days + 1
        n = len(train_days)
        reason = (
            f"all {c.labelled:,} labels fall after the label cutoff (`label_cutoff: training_end`, the "
            f"end of {train_days[-1].isoformat()}, the last training day): an interval is known only "
            f"once it has fully elapsed, and with {n} training day{'s' if n != 1 else ''} at most "
            f"{_days(elapsed)} had elapsed, less than the first interval "
            f"({task.grid[0]:g} to {task.grid[1]:g} {task.unit} = {_days(first_end)})"
        )
        fix = (
            "set `label_cutoff: none` on the task if each row's follow-up is known (e.g. one row per "
            f"subject with its observed time), or train on more days (at least {_days(np.ceil(first_end))})"
        )
        return reason, fix
    sample = []
    if task.train_on:
        sample.append(f"`train_on: {task.train_on}` (the task's sample space) is never set on them")
    if task.weight_column:
        sample.append(f"`weight_column: {task.weight_column}` is 0 or missing on them")
    reason = f"none of its {c.after_cutoff:,} labelled rows weighs in the loss" + (
        f": {' or '.join(sample)}" if sample else ""
    )
    return reason, "check the task's `train_on` / `weight_column` against the data"


def check_labels(
    recipe: Recipe, counts: dict[str, TaskLabelCount], train_days: Sequence[dt.date]
) -> list[str]:
    """Raise `LabelError` when a task with a loss weight keeps no training label (all such tasks in
    one message). Tasks with `loss_weight: 0` train nothing themselves and are not checked. With the
    recipe's `training.allow_untrained_tasks` the problems are returned (to be logged as warnings)
    instead of raised; [] when every task has labels."""
    problems = []
    for t in recipe.tasks:
        c = counts[t.name]
        if t.loss_weight <= 0 or c.kept > 0:
            continue
        reason, fix = _no_label_reason(recipe, t, c, train_days)
        problems.append(f"task '{t.name}' has no training label: {reason}. Fix: {fix}.")
    if problems and not recipe.training.allow_untrained_tasks:
        raise LabelError(
            " ".join(problems) + " (Training would run with a loss of exactly 0 for it and leave its "
            "head untrained; `training.allow_untrained_tasks: true` in the recipe allows that.)"
        )
    return problems


def describe_counts(counts: dict[str, TaskLabelCount]) -> list[str]:
    """One log line per task: what training will learn from."""
    lines = []
    for c in counts.values():
        if c.kind == "binary":
            lines.append(f"  task {c.task:<14} {c.kept:>12,} rows in the loss, {c.events:,} positive")
        else:
            dropped = c.labelled - c.after_cutoff
            lines.append(
                f"  task {c.task:<14} {c.kept:>12,} rows in the loss, {c.subjects or 0:,} subjects "
                f"({c.subject_column}), {c.subject_events or 0:,} with an event"
                + (f"; {dropped:,} labelled rows dropped by the label cutoff" if dropped else "")
            )
    return lines


# --------------------------------------------------------------------------------------------
# grid_quantiles -> grid
# --------------------------------------------------------------------------------------------


def quantile_grid(event_times: np.ndarray, intervals: int) -> list[float]:
    """0 and the j / L quantiles (j = 1..L) of the event times, made strictly increasing (tied
    quantiles, e.g. from times recorded in whole units, collapse: fewer intervals than asked).
    The last boundary is the largest event time, so every event falls inside the grid."""
    t = np.asarray(event_times, dtype=np.float64)
    q = np.quantile(t, np.arange(1, intervals + 1) / intervals)
    bounds = np.unique(np.r_[0.0, q[q > 0]])
    return [float(b) for b in bounds]


def resolve_grids(recipe: Recipe, files: Sequence[ParquetFileInfo], cutoff: dt.date | None) -> Recipe:
    """`recipe` with every `grid_quantiles` task given its concrete `grid` from the event times of
    `files` (the training days); the recipe itself when no task asks for quantiles.

    Under `label_cutoff: training_end` only events that had happened by the end of `cutoff` count
    (the labels the trainer will see; no look-ahead into the grid either)."""
    tasks = [t for t in recipe.tasks if t.grid_quantiles is not None]
    if not tasks:
        return recipe
    times: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for info in files:
        cols = list(dict.fromkeys(c for t in tasks for c in (t.time_column, t.event_column) if c))
        table = _read(info, cols)
        for t in tasks:
            assert t.time_column and t.event_column
            x = table.column(t.time_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
            d = table.column(t.event_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
            ok = np.isfinite(x) & (x >= 0) & np.isfinite(d) & (d > 0)
            if cutoff is not None and t.label_cutoff_mode == "training_end":
                observed_days = (cutoff - info.day).days + 1
                ok &= x * UNIT_DAYS[t.unit] <= observed_days
            times[t.name].append(x[ok])
    data = recipe.to_dict()
    for t in tasks:
        assert t.grid_quantiles is not None
        ev = np.concatenate(times[t.name]) if times[t.name] else np.zeros(0)
        if not len(ev) or ev.max() <= 0:
            raise LabelError(
                f"task '{t.name}': `grid_quantiles` needs event times, but no training row has an event "
                f"(`{t.event_column}` > 0) with a positive time in `{t.time_column}`"
                + (" by the label cutoff" if t.label_cutoff_mode == "training_end" and cutoff else "")
                + ". Fix: give an explicit `grid`, or check the columns."
            )
        spec = next(d for d in data["tasks"] if d["name"] == t.name)
        spec["grid"], spec["grid_quantiles"] = quantile_grid(ev, t.grid_quantiles), None
    return recipe_from_dict(data, "the recipe with grid_quantiles resolved")


def resolved_grids(before: Recipe, after: Recipe) -> dict[str, list[float]]:
    """Task -> the grid `resolve_grids` gave it (for the log)."""
    return {t.name: list(after.task(t.name).grid or []) for t in before.tasks if t.grid_quantiles is not None}
