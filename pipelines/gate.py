"""The nightly quality gate: the new model against the serving model on the same held-out day.

Per gated task the metric is AUC (binary tasks) or Harrell's C-index (hazard tasks), both from
`recsys_mtl.evaluation.compute_metrics` on the same rows. The new model passes a task when

    new >= serving - tolerance          (a model is serving)
    new >= floor                        (the first model ever: nothing to compare with)

with the tolerance and floor from the recipe's `nightly.gate`. The gate passes when every gated
task passes. A task the serving model does not have (a new head) is held to the floor.
"""

from __future__ import annotations

import math
from typing import Any

from recsys_mtl.recipe import Recipe


def _metric(metrics: dict[str, Any] | None, task: str, key: str) -> float | None:
    if metrics is None:
        return None
    v = metrics.get("tasks", {}).get(task, {}).get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def quality_gate(
    recipe: Recipe,
    new_metrics: dict[str, Any],
    serving_metrics: dict[str, Any] | None,
    serving_version: str | None,
) -> dict[str, Any]:
    """The decision dict: {"passed", "first_model", "reason", "serving_version", "rows": [...]}."""
    spec = recipe.nightly.gate
    first = serving_metrics is None
    names = spec.tasks if spec.tasks is not None else [t.name for t in recipe.tasks]
    rows: list[dict[str, Any]] = []
    for name in names:
        task = recipe.task(name)
        key = "auc" if task.kind == "binary" else "c_index"
        new = _metric(new_metrics, name, key)
        old = _metric(serving_metrics, name, key)
        if new is None and spec.tasks is None:
            continue  # not measurable on this day (e.g. one class only): not gated by default
        row: dict[str, Any] = {"task": name, "metric": key, "new": new, "serving": old}
        if old is not None:
            tol = spec.tolerance_for(name)
            row.update(delta=None if new is None else new - old, tolerance=tol, floor=None)
            row["passed"] = new is not None and new >= old - tol
        else:
            floor = spec.floor_for(name)
            row.update(delta=None, tolerance=None, floor=floor)
            row["passed"] = new is not None and new >= floor
        rows.append(row)
    failed = [r for r in rows if not r["passed"]]
    if not rows:
        reason = "no task could be measured on the held-out day"
    elif failed:
        reason = "; ".join(_why(r) for r in failed)
    else:
        reason = (
            "every gated task reaches its floor (first model)"
            if first
            else f"no gated task is worse than serving v{serving_version} by more than its tolerance"
        )
    return {
        "passed": bool(rows) and not failed,
        "first_model": first,
        "reason": reason,
        "serving_version": serving_version,
        "rows": rows,
    }


def _why(r: dict[str, Any]) -> str:
    new = "n/a" if r["new"] is None else f"{r['new']:.4f}"
    if r["tolerance"] is not None:
        return f"{r['task']} {r['metric']} {new} < serving {r['serving']:.4f} - {r['tolerance']:g}"
    return f"{r['task']} {r['metric']} {new} < floor {r['floor']:g}"
