"""The nightly quality gate: the new model against the serving model on the same held-out day,
judged by evidence rather than by one day's point estimate.

Per task the metric is AUC (binary tasks, on the task's evaluation rows) or Harrell's C-index
(hazard tasks, one row per survival subject), computed on the rows both models score. With a
model serving, the gate estimates the difference new - serving and its confidence interval by a
paired cluster bootstrap (`recsys_mtl.metric_intervals`: users are resampled for binary tasks,
survival subjects for hazard tasks; both models under the same weights). The rule, per task:

    interval rule (default)  reject when high < -tolerance: even the interval's upper end says the
                             new model is worse than serving by more than the tolerance
    point rule               reject when new - serving < -tolerance (the rule before intervals)

The first model ever (nothing serving) and a task the serving model lacks are judged against the
task's floor the same way: the interval of the new model's own metric, rejected when its upper end
is below the floor (point rule: the estimate). A task whose metric is undefined on the day (one
class only, no events) passes with a note, unless the recipe names it in `tasks`. Tasks in
`report_only` are measured and shown but never reject. The gate passes when no gating task
rejects. Why an interval: one day's C-index on ~900 events moves by about +-0.01 between equally
good models, so a fixed tolerance on the point estimate rejects good models on noise, and lets
through regressions smaller than the tolerance on tasks with many rows (docs/OPERATIONS.md, "The
quality gate"; docs/BENCHMARKS.md, "The nightly gate").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recsys_mtl.evaluation import Predictions, per_subject
from recsys_mtl.metric_intervals import MetricInterval, auc_interval, c_index_interval
from recsys_mtl.metrics import risk_at_horizon
from recsys_mtl.recipe import GateSpec, Recipe, TaskSpec


class GateError(ValueError):
    """The two models' predictions cannot be paired (different rows or labels)."""


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _common_rows(task: str, new: Predictions, serving: Predictions | None) -> np.ndarray:
    """The task's evaluation rows, restricted to those the serving model also evaluates; checks
    that both predictions hold the same rows (same count, the same labels and events)."""
    mask = new.eval_mask[task]
    if serving is None:
        return mask
    if serving.num_rows != new.num_rows:
        raise GateError(
            f"{task}: the new model scored {new.num_rows} rows, the serving one {serving.num_rows}"
        )
    mask = mask & serving.eval_mask[task]
    same = np.array_equal(new.labels[task][mask], serving.labels[task][mask])
    if task in new.events:
        same = same and np.array_equal(new.events[task][mask], serving.events[task][mask])
    if not same:
        raise GateError(f"{task}: the two models' rows carry different labels; cannot pair them")
    return mask


def _binary_interval(
    task: str, new: Predictions, serving: Predictions | None, **bootstrap: Any
) -> tuple[MetricInterval, str]:
    m = _common_rows(task, new, serving)
    scores = [new.scores[task][m]] + ([serving.scores[task][m]] if serving is not None else [])
    users = new.users[m] if new.users is not None else None
    return auc_interval(
        scores, new.labels[task][m], users, **bootstrap
    ), "users" if users is not None else "rows"


def _hazard_interval(
    task: TaskSpec, new: Predictions, serving: Predictions | None, **bootstrap: Any
) -> tuple[MetricInterval, str]:
    """Per survival subject (the new model's grouping for both models, so the subjects pair up):
    risk = 1 - S(horizon) of the subject's mean hazards, as `recsys_mtl.evaluation` scores it."""
    m = _common_rows(task.name, new, serving)
    risks: list[np.ndarray] = []
    table = None
    for preds in [new] + ([serving] if serving is not None else []):
        rows = Predictions(
            {task.name: preds.scores[task.name]},
            new.labels,
            new.events,
            {task.name: m},
            subjects=new.subjects,
        )
        table = per_subject(task.name, rows)
        risks.append(risk_at_horizon(table.hazard))
    assert table is not None
    return c_index_interval(risks, table.interval, table.event, **bootstrap), "subjects"


def _interval(
    task: TaskSpec, new: Predictions, serving: Predictions | None, **bootstrap: Any
) -> tuple[MetricInterval, str]:
    """The task's metric interval (of new - serving when `serving` is given) and the unit resampled."""
    if task.kind == "binary":
        return _binary_interval(task.name, new, serving, **bootstrap)
    return _hazard_interval(task, new, serving, **bootstrap)


def task_metric(task: TaskSpec, preds: Predictions) -> float:
    """The task's gate metric on its evaluation rows, without an interval: AUC, or the C-index of
    the per-subject risk (NaN where undefined)."""
    return _interval(task, preds, None, confidence=0.9, resamples=0, seed=0)[0].estimate


