"""The nightly report's plots, each rendered to PNG bytes (`pipelines.report` writes them beside the
page): per binary task a ROC and a reliability curve of both models, per hazard task the predicted
survival by risk group against Kaplan-Meier, the experts' gate weights and zero-activation shares,
and the training loss. What each plot is for: the `pipelines.report` docstring; the curves' maths:
`recsys_mtl.curves`.

Plots are drawn with matplotlib's object API on the Agg canvas (`Figure` + `FigureCanvasAgg`), never
through pyplot: that changes no global backend state of the process that calls us and leaves no
figures registered in pyplot to leak. A plot with nothing to draw returns None (or says why).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from PIL import Image

from pipelines.report_format import as_float, is_missing, num
from recsys_mtl.curves import reliability_bins, roc_curve, survival_by_risk_group
from recsys_mtl.evaluation import Predictions, per_subject
from recsys_mtl.metrics import auc
from recsys_mtl.recipe import TaskSpec

# 100 dpi at 5-7 inches: legible on a laptop screen; with palette PNGs (`_png`) 10-35 KB per plot.
DPI = 100
CALIBRATION_BINS = 10
# ROC curves with more distinct thresholds than this are drawn on a fixed FPR grid: millions of
# held-out rows would otherwise make a slow, heavy plot that looks the same.
ROC_MAX_POINTS = 2000
NEW_COLOUR, SERVING_COLOUR = "#1f77b4", "#ff7f0e"

Rows = tuple[np.ndarray, np.ndarray]  # (scores, labels) of a binary task's eval rows


def _label(text: str) -> str:
    """Plot text: matplotlib reads $...$ as mathtext, and an expert or task name is not one."""
    return str(text).replace("$", r"\$")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    """Render a figure as a 256-colour palette PNG.

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
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Binary tasks: ROC and reliability curves
# --------------------------------------------------------------------------------------------


def binary_rows(preds: Predictions | None, task: str) -> Rows | None:
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


def plot_roc(task: str, new: Rows, serving: Rows | None) -> bytes:
    fig = _new_figure(5.0, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    for label, rows, colour in (("new", new, NEW_COLOUR), ("serving", serving, SERVING_COLOUR)):
        if rows is None:
            continue
        p, y = rows
        if y.min() == y.max():  # this model's rows hold one class only: no curve to draw
            continue
        fpr, tpr = roc_curve(p, y, max_points=ROC_MAX_POINTS)
        ax.plot(fpr, tpr, color=colour, linewidth=1.6, label=f"{label} (AUC {num(auc(p, y))})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(_label(f"{task}: ROC ({len(new[0]):,} rows)"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_calibration(task: str, new: Rows, serving: Rows | None, calibrated: Rows | None = None) -> bytes:
    """Reliability curves of the new and the serving model, and (`calibrated`) of the new model
    after its calibration map (out-of-fold), dashed in the new model's colour."""
    fig = _new_figure(5.0, 4.4)
    ax = fig.add_subplot()
    top = 0.0
    series = [("new", new, NEW_COLOUR, "-"), ("serving", serving, SERVING_COLOUR, "-")]
    series.append(("new, calibrated (out-of-fold)", calibrated, NEW_COLOUR, "--"))
    for label, rows, colour, style in series:
        if rows is None or len(rows[0]) == 0:
            continue
        pred, obs = reliability_bins(*rows, bins=CALIBRATION_BINS)
        ratio = rows[0].mean() / rows[1].mean() if rows[1].mean() > 0 else float("nan")
        ax.plot(
            pred,
            obs,
            marker="o",
            markersize=4,
            color=colour,
            linestyle=style,
            label=f"{label} (pred/obs {num(ratio, 3)})",
        )
        top = max(top, float(pred.max()), float(obs.max()))
    # Axes span the data, not [0, 1]: a 2% conversion rate would otherwise be a dot in the corner.
    top = min(1.0, top * 1.08) if top > 0 else 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted probability", ylabel="observed rate")
    ax.set_title(_label(f"{task}: reliability, {CALIBRATION_BINS} quantile bins"), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


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


def plot_survival(task: TaskSpec, preds: Predictions) -> tuple[bytes | None, str]:
    """The survival-by-risk-group plot of a hazard task (new model), per survival subject as the
    metrics are; (None, why) when there is nothing to draw."""
    name = task.name
    if name not in preds.scores or name not in preds.eval_mask:
        return None, "no predictions for this task"
    scores = np.asarray(preds.scores[name])
    if scores.ndim != 2 or scores.shape[1] != task.num_intervals:
        return None, f"predictions have shape {scores.shape}, not [rows, {task.num_intervals}]"
    subjects = per_subject(name, preds)
    n = len(subjects.interval)
    groups = risk_groups(n)
    if groups == 0:
        return None, "no held-out survival subjects"
    assert task.grid is not None
    t = np.asarray(task.grid, dtype=np.float64)
    curves = survival_by_risk_group(
        subjects.hazard, subjects.interval, subjects.event, task.num_intervals, groups
    )

    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    palette = colormaps["viridis"].resampled(groups)
    for g, (predicted, observed) in enumerate(curves):
        colour = palette(g)
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
        return _png(fig), f"too few subjects to split by risk: all {n:,} in one group"
    return _png(fig), f"{n:,} subjects in {groups} groups of predicted risk 1 - S(horizon)"


# --------------------------------------------------------------------------------------------
# Experts and training loss
# --------------------------------------------------------------------------------------------


def plot_gate_heatmap(experts: dict[str, Any]) -> bytes | None:
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
    return _png(fig)


def plot_zero_share(experts: dict[str, Any]) -> bytes | None:
    share = {k: v for k, v in (experts.get("zero_share") or {}).items() if not is_missing(v)}
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
    return _png(fig)


def plot_loss(history: list[dict[str, Any]]) -> bytes | None:
    points = [
        (float(h["step"]), float(h["loss"]))
        for h in history
        if h.get("step") is not None and not is_missing(as_float(h.get("loss")))
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
    return _png(fig)
