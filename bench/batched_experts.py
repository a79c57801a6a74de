"""Benchmark (issue 16, item 3): batched experts, this tree vs a previous commit, in one run.

For each model (the shipped HoME recipe, and the same recipe with MMoE) and each code tree (this
checkout and a git worktree of --baseline-rev, the commit before the expert banks), alternating
the trees --reps times so drift falls on both alike:

  training  `python -m recsys_mtl.cli train --threads T --eval-days 1` (one epoch on 2 days) of
            generated data (200k rows, 3 days, 2,000 users), run with the tree first on PYTHONPATH,
            `training.seed` = the rep: samples/s from the run's own timed loop (run.json), and the
            held-out day's AUC (binary tasks) and C-index (hazard tasks) from metrics.json: the
            quality must stay within the seeds' spread;
  forward   that run exported by the same tree (`recsys_mtl.cli export`), then the TorchScript
            forward on 500 and 2,000 held-out candidates, 1 torch thread: median ms of --calls.

Prints the medians over reps and new / previous ratios. Goal (the issue): HoME training
samples/s >= 1.5x the previous commit. Run it alone on the machine (nothing else busy).

usage: .venv/bin/python bench/batched_experts.py [--baseline-rev 2957340] [--models home,mmoe]
           [--reps 3] [--threads 2] [--calls 40] [--out bench/out/batched_experts]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "ads_ranker.yaml"
MMOE = {"type": "mmoe", "num_experts": 4, "expert_hidden": [128, 64], "tower_hidden": [64]}

FORWARD = r"""
import json, statistics, sys, time
import recsys_mtl
import pyarrow.parquet as pq, torch
from recsys_mtl.loader import load_model
reg, data, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
model = load_model(reg, "bench")
table = pq.read_table(data)
out = {"code": recsys_mtl.__file__}
with torch.inference_mode():
    for n in (500, 2000):
        rows = table.slice(0, n).select(model.input_columns)
        if hasattr(model, "features"):  # trees with grouped batches: one user per row, as before
            batch = model.features(rows)
            fwd = lambda: model.artifact.forward(batch)
        else:
            batch = model.transform(rows)
            fwd = lambda: model.artifact.forward(batch.sparse, batch.dense)
        for _ in range(5):
            fwd()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fwd()
            times.append((time.perf_counter() - t0) * 1000)
        out[str(n)] = statistics.median(times)
