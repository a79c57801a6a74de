"""Benchmark on a real survival data set: our hazard head on each backbone against lifelines' CoxPH
and scikit-survival's gradient-boosted Cox model, on GBSG2 (686 breast-cancer patients, bundled
with lifelines), Harrell's C on durations.

Data: `bench/survival/convert.py` (run automatically when --data has no partitions): one row per
patient, split once with `numpy.random.default_rng(2026)`: 60% train (dt=2026-01-01), 15% validation
(dt=2026-01-02), 25% test (dt=2026-01-03).

For every backbone and seed, with the project's own paths end to end:
  1. train (`recsys_mtl.trainer.train`, the recipe configs/survival_gbsg2.yaml with its `model`
     section replaced by an entry of bench/survival/models.yaml, `training.seed` = the seed) on the
     train day, early-stopping on the validation day (the trainer's C-index), best epoch restored;
  2. score the validation and the test day with `recsys_mtl.batch_predict` from the run (exported
     through the export path, loaded by the server's loader: what `recsys-mtl predict --run` does),
     writing each patient's risk and survival curve to Parquet;
  3. Harrell's C on durations, `lifelines.utils.concordance_index(time, -risk, event)`, exactly as
     for the references, with risk = 1 - S(t_L), the probability of recurrence within the grid's
     horizon (t_L = the largest training event-time quantile): the `<task>_risk` the product
     serves. Beside it, the C of the restricted mean survival time up to t_L (the area under the
     predicted curve, a summary that uses the whole curve rather than its last point).
The references (`bench/survival/reference.py`) are fit on the same train day, tuned on the same
validation day, and scored on the same test day. The best backbone is chosen by mean validation C,
never by test C; the measure is its mean test C against CoxPH's (the better of the two CoxPH
designs by validation).

Prints a Markdown table (mean ± std over seeds, and min-max, of test C; validation C; epochs) and
writes OUT/survival.json (every run and the summary) and OUT/survival.md.

usage: python bench/survival/run.py --seeds 5 --out bench/out/survival
       python bench/survival/run.py --seeds 2 --models shared_bottom --no-test --set training.batch_size=32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `bench.survival` importable
    sys.path.insert(0, str(ROOT))

from bench.census.run import machine_load, parse_set  # noqa: E402
from bench.survival.convert import DAYS, EVENT, SUBJECT, TIME, convert  # noqa: E402
from bench.survival.reference import harrell_c, references  # noqa: E402
from recsys_mtl.batch_predict import OUTPUT_FILE, PredictOptions, model_from_run, predict  # noqa: E402
from recsys_mtl.cli import quiet_third_party  # noqa: E402
from recsys_mtl.recipe import Recipe, recipe_from_dict  # noqa: E402
from recsys_mtl.trainer import TrainConfig, train  # noqa: E402

RECIPE = ROOT / "configs" / "survival_gbsg2.yaml"
MODELS = Path(__file__).resolve().parent / "models.yaml"
DEFAULT_OUT = ROOT / "bench" / "out" / "survival"
ORDER = ["shared_bottom", "mmoe", "ple", "home", "dtrn"]
REFERENCES = {"coxph_log": "CoxPH (lifelines), log design", "coxph_raw": "CoxPH (lifelines), raw design",
              "gbm": "gradient-boosted Cox (scikit-survival)"}  # fmt: skip


def variant(
    base: dict[str, Any], model: dict[str, Any], seed: int, overrides: list[tuple[list[str], Any]]
) -> Recipe:
    """The base recipe with `model` as its model section, `seed`, then the --set overrides
    (`a.b=VALUE`; a number in the path indexes a list, e.g. tasks.0.grid_quantiles=20)."""
    d = json.loads(json.dumps(base))  # deep copy
    d["model"] = dict(model)
    d["training"]["seed"] = seed
    for path, value in overrides:
        node: Any = d
        for k in path[:-1]:  # a number indexes a list: tasks.0.grid_quantiles=20
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        node[int(path[-1]) if isinstance(node, list) else path[-1]] = value
    return recipe_from_dict(d, f"survival recipe ({model.get('type')}, seed {seed})")


def rmst(survival: np.ndarray, grid: list[float]) -> np.ndarray:
    """Restricted mean survival time up to grid[-1] of discrete survival curves [N, L] (S at the
    end of each interval), by the trapezoid rule inside each interval (S(t_0) = 1)."""
    s = np.concatenate([np.ones((survival.shape[0], 1)), survival], axis=1)
    widths = np.diff(np.asarray(grid, dtype=np.float64))
    return ((s[:, :-1] + s[:, 1:]) / 2 * widths).sum(axis=1)


def c_indexes(scores: Path, task: str, grid: list[float]) -> dict[str, float]:
    """Harrell's C of one day's batch predictions: by the risk at the horizon, and by RMST."""
    t = pq.read_table(scores)
    time_, event = t.column(TIME).to_numpy().astype(float), t.column(EVENT).to_numpy().astype(int)
    risk = t.column(f"{task}_risk").to_numpy().astype(float)
    surv = np.stack(t.column(f"{task}_survival").to_numpy(zero_copy_only=False)).astype(float)
    return {
        "c": harrell_c(time_, risk, event),
        "c_rmst": harrell_c(time_, -rmst(surv, grid), event),
        "patients": t.num_rows,
    }


def run_one(
    recipe: Recipe, data: Path, run_dir: Path, threads: int, test: bool, keep: bool
) -> dict[str, Any]:
    """Train with early stopping on validation; batch-predict validation (and test) from the run."""
    t0 = time.perf_counter()
    cfg = TrainConfig(
        data_dir=data,
        out=run_dir,
        end=DAYS["validation"],  # the range ends at validation: training never reads the test day
        eval_days=1,  # ... and the trainer holds the validation day out
        threads=threads,
        overwrite=True,
        progress=False,
    )
    info = train(recipe, cfg)
    es = info["early_stopping"] or {}
    task = recipe.tasks[0].name
    torch.set_num_threads(threads)
    model = model_from_run(run_dir)
    grid = next(t.grid for t in model.tasks if t.name == task)
    assert grid is not None
    last = DAYS["test"] if test else DAYS["validation"]
    opts = PredictOptions(tasks=[task], survival=True, keep=[SUBJECT, TIME, EVENT])
    predict(model, data, run_dir / "scores", start=DAYS["validation"], end=last, options=opts)
    res: dict[str, Any] = {
        "seed": recipe.training.seed,
        "grid": grid,
        "train_s": info["seconds"],
        "samples_per_s": info["samples_per_s"],
        "epochs_run": len(es.get("history", [])) or info["epochs"],
        "best_epoch": es.get("best_epoch"),
        "parameters": info["parameters"],
        "trainer_val_c": info["metrics"]["tasks"][task].get("c_index"),
    }
    for split in ("validation", "test") if test else ("validation",):
        c = c_indexes(run_dir / "scores" / f"dt={DAYS[split]}" / OUTPUT_FILE, task, grid)
        res[split] = c["c"]
        res[f"{split}_rmst"] = c["c_rmst"]
    res["wall_s"] = time.perf_counter() - t0
    res["load1_after"] = os.getloadavg()[0]  # the machine is shared: how busy it was meanwhile
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def stats(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {"seeds": len(runs)}
    for key in ("validation", "test", "validation_rmst", "test_rmst", "epochs_run", "best_epoch", "train_s"):
        vals = [float(r[key]) for r in runs if r.get(key) is not None]
        if vals:
            s[key] = stats(vals)
    for key in ("parameters", "penalizer", "n_estimators", "max_depth"):
        if key in runs[0]:
            s[key] = [r[key] for r in runs] if key in ("n_estimators", "max_depth") else runs[0][key]
    return s


def _cell(s: dict[str, Any], key: str, spread: bool = True) -> str:
    m = s.get(key)
    if not m:
        return ""
    text = f"{m['mean']:.4f} ± {m['std']:.4f}"
    return f"{text} ({m['min']:.4f}-{m['max']:.4f})" if spread else text


def table(summary: dict[str, dict[str, Any]]) -> str:
    test = all("test" in s for s in summary.values())
    head = ["model"]
    head += ["test C (risk at horizon), mean ± std (min-max)"] if test else []
    head += [
        "validation C",
        "test C (RMST)" if test else "validation C (RMST)",
        "epochs (best)",
        "parameters",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, s in summary.items():
        cells = [REFERENCES.get(name, name)]
        cells += [_cell(s, "test")] if test else []
        cells += [
            _cell(s, "validation", spread=False),
            _cell(s, "test_rmst" if test else "validation_rmst", False),
        ]
        if "epochs_run" in s:
            cells += [
                f"{s['epochs_run']['mean']:.0f} ({s['best_epoch']['mean']:.0f})",
                f"{s['parameters']:,}",
            ]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_check(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The measure: the backbone with the best mean validation C; its mean test C against CoxPH's
    (the CoxPH design with the better validation C)."""
    ours = {n: s for n, s in summary.items() if n not in REFERENCES}
    cox = {n: s for n, s in summary.items() if n.startswith("coxph")}
    if not ours:
        return {}
    best = max(ours, key=lambda n: ours[n]["validation"]["mean"])
    out: dict[str, Any] = {"best_by_validation": best, "best_validation_c": ours[best]["validation"]["mean"]}
    if cox and "test" in ours[best]:
        bar = max(cox, key=lambda n: cox[n]["validation"]["mean"])
        out.update(
            coxph=bar,
            ours_test_c=ours[best]["test"],
            coxph_test_c=cox[bar]["test"]["mean"],
            met=ours[best]["test"]["mean"] >= cox[bar]["test"]["mean"],
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per model (default 5)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (JSON, table, runs)")
    ap.add_argument("--data", type=Path, help="converted data (default OUT/data; converted if missing)")
    ap.add_argument("--recipe", type=Path, default=RECIPE, help="base recipe (default %(default)s)")
    ap.add_argument("--models-file", type=Path, default=MODELS, help="model sections (default %(default)s)")
    ap.add_argument("--models", default=",".join(ORDER), help="comma-separated keys of --models-file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    ap.add_argument("--no-test", action="store_true", help="skip the test day (while tuning)")
    ap.add_argument("--no-references", action="store_true", help="skip CoxPH and gradient boosting")
    ap.add_argument("--keep-runs", action="store_true", help="keep the run directories under OUT/runs")
    args = ap.parse_args()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(out / "run.log", mode="w")],
        force=True,
    )
    for ours in ("recsys_mtl", "bench"):
        logging.getLogger(ours).setLevel(logging.INFO)
    quiet_third_party()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed\..*")
    warnings.filterwarnings("ignore", message=r".*TorchScript.*")
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")

    data: Path = args.data or out / "data"
    if not all((data / f"dt={d}").is_dir() for d in DAYS.values()):
        print(f"converting GBSG2 (lifelines) -> {data}", flush=True)
        convert(data)
    base = yaml.safe_load(args.recipe.read_text())
    models = yaml.safe_load(args.models_file.read_text())
    overrides = parse_set(args.set)
    wanted = [m for m in args.models.split(",") if m]
    for m in wanted:
        if m not in models:
            raise SystemExit(f"--models: {m!r} is not in {args.models_file} (have {sorted(models)})")

    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_before = machine_load()
    print(f"machine load at start: {load_before['uptime']}", flush=True)
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(wanted) * args.seeds, desc="gbsg2", unit="run")
    for name in wanted:
        for seed in range(args.seeds):
            recipe = variant(base, models[name], seed, overrides)
            bar.set_postfix_str(f"{name} seed {seed}")
            r = run_one(
                recipe,
                data,
                out / "runs" / f"{name}_seed{seed}",
                args.threads,
                not args.no_test,
                args.keep_runs,
            )
            runs.setdefault(name, []).append(r)
            bar.write(
                f"{name:<14} seed {seed}: validation C {r['validation']:.4f}"
                + (f", test C {r['test']:.4f} (RMST {r['test_rmst']:.4f})" if "test" in r else "")
                + f" | best epoch {r['best_epoch']}/{r['epochs_run']} | {r['wall_s']:.0f}s"
            )
            bar.update(1)
    bar.close()
    if not args.no_references:
        print("references: CoxPH (lifelines), gradient-boosted Cox (scikit-survival)", flush=True)
        ref = references(data, args.seeds)
        if args.no_test:
            ref = {n: [{k: v for k, v in r.items() if k != "test"} for r in rs] for n, rs in ref.items()}
        runs.update(ref)
    summary = {name: summarise(rs) for name, rs in runs.items()}
    goal = goal_check(summary)
    total = time.perf_counter() - t0
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": started,
        "wall_s": total,
        "machine": {"start": load_before, "end": machine_load(), "platform": platform.platform()},
        "data": json.loads((data / "_gbsg2.json").read_text()) if (data / "_gbsg2.json").exists() else None,
        "recipe": str(args.recipe),
        "models": {n: models[n] for n in wanted},
        "overrides": args.set,
        "summary": summary,
        "goal": goal,
        "runs": runs,
    }
    (out / "survival.json").write_text(json.dumps(result, indent=1, default=str))
    text = table(summary)
    (out / "survival.md").write_text(text + "\n")
    print()
    print(text)
    if goal:
        print(f"\nbest backbone by validation: {goal['best_by_validation']}", end="")
        if "met" in goal:
            print(
                f"; test C {goal['ours_test_c']['mean']:.4f} ± {goal['ours_test_c']['std']:.4f} vs "
                f"{goal['coxph']} {goal['coxph_test_c']:.4f}: goal {'met' if goal['met'] else 'NOT met'}"
            )
        else:
            print()
    print(f"\nmachine load at end: {result['machine']['end']['uptime']}; total wall {total / 60:.1f} min")
    print(f"wrote {out / 'survival.json'} and {out / 'survival.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
