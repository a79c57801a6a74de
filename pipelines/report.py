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
- per hazard task the predicted survival curves of the new model by predicted-risk decile against
  the Kaplan-Meier curve of each decile's observed lifetimes: the C-index says the order is right,
  this plot says whether the predicted curves have the right level and shape per risk group;
- for mixture-of-experts models the mean gate weight per task and expert and each expert's share of
  zero activations (expert collapse and degradation, the faults HoME is about: recsys_mtl/models/home.py);
- the training loss curve (divergence, or a warm start that did not take).

Plots are drawn with matplotlib's object API on the Agg canvas (`Figure` + `FigureCanvasAgg`), never
through pyplot: that changes no global backend state of the process that calls us and leaves no
figures registered in pyplot to leak. Every plot is optional: a task with one class in the held-out
rows, no rows at all, no serving model, no experts or no loss history skip that plot with a note in
the page instead of failing the nightly job after the expensive steps have run. Undefined numbers
(NaN, or null in the JSON metrics) render as "n/a".
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from PIL import Image

from pipelines.gate import GATE_TABLE_HEADER, gate_table
from recsys_mtl.evaluation import Predictions, per_creative
from recsys_mtl.metrics import auc, kaplan_meier, survival_from_hazard
from recsys_mtl.recipe import Recipe, TaskSpec

REPORT_NAME = "report.html"
# 100 dpi at 5-7 inches: legible on a laptop screen; with palette PNGs (`_save`) 10-35 KB per plot.
DPI = 100
CALIBRATION_BINS = 10
# ROC curves with more distinct thresholds than this are drawn on a fixed FPR grid: millions of
# held-out rows would otherwise make a slow, heavy plot that looks the same.
ROC_MAX_POINTS = 2000
NEW_COLOUR, SERVING_COLOUR = "#1f77b4", "#ff7f0e"


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    """None or a non-finite number: the metrics' "undefined" (JSON metrics hold null, raw ones NaN)."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return not math.isfinite(float(value))
    return False


def _num(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A number for a table cell; "n/a" when undefined."""
    if _is_missing(value):
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):+,}" if signed else f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"
    return str(value)


def _value(value: Any, limit: int = 300, none: str = "n/a") -> str:
    """Any free-form value (validation results are not typed) as short plain text; `none` is what
    None reads as (a missing bound means "unbounded", not "undefined")."""
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_value(v, limit, none)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_value(v, limit, none) for v in value) + "]"
    elif isinstance(value, np.ndarray):
        text = _value(value.tolist(), limit, none)
    elif value is None:
        text = none
    elif isinstance(value, float | np.floating) and not _is_missing(value):
        text = f"{float(value):.6g}"
    else:
        text = _num(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(passed: Any) -> str:
    if passed is None:
        return '<span class="badge na">n/a</span>'
    return '<span class="badge pass">PASS</span>' if passed else '<span class="badge fail">FAIL</span>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], raw_cols: Iterable[int] = ()) -> str:
    """An HTML table; cells are escaped except the columns in `raw_cols` (badges we built)."""
    raw = set(raw_cols)
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw else _esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _label(text: str) -> str:
    """Plot text: matplotlib reads $...$ as mathtext, and an expert or task name is not one."""
    return str(text).replace("$", r"\$")


def _file_stem(text: str) -> str:
    """A file-name-safe form of a task name (recipes restrict them already; this is belt and braces)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "task"


# --------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------


def _write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename, so a reader of the registry never sees half a file."""
    from recsys_mtl.atomic_files import write_bytes_atomic

    write_bytes_atomic(os.fspath(path), data)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Render and write a figure as a 256-colour palette PNG.

    Plots are a few flat colours plus antialiasing, so a palette loses nothing visible and makes the
    files about three times smaller than matplotlib's RGBA PNGs (a report with a dozen plots: ~200 KB
    instead of ~550 KB beside every published model). Pillow is a dependency of matplotlib.
    """
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    _write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# Binary tasks: ROC and reliability curves
# --------------------------------------------------------------------------------------------


def _binary_rows(preds: Predictions | None, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, labels) of a binary task's eval rows; None when these predictions lack the task (a
    serving model trained on an older recipe) or its scores are not one value per row."""
    if preds is None or any(task not in d for d in (preds.scores, preds.labels, preds.eval_mask)):
        return None
    mask = np.asarray(preds.eval_mask[task], dtype=bool)
    scores = np.asarray(preds.scores[task])
    if scores.ndim != 1 or len(scores) != len(mask):
        return None
    p = scores[mask].astype(np.float64)
    y = (np.asarray(preds.labels[task])[mask] > 0).astype(np.float64)
    ok = np.isfinite(p)  # a NaN score (a broken model) must not break the plot of the other model
    return p[ok], y[ok]


