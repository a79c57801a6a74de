"""Benchmark: how often the nightly gate rejects a model that is as good as serving (false rejects)
and how often it rejects one that is worse (true rejects), over many nights, for the interval rule
(the default, `pipelines/gate.py`) and the point rule it replaced, in one run.

The nights are real nightly-shaped trainings on generated data (`recsys_mtl.synth`, no change in
the generator over the days): model M_k is trained on the days [k, k + window - 1], warm-started
from M_{k-1} (the nightly job warm-starts from the serving model), one epoch, with the real
`recsys-mtl train`. Night k holds out day k + window and judges new = M_k against serving = M_{k-1},
as `recsys-mtl nightly` would, through `pipelines.gate.quality_gate` on both models' predictions of
the day's rows. The first nights warm the chain up from its cold start and are not counted.

  equivalent nights   new = M_k as trained: a model as good as serving (trained on the next window,
                      same generator), so every rejection is a false one;
  degraded nights     new = M_k with its predictions for one task worsened by noise whose level is
                      calibrated (bisection over the judged nights, with other noise draws than
                      the judged ones) to lower that task's metric by 0.01 or 0.02 on average
                      (AUC of ctr: logit + N(0, s) per row; C-index of hazard_long: every
                      hazard logit of a survival subject shifted by the same N(0, s) draw, which
                      scrambles the subjects' risk order; s is a multiple of the spread of the
                      model's logits); a fresh noise draw per night. A rejection of that task is a
                      true one.

Models and their predictions are cached under --out: a second run (e.g. with another recipe gate)
re-judges the nights without training again. Prints a markdown table
(docs/BENCHMARKS.md, "The nightly gate") and writes gate_calibration.json; --cost times the gate at
1M held-out rows (the nights' predictions concatenated).

usage:
  python bench/gate_calibration.py                      # 36 trainings, 100k rows a day
  python bench/gate_calibration.py --recipe other.yaml  # re-judge the cached nights, other gate
  python bench/gate_calibration.py --cost               # + the gate's time at 1M rows
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from models import ensure_data  # noqa: E402  (bench/models.py: generated data, cached by config)

from pipelines.gate import judge_task, quality_gate, task_metric  # noqa: E402
from recsys_mtl.cli.train import PYTHON_CLI, train_command  # noqa: E402
from recsys_mtl.evaluation import Predictions, evaluation_reader, predict  # noqa: E402
from recsys_mtl.recipe import Recipe, load_recipe  # noqa: E402
from recsys_mtl.run import load_run  # noqa: E402
from recsys_mtl.synth import SynthConfig  # noqa: E402

BINARY, HAZARD = "ctr", "hazard_long"
DROPS = (0.01, 0.02)
NOISE_SEED = 2026


# --------------------------------------------------------------------------------------------
# trainings and cached predictions
# --------------------------------------------------------------------------------------------


def day_name(cfg: SynthConfig, index: int) -> str:
    return (dt.date.fromisoformat(cfg.start_date) + dt.timedelta(days=index)).isoformat()


def train_model(k: int, args: argparse.Namespace, cfg: SynthConfig, data: Path, runs: Path) -> Path:
    """M_k: trained on days [k, k + window - 1], warm-started from M_{k-1} (cold for k = 0)."""
    run = runs / f"m{k:02d}"
    info = run / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("status") == "finished":
        return run
    cmd = train_command(
        args.recipe, data, run, program=PYTHON_CLI,
        start=day_name(cfg, k), end=day_name(cfg, k + args.window - 1),
        eval_days=0, epochs=1, no_progress=True, overwrite=True,
        threads=args.threads or None, warm_start=runs / f"m{k - 1:02d}" if k > 0 else None,
        allow_untrained_tasks=True,  # short windows: the weekly hazard keeps no label (warned)
    )  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    print(f"  trained M{k} in {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def save_predictions(path: Path, p: Predictions) -> None:
    arrays: dict[str, np.ndarray] = {}
    for kind in ("scores", "labels", "events", "eval_mask", "subjects"):
        for task, a in getattr(p, kind).items():
            arrays[f"{kind}/{task}"] = a
    if p.users is not None:
        arrays["users"] = p.users
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_predictions(path: Path) -> Predictions:
    with np.load(path) as z:
        parts: dict[str, dict[str, np.ndarray]] = {
            k: {} for k in ("scores", "labels", "events", "eval_mask", "subjects")
        }
        for key in z.files:
            if "/" in key:
                kind, task = key.split("/", 1)
                parts[kind][task] = z[key]
        users = z["users"] if "users" in z.files else None
    return Predictions(parts["scores"], parts["labels"], parts["events"], parts["eval_mask"], users=users,
                       subjects=parts["subjects"])  # fmt: skip


def predictions_of(k: int, day: int, cfg: SynthConfig, data: Path, runs: Path, cache: Path) -> Path:
    """M_k's predictions of every row of day `day`, cached."""
    path = cache / f"m{k:02d}_d{day:02d}.npz"
    if not path.is_file():
        run = load_run(runs / f"m{k:02d}")
        d = dt.date.fromisoformat(day_name(cfg, day))
        reader = evaluation_reader(run.recipe, data, transform=run.transform, start=d, end=d)
        save_predictions(path, predict(run.model, reader))
    return path


