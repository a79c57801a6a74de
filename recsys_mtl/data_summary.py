"""What a data directory holds: rows per day, label rates, and how well the oracle scores.

On synthetic data the `oracle_*` columns are the true probabilities and hazards; their AUC and
C-index are the best any model can reach on this sample, the yardstick for every trained model.
Hazard tasks are measured per survival subject (a creative on a day, by default a creative: the rows
sharing the task's subject column, `Recipe.subject_column`, share its survival label), so a subject
counts once; a hazard task whose subject column the data lacks is left out. (The ``creatives`` key
counts subjects.)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys_mtl.metrics import auc, c_index
from recsys_mtl.partitions import inspect_partitions
from recsys_mtl.reader import column_to_numpy
from recsys_mtl.recipe import Recipe
from recsys_mtl.targets import targets_from_table


def summarize(
    recipe: Recipe,
    data_dir: str | Path,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
) -> dict[str, Any]:
    files = inspect_partitions(recipe, data_dir, start, end)
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
    for info in files:
        table = pq.read_table(info.path, columns=cols)
        rows_per_day[info.day.isoformat()] = rows_per_day.get(info.day.isoformat(), 0) + table.num_rows
        tg = targets_from_table(recipe, table)
        for name in binary:
            m = tg.eval_mask[name].numpy()
            y = tg.labels[name].numpy()[m]
            o = column_to_numpy(table.column(oracle_cols[name]))[m] if name in oracle_cols else None
            binary[name].append((y, o))
        firsts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # subject column -> (ids, first rows)
        for name, parts in hazard.items():
            col = subject_cols[name]
            if col not in table.schema.names:
                continue
            if col not in firsts:
                ids = column_to_numpy(table.column(col))
                firsts[col] = ids, np.unique(ids, return_index=True)[1]
            items, first = firsts[col]
            risk = np.full(len(first), np.nan)
            if name in oracle_cols:
                h = column_to_numpy(table.column(oracle_cols[name]))[first].astype(np.float64)
                risk = 1.0 - np.prod(1.0 - h, axis=1)
            parts.append((items[first], tg.labels[name].numpy()[first], tg.events[name].numpy()[first], risk))

    out: dict[str, Any] = {"rows": sum(rows_per_day.values()), "days": rows_per_day, "tasks": {}}
    for name, parts in binary.items():
        y = np.concatenate([p[0] for p in parts])
        res: dict[str, Any] = {"rows": len(y), "rate": float(y.mean()) if len(y) else float("nan")}
        if parts and parts[0][1] is not None:
            o = np.concatenate([p[1] for p in parts if p[1] is not None])
            res["oracle_auc"] = auc(o, y)
            res["oracle_mean"] = float(o.mean()) if len(o) else float("nan")
        out["tasks"][name] = res
    for name, parts in hazard.items():
        if not parts:
            continue
        items, k, d, risk = (np.concatenate(c) for c in zip(*parts, strict=True))
        _, first = np.unique(items, return_index=True)  # a subject spanning files counts once
        k, d, risk = k[first], d[first], risk[first]
        res = {"creatives": len(k), "event_rate": float(d.mean())}
        if not np.isnan(risk).any():
            res["oracle_c_index"] = c_index(k, d, risk)
        out["tasks"][name] = res
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"rows: {summary['rows']:,} over {len(summary['days'])} day(s)"]
    lines.append(f"{'task':<14} {'rows/creatives':>15} {'rate':>8} {'oracle':>14}")
    for name, r in summary["tasks"].items():
        if "rate" in r:
            oracle = f"AUC {r['oracle_auc']:.4f}" if "oracle_auc" in r else "-"
            lines.append(f"{name:<14} {r['rows']:>15,} {r['rate']:>8.4f} {oracle:>14}")
        else:
            oracle = f"C {r['oracle_c_index']:.4f}" if "oracle_c_index" in r else "-"
            lines.append(f"{name:<14} {r['creatives']:>15,} {r['event_rate']:>8.4f} {oracle:>14}")
    return "\n".join(lines)
