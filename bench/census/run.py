"""Benchmark on real data: single-task vs Shared-Bottom, MMoE, PLE and HoME on UCI census-income.

Two binary tasks from one census record (the MMoE and PLE papers' data set): `income` (> $50k, about
6% positive) and `marital` (never married, about 43%). Data: the 99,762-row test half of Census-Income
(KDD), converted by `bench/census/convert.py` (run automatically when --data has no partitions) and
split once with a fixed seed: 70% train (dt=2026-01-01), 10% validation (dt=2026-01-02), 20% test
(dt=2026-01-03).

For every model and seed, with the project's own training path (`recsys_mtl.trainer.train`: TorchRec
DMP, 1 process, the recipe's optimizers; in this process, one run after another):
  1. train on the train day, validating on the validation day after every epoch; early stopping on
     the mean validation AUC of the model's tasks (recipe `training.early_stopping_patience`), the
     best epoch's weights restored (`recsys_mtl.trainer`);
  2. evaluate once on the test day (`recsys_mtl.evaluation.evaluate_days`): test AUC per task.
Models: `configs/census_income.yaml` with its `model` section replaced by each entry of
`bench/census/models.yaml`; `single_task` is trained once per task on a recipe with that task alone.
Seeds 0..N-1 set `training.seed` (weight init and shuffling); the data split never changes.

Prints a table (mean +- std over seeds of test AUC per task, training time and samples/s; the
validation AUC beside it) and writes OUT/census.json (every run and the summary) and OUT/census.md.
Training time and samples/s are the trainer's own: the timed loop (reading, transform, steps), without
start-up, per-epoch validation and the test evaluation; samples/CPU-s divides by the loop's process CPU
time instead (with one torch thread: the rate on a core of its own, robust to other work on the
machine, which wall-clock samples/s is not). Tune on validation only: `--no-test` skips the test
evaluation (use it while tuning, e.g. with `--set model.expert_hidden=[128]`).

usage: python bench/census/run.py --seeds 5 --out bench/out/census
       python bench/census/run.py --seeds 2 --models mmoe --no-test --set training.batch_size=2048
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
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `bench.census` importable
    sys.path.insert(0, str(ROOT))

from bench.census.convert import DAYS, DEFAULT_SRC, LABELS, convert  # noqa: E402
from recsys_mtl.cli import quiet_third_party  # noqa: E402
from recsys_mtl.evaluation import evaluate_days  # noqa: E402
from recsys_mtl.recipe import Recipe, keep_tasks, recipe_from_dict  # noqa: E402
from recsys_mtl.run import load_run  # noqa: E402
from recsys_mtl.trainer import TrainConfig, train  # noqa: E402

RECIPE = ROOT / "configs" / "census_income.yaml"
MODELS = Path(__file__).resolve().parent / "models.yaml"
DEFAULT_OUT = ROOT / "bench" / "out" / "census"
ORDER = ["single_task", "shared_bottom", "mmoe", "ple", "home"]
GOAL = {"income": 0.950, "marital": 0.995, "samples_per_s": 40_000}


# ---------------------------------------------------------------------------------------------
# recipes
# ---------------------------------------------------------------------------------------------


def parse_set(items: list[str]) -> list[tuple[list[str], Any]]:
    """`a.b=VALUE` overrides (VALUE parsed as YAML: 2048, 0.003, [128, 64], true)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. training.batch_size=2048), got {item!r}")
        out.append((key.split("."), yaml.safe_load(value)))
    return out


def variant(
    base: dict[str, Any],
    model: dict[str, Any],
    seed: int,
    task: str | None,
    overrides: list[tuple[list[str], Any]],
) -> Recipe:
    """The base recipe with `model` as its model section, `seed`, only `task` when given (a
    single-task model), then the --set overrides (which may also change the model's options)."""
    d = json.loads(json.dumps(base))  # deep copy
    d["model"] = dict(model)
    d["training"]["seed"] = seed
    if task is not None:
        d["name"] = f"{d['name']}_{task}"
        keep_tasks(d, [task])
    for path, value in overrides:
        node = d
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return recipe_from_dict(d, f"census recipe ({model.get('type')}, seed {seed})")


def entries(models: dict[str, dict[str, Any]], wanted: list[str]) -> list[tuple[str, str, str | None]]:
    """(row name, models.yaml key, single task or None) in table order."""
    out: list[tuple[str, str, str | None]] = []
    for key in [k for k in ORDER if k in wanted] + [k for k in wanted if k not in ORDER]:
        if key not in models:
            raise SystemExit(f"--models: {key!r} is not in {MODELS} (have {sorted(models)})")
        if key == "single_task":
            out += [(f"single-task {t}", key, t) for t in LABELS]
        else:
            out.append((key, key, None))
    return out


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------


