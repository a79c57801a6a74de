"""The nightly job's report: one self-contained HTML page and its PNG plots, per nightly run.

The nightly job trains a new model, scores the held-out day with it and with the serving model, and
gates publishing on the comparison. The gate's verdict is one line; this report is what a person
reads to trust it, or to find out why a run was rejected, without re-running anything:

- the decision in a coloured banner (published / rejected, and the gate's reason);
- the gate table (per task the gated metric, new vs serving, the difference with its paired
  bootstrap interval, the evidence behind it, the rule and the verdict)
  and the fuller metrics of both models (AUC, GAUC, logloss, ECE, ...; C-index, IBS, ...), because a
  gate on one metric can hide a regression in another (a better AUC with a broken calibration);
- the data validation checks and the time each pipeline step took (a slow or failing step shows up
  here before it becomes an outage);
- per binary task a ROC curve and a reliability curve of both models on the same axes: ranking and
  calibration can move independently, and the gate only looks at ranking;
- new vs known items (cold start, `recsys_mtl.cold_start`): per task and model the AUC / C-index,
  oracle lift and logloss on the rows of items new to the new model (held out of its training by
  `data.holdout_items`, or absent from its training window) and on the known items' rows apart:
  the number that says whether new creatives get good predictions;
- the new model's calibration (recsys_mtl/calibration.py): its map is fitted on the validation day,
  and a table shows per binary task ECE, pred/obs and AUC before and after it (out-of-fold: each
  half of the users calibrated by the map fitted on the other half), with the out-of-fold
  calibrated curve added to the reliability plot; the serving model's scores are its artifact's,
  already calibrated by the map it was published with;
- per hazard task the predicted survival curves of the new model by predicted-risk decile against
  the Kaplan-Meier curve of each decile's observed lifetimes: the C-index says the order is right,
  this plot says whether the predicted curves have the right level and shape per risk group;
- for mixture-of-experts models the mean gate weight per task and expert and each expert's share of
  zero activations (expert collapse and degradation, the faults HoME is about: recsys_mtl/models/home.py);
- the training loss curve (divergence, or a warm start that did not take).

Where it lives: this module gathers what the page shows and renders it with Jinja2 from
`pipelines/templates/report.html.j2` (autoescaped: every value is escaped except the PASS/FAIL badges
the template builds); `pipelines.report_plots` draws the plots (matplotlib's object API, never
pyplot), `recsys_mtl.curves` computes their curves and `pipelines.report_format` writes numbers as
text. Every plot is optional: a task with one class in the held-out rows, no rows at all, no serving
model, no experts or no loss history skip that plot with a note in the page instead of failing the
nightly job after the expensive steps have run. Undefined numbers (NaN, or null in the JSON metrics)
render as "n/a".
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from pipelines import report_plots as plots
from pipelines.gate import GATE_TABLE_HEADER, gate_table
from pipelines.report_format import as_float, num, value_text
from pipelines.report_plots import risk_groups as risk_groups  # re-exported: public API
from recsys_mtl.evaluation import Predictions
from recsys_mtl.recipe import Recipe, TaskSpec

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"  # in pipelines/templates/, shipped as package data


# --------------------------------------------------------------------------------------------
# What the template is given
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Badge:
    """A PASS / FAIL / n/a badge in a table cell (`passed` True / False / None), then `suffix` text."""

    passed: Any
    suffix: str = ""


@dataclass
class Table:
    """An HTML table: every cell is text, escaped by the template, or a `Badge`."""

    header: list[str]
    rows: list[list[Any]] = field(default_factory=list)


def _figure(path: Path, alt: str) -> dict[str, str]:
    """An <img> of a PNG beside the page, referred to by its file name."""
    return {"src": path.name, "alt": alt}


def _file_stem(text: str) -> str:
    """A file-name-safe form of a task name (recipes restrict them already; this is belt and braces)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "task"


