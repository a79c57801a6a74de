"""What a data directory holds: rows per day, label rates, and how well the oracle scores.

On synthetic data the `oracle_*` columns are the true probabilities and hazards; their AUC and
C-index are the best any model can reach on this sample, the yardstick for every trained model.
Hazard tasks are measured per survival subject (the rows sharing the task's subject column,
`Recipe.subject_column`, share its survival label; a creative on a day in the product), so a subject
counts once; data without the subject column counts each row as a subject. Per hazard task the
summary also says how many subjects keep a label, and how many of those an event, once the labels
are censored as the trainer would with the range's last day as the last training day
(`label_cutoff: training_end`; under `none` every label is kept): a task left with none would not
train (`recsys_mtl.label_counts`). The ``creatives`` key repeats ``subjects`` for older readers.
A task with `grid_quantiles` is summarised on the grid those quantiles give over the range.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys_mtl.label_counts import LabelCounter, resolve_grids, with_day_column
from recsys_mtl.metrics import auc, c_index
from recsys_mtl.partitions import inspect_partitions
from recsys_mtl.reader import column_to_numpy
from recsys_mtl.recipe import Recipe
from recsys_mtl.targets import UNIT_DAYS, targets_from_table


def summarize(
    recipe: Recipe,
    data_dir: str | Path,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
) -> dict[str, Any]:
    files = inspect_partitions(recipe, data_dir, start, end)
    last_day = max(info.day for info in files)
    recipe = resolve_grids(recipe, files, last_day)
    counter = LabelCounter(recipe, last_day)
    subject_cols = {t.name: recipe.subject_column(t) for t in recipe.tasks if t.kind == "hazard"}
    oracle_cols = {t.name: t.oracle_prefix for t in recipe.tasks if t.oracle_prefix in files[0].schema.names}
    cols = list(dict.fromkeys([*recipe.label_columns(), *subject_cols.values(), *oracle_cols.values()]))
    cols = [c for c in cols if c in files[0].schema.names]

    binary: dict[str, list[tuple[np.ndarray, np.ndarray | None]]] = {
        t.name: [] for t in recipe.tasks if t.kind == "binary"
    }
    # per hazard task: per file (subject ids, interval, event, oracle risk or None), first rows only
    hazard: dict[str, list[tuple[np.ndarray, ...]]] = {t.name: [] for t in recipe.tasks if t.kind == "hazard"}
    rows_per_day: dict[str, int] = {}
    row_offset = 0
    for info in files:
        table = pq.read_table(info.path, columns=cols)
        rows_per_day[info.day.isoformat()] = rows_per_day.get(info.day.isoformat(), 0) + table.num_rows
        tg = targets_from_table(recipe, table)
        counter.add(with_day_column(table, info.day))
        for name in binary:
            m = tg.eval_mask[name].numpy()
            y = tg.labels[name].numpy()[m]
            o = column_to_numpy(table.column(oracle_cols[name]))[m] if name in oracle_cols else None
            binary[name].append((y, o))
        firsts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # subject column -> (ids, first rows)
        for name, parts in hazard.items():
            col = subject_cols[name]
            if col not in firsts:
                if col in table.schema.names:
                    ids = column_to_numpy(table.column(col))
                    firsts[col] = ids, np.unique(ids, return_index=True)[1]
                else:  # no subject column: each row is its own subject (ids unique across files)
                    ids = np.arange(row_offset, row_offset + table.num_rows)
                    firsts[col] = ids, np.arange(table.num_rows)
            items, first = firsts[col]
            first = first[tg.eval_mask[name].numpy()[first]]  # subjects with a usable label
            risk = np.full(len(first), np.nan)
            if name in oracle_cols:
                h = column_to_numpy(table.column(oracle_cols[name]))[first].astype(np.float64)
                risk = 1.0 - np.prod(1.0 - h, axis=1)
            parts.append((items[first], tg.labels[name].numpy()[first], tg.events[name].numpy()[first], risk))
        row_offset += table.num_rows

    out: dict[str, Any] = {"rows": sum(rows_per_day.values()), "days": rows_per_day, "tasks": {}}
    for name, parts in binary.items():
        y = np.concatenate([p[0] for p in parts])
        res: dict[str, Any] = {"rows": len(y), "rate": float(y.mean()) if len(y) else float("nan")}
        if parts and parts[0][1] is not None:
            o = np.concatenate([p[1] for p in parts if p[1] is not None])
            res["oracle_auc"] = auc(o, y)
            res["oracle_mean"] = float(o.mean()) if len(o) else float("nan")
        out["tasks"][name] = res
    kept = counter.result()
    for name, parts in hazard.items():
        if not parts:
            continue
        items, k, d, risk = (np.concatenate(c) for c in zip(*parts, strict=True))
        # a subject spanning files counts once; mixed id types (no subject column in some files)
        # compare as strings
        _, first = np.unique(items.astype(str) if items.dtype == object else items, return_index=True)
        k, d, risk = k[first], d[first], risk[first]
        c = kept[name]
        task = recipe.task(name)
        res = {
            "subjects": len(k),
            "subject_column": subject_cols[name] if subject_cols[name] in files[0].schema.names else None,
            "creatives": len(k),  # the old name of `subjects`
            "event_rate": float(d.mean()) if len(d) else float("nan"),
            "label_cutoff": task.label_cutoff_mode,
            "cutoff_day": last_day.isoformat() if task.label_cutoff_mode == "training_end" else None,
            "subjects_after_cutoff": c.subjects,
            "events_after_cutoff": c.subject_events,
            "grid": list(task.grid or []),
            "unit": task.unit,
        }
        if not np.isnan(risk).any():
            res["oracle_c_index"] = c_index(k, d, risk)
        out["tasks"][name] = res
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"rows: {summary['rows']:,} over {len(summary['days'])} day(s)"]
    tasks = summary["tasks"]
    binary = {n: r for n, r in tasks.items() if "rate" in r}
    hazard = {n: r for n, r in tasks.items() if "rate" not in r}
    if binary:
        lines.append(f"{'task':<14} {'rows':>15} {'rate':>8} {'oracle':>14}")
        for name, r in binary.items():
            oracle = f"AUC {r['oracle_auc']:.4f}" if "oracle_auc" in r else "-"
            lines.append(f"{name:<14} {r['rows']:>15,} {r['rate']:>8.4f} {oracle:>14}")
    for col in dict.fromkeys(r.get("subject_column") or "rows" for r in hazard.values()):
        head = f"subjects ({col})"
        w = max(15, len(head))
        lines.append(
            f"{'task':<14} {head:>{w}} {'event rate':>10} {'kept after cutoff (events)':>27} {'oracle':>14}"
        )
        for name, r in hazard.items():
            if (r.get("subject_column") or "rows") != col:
                continue
            oracle = f"C {r['oracle_c_index']:.4f}" if "oracle_c_index" in r else "-"
            cut = r.get("cutoff_day")
            kept = f"{r['subjects_after_cutoff']:,} ({r['events_after_cutoff']:,})"
            where = f" end of {cut}" if cut else " no cutoff"
            lines.append(
                f"{name:<14} {r['subjects']:>{w},} {r['event_rate']:>10.4f} {kept:>27} {oracle:>14}{where}"
            )
            if cut and r["subjects"] and not r["subjects_after_cutoff"]:
                grid, unit = r.get("grid") or [0.0, 0.0], r.get("unit", "days")
                need = math.ceil((grid[1] - grid[0]) * UNIT_DAYS.get(unit, 1.0))
                lines.append(
                    f"  ! {name}: no label survives the label cutoff at the end of {cut}: training on "
                    f"this range would fail. The first interval needs {need} day(s) to elapse; or set "
                    "`label_cutoff: none` if each row's follow-up is known"
                )
    return "\n".join(lines)