def run_one(
    recipe: Recipe, data: Path, run_dir: Path, threads: int, test: bool, keep: bool
) -> dict[str, Any]:
    """Train with early stopping on validation, then (if `test`) evaluate on the test day."""
    t0 = time.perf_counter()
    cfg = TrainConfig(
        data_dir=data,
        out=run_dir,
        end=DAYS["validation"],  # the range ends at validation: the test day is never read
        eval_days=1,  # ... and the trainer holds the validation day out
        threads=threads,
        overwrite=True,
        progress=False,
    )
    info = train(recipe, cfg)
    wall_train = time.perf_counter() - t0
    es = info["early_stopping"] or {}
    res: dict[str, Any] = {
        "seed": recipe.training.seed,
        "tasks": [t.name for t in recipe.tasks],
        "train_s": info["seconds"],
        "samples_per_s": info["samples_per_s"],
        "samples_per_cpu_s": info["samples_per_cpu_s"],
        "samples": info["samples"],
        "epochs_run": len(es.get("history", [])) or info["epochs"],
        "best_epoch": es.get("best_epoch"),
        "validation_s": es.get("validation_seconds"),
        "wall_train_s": wall_train,
        "parameters": info["parameters"],
        "val_auc": {t: m["auc"] for t, m in info["metrics"]["tasks"].items()},
        "val_history": [{"epoch": h["epoch"], "tasks": h["tasks"]} for h in es.get("history", [])],
    }
    if test:
        run = load_run(run_dir)
        torch.set_num_threads(threads)
        metrics = evaluate_days(
            run.model, run.recipe, run.transform, data, start=DAYS["test"], end=DAYS["test"]
        )
        res["test_auc"] = {t: m["auc"] for t, m in metrics["tasks"].items()}
        res["test_logloss"] = {t: m["logloss"] for t, m in metrics["tasks"].items()}
        res["experts"] = metrics.get("experts") or {}
    res["wall_s"] = time.perf_counter() - t0
    res["load1_after"] = os.getloadavg()[0]  # the machine is shared: how busy it was meanwhile
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------
# summary and table
# ---------------------------------------------------------------------------------------------