@functools.cache
def _template() -> jinja2.Template:
    """The page template, read from the installed package (importlib.resources: a wheel or a checkout)."""
    source = (importlib.resources.files("pipelines") / "templates" / TEMPLATE).read_text("utf-8")
    env = jinja2.Environment(
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.tests["badge"] = lambda value: isinstance(value, Badge)
    return env.from_string(source)


# --------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------


def _write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename, so a reader of the registry never sees half a file."""
    from recsys_mtl.atomic_files import write_bytes_atomic

    write_bytes_atomic(os.fspath(path), data)


def _write_png(path: Path, png: bytes, written: list[Path]) -> Path:
    _write_bytes(path, png)
    written.append(path)
    return path


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _banner(decision: dict[str, Any]) -> dict[str, Any]:
    details: list[str] = []
    if decision.get("reason"):
        details.append(str(decision["reason"]))
    if decision.get("first_model"):
        details.append("first model: no serving model to compare with")
    elif decision.get("serving_version"):
        details.append(f"compared with serving version {decision['serving_version']}")
    return {"passed": bool(decision.get("passed")), "details": details}


def _gate_table(decision: dict[str, Any]) -> dict[str, Any]:
    """The gate table (`pipelines.gate.gate_table`, its verdicts as badges) and the note that
    explains it; no table when the gate compared no metrics."""
    rows: list[list[Any]] = gate_table(decision)
    if not rows:
        return {"table": None, "explain": None}
    verdict = len(GATE_TABLE_HEADER) - 1
    for cells, r in zip(rows, decision["rows"], strict=True):
        worse = r.get("verdict") == "worse (reported only)"
        cells[verdict] = Badge(r.get("passed"), " worse, reported only" if worse else "")
    rule = (
        "reject a task when the interval's upper end is below the threshold (the evidence says the "
        "new model is worse by more than the tolerance)"
        if decision.get("rule") == "interval"
        else "reject a task when the estimate is below the threshold"
    )
    explain = (
        f"difference: new - serving on the rows both models score; interval: "
        f"{num(decision.get('confidence'), 2)} paired cluster bootstrap (users for binary tasks, "
        f"survival subjects for hazard tasks); rule: {rule}."
    )
    return {"table": Table(list(GATE_TABLE_HEADER), rows), "explain": explain}


_BINARY_COLUMNS = [
    ("rows", "rows", 0),
    ("AUC", "auc", 4),
    ("GAUC", "gauc", 4),
    ("logloss", "logloss", 4),
    ("ECE", "ece", 4),
    ("pred/obs", "pred_obs_ratio", 3),
    ("oracle AUC", "oracle_auc", 4),
    ("oracle lift", "oracle_lift", 3),
]
_HAZARD_COLUMNS = [
    ("subjects", "subjects", 0),
    ("events", "events", 0),
    ("C-index", "c_index", 4),
    ("td-AUC", "td_auc", 4),
    ("IBS", "ibs", 4),
    ("S(t) max error", "max_abs_error", 4),
    ("oracle C-index", "oracle_c_index", 4),
    ("oracle IBS", "oracle_ibs", 4),
    ("oracle lift", "oracle_lift", 3),
]


def _metric(task_metrics: dict[str, Any], key: str) -> Any:
    if key == "max_abs_error":  # the survival calibration's summary lives one level down
        return (task_metrics.get("calibration") or {}).get(key)
    if key == "subjects":  # metrics written before the key existed call them creatives
        return task_metrics.get(key, task_metrics.get("creatives"))
    return task_metrics.get(key)


def _metrics_tables(
    recipe: Recipe, new_metrics: dict[str, Any], serving_metrics: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Per kind of task, one row per (task, model) with every metric compute_metrics gives."""
    new_tasks = new_metrics.get("tasks") or {}
    old_tasks = (serving_metrics or {}).get("tasks") or {}
    out: list[dict[str, Any]] = []
    for kind, columns, title in (
        ("binary", _BINARY_COLUMNS, "Binary tasks"),
        ("hazard", _HAZARD_COLUMNS, "Hazard tasks (per survival subject)"),
    ):
        tasks = [t.name for t in recipe.tasks if t.kind == kind]
        if not tasks:
            continue
        if kind == "hazard":  # name what the subjects are: the column that identifies them
            cols = ", ".join(dict.fromkeys(recipe.subject_column(t) for t in tasks))
            title = f"Hazard tasks (per survival subject: {cols})"
        # Oracle columns exist on synthetic data only: show them only when some task has them.
        shown = [
            c
            for c in columns
            if not c[1].startswith("oracle")
            or any(c[1] in m for m in (*(new_tasks.get(t, {}) for t in tasks), *old_tasks.values()))
        ]
        rows: list[list[Any]] = []
        for t in tasks:
            for model, metrics in (("new", new_tasks.get(t)), ("serving", old_tasks.get(t))):
                if model == "serving" and serving_metrics is None:
                    continue
                if metrics is None:
                    rows.append([t, model, *("n/a" for _ in shown)])
                    continue
                rows.append([t, model, *(num(_metric(metrics, key), digits) for _, key, digits in shown)])
        out.append({"title": title, "table": Table(["task", "model", *(c[0] for c in shown)], rows)})
    return out


def _cold_start_section(
    recipe: Recipe, new_metrics: dict[str, Any], serving_metrics: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Per task and model, new vs known items (metrics.json's "cold_start"); None when the day had
    no new item (or the metrics were computed without a split)."""
    cs = new_metrics.get("cold_start")
    if not cs:
        return None
    models = [("new", cs)]
    if serving_metrics is not None:
        models.append(("serving", serving_metrics.get("cold_start") or {}))
    has_oracle = any(
        "oracle_lift" in m for _, c in models for g in ("new", "known") for m in (c.get(g) or {}).values()
    )
    header = ["task", "model", "metric", "new items", "known items", "new - known"]
    header += ["oracle lift new", "oracle lift known"] if has_oracle else []
    header += ["logloss new", "logloss known"]
    rows: list[list[Any]] = []
    for t in recipe.tasks:
        key, metric = ("auc", "AUC") if t.kind == "binary" else ("c_index", "C-index")
        for model, c in models:
            new, known = (c.get("new") or {}).get(t.name), (c.get("known") or {}).get(t.name)
            if new is None or known is None:
                rows.append([t.name, model, metric, *("n/a" for _ in header[3:])])
                continue
            a, b = as_float(new.get(key)), as_float(known.get(key))
            diff = a - b if a is not None and b is not None else None
            row = [t.name, model, metric, num(a, 4), num(b, 4), num(diff, 4, signed=True)]
            if has_oracle:
                row += [num(new.get("oracle_lift"), 3), num(known.get("oracle_lift"), 3)]
            row += [num(new.get("logloss"), 4), num(known.get("logloss"), 4)]
            rows.append(row)
    days = cs.get("train_days")
    known_from = (
        f" or absent from the new model's training days {days[0]}..{days[-1]}"
        if days
        else " (the training days were unknown: the hash alone decided)"
    )
    r, i = cs.get("rows") or {}, cs.get("items") or {}
    explain = (
        f"New items: held out of training (data.holdout_items = {num(cs.get('holdout_items'), 3)})"
        f"{known_from}: {num(i.get('new'), 0)} items, {num(r.get('new'), 0)} rows; known items: "
        f"{num(i.get('known'), 0)} items, {num(r.get('known'), 0)} rows. Both models are scored on the "
        "same rows; hazard tasks per survival subject."
    )
    return {"table": Table(header, rows), "explain": explain}


def _calibration_section(new_metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Before/after calibration of the new model per binary task (the metrics' "calibrated"
    entries); None when the new model has no map."""
    info = new_metrics.get("calibration")
    tasks = {n: m for n, m in (new_metrics.get("tasks") or {}).items() if "calibrated" in m}
    if not info or not tasks:
        return None
    header = ["task", "rows", "ECE before", "ECE after", "pred/obs before", "pred/obs after"]
    header += ["AUC before", "AUC after"]
    rows = [
        [
            n,
            num(m.get("rows"), 0),
            num(m.get("ece"), 4),
            num(m["calibrated"].get("ece"), 4),
            num(m.get("pred_obs_ratio"), 3),
            num(m["calibrated"].get("pred_obs_ratio"), 3),
            num(m.get("auc"), 4),
            num(m["calibrated"].get("auc"), 4),
        ]
        for n, m in tasks.items()
    ]
    days = ", ".join(info.get("fitted_on_days") or []) or "?"
    explain = (
        f"Map: {info.get('method')}, fitted on {days}; the artifact published carries it. After: "
        f"{info.get('kind')} ({info.get('folds')} folds by user). AUC after is the published map's, "
        "the same as before for head tasks (a strictly increasing map); products are recomputed from "
        "the calibrated factors."
    )
    return {"table": Table(header, rows), "explain": explain}


def _validation_section(validation: dict[str, Any]) -> dict[str, Any] | None:
    if not validation:
        return None
    checks = validation.get("checks") or []
    shown = None
    if checks:
        rows: list[list[Any]] = []
        for c in checks:
            c = c if isinstance(c, dict) else {"name": str(c)}
            rows.append(
                [
                    str(c.get("name", "")),
                    value_text(c.get("value")),
                    value_text(c.get("bounds"), none="-"),
                    Badge(c.get("passed")),
                ]
            )
        failed = sum(1 for c in checks if isinstance(c, dict) and c.get("passed") is False)
        table = Table(["check", "value", "bounds", "result"], rows)
        shown = {"number": len(checks), "failed": failed, "table": table}
    # Anything else the validation step reports (row counts, an overall verdict, errors) as-is.
    extra = {k: v for k, v in validation.items() if k != "checks"}
    extra_rows: list[list[Any]] = [[str(k), value_text(v)] for k, v in extra.items()]
    return {"checks": shown, "extra": Table(["field", "value"], extra_rows) if extra else None}


def _timings_section(timings: dict[str, float]) -> Table | None:
    if not timings:
        return None
    values = {k: as_float(v) for k, v in timings.items()}
    total = sum(v for v in values.values() if v is not None and math.isfinite(v))
    rows: list[list[Any]] = [
        [str(k), num(v, 1), "n/a" if v is None or not total else f"{100 * v / total:.0f}%"]
        for k, v in values.items()
    ]
    rows.append(["total", num(total, 1), "100%" if total else "n/a"])
    return Table(["step", "seconds", "share"], rows)


def _tasks_section(recipe: Recipe) -> Table:
    rows: list[list[Any]] = []
    for t in recipe.tasks:
        if t.kind == "binary":
            label = t.label if isinstance(t.label, str) else " AND ".join(t.label or [])
            detail = f"label {label}"
            if t.product_of:
                detail += f"; product of {' x '.join(t.product_of)}"
            if t.eval_on:
                detail += f"; evaluated on {t.eval_on} rows"
        else:
            assert t.grid is not None
            detail = (
                f"{t.num_intervals} intervals up to {t.grid[-1]:g} {t.unit}; risk = 1 - S({t.grid[-1]:g})"
            )
        rows.append([t.name, t.kind, detail])
    return Table(["task", "kind", "definition"], rows)


# --------------------------------------------------------------------------------------------
# Plots: drawn by pipelines.report_plots, written here
# --------------------------------------------------------------------------------------------


def _task_plots(
    out_dir: Path,
    task: TaskSpec,
    new_preds: Predictions,
    serving_preds: Predictions | None,
    written: list[Path],
    new_calibrated: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """A task's plots (written into out_dir) and the notes that go with them."""
    stem = _file_stem(task.name)
    figures: list[dict[str, str]] = []
    notes: list[str] = []
    if task.kind == "binary":
        new = plots.binary_rows(new_preds, task.name)
        serving = plots.binary_rows(serving_preds, task.name)
        if serving_preds is not None and serving is None:
            notes.append("The serving model has no predictions for this task.")
        if new is None or len(new[0]) == 0:
            notes.append("No held-out rows for this task: no ROC or reliability curve.")
        else:
            if new[1].min() == new[1].max():
                cls = "positive" if new[1][0] > 0 else "negative"
                notes.append(f"Only {cls} labels in the held-out rows: AUC is undefined, no ROC curve.")
            else:
                png = plots.plot_roc(task.name, new, serving)
                p = _write_png(out_dir / f"roc_{stem}.png", png, written)
                figures.append(_figure(p, f"ROC curve of {task.name}"))
            calibrated = None
            if new_calibrated and task.name in new_calibrated:
                calibrated = plots.binary_rows(new_preds.replace_scores(dict(new_calibrated)), task.name)
            png = plots.plot_calibration(task.name, new, serving, calibrated)
            p = _write_png(out_dir / f"calibration_{stem}.png", png, written)
            figures.append(_figure(p, f"reliability curve of {task.name}"))
    else:
        survival, info = plots.plot_survival(task, new_preds)
        if survival is None:
            notes.append(f"No survival plot: {info}.")
        else:
            p = _write_png(out_dir / f"survival_{stem}.png", survival, written)
            figures.append(_figure(p, f"survival curves of {task.name}"))
            notes.append(
                f"New model, {info}. Dashed: the group's mean predicted survival; solid: the "
                "Kaplan-Meier curve of its observed lifetimes (same colour, same group)."
            )
    return {"name": task.name, "kind": task.kind, "notes": notes, "figures": figures}


def _expert_plots(out_dir: Path, experts: dict[str, Any], written: list[Path]) -> dict[str, Any] | None:
    """The expert plots (written into out_dir); None for a model without expert diagnostics."""
    if not experts or not (experts.get("gate_weights") or experts.get("zero_share")):
        return None
    figures: list[dict[str, str]] = []
    heat = plots.plot_gate_heatmap(experts)
    if heat is not None:
        p = _write_png(out_dir / "expert_gates.png", heat, written)
        figures.append(_figure(p, "mean gate weight per task and expert"))
    zero = plots.plot_zero_share(experts)
    if zero is not None:
        p = _write_png(out_dir / "expert_zero_share.png", zero, written)
        figures.append(_figure(p, "zero-activation share per expert"))
    return {"rows": num(experts.get("rows")), "figures": figures}


def _loss_plot(out_dir: Path, loss_history: list[dict[str, Any]], written: list[Path]) -> dict[str, Any]:
    """The training loss plot (written into out_dir) and the last point of the history."""
    png = plots.plot_loss(loss_history or [])
    if png is None:
        return {"figure": None, "recorded": bool(loss_history)}
    p = _write_png(out_dir / "training_loss.png", png, written)
    last = loss_history[-1]
    return {
        "figure": _figure(p, "training loss"),
        "recorded": True,
        "step": num(last.get("step")),
        "loss": num(as_float(last.get("loss"))),
        "samples": num(last.get("samples")),
    }


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def write_report(
    out_dir: Path,
    *,
    name: str,
    date: str,
    recipe: Recipe,
    decision: dict[str, Any],
    new_preds: Predictions,
    serving_preds: Predictions | None,
    new_metrics: dict[str, Any],
    serving_metrics: dict[str, Any] | None,
    experts: dict[str, Any],
    loss_history: list[dict[str, Any]],
    validation: dict[str, Any],
    timings: dict[str, float],
    new_calibrated: Mapping[str, np.ndarray] | None = None,
) -> list[Path]:
    """Write report.html and PNG plots into out_dir; return the paths written.

    `new_calibrated`: the new model's out-of-fold calibrated probabilities per binary task (from
    `recsys_mtl.calibration.fit_and_report`), drawn beside its raw reliability curve.

    `out_dir` is created if needed. PNGs come first in the returned list and report.html last; the
    page refers to each PNG by its file name, so the directory can be moved or served as a whole.
    Each file is written under a temporary name and renamed. See the module docstring for content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # Plots in page order: each PNG is written as it is drawn, report.html last.
    task_sections = [
        _task_plots(out_dir, t, new_preds, serving_preds, written, new_calibrated) for t in recipe.tasks
    ]
    expert_section = _expert_plots(out_dir, experts, written)
    loss_section = _loss_plot(out_dir, loss_history, written)
    page = _template().render(
        title=f"{name} nightly report, {date}",
        recipe_name=recipe.name,
        model_type=getattr(recipe.model, "type", "?"),
        num_rows=f"{new_preds.num_rows:,}",
        banner=_banner(decision),
        gate=_gate_table(decision),
        has_serving_metrics=serving_metrics is not None,
        metrics_tables=_metrics_tables(recipe, new_metrics, serving_metrics),
        cold_start=_cold_start_section(recipe, new_metrics, serving_metrics),
        calibration=_calibration_section(new_metrics),
        tasks_table=_tasks_section(recipe),
        has_serving_preds=serving_preds is not None,
        task_sections=task_sections,
        experts=expert_section,
        loss=loss_section,
        validation=_validation_section(validation),
        timings=_timings_section(timings),
    )
    report = out_dir / REPORT_NAME
    _write_bytes(report, page.encode("utf-8"))
    written.append(report)
    return written