print(json.dumps(out))
"""


def tree_env(tree: Path) -> dict[str, str]:
    """The tree first on the import path (children also run with the tree as their working
    directory: `python -m` / `-c` put the working directory before PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def cli(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "recsys_mtl.cli", *args]
    r = subprocess.run(
        cmd, env=tree_env(tree), cwd=tree, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={tree}) failed:\n{r.stderr[-3000:]}")
    return r


def train(tree: Path, recipe: Path, data: Path, out: Path, threads: int) -> tuple[float, dict[str, float]]:
    """samples/s and the held-out day's headline metric per task (AUC, or C-index for hazards)."""
    cli(
        tree, "train", "--recipe", str(recipe), "--data", str(data), "--out", str(out),
        "--threads", str(threads), "--eval-days", "1", "--no-progress", "--overwrite",
        "--allow-untrained-tasks",  # 3 days: the weekly hazard grid has no label yet
    )  # fmt: skip
    tasks = json.loads((out / "metrics.json").read_text())["tasks"]
    quality: dict[str, float] = {}
    for t, m in tasks.items():
        v = m.get("c_index", m.get("auc"))
        if isinstance(v, int | float) and v == v:  # a task without held-out labels has none
            quality[t] = float(v)
    return float(json.loads((out / "run.json").read_text())["samples_per_s"]), quality


def forward(tree: Path, registry: Path, data_file: Path, calls: int) -> dict[str, float]:
    cmd = [sys.executable, "-c", FORWARD, str(registry), str(data_file), str(calls)]
    r = subprocess.run(
        cmd, env=tree_env(tree), cwd=tree, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if r.returncode != 0:
        raise SystemExit(f"forward (PYTHONPATH={tree}) failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if not str(res.pop("code")).startswith(str(tree) + "/"):
        raise SystemExit(f"the forward child did not import the code of {tree}")
    return {k: float(v) for k, v in res.items()}


def worktree(rev: str, where: Path) -> Path:
    if not (where / ".git").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True)
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default="2957340", help="the commit before the expert banks")
    ap.add_argument("--models", default="home,mmoe")
    ap.add_argument("--reps", type=int, default=3, help="alternating reps; rep r trains with seed r")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "batched_experts"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trees = {"previous": worktree(args.baseline_rev, out / "baseline_tree"), "new": ROOT}
    data = out / "data"
    if not data.exists():
        cli(ROOT, "generate", "--out", str(data), "--rows", "200000", "--days", "3", "--seed", "5",
            "--users", "2000")  # fmt: skip
    data_file = sorted(data.glob("dt=*/*.parquet"))[-1]
    base = yaml.safe_load(RECIPE.read_text())
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    quality: dict[str, dict[str, list[dict[str, float]]]] = {}
    for model in args.models.split(","):
        d = dict(base)
        if model == "mmoe":
            d["model"] = MMOE
        elif model != "home":
            raise SystemExit(f"unknown model {model!r} (home, mmoe)")
        res[model] = {t: {"train": [], "500": [], "2000": []} for t in trees}
        quality[model] = {t: [] for t in trees}
        for rep in range(args.reps):
            recipe = out / f"recipe_{model}_seed{rep}.yaml"
            recipe.write_text(
                yaml.safe_dump({**d, "training": {**d["training"], "seed": rep}}, sort_keys=False)
            )
            for name, tree in trees.items():
                run = out / f"run_{model}_{name}"
                sps, q = train(tree, recipe, data, run, args.threads)
                registry = out / f"registry_{model}_{name}"
                if rep == 0:  # each tree exports its own graph, once
                    cli(tree, "export", "--run", str(run), "--registry", str(registry), "--name", "bench",
                        "--promote")  # fmt: skip
                fw = forward(tree, registry, data_file, args.calls)
                res[model][name]["train"].append(sps)
                for n in ("500", "2000"):
                    res[model][name][n].append(fw[n])
                quality[model][name].append(q)
                print(
                    f"{model} seed {rep} {name}: {sps:,.0f} samples/s, forward {fw}, held-out {q}", flush=True
                )
    lines = [
        f"threads {args.threads} for training (one epoch on 2 days), 1 for the forward "
        f"(median of {args.calls} calls); medians of {args.reps} alternating reps (seeds 0-{args.reps - 1})",
        "",
        "| model | training samples/s previous | new | new / previous | forward 500 ms previous | new | "
        "previous / new | forward 2000 ms previous | new | previous / new |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in res.items():
        p, n = ({k: statistics.median(v) for k, v in r[t].items()} for t in ("previous", "new"))
        lines.append(
            f"| {model} | {p['train']:,.0f} | {n['train']:,.0f} | {n['train'] / p['train']:.2f}x | "
            f"{p['500']:.2f} | {n['500']:.2f} | {p['500'] / n['500']:.2f}x | "
            f"{p['2000']:.2f} | {n['2000']:.2f} | {p['2000'] / n['2000']:.2f}x |"
        )
    lines += [
        "",
        "Held-out day (AUC; C-index for hazard tasks), mean [min, max] over the seeds:",
        "",
        "| model | task | previous | new |",
        "|---|---|---|---|",
    ]
    for model, q in quality.items():
        for task in sorted({k for x in q["new"] + q["previous"] for k in x}):
            cells = []
            for t in ("previous", "new"):
                v = [x[task] for x in q[t] if task in x] or [float("nan")]
                cells.append(f"{statistics.mean(v):.4f} [{min(v):.4f}, {max(v):.4f}]")
            lines.append(f"| {model} | {task} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines)
    print(text)
    (out / "batched_experts.md").write_text(text + "\n")
    (out / "batched_experts.json").write_text(json.dumps({"speed": res, "quality": quality}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
