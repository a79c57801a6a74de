"""Validate a day's partition before the nightly job trains on it.

Checks, in order (the first failing family stops the run with its reason):
1. schema: every file's footer against the recipe (columns present, types right, labels not all
   null), via `recsys_mtl.partitions.inspect_partitions`, which names the file and the column;
2. row count within [min_rows, max_rows];
3. null rates of the feature columns, from the Parquet footers' statistics (a column is read only
   when a file lacks them) against `max_null_rate` (scalar features) / `null_rates` (any column;
   list features are unbounded by default: a null list is a user without history);
4. label rates (share of 1s per label column) against fixed bounds from the recipe or, for labels
   without fixed bounds, against the mean of the previous `learn_from_days` days: a sudden change
   (a broken logging pipeline writing all-zero clicks, a join that doubled conversions) fails.

All results go into `ValidationResult.checks`, which the report renders, passed or not.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_mtl.partitions import DataError, ParquetFileInfo, inspect_partitions, list_partitions
from recsys_mtl.recipe import Recipe


@dataclass
class Check:
    name: str
    value: float | int | str
    bounds: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "bounds": self.bounds, "passed": self.passed}


@dataclass
class ValidationResult:
    day: str
    rows: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        return "; ".join(f"{c.name} = {c.value} (expected {c.bounds})" for c in failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "rows": self.rows,
            "passed": self.passed,
            "reason": self.reason,
            "checks": [c.as_dict() for c in self.checks],
        }


def _null_count(info: ParquetFileInfo, column: str) -> int:
    meta = pq.ParquetFile(info.path).metadata
    idx = info.schema.get_field_index(column)
    total = 0
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(idx).statistics if idx >= 0 else None
        if stats is None or not stats.has_null_count:
            return pq.read_table(info.path, columns=[column]).column(column).null_count
        total += stats.null_count
    return total


def rate_columns(recipe: Recipe) -> list[str]:
    """0/1 columns whose share of 1s is checked: binary labels, and hazard event flags that have
    fixed bounds in the recipe. (An event rate moves with censoring, which depends on how close
    a day is to the end of the follow-up, so it is not compared with recent days by default.)"""
    fixed = recipe.nightly.validation.label_rates
    cols: list[str] = []
    for t in recipe.tasks:
        if t.kind == "binary":
            cols += t.label_columns
        elif t.event_column in fixed:
            cols.append(t.event_column)
    return list(dict.fromkeys(cols))


def label_rates(recipe: Recipe, infos: list[ParquetFileInfo]) -> dict[str, float]:
    """Share of 1s of each label column over the files (nulls do not count as rows)."""
    cols = rate_columns(recipe)
    ones = dict.fromkeys(cols, 0.0)
    seen = dict.fromkeys(cols, 0)
    for info in infos:
        table = pq.read_table(info.path, columns=cols)
        for c in cols:
            col = table.column(c)
            seen[c] += len(col) - col.null_count
            ones[c] += float(pc.sum(pc.cast(col, "int64")).as_py() or 0)
    return {c: ones[c] / seen[c] if seen[c] else float("nan") for c in cols}


def validate_day(recipe: Recipe, data_dir: str | Path, day: str | dt.date) -> ValidationResult:
    """Validate the partition of `day`. Raises nothing for bad data: failures are checks."""
    spec = recipe.nightly.validation
    d = dt.date.fromisoformat(str(day))
    res = ValidationResult(day=d.isoformat())
    try:
        infos = inspect_partitions(recipe, data_dir, d, d)
    except DataError as e:
        res.checks.append(Check("schema", str(e), "files readable with every recipe column", False))
        return res
    if not infos:
        res.checks.append(
            Check("partition", "missing", f"{recipe.data.partition}={d} with data files", False)
        )
        return res
    res.checks.append(Check("schema", f"{len(infos)} file(s) ok", "every recipe column, right types", True))

    res.rows = sum(i.num_rows for i in infos)
    hi = spec.max_rows
    res.checks.append(
        Check(
            "rows",
            res.rows,
            f">= {spec.min_rows}" + (f" and <= {hi}" if hi else ""),
            res.rows >= spec.min_rows and (hi is None or res.rows <= hi),
        )
    )

    for f in {f.source: f for f in recipe.features}.values():
        col = f.source
        rate = sum(_null_count(i, col) for i in infos) / res.rows
        # a null list is "no history yet" (a new user has no conversions): not a defect by default
        # a missing vector is a gap in the encoder's pipeline: bounded like a scalar
        default = spec.max_null_rate if f.kind in ("id", "dense", "vector") else 1.0
        limit = spec.null_rates.get(col, default)
        res.checks.append(Check(f"null rate {col}", round(rate, 5), f"<= {limit:g}", rate <= limit))

    rates = label_rates(recipe, infos)
    history = _recent_rates(recipe, data_dir, d, spec.learn_from_days)
    for col, rate in rates.items():
        if col in spec.label_rates:
            lo, hi_rate = spec.label_rates[col]
            bounds = f"in [{lo:g}, {hi_rate:g}] (recipe)"
        elif history.get(col):
            mean = float(np.mean(history[col]))
            slack = max(spec.learned_tolerance * mean, spec.learned_min_abs)
            lo, hi_rate = max(0.0, mean - slack), mean + slack
            bounds = f"in [{lo:.4g}, {hi_rate:.4g}] (mean {mean:.4g} of {len(history[col])} recent day(s))"
        else:  # the first day ever, no bounds in the recipe: a label must at least vary
            lo, hi_rate = 1e-12, 1.0 - 1e-12
            bounds = "strictly between 0 and 1 (no recent days, no recipe bounds)"
        ok = bool(np.isfinite(rate)) and lo <= rate <= hi_rate
        res.checks.append(Check(f"label rate {col}", round(rate, 6), bounds, ok))
    return res


def _recent_rates(recipe: Recipe, data_dir: str | Path, day: dt.date, n: int) -> dict[str, list[float]]:
    """Label rates of up to `n` days before `day` that are readable (unreadable ones are skipped:
    they are validated on their own nights)."""
    if n <= 0:
        return {}
    start = day - dt.timedelta(days=n)
    days = list(list_partitions(data_dir, start, day - dt.timedelta(days=1), recipe.data.partition))
    out: dict[str, list[float]] = {}
    for past in days:
        try:
            infos = inspect_partitions(recipe, data_dir, past, past)
        except DataError:
            continue
        for col, rate in label_rates(recipe, infos).items():
            if np.isfinite(rate):
                out.setdefault(col, []).append(rate)
    return out