def build_nights(args: argparse.Namespace, cfg: SynthConfig) -> list[tuple[Path, Path]]:
    """(new, serving) predictions of every night, training what is missing."""
    data = ensure_data(cfg, args.out)
    runs, cache = args.out / "runs", args.out / "predictions"
    runs.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    nights = []
    for k in range(args.nights + 1):
        train_model(k, args, cfg, data, runs)
        if k == 0:
            continue
        held_out = k + args.window
        nights.append(
            (
                predictions_of(k, held_out, cfg, data, runs, cache),
                predictions_of(k - 1, held_out, cfg, data, runs, cache),
            )
        )
        print(f"night {k}: M{k} vs M{k - 1} on {day_name(cfg, held_out)}", flush=True)
    return nights


# --------------------------------------------------------------------------------------------
# degradations
# --------------------------------------------------------------------------------------------


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def degrade(p: Predictions, task: str, scale: float, seed: int) -> Predictions:
    """p with `task`'s predictions worsened by noise of `scale` times the spread of its logits (so
    one scale means the same damage to a sharp and to a flat model): binary, logit + noise per row;
    hazard, every interval's logit of a subject's rows + the subject's noise draw."""
    rng = np.random.default_rng(seed)
    z = _logit(p.scores[task])
    if z.ndim == 1:
        z = z + rng.normal(0.0, scale * z.std(), len(z))
    else:
        _, subject = np.unique(p.subjects[task], return_inverse=True)
        spread = z.mean(axis=1).std()
        z = z + rng.normal(0.0, scale * spread, subject.max() + 1)[subject][:, None]
    return p.replace_scores({task: (1.0 / (1.0 + np.exp(-z))).astype(np.float32)})


def calibrate_noise(recipe: Recipe, calib: list[Predictions], task: str, drop: float) -> float:
    """The noise scale whose mean metric drop over the nights `calib` is `drop` (bisection; the
    calibration draws use other seeds than the judged ones)."""
    base = np.mean([task_metric(recipe.task(task), p) for p in calib])

    def mean_drop(noise: float) -> float:
        return base - np.mean([task_metric(recipe.task(task), degrade(p, task, noise, NOISE_SEED + i))
                               for i, p in enumerate(calib)])  # fmt: skip

    lo, hi = 0.0, 0.5
    while mean_drop(hi) < drop and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_drop(mid) < drop else (lo, mid)
    return (lo + hi) / 2


# --------------------------------------------------------------------------------------------
# judging the nights
# --------------------------------------------------------------------------------------------


def with_gate(recipe: Recipe, **gate: Any) -> Recipe:
    g = recipe.nightly.gate.model_copy(update=gate)
    return recipe.model_copy(update={"nightly": recipe.nightly.model_copy(update={"gate": g})})


def rate(flags: list[bool]) -> dict[str, Any]:
    n = len(flags)
    return {"rejected": int(sum(flags)), "nights": n, "share": sum(flags) / n if n else float("nan")}