def _roc_curve(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); both classes must be present."""
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # ties move together
    tp = np.cumsum(y)[last_of_threshold]
    fp = (last_of_threshold + 1) - tp
    fpr = np.r_[0.0, fp / fp[-1]]
    tpr = np.r_[0.0, tp / tp[-1]]
    if len(fpr) > ROC_MAX_POINTS:
        grid = np.unique(np.r_[np.linspace(0, 1, ROC_MAX_POINTS // 2), np.geomspace(1e-4, 1, 200)])
        tpr = np.interp(grid, fpr, tpr)
        fpr = grid
    return fpr, tpr


def _plot_roc(
    path: Path, task: str, new: tuple[np.ndarray, np.ndarray], serving: tuple[np.ndarray, np.ndarray] | None
) -> Path:
    fig = _new_figure(5.0, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    for label, rows, colour in (("new", new, NEW_COLOUR), ("serving", serving, SERVING_COLOUR)):
        if rows is None:
            continue
        p, y = rows
        if y.min() == y.max():  # this model's rows hold one class only: no curve to draw
            continue
        fpr, tpr = _roc_curve(p, y)
        ax.plot(fpr, tpr, color=colour, linewidth=1.6, label=f"{label} (AUC {_num(auc(p, y))})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(_label(f"{task}: ROC ({len(new[0]):,} rows)"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _reliability(p: np.ndarray, y: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted, observed rate) in equal-count bins of the predicted probability.

    Equal-count (quantile) bins rather than the equal-width bins of the ECE metric: CVR and CTCVR
    probabilities sit in the lowest percent, where equal-width bins would put nearly every row into
    one bin and leave nothing to see. Bins are cut by rank, so ties and tiny data never fail.
    """
    n_bins = max(1, min(bins, len(p)))
    chunks = [c for c in np.array_split(np.argsort(p, kind="stable"), n_bins) if len(c)]
    return np.array([p[c].mean() for c in chunks]), np.array([y[c].mean() for c in chunks])