def judge_task(
    task: TaskSpec,
    new: Predictions,
    serving: Predictions | None,
    spec: GateSpec,
    serving_version: str | None,
) -> dict[str, Any]:
    """One row of the gate table: the metric, its interval, the rule, the verdict and why."""
    paired = serving is not None and task.name in serving.scores
    other = serving if paired else None
    iv, unit = _interval(
        task, new, other, confidence=spec.confidence, resamples=spec.resamples, seed=spec.seed
    )
    metric = "auc" if task.kind == "binary" else "c_index"
    gating = task.name not in spec.report_only
    row: dict[str, Any] = {
        "task": task.name,
        "metric": metric,
        "new": _finite(iv.values[0]),
        "serving": _finite(iv.values[1]) if paired else None,
        "compared_with": "serving" if paired else "floor",
        "estimate": _finite(iv.estimate),
        "low": _finite(iv.low),
        "high": _finite(iv.high),
        "confidence": spec.confidence,
        "unit": unit,
        "clusters": iv.clusters,
        "rows": iv.rows,
        "positives": iv.positives,
        "rule": spec.rule,
        "gating": gating,
        "tolerance": spec.tolerance_for(task.name) if paired else None,
        "floor": None if paired else spec.floor_for(task.name),
    }
    threshold = -row["tolerance"] if paired else row["floor"]
    # the value the rule compares with the threshold: the interval's upper end, or the estimate
    judged = row["high"] if spec.rule == "interval" else row["estimate"]
    row["measurable"] = row["estimate"] is not None and judged is not None
    worse = row["measurable"] and judged < threshold
    row["passed"] = not (worse and gating)
    row["verdict"] = "reject" if worse and gating else ("worse (reported only)" if worse else "pass")
    row["why"] = _why(row, serving_version)
    return row


def gated_tasks(recipe: Recipe) -> list[TaskSpec]:
    spec = recipe.nightly.gate
    names = spec.tasks if spec.tasks is not None else [t.name for t in recipe.tasks]
    return [recipe.task(n) for n in names]


def quality_gate(
    recipe: Recipe,
    new_preds: Predictions,
    serving_preds: Predictions | None,
    serving_version: str | None,
) -> dict[str, Any]:
    """The decision dict: {"passed", "first_model", "reason", "serving_version", "rule",
    "confidence", "rows": [one `judge_task` row per task]}."""
    spec = recipe.nightly.gate
    rows: list[dict[str, Any]] = []
    for task in gated_tasks(recipe):
        row = judge_task(task, new_preds, serving_preds, spec, serving_version)
        if not row["measurable"] and spec.tasks is not None and row["gating"]:
            # named in `tasks`: a day that cannot measure it cannot pass it
            row.update(
                passed=False, verdict="reject", why=f"{task.name}: {row['metric']} undefined on the day"
            )
        rows.append(row)
    first = serving_preds is None
    failed = [r for r in rows if not r["passed"]]
    measured = [r for r in rows if r["measurable"]]
    if not measured:
        reason = "no task could be measured on the held-out day"
    elif failed:
        reason = "rejected: " + "; ".join(r["why"] for r in failed)
    elif first:
        reason = "first model: no gating task is shown to be below its floor"
    else:
        reason = (
            f"no gating task is shown to be worse than serving v{serving_version} by more than its tolerance"
        )
    return {
        "passed": bool(measured) and not failed,
        "first_model": first,
        "reason": reason,
        "serving_version": serving_version,
        "rule": spec.rule,
        "confidence": spec.confidence,
        "rows": rows,
    }


def _g(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _why(r: dict[str, Any], serving_version: str | None) -> str:
    """One sentence: what the rule saw for this task."""
    name = f"{r['task']} {'AUC' if r['metric'] == 'auc' else 'C-index'}"
    if not r["measurable"]:
        return f"{name}: undefined on the day (one class only or no events), not judged"
    sign = "+.4f" if r["compared_with"] == "serving" else ".4f"
    interval = f"{r['confidence']:.0%} interval {_g(r['low'], sign)} to {_g(r['high'], sign)}"
    kind = "positives" if r["metric"] == "auc" else "events"
    evidence = f"{interval}; {r['clusters']:,} {r['unit']}, {r['positives']:,} {kind}"
    judged = "its upper end" if r["rule"] == "interval" else "the estimate"
    below = "below" if r["verdict"] != "pass" else "not below"
    if r["compared_with"] == "serving":
        what = f"{name} new - serving v{serving_version} = {r['estimate']:+.4f} ({evidence})"
        return f"{what}: {judged} is {below} -{r['tolerance']:g}"
    what = f"{name} {r['estimate']:.4f} ({evidence})"
    return f"{what}: {judged} is {below} the floor {r['floor']:g}"


GATE_TABLE_HEADER = [
    "task",
    "metric",
    "new",
    "serving",
    "difference",
    "interval",
    "evidence",
    "rule",
    "verdict",
]


def gate_table(decision: dict[str, Any]) -> list[list[str]]:
    """The gate table's cells, one list per task (the log and the report show the same table)."""
    out = []
    for r in decision.get("rows") or []:
        paired = r["compared_with"] == "serving"
        sign = "+.4f" if paired else ".4f"
        kind = "pos" if r["metric"] == "auc" else "events"
        judged = "high" if r["rule"] == "interval" else "estimate"
        threshold = f"-{r['tolerance']:g}" if paired else f"{r['floor']:g} (floor)"
        out.append(
            [
                r["task"],
                r["metric"],
                _g(r["new"]),
                _g(r["serving"]),
                _g(r["estimate"], "+.4f") if paired else "-",
                f"{r['confidence']:.0%} [{_g(r['low'], sign)}, {_g(r['high'], sign)}]",
                f"{r['clusters']:,} {r['unit']}, {r['positives']:,} {kind}",
                f"{judged} >= {threshold}" + ("" if r["gating"] else ", report only"),
                r["verdict"],
            ]
        )
    return out


def gate_table_lines(decision: dict[str, Any]) -> list[str]:
    """The gate table as aligned text lines, header first."""
    rows = [GATE_TABLE_HEADER, *gate_table(decision)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(GATE_TABLE_HEADER))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
