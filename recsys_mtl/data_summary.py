"""What a data directory holds: rows per day, label rates, and how well the oracle scores.

On synthetic data the `oracle_*` columns are the true probabilities and hazards; their AUC and
C-index are the best any model can reach on this sample, the yardstick for every trained model.
Hazard tasks are measured per creative (its survival label is the creative's, repeated on each of
its rows), so a creative counts once.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys_mtl.dataset import inspect_partitions
from recsys_mtl.metrics import auc, c_index
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
    item = recipe.data.item_column
    oracle_cols = {t.name: t.oracle_prefix for t in recipe.tasks if t.oracle_prefix in files[0].schema.names}
    cols = list(dict.fromkeys([*recipe.label_columns(), item, *oracle_cols.values()]))
    cols = [c for c in cols if c in files[0].schema.names]

    binary: dict[str, list[tuple[np.ndarray, np.ndarray | None]]] = {
        t.name: [] for t in recipe.tasks if t.kind == "binary"
    }
    # per hazard task: per file (creative ids, interval, event, oracle risk or None), first rows only
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
        if hazard and item in table.schema.names:
            items = column_to_numpy(table.column(item))
            _, first = np.unique(items, return_index=True)
            for name, parts in hazard.items():
                risk = np.full(len(first), np.nan)
                if name in oracle_cols:
                    h = column_to_numpy(table.column(oracle_cols[name]))[first].astype(np.float64)
                    risk = 1.0 - np.prod(1.0 - h, axis=1)
                parts.append(
                    (items[first], tg.labels[name].numpy()[first], tg.events[name].numpy()[first], risk)
                )

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
        _, first = np.unique(items, return_index=True)  # a creative spanning files counts once
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