def mean_std(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {"seeds": len(runs)}
    for key in ("test_auc", "val_auc"):
        if all(key in r for r in runs):
            s[key] = {t: mean_std([r[key][t] for r in runs]) for t in runs[0][key]}
    for key in ("train_s", "samples_per_s", "samples_per_cpu_s", "epochs_run", "best_epoch", "wall_s"):
        s[key] = mean_std([float(r[key]) for r in runs if r.get(key) is not None])
    s["parameters"] = runs[0]["parameters"]
    s["load1_after_runs"] = [r.get("load1_after") for r in runs]
    return s


def _cell(ms: dict[str, float | None] | None, spec: str = ".4f") -> str:
    if not ms or ms["mean"] is None:
        return ""
    return f"{ms['mean']:{spec}} ± {ms['std']:{spec}}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    has_test = all("test_auc" in s for s in summary.values())
    head = ["model"]
    if has_test:
        head += [f"{t} test AUC" for t in LABELS]
    head += [f"{t} val AUC" for t in LABELS]
    head += ["epochs (best)", "train s", "train samples/s", "samples/CPU-s", "parameters"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, s in summary.items():
        cells = [name]
        if has_test:
            cells += [_cell(s["test_auc"].get(t)) for t in LABELS]
        cells += [_cell(s["val_auc"].get(t)) for t in LABELS]
        best = s["best_epoch"]["mean"]  # None without early stopping
        cells += [
            f"{s['epochs_run']['mean']:.1f} ({'-' if best is None else f'{best:.1f}'})",
            f"{s['train_s']['mean']:.1f}",
            f"{s['samples_per_s']['mean']:,.0f} ± {s['samples_per_s']['std']:,.0f}",
            f"{s['samples_per_cpu_s']['mean']:,.0f}",
            f"{s['parameters']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_check(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal per multi-task model (mean test AUC per task, mean samples/s; samples per
    CPU-second beside it), and which model is best by mean validation AUC (chosen on validation,
    never on test)."""
    mtl = {n: s for n, s in summary.items() if not n.startswith("single-task") and "val_auc" in s}
    if not mtl:
        return {}

    def val(n: str) -> float:
        return statistics.fmean(mtl[n]["val_auc"][t]["mean"] for t in LABELS)

    best = max(mtl, key=val)
    out: dict[str, Any] = {"goal": GOAL, "best_by_validation": best, "best_val_mean_auc": val(best)}
    if all("test_auc" in s for s in mtl.values()):
        per_model = {}
        for n, s in mtl.items():
            c = {t: s["test_auc"][t]["mean"] >= GOAL[t] for t in LABELS}
            c["samples_per_s"] = s["samples_per_s"]["mean"] >= GOAL["samples_per_s"]
            c["samples_per_cpu_s"] = s["samples_per_cpu_s"]["mean"] >= GOAL["samples_per_s"]
            per_model[n] = c
        out["per_model"] = per_model
        out["checks"] = per_model[best]
        out["met"] = all(v for k, v in per_model[best].items() if k != "samples_per_cpu_s")
    return out


def machine_load() -> dict[str, Any]:
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        uptime = None
    return {"uptime": uptime, "loadavg": list(os.getloadavg()), "cores": os.cpu_count()}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per model (default 5)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (JSON, table, runs)")
    ap.add_argument("--data", type=Path, help="converted data (default OUT/data; converted if missing)")
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="census-income.test.gz to convert")
    ap.add_argument("--recipe", type=Path, default=RECIPE, help="base recipe (default %(default)s)")
    ap.add_argument("--models-file", type=Path, default=MODELS, help="model sections (default %(default)s)")
    ap.add_argument(
        "--models", default=",".join(ORDER), help="comma-separated keys of --models-file (default: all)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    ap.add_argument("--no-test", action="store_true", help="skip the test evaluation (while tuning)")
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
    # torch's DCP warns on every save of TorchRec's ShardedTensor tables (deprecated for DTensor)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed\..*")

    data: Path = args.data or out / "data"
    if not all((data / f"dt={d}").is_dir() for d in DAYS.values()):
        print(f"converting {args.src} -> {data}", flush=True)
        convert(args.src, data)
    base = yaml.safe_load(args.recipe.read_text())
    models = yaml.safe_load(args.models_file.read_text())
    overrides = parse_set(args.set)
    todo = entries(models, [m for m in args.models.split(",") if m])

    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_before = machine_load()
    print(f"machine load at start: {load_before['uptime']}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(todo) * args.seeds, desc="census", unit="run")
    t0 = time.perf_counter()
    for name, key, task in todo:
        for seed in range(args.seeds):
            recipe = variant(base, models[key], seed, task, overrides)
            run_dir = out / "runs" / f"{name.replace(' ', '_')}_seed{seed}"
            bar.set_postfix_str(f"{name} seed {seed}")
            r = run_one(recipe, data, run_dir, args.threads, not args.no_test, args.keep_runs)
            runs.setdefault(name, []).append(r)
            aucs = r.get("test_auc") or r["val_auc"]
            kind = "test" if "test_auc" in r else "val"
            bar.write(
                f"{name:<20} seed {seed}: {kind} AUC "
                + " ".join(f"{t} {v:.4f}" for t, v in aucs.items())
                + f" | best epoch {r['best_epoch']}/{r['epochs_run']} | {r['samples_per_s']:,.0f} samples/s"
                f" ({r['samples_per_cpu_s']:,.0f}/CPU-s)"
                f" | {r['train_s']:.1f}s train, {r['wall_s']:.1f}s wall"
            )
            bar.update(1)
    bar.close()
    total = time.perf_counter() - t0
    summary = {name: summarise(rs) for name, rs in runs.items()}
    goal = goal_check(summary)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": started,
        "wall_s": total,
        "machine": {
            "start": load_before,
            "end": machine_load(),
            "platform": platform.platform(),
            "torch_threads": args.threads,
        },
        "data": json.loads((data / "_census.json").read_text()) if (data / "_census.json").exists() else None,
        "recipe": str(args.recipe),
        "models": {key: models[key] for _, key, _ in todo},
        "overrides": args.set,
        "summary": summary,
        "goal": goal,
        "runs": runs,
    }
    (out / "census.json").write_text(json.dumps(result, indent=1))
    text = table(summary)
    (out / "census.md").write_text(text + "\n")
    print()
    print(text)
    if goal:
        print(f"\nbest multi-task model by validation: {goal['best_by_validation']}", end="")
        if "met" in goal:
            print(f"; goal {'met' if goal['met'] else 'NOT met'} by it. Per model:")
            for n, c in goal["per_model"].items():
                print(f"  {n:<14} " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in c.items()))
        else:
            print()
    print(f"\nmachine load at end: {result['machine']['end']['uptime']}; total wall {total / 60:.1f} min")
    print(f"wrote {out / 'census.json'} and {out / 'census.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