def _plot_calibration(
    path: Path, task: str, new: tuple[np.ndarray, np.ndarray], serving: tuple[np.ndarray, np.ndarray] | None
) -> Path:
    fig = _new_figure(5.0, 4.4)
    ax = fig.add_subplot()
    top = 0.0
    for label, rows, colour in (("new", new, NEW_COLOUR), ("serving", serving, SERVING_COLOUR)):
        if rows is None or len(rows[0]) == 0:
            continue
        pred, obs = _reliability(*rows)
        ratio = rows[0].mean() / rows[1].mean() if rows[1].mean() > 0 else float("nan")
        ax.plot(
            pred, obs, marker="o", markersize=4, color=colour, label=f"{label} (pred/obs {_num(ratio, 3)})"
        )
        top = max(top, float(pred.max()), float(obs.max()))
    # Axes span the data, not [0, 1]: a 2% conversion rate would otherwise be a dot in the corner.
    top = min(1.0, top * 1.08) if top > 0 else 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted probability", ylabel="observed rate")
    ax.set_title(_label(f"{task}: reliability, {CALIBRATION_BINS} quantile bins"), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Hazard tasks: predicted survival by risk group against Kaplan-Meier
# --------------------------------------------------------------------------------------------


def risk_groups(num_subjects: int) -> int:
    """How many predicted-risk groups to draw: deciles from 200 subjects (20 or more per group, so
    each Kaplan-Meier curve is more than a few steps), fewer groups below that."""
    if num_subjects >= 200:
        return 10
    if num_subjects >= 50:
        return 5
    if num_subjects >= 20:
        return 2
    return 1 if num_subjects > 0 else 0


def _plot_survival(path: Path, task: TaskSpec, preds: Predictions) -> tuple[Path | None, str]:
    """The survival-by-risk-group plot of a hazard task (new model), per survival subject as the
    metrics are; (None, why) when there is nothing to draw."""
    name = task.name
    if name not in preds.scores or name not in preds.eval_mask:
        return None, "no predictions for this task"
    scores = np.asarray(preds.scores[name])
    if scores.ndim != 2 or scores.shape[1] != task.num_intervals:
        return None, f"predictions have shape {scores.shape}, not [rows, {task.num_intervals}]"
    subjects = per_creative(name, preds)
    n = len(subjects.interval)
    groups = risk_groups(n)
    if groups == 0:
        return None, "no held-out survival subjects"
    surv = survival_from_hazard(subjects.hazard)
    risk = 1.0 - surv[:, -1]  # risk at the grid's horizon, as the C-index ranks subjects
    assert task.grid is not None
    t = np.asarray(task.grid, dtype=np.float64)
    # Risk ranks, not quantile values, cut the groups: many tied risks (a model that barely ranks)
    # must still give groups of equal size.
    members = np.array_split(np.argsort(risk, kind="stable"), groups)

    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    palette = colormaps["viridis"].resampled(groups)
    for g, idx in enumerate(members):
        colour = palette(g)
        predicted = np.r_[1.0, surv[idx].mean(axis=0)]
        observed = np.r_[1.0, kaplan_meier(subjects.interval[idx], subjects.event[idx], task.num_intervals)]
        ax.step(t, observed, where="post", color=colour, linewidth=1.5)
        ax.plot(t, predicted, color=colour, linewidth=1.3, linestyle="--")
    # Style legend (predicted vs observed); the colour bar says which group is which.
    ax.plot([], [], color="black", linestyle="--", label="predicted S(t), group mean")
    ax.plot([], [], color="black", linewidth=1.5, label="Kaplan-Meier, observed")
    ax.legend(loc="lower left", fontsize=8)
    if groups > 1:
        norm = BoundaryNorm(np.arange(groups + 1) + 0.5, palette.N)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=palette), ax=ax, ticks=np.arange(1, groups + 1))
        bar.set_label("predicted-risk group (1 = lowest risk)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    ax.set(xlim=(t[0], t[-1]), ylim=(0, 1.02), xlabel=f"time ({task.unit})", ylabel="survival S(t)")
    ax.set_title(
        _label(f"{name}: survival by predicted risk, {n:,} subjects in {groups} group{'s' * (groups > 1)}"),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    if groups == 1:
        return _save(fig, path), f"too few subjects to split by risk: all {n:,} in one group"
    return _save(fig, path), f"{n:,} subjects in {groups} groups of predicted risk 1 - S(horizon)"


# --------------------------------------------------------------------------------------------
# Experts and training loss
# --------------------------------------------------------------------------------------------


def _plot_gate_heatmap(path: Path, experts: dict[str, Any]) -> Path | None:
    """Tasks x experts mean gate weights. Tasks may gate over different experts (PLE, HoME): the
    columns are the union in first-seen order and an expert outside a task's gate is left blank."""
    weights: dict[str, list[float]] = experts.get("gate_weights") or {}
    names: dict[str, list[str]] = experts.get("gate_experts") or {}
    tasks = [t for t, w in weights.items() if len(w)]
    if not tasks:
        return None
    columns: list[str] = []
    for t in tasks:
        for e in names.get(t) or [f"expert_{i}" for i in range(len(weights[t]))]:
            if e not in columns:
                columns.append(e)
    grid = np.full((len(tasks), len(columns)), np.nan)
    for i, t in enumerate(tasks):
        task_names = names.get(t) or [f"expert_{j}" for j in range(len(weights[t]))]
        for e, w in zip(task_names, weights[t], strict=False):
            grid[i, columns.index(e)] = w if w is not None else np.nan
    fig = _new_figure(min(16.0, max(5.0, 0.85 * len(columns) + 2.5)), max(2.8, 0.5 * len(tasks) + 2.2))
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    vmax = float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
    # Grey, not white: white is what a weight of 0 looks like in "Blues", and the difference between
    # "gated to 0" and "not in this gate" is the point of the plot.
    cmap = colormaps["Blues"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    for (i, j), w in np.ndenumerate(grid):
        if np.isfinite(w):
            ax.text(
                j,
                i,
                f"{w:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if w > 0.6 * vmax else "black",
            )
    ax.set_xticks(range(len(columns)), [_label(c) for c in columns], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), [_label(t) for t in tasks], fontsize=8)
    ax.set_title("mean gate weight per task and expert (grey: not in the task's gate)", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def _plot_zero_share(path: Path, experts: dict[str, Any]) -> Path | None:
    share = {k: v for k, v in (experts.get("zero_share") or {}).items() if not _is_missing(v)}
    if not share:
        return None
    names = list(share)
    fig = _new_figure(6.0, max(2.5, 0.28 * len(names) + 1.4))
    ax = fig.add_subplot()
    values = np.array([share[k] for k in names], dtype=np.float64)
    ax.barh(range(len(names)), values, color=NEW_COLOUR)
    for i, v in enumerate(values):
        inside = v > 0.85  # no room right of a long bar: write inside it, in white
        ax.text(
            v - 0.01 if inside else v + 0.01,
            i,
            f"{v:.3f}",
            va="center",
            fontsize=7,
            ha="right" if inside else "left",
            color="white" if inside else "black",
        )
    ax.set_yticks(range(len(names)), [_label(n) for n in names], fontsize=7)
    ax.invert_yaxis()  # the model's expert order, top to bottom
    ax.set(xlim=(0, 1), xlabel="share of activations that are (near) zero")
    ax.set_title("zero-activation share per expert", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _plot_loss(path: Path, history: list[dict[str, Any]]) -> Path | None:
    points = [
        (float(h["step"]), float(h["loss"]))
        for h in history
        if h.get("step") is not None and not _is_missing(_as_float(h.get("loss")))
    ]
    if not points:
        return None
    steps, loss = (np.array(v) for v in zip(*sorted(points), strict=True))
    fig = _new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    ax.plot(
        steps,
        loss,
        color=NEW_COLOUR,
        linewidth=0.8,
        alpha=0.45 if len(loss) > 50 else 1.0,
        marker="o" if len(loss) < 20 else None,
        markersize=3,
        label="loss",
    )
    if len(loss) > 50:
        # A moving average shows the trend under the minibatch noise.
        w = max(5, len(loss) // 25)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        centre = steps[w // 2 : w // 2 + len(smooth)]  # centred, so the trend does not lag the data
        ax.plot(centre, smooth, color="black", linewidth=1.4, label=f"moving average ({w} points)")
    ax.set(xlabel="step", ylabel="training loss")
    ax.set_title(f"training loss ({len(loss):,} points)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# HTML sections
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
     color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:1.05em}.sub{color:#666;margin-top:0}
.banner{padding:14px 18px;border-radius:6px;color:#fff;font-size:1.1em;margin:16px 0}
.banner.published{background:#2e7d32}.banner.rejected{background:#c62828}
.banner .detail{font-size:.85em;opacity:.9;margin-top:4px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left}
.badge{padding:1px 8px;border-radius:3px;color:#fff;font-size:.85em;font-weight:600}
.badge.pass{background:#2e7d32}.badge.fail{background:#c62828}.badge.na{background:#888}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.plots img{max-width:100%;border:1px solid #eee}
.note{color:#8a6d3b;background:#fcf8e3;padding:6px 10px;border-radius:4px;display:inline-block}
""".strip()


def _banner(decision: dict[str, Any]) -> str:
    passed = bool(decision.get("passed"))
    # written before the export: "passed" is what is known then (the version dir holds this page)
    headline = (
        "QUALITY GATE PASSED: published with this report"
        if passed
        else "REJECTED: quality gate failed, nothing published"
    )
    details: list[str] = []
    if decision.get("reason"):
        details.append(str(decision["reason"]))
    if decision.get("first_model"):
        details.append("first model: no serving model to compare with")
    elif decision.get("serving_version"):
        details.append(f"compared with serving version {decision['serving_version']}")
    css = "published" if passed else "rejected"
    detail = "".join(f'<div class="detail">{_esc(d)}</div>' for d in details)
    return f'<div class="banner {css}"><strong>{_esc(headline)}</strong>{detail}</div>'


def _gate_table(decision: dict[str, Any]) -> str:
    rows = gate_table(decision)
    if not rows:
        return _note("The gate compared no metrics.")
    verdict = len(GATE_TABLE_HEADER) - 1
    for cells, r in zip(rows, decision["rows"], strict=True):
        worse = r.get("verdict") == "worse (reported only)"
        cells[verdict] = _badge(r.get("passed")) + (" worse, reported only" if worse else "")
    rule = (
        "reject a task when the interval's upper end is below the threshold (the evidence says the "
        "new model is worse by more than the tolerance)"
        if decision.get("rule") == "interval"
        else "reject a task when the estimate is below the threshold"
    )
    explain = _note(
        f"difference: new - serving on the rows both models score; interval: "
        f"{_num(decision.get('confidence'), 2)} paired cluster bootstrap (users for binary tasks, "
        f"survival subjects for hazard tasks); rule: {rule}."
    )
    return _table(GATE_TABLE_HEADER, rows, raw_cols=[verdict]) + explain


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
    ("subjects", "creatives", 0),
    ("events", "events", 0),
    ("C-index", "c_index", 4),
    ("IBS", "ibs", 4),
    ("S(t) max error", "max_abs_error", 4),
    ("oracle C-index", "oracle_c_index", 4),
    ("oracle IBS", "oracle_ibs", 4),
    ("oracle lift", "oracle_lift", 3),
]


def _metric(task_metrics: dict[str, Any], key: str) -> Any:
    if key == "max_abs_error":  # the survival calibration's summary lives one level down
        return (task_metrics.get("calibration") or {}).get(key)
    return task_metrics.get(key)


def _metrics_tables(
    recipe: Recipe, new_metrics: dict[str, Any], serving_metrics: dict[str, Any] | None
) -> str:
    """Per kind of task, one row per (task, model) with every metric compute_metrics gives."""
    new_tasks = new_metrics.get("tasks") or {}
    old_tasks = (serving_metrics or {}).get("tasks") or {}
    out: list[str] = []
    for kind, columns, title in (
        ("binary", _BINARY_COLUMNS, "Binary tasks"),
        ("hazard", _HAZARD_COLUMNS, "Hazard tasks (per survival subject)"),
    ):
        tasks = [t.name for t in recipe.tasks if t.kind == kind]
        if not tasks:
            continue
        # Oracle columns exist on synthetic data only: show them only when some task has them.
        shown = [
            c
            for c in columns
            if not c[1].startswith("oracle")
            or any(c[1] in m for m in (*(new_tasks.get(t, {}) for t in tasks), *old_tasks.values()))
        ]
        rows: list[list[str]] = []
        for t in tasks:
            for model, metrics in (("new", new_tasks.get(t)), ("serving", old_tasks.get(t))):
                if model == "serving" and serving_metrics is None:
                    continue
                if metrics is None:
                    rows.append([t, model, *("n/a" for _ in shown)])
                    continue
                rows.append([t, model, *(_num(_metric(metrics, key), digits) for _, key, digits in shown)])
        out.append(f"<h3>{_esc(title)}</h3>")
        out.append(_table(["task", "model", *(c[0] for c in shown)], rows))
    return "\n".join(out)


def _validation_section(validation: dict[str, Any]) -> str:
    if not validation:
        return _note("No validation result was given.")
    parts: list[str] = []
    checks = validation.get("checks") or []
    if checks:
        rows = []
        for c in checks:
            c = c if isinstance(c, dict) else {"name": str(c)}
            rows.append(
                [
                    str(c.get("name", "")),
                    _value(c.get("value")),
                    _value(c.get("bounds"), none="-"),
                    _badge(c.get("passed")),
                ]
            )
        failed = sum(1 for c in checks if isinstance(c, dict) and c.get("passed") is False)
        parts.append(f"<p>{len(checks)} checks, {failed} failed.</p>")
        parts.append(_table(["check", "value", "bounds", "result"], rows, raw_cols=[3]))
    else:
        parts.append(_note("The validation result lists no checks."))
    # Anything else the validation step reports (row counts, an overall verdict, errors) as-is.
    extra = {k: v for k, v in validation.items() if k != "checks"}
    if extra:
        parts.append(_table(["field", "value"], ([str(k), _value(v)] for k, v in extra.items())))
    return "\n".join(parts)


def _timings_section(timings: dict[str, float]) -> str:
    if not timings:
        return _note("No step timings were given.")
    values = {k: _as_float(v) for k, v in timings.items()}
    total = sum(v for v in values.values() if v is not None and math.isfinite(v))
    rows = [
        [str(k), _num(v, 1), "n/a" if v is None or not total else f"{100 * v / total:.0f}%"]
        for k, v in values.items()
    ]
    rows.append(["total", _num(total, 1), "100%" if total else "n/a"])
    return _table(["step", "seconds", "share"], rows)


def _tasks_section(recipe: Recipe) -> str:
    rows = []
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
    return _table(["task", "kind", "definition"], rows)


def _img(path: Path, alt: str) -> str:
    return f'<img src="{_esc(path.name)}" alt="{_esc(alt)}">'


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
) -> list[Path]:
    """Write report.html and PNG plots into out_dir; return the paths written.

    `out_dir` is created if needed. PNGs come first in the returned list and report.html last; the
    page refers to each PNG by its file name, so the directory can be moved or served as a whole.
    Each file is written under a temporary name and renamed. See the module docstring for content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    body: list[str] = []

    title = f"{name} nightly report, {date}"
    model_type = getattr(recipe.model, "type", "?")
    body.append(f"<h1>{_esc(title)}</h1>")
    body.append(
        f'<p class="sub">recipe {_esc(recipe.name)}, model {_esc(model_type)}, '
        f"{new_preds.num_rows:,} held-out rows</p>"
    )
    body.append(_banner(decision))

    body.append("<h2>Quality gate</h2>")
    body.append(_gate_table(decision))
    body.append("<h2>Metrics, new vs serving</h2>")
    if serving_metrics is None:
        body.append(_note("No serving model: metrics of the new model only."))
    body.append(_metrics_tables(recipe, new_metrics, serving_metrics))
    body.append("<h2>Tasks</h2>")
    body.append(_tasks_section(recipe))

    # ---- per-task plots ----
    body.append("<h2>Per-task plots</h2>")
    if serving_preds is None:
        body.append(_note("No serving model: the plots show the new model only."))
    for task in recipe.tasks:
        stem = _file_stem(task.name)
        body.append(f"<h3>{_esc(task.name)} ({_esc(task.kind)})</h3>")
        figures: list[str] = []
        notes: list[str] = []
        if task.kind == "binary":
            new = _binary_rows(new_preds, task.name)
            serving = _binary_rows(serving_preds, task.name)
            if serving_preds is not None and serving is None:
                notes.append("The serving model has no predictions for this task.")
            if new is None or len(new[0]) == 0:
                notes.append("No held-out rows for this task: no ROC or reliability curve.")
            else:
                if new[1].min() == new[1].max():
                    cls = "positive" if new[1][0] > 0 else "negative"
                    notes.append(f"Only {cls} labels in the held-out rows: AUC is undefined, no ROC curve.")
                else:
                    p = _plot_roc(out_dir / f"roc_{stem}.png", task.name, new, serving)
                    written.append(p)
                    figures.append(_img(p, f"ROC curve of {task.name}"))
                p = _plot_calibration(out_dir / f"calibration_{stem}.png", task.name, new, serving)
                written.append(p)
                figures.append(_img(p, f"reliability curve of {task.name}"))
        else:
            p, info = _plot_survival(out_dir / f"survival_{stem}.png", task, new_preds)
            if p is None:
                notes.append(f"No survival plot: {info}.")
            else:
                written.append(p)
                figures.append(_img(p, f"survival curves of {task.name}"))
                notes.append(
                    f"New model, {info}. Dashed: the group's mean predicted survival; solid: the "
                    "Kaplan-Meier curve of its observed lifetimes (same colour, same group)."
                )
        body.extend(_note(n) for n in notes)
        if figures:
            body.append(f'<div class="plots">{"".join(figures)}</div>')

    # ---- experts ----
    body.append("<h2>Expert usage</h2>")
    if not experts or not (experts.get("gate_weights") or experts.get("zero_share")):
        body.append(_note("Not a mixture-of-experts model (or no diagnostics): no expert plots."))
    else:
        figures = []
        heat = _plot_gate_heatmap(out_dir / "expert_gates.png", experts)
        if heat is not None:
            written.append(heat)
            figures.append(_img(heat, "mean gate weight per task and expert"))
        zero = _plot_zero_share(out_dir / "expert_zero_share.png", experts)
        if zero is not None:
            written.append(zero)
            figures.append(_img(zero, "zero-activation share per expert"))
        body.append(
            "<p>A gate weight near 0 for every task means an expert nobody uses (degradation); a "
            "zero-activation share near 1 means an expert whose outputs are almost always zero "
            "(collapse). Rows seen: "
            f"{_esc(_num(experts.get('rows')))}.</p>"
        )
        body.append(f'<div class="plots">{"".join(figures)}</div>')

    # ---- training ----
    body.append("<h2>Training loss</h2>")
    loss_png = _plot_loss(out_dir / "training_loss.png", loss_history or [])
    if loss_png is None and loss_history:
        body.append(_note("The training loss history holds no finite losses: no loss curve."))
    elif loss_png is None:
        body.append(_note("No training loss history was recorded: no loss curve."))
    if loss_png is not None:
        written.append(loss_png)
        last = loss_history[-1]
        body.append(
            f"<p>Last point: step {_esc(_num(last.get('step')))}, "
            f"loss {_esc(_num(_as_float(last.get('loss'))))}, "
            f"{_esc(_num(last.get('samples')))} samples.</p>"
        )
        body.append(f'<div class="plots">{_img(loss_png, "training loss")}</div>')

    body.append("<h2>Data validation</h2>")
    body.append(_validation_section(validation))
    body.append("<h2>Step timings</h2>")
    body.append(_timings_section(timings))

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    report = out_dir / REPORT_NAME
    _write_bytes(report, page.encode("utf-8"))
    written.append(report)
    return written