def analyse(args: argparse.Namespace, recipe: Recipe, nights: list[tuple[Path, Path]]) -> dict[str, Any]:
    warm_up, judged = nights[: args.warm_up_nights], nights[args.warm_up_nights :]
    calib = [load_predictions(new) for new, _ in judged]
    noise = {
        (task, drop): calibrate_noise(recipe, calib, task, drop)
        for task in (BINARY, HAZARD)
        for drop in DROPS
    }
    print("noise scales: " + ", ".join(f"{t} -{d}: {s:.3f}" for (t, d), s in noise.items()), flush=True)
    spec = recipe.nightly.gate
    rules = {
        "interval": with_gate(recipe, rule="interval"),
        f"interval at {args.also_confidence:g}": with_gate(
            recipe, rule="interval", confidence=args.also_confidence
        ),
        "point": with_gate(recipe, rule="point", resamples=100),  # the estimate only: intervals unused
    }
    gating = [
        r["task"] for r in quality_gate(rules["point"], calib[0], load_predictions(judged[0][1]), "0")["rows"]
    ]
    rejections: list[dict[str, Any]] = []
    false_rejects: dict[str, dict[str, list[bool]]] = {
        rule: {t: [] for t in [*gating, "any"]} for rule in rules
    }
    true_rejects: dict[str, list[bool]] = {
        f"{rule}/{t}/{d}": [] for rule in rules for t in (BINARY, HAZARD) for d in DROPS
    }
    realised: dict[str, list[float]] = {f"{t}/{d}": [] for t in (BINARY, HAZARD) for d in DROPS}
    differences: dict[str, list[float]] = {t: [] for t in gating}
    widths: dict[str, list[float]] = {t: [] for t in gating}
    t_gate: list[float] = []
    for i, (new_path, serving_path) in enumerate(judged):
        new, serving = load_predictions(new_path), load_predictions(serving_path)
        for rule, r in rules.items():
            t0 = time.perf_counter()
            decision = quality_gate(r, new, serving, "serving")
            if rule == "interval":
                t_gate.append(time.perf_counter() - t0)
            for row in decision["rows"]:
                false_rejects[rule][row["task"]].append(row["verdict"] != "pass")
                if row["verdict"] != "pass" and rule != "point":
                    rejections.append({"night": i + 1, "rule": rule, **row})
                if rule == "interval" and row["estimate"] is not None:
                    differences[row["task"]].append(row["estimate"])
                    if row["high"] is not None:
                        widths[row["task"]].append(row["high"] - row["low"])
            false_rejects[rule]["any"].append(not decision["passed"])
        for task in (BINARY, HAZARD):
            for drop in DROPS:
                worse = degrade(new, task, noise[(task, drop)], NOISE_SEED + 1000 + i)
                realised[f"{task}/{drop}"].append(
                    task_metric(recipe.task(task), new) - task_metric(recipe.task(task), worse)
                )
                for rule, r in rules.items():
                    row = judge_task(recipe.task(task), worse, serving, r.nightly.gate, "serving")
                    true_rejects[f"{rule}/{task}/{drop}"].append(row["verdict"] != "pass")
        print(f"judged night {i + 1}/{len(judged)}", flush=True)
    return {
        "gate": spec.model_dump(),
        "nights": len(judged),
        "warm_up_nights": len(warm_up),
        "noise": {f"{t}/{d}": s for (t, d), s in noise.items()},
        "false_rejects": {rule: {t: rate(f) for t, f in per.items()} for rule, per in false_rejects.items()},
        "true_rejects": {k: rate(f) for k, f in true_rejects.items()},
        "realised_drop": {
            k: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for k, v in realised.items()
        },
        "difference": {
            t: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for t, v in differences.items() if v
        },
        "interval_width": {t: float(np.mean(v)) for t, v in widths.items() if v},
        "gate_s_per_night": {"mean": float(np.mean(t_gate)), "max": float(np.max(t_gate))},
        "false_rejections": rejections,
    }


