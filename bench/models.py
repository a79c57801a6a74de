"""Benchmark: every backbone on synthetic data with ground truth, against the oracle.

For each rho (task relatedness of CTR and CVR), generates data (`recsys_mtl.synth`), then trains
and evaluates (the real `recsys-mtl train` CLI, one process) each model on the shipped recipe with
only `model.type` changed: shared_bottom, mmoe, ple, home, dtrn, plus a single-task model per head
task (CVR single-task is the classic one trained on clicked rows only). The last day is held out.

Prints and writes (bench/out/models_rho*.json, appended to bench/out/models.md):
  per task AUC / C-index and oracle-lift = (metric - 0.5) / (oracle - 0.5); training samples/s;
  expert diagnostics (zero-activation share per expert, mean gate weight per task) for MMoE and HoME.

usage: python bench/models.py --rows 600000 --days 6 --rho 0.8 --rho -0.5 --conversion-rate 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from recsys_mtl.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).with_name("recsys-mtl")
BACKBONES = ["shared_bottom", "mmoe", "ple", "home", "dtrn"]
BINARY = ["ctr", "cvr", "ctcvr"]
HAZARD = ["hazard_short", "hazard_long"]


def recipe_variant(out: Path, name: str, model_type: str | None, single_task: str | None) -> Path:
    d = yaml.safe_load((ROOT / "configs" / "ads_ranker.yaml").read_text())
    d["name"] = name
    if model_type:
        d["model"] = {"type": model_type}
    if single_task:
        d["model"] = {"type": "shared_bottom"}
        task = next(t for t in d["tasks"] if t["name"] == single_task)
        task["loss_weight"] = 1.0
        if single_task == "cvr":  # the classic single-task CVR: trained on clicked rows only
            task["train_on"] = "click"
        d["tasks"] = [task]
    p = out / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def run_one(recipe: Path, data: Path, out: Path, epochs: int, threads: int) -> dict[str, Any]:
    cmd = [
        str(BIN),
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--threads",
        str(threads),
        "--no-progress",
        "--overwrite",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    info = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "samples_per_s": info["samples_per_s"],
        "wall_s": time.perf_counter() - t0,
        "steps": info["steps"],
        "metrics": metrics,
    }


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| model | "
        + " | ".join(f"{t} AUC (lift)" for t in BINARY)
        + " | "
        + " | ".join(f"{t} C (lift)" for t in HAZARD)
        + " | train samples/s |"
    )
    lines = [head, "|" + "---|" * (2 + len(BINARY) + len(HAZARD))]
    oracle = None
    for name, res in rows.items():
        tasks = res["metrics"]["tasks"]
        cells = []
        for t in BINARY:
            r = tasks.get(t)
            cells.append("" if r is None else f"{fmt(r['auc'])} ({fmt(r.get('oracle_lift'), '.2f')})")
            if r and oracle is None:
                oracle = {}
            if r and "oracle_auc" in r:
                oracle[t] = r["oracle_auc"]
        for t in HAZARD:
            r = tasks.get(t)
            cells.append("" if r is None else f"{fmt(r['c_index'])} ({fmt(r.get('oracle_lift'), '.2f')})")
            if r and "oracle_c_index" in r:
                oracle = oracle or {}
                oracle[t] = r["oracle_c_index"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['samples_per_s']:,.0f} |")
    if oracle:
        lines.append("| oracle | " + " | ".join(fmt(oracle.get(t)) for t in BINARY + HAZARD) + " | |")
    return "\n".join(lines)


def diagnostics(rows: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name in ("mmoe", "home"):
        if name not in rows:
            continue
        ex = rows[name]["metrics"].get("experts") or {}
        zs = ex.get("zero_share", {})
        lines.append(
            f"**{name}** zero-activation share per expert: "
            + ", ".join(f"{k} {v:.2f}" for k, v in zs.items())
        )
        for task, w in (ex.get("gate_weights") or {}).items():
            names = ex.get("gate_experts", {}).get(task, [])
            lines.append(
                f"- {task} gate: " + ", ".join(f"{n} {x:.2f}" for n, x in zip(names, w, strict=False))
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--rho", type=float, action="append", help="repeatable; default 0.8 and -0.5")
    ap.add_argument("--conversion-rate", type=float, default=0.02, help="conversions per click (rare)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--models", default=",".join(BACKBONES))
    ap.add_argument(
        "--single-task",
        default="ctr,cvr,hazard_short,hazard_long",
        help="head tasks to train single-task models for ('' for none)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "models"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for rho in args.rho or [0.8, -0.5]:
        data = out / f"data_rho{rho}"
        cfg = SynthConfig(
            rows=args.rows, days=args.days, seed=args.seed, rho=rho, conversion_rate=args.conversion_rate
        )
        if not (data / "_synth.json").exists():
            generate(cfg, data, overwrite=True, progress=False)
        rows: dict[str, dict[str, Any]] = {}
        for m in [m for m in args.models.split(",") if m]:
            rows[m] = run_one(
                recipe_variant(out, f"bench_{m}", m, None),
                data,
                out / f"run_{m}_{rho}",
                args.epochs,
                args.threads,
            )
            print(f"rho={rho} {m}: {rows[m]['samples_per_s']:,.0f} samples/s", flush=True)
        for t in [t for t in args.single_task.split(",") if t]:
            key = f"single-task {t}"
            rows[key] = run_one(
                recipe_variant(out, f"bench_single_{t}", None, t),
                data,
                out / f"run_single_{t}_{rho}",
                args.epochs,
                args.threads,
            )
            print(f"rho={rho} {key}: done", flush=True)
        header = (
            f"### rho = {rho}\n\nData: `SynthConfig(rows={args.rows}, days={args.days}, "
            f"seed={args.seed}, rho={rho}, conversion_rate={args.conversion_rate})`, last day held "
            f"out; {args.epochs} epoch(s), 1 process, {args.threads} threads.\n"
        )
        text = header + "\n" + table(rows) + "\n\n" + diagnostics(rows)
        print(text, flush=True)
        report.append(text)
        (out / f"models_rho{rho}.json").write_text(json.dumps(rows, indent=1))
    (out / "models.md").write_text("\n\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