def gate_cost(recipe: Recipe, nights: list[tuple[Path, Path]], rows: int) -> dict[str, Any]:
    """The gate's time on `rows` held-out rows: the nights' predictions concatenated until there
    are that many (real predictions; subjects and users as the days have them)."""
    news, servings, total = [], [], 0
    for new, serving in nights:
        news.append(load_predictions(new))
        servings.append(load_predictions(serving))
        total += news[-1].num_rows
        if total >= rows:
            break
    new, serving = Predictions.concat(news), Predictions.concat(servings)
    t0 = time.perf_counter()
    decision = quality_gate(recipe, new, serving, "serving")
    seconds = time.perf_counter() - t0
    return {
        "rows": new.num_rows,
        "seconds": seconds,
        "resamples": recipe.nightly.gate.resamples,
        "per_task": {r["task"]: {"rows": r["rows"], "clusters": r["clusters"]} for r in decision["rows"]},
    }


def share(r: dict[str, Any]) -> str:
    return f"{r['share']:.0%} ({r['rejected']}/{r['nights']})"


def markdown(res: dict[str, Any]) -> str:
    fr, tr = res["false_rejects"], res["true_rejects"]
    g = res["gate"]
    lines = [
        f"{res['nights']} nights (after {res['warm_up_nights']} warm-up nights); gate: "
        f"{g['confidence']:.0%} paired cluster-bootstrap intervals, {g['resamples']} resamples, "
        f"tolerance {g['tolerance']:g} (per task {g['tolerances'] or 'none'}).",
        "",
        "| rejected | " + " | ".join(t for t in fr["interval"]) + " |",
        "|---|" + "---:|" * len(fr["interval"]),
    ]
    for rule in fr:
        lines.append(f"| equivalent, {rule} rule | " + " | ".join(share(v) for v in fr[rule].values()) + " |")
    lines += [
        "",
        "| degraded task | realised drop (mean +- sd) | " + " | ".join(f"{r} rule" for r in fr) + " |",
        "|---|---:|" + "---:|" * len(fr),
    ]
    for task in (BINARY, HAZARD):
        for drop in DROPS:
            rd = res["realised_drop"][f"{task}/{drop}"]
            lines.append(
                f"| {task} -{drop} | {rd['mean']:.4f} +- {rd['sd']:.4f} | "
                + " | ".join(share(tr[f"{rule}/{task}/{drop}"]) for rule in fr)
                + " |"
            )
    lines += [
        "",
        "| task | new - serving (mean +- sd over nights) | mean interval width |",
        "|---|---:|---:|",
    ]
    for t, d in res["difference"].items():
        lines.append(
            f"| {t} | {d['mean']:+.4f} +- {d['sd']:.4f} | {res['interval_width'].get(t, float('nan')):.4f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gate_calibration")
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "ads_ranker.yaml")
    ap.add_argument("--nights", type=int, default=35, help="nights, warm-up nights included")
    ap.add_argument("--warm-up-nights", type=int, default=5, help="first nights, not counted")
    ap.add_argument("--window", type=int, default=3, help="training days per night")
    ap.add_argument("--rows-per-day", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="the generator's seed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each training")
    ap.add_argument("--also-confidence", type=float, default=0.9, help="a second interval level judged")
    ap.add_argument("--cost", action="store_true", help="also time the gate at --cost-rows held-out rows")
    ap.add_argument("--cost-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    days = args.nights + 1 + args.window
    cfg = SynthConfig(rows=args.rows_per_day * days, days=days, seed=args.seed, users=args.users)
    recipe = load_recipe(args.recipe)
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    nights = build_nights(args, cfg)  # cached models and predictions are reused
    res = analyse(args, recipe, nights)
    res["config"] = {**dataclasses.asdict(cfg), "window": args.window, "recipe": str(args.recipe)}
    if args.cost:
        res["cost"] = gate_cost(recipe, nights, args.cost_rows)
    res["wall_s"] = time.perf_counter() - t0
    load.append(os.getloadavg()[0])
    res["load1"] = load
    (args.out / "gate_calibration.json").write_text(json.dumps(res, indent=2))
    print(markdown(res))
    if args.cost:
        c = res["cost"]
        print(
            f"\ngate at {c['rows']:,} held-out rows: {c['seconds']:.1f} s, {c['resamples']} resamples a task"
        )
    print(f"load {load[0]:.2f} -> {load[1]:.2f}; {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
