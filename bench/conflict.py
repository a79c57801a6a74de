"""Benchmark: task conflict. Every backbone's oracle-lift per task and its expert diagnostics as the
CTR and CVR tasks go from related to conflicting (issue 7, part 2).

Method: for each rho in {0.9, 0.5, 0, -0.5} (the correlation of the CTR and CVR interaction terms
of the synthetic world, `recsys_mtl.synth`; negative = conflicting tasks) the data is generated
once, with rare conversions (2% of clicks: CVR is HoME's sparse-task case); then each backbone
(shared_bottom, mmoe, ple, home, dtrn: the shipped recipe with only `model.type` changed, default
options) is trained by the real `recsys-mtl train` (1 process) on all days but the last and
evaluated on the held-out last day. Per (rho, backbone):

  oracle-lift = (AUC or C-index - 0.5) / (oracle's - 0.5) for ctr, cvr, ctcvr, hazard_short,
  hazard_long (on the held-out day); the max over experts of the zero-activation share; the
  CTR/CVR gate overlap (1 - total-variation distance of their mean gate weights: 1 = the two tasks
  mix the same experts, 0 = disjoint); training samples/s.

The CVR AUC is measured on the held-out day's clicked rows only, with few conversions: its
Hanley-McNeil standard error is printed with the table (lift differences below ~2 SE are noise).

Default settings (from issue 3's quality investigation, docs/QUALITY_INVESTIGATION.md): 800,000
rows over 10 days, 2,000 users (about 360 training impressions per user instead of 18 with the
generator's 20,000 users and 400,000 rows) and the generator's 5,000 creatives (with 500, the
held-out day has about 40 hazard events and the C-index is noise; with 5,000 about 400), 1 epoch
(a second pass over the same rows overfits the id embeddings; fresh rows help instead), the
recipe's learning rates, batch and sharding (table-wise and data-parallel tables; `--table-wise`
shards every table table-wise). About 20 minutes on 2 cores.

Writes bench/out/conflict/conflict.json (every run's metrics and diagnostics; rewritten after each
run, and `--resume` skips the runs it already holds with the same settings), conflict.md (the
tables) and the plot docs/conflict.png (Agg backend): oracle-lift per task vs rho, one line per
backbone, and a panel with the experts' max zero-activation share for MMoE, PLE and HoME.

usage:
  .venv/bin/python bench/conflict.py                # the full run (about 30 minutes)
  .venv/bin/python bench/conflict.py --quick        # tiny smoke run into bench/out/conflict_quick
  .venv/bin/python bench/conflict.py --rho 0.9 --rho -0.5 --models mmoe,home --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_mtl.run import read_run_info

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: the sibling module bench/models.py, by path
from models import (
    BACKBONES,
    BIN,
    ROOT,
    add_world_arguments,
    auc_se,
    ensure_data,
    fmt,
    recipe_variant,
    run_one,
    synth_config,
)

TASKS = ["ctr", "cvr", "ctcvr", "hazard_short", "hazard_long"]
MOE = ["mmoe", "ple", "home"]
DEFAULT_RHOS = [0.9, 0.5, 0.0, -0.5]
DEFAULTS = {"rows": 800_000, "days": 10, "users": 2_000, "creatives": 5_000, "epochs": 1}
QUICK = {"rows": 8_000, "days": 3, "users": 300, "creatives": 200, "epochs": 1}
QUICK_MODELS = "mmoe,home"
QUICK_RHOS = [0.9, -0.5]


def reevaluate(run_dir: Path, data: Path) -> dict[str, Any]:
    """`recsys-mtl evaluate` of a finished run on its held-out days, with the current metric code."""
    info = read_run_info(run_dir)
    days = info["data"]["eval_days"]
    out = run_dir / "metrics.json"
    cmd = [str(BIN), "evaluate", "--run", str(run_dir), "--data", str(data), "--start", days[0]]
    r = subprocess.run([*cmd, "--end", days[-1], "--out", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"evaluating {run_dir} failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


def task_lifts(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Oracle-lift per task of a metrics dict (None where undefined)."""
    return {t: metrics["tasks"].get(t, {}).get("oracle_lift") for t in TASKS}


def expected_lift(metrics: dict[str, Any], task: str) -> float | None:
    """A task's lift against the true probabilities (None for runs evaluated before it existed)."""
    return metrics["tasks"].get(task, {}).get("expected_lift")


def max_zero_share(metrics: dict[str, Any]) -> float | None:
    """The largest zero-activation share over a model's experts; None for a model without experts."""
    zs = (metrics.get("experts") or {}).get("zero_share") or {}
    return max(zs.values()) if zs else None


def gate_overlap(metrics: dict[str, Any], a: str = "ctr", b: str = "cvr") -> float | None:
    """1 - total-variation distance between tasks a's and b's mean gate weights over the union of
    their experts (1: same mixture, 0: disjoint experts); None without gates."""
    ex = metrics.get("experts") or {}
    weights, names = ex.get("gate_weights") or {}, ex.get("gate_experts") or {}
    if a not in weights or b not in weights:
        return None
    wa = dict(zip(names[a], weights[a], strict=True))
    wb = dict(zip(names[b], weights[b], strict=True))
    return float(sum(min(wa.get(k, 0.0), wb.get(k, 0.0)) for k in set(wa) | set(wb)))


def eval_counts(data: Path) -> dict[str, int]:
    """Held-out (last) day: impressions, clicks and conversions (the CVR evaluation's sizes)."""
    import pyarrow.parquet as pq

    last = sorted(p for p in data.iterdir() if p.name.startswith("dt="))[-1]
    t = pq.read_table(last, columns=["click", "conversion"])
    click = t["click"].to_numpy().astype(bool)
    conv = t["conversion"].to_numpy().astype(bool)
    return {"rows": len(click), "clicks": int(click.sum()), "conversions": int((conv & click).sum())}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The rho x backbone table, the oracle values and the gate weights of the MoE models."""
    s = results["settings"]
    lines = [
        f"Data per rho: `SynthConfig(rows={s['rows']}, days={s['days']}, seed={s['seed']}, rho=RHO, "
        f"conversion_rate={s['conversion_rate']}, users={s['users']}, creatives={s['creatives']})`; "
        f"trained on days 1-{s['days'] - 1} ({s['epochs']} epoch(s), lr x{s['lr_scale']}, batch "
        f"{s['batch_size'] or 'recipe'}, "
        f"{'all tables table-wise' if s['table_wise'] else 'recipe sharding'}, 1 process x {s['threads']} "
        f"threads), evaluated on day {s['days']}. "
        'Cells: oracle-lift (1 = the oracle, 0 = chance); "cvr vs truth": the CVR lift measured against '
        "the true conversion probabilities instead of the drawn conversions (`expected_lift`, "
        "recsys_mtl.metrics.expected_auc), free of label noise.",
        "",
        "| rho | backbone | ctr | cvr | cvr vs truth | ctcvr | hazard_short | hazard_long | max zero-share "
        "| CTR/CVR gate overlap | samples/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for rho_key, per in results["rhos"].items():
        for m, r in per["runs"].items():
            li = task_lifts(r["metrics"])
            cells = [fmt(li[t], ".2f") for t in TASKS]
            cells.insert(2, fmt(expected_lift(r["metrics"], "cvr"), ".2f"))
            lines.append(
                f"| {rho_key} | {m} | "
                + " | ".join(cells)
                + f" | {fmt(max_zero_share(r['metrics']), '.2f')} | {fmt(gate_overlap(r['metrics']), '.2f')}"
                + f" | {r['samples_per_s']:,.0f} |"
            )
        o = per.get("oracle", {})
        c = per["eval"]
        notes.append(
            f"- rho {rho_key}: oracle "
            + ", ".join(f"{t} {fmt(o.get(t))}" for t in TASKS)
            + f"; held-out day {c['rows']:,} rows, {c['clicks']:,} clicks, {c['conversions']} conversions"
            + f" (CVR AUC SE ~{fmt(per.get('cvr_auc_se'), '.3f')}, i.e. lift SE ~"
            + f"{fmt(per.get('cvr_lift_se'), '.2f')})"
        )
    lines += [
        "",
        "Oracle AUC / C-index and evaluation sizes:",
        "",
        *notes,
        "",
        "Mean gate weights (CTR / CVR):",
    ]
    for rho_key, per in results["rhos"].items():
        for m, r in per["runs"].items():
            ex = r["metrics"].get("experts") or {}
            gw, ge = ex.get("gate_weights") or {}, ex.get("gate_experts") or {}
            if "ctr" not in gw:
                continue
            cells = []
            for t in ("ctr", "cvr"):
                top = sorted(zip(ge[t], gw[t], strict=True), key=lambda p: -p[1])[:4]
                cells.append(f"{t}: " + ", ".join(f"{n} {w:.2f}" for n, w in top if w >= 0.01))
            lines.append(f"- rho {rho_key} {m}: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Oracle-lift per task vs rho (one line per backbone) and the MoE experts' max zero share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rhos = [float(k) for k in results["rhos"]]
    models = list(dict.fromkeys(m for per in results["rhos"].values() for m in per["runs"]))
    fig, axes = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
    for ax, task in zip(axes.flat, TASKS, strict=False):
        for m in models:
            ys = [
                task_lifts(per["runs"][m]["metrics"])[task] if m in per["runs"] else None
                for per in results["rhos"].values()
            ]
            (line,) = ax.plot(rhos, [np.nan if y is None else y for y in ys], marker="o", label=m)
            if task == "cvr":  # dashed, same colour: against the true probabilities (no label noise)
                truth = [
                    expected_lift(per["runs"][m]["metrics"], "cvr") if m in per["runs"] else None
                    for per in results["rhos"].values()
                ]
                if any(y is not None for y in truth):
                    ys = [np.nan if y is None else y for y in truth]
                    ax.plot(rhos, ys, ls="--", color=line.get_color(), lw=1)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(f"{task} oracle-lift")
        if task == "cvr":  # the held-out day's few conversions: +-1 standard error bars at 0
            se = [per.get("cvr_lift_se") or np.nan for per in results["rhos"].values()]
            ax.errorbar(rhos, [0.0] * len(rhos), yerr=se, fmt="none", ecolor="grey", capsize=4, lw=1)
            ax.set_title("cvr oracle-lift (dashed: vs true probabilities; bars: +-1 SE)", fontsize=10)
        ax.set_xlabel("rho (CTR-CVR relatedness)")
        ax.invert_xaxis()
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[5]
    for m in [m for m in MOE if m in models]:
        ys = [
            max_zero_share(per["runs"][m]["metrics"]) if m in per["runs"] else None
            for per in results["rhos"].values()
        ]
        ax.plot(rhos, [np.nan if y is None else y for y in ys], marker="s", label=m)
    ax.set_ylim(-0.02, 1.0)
    ax.set_title("experts: max zero-activation share")
    ax.set_xlabel("rho (CTR-CVR relatedness)")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    s = results["settings"]
    fig.suptitle(
        f"Task conflict on synthetic data: {s['rows']:,} rows / {s['days']} days, {s['users']:,} users, "
        f"{s['creatives']:,} creatives, conversions {s['conversion_rate']:.0%} of clicks, "
        f"{s['epochs']} epoch(s)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_arguments(ap)
    ap.set_defaults(**DEFAULTS)
    ap.add_argument("--rho", type=float, action="append", help=f"repeatable; default {DEFAULT_RHOS}")
    ap.add_argument("--models", default=",".join(BACKBONES))
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (settings and outputs of its own)")
    ap.add_argument(
        "--resume", action="store_true", help="keep finished runs of the JSON with the same settings"
    )
    ap.add_argument(
        "--reevaluate",
        action="store_true",
        help="with --resume: evaluate the finished runs again (current metrics code), no training",
    )
    ap.add_argument("--out", help="default bench/out/conflict (quick: bench/out/conflict_quick)")
    ap.add_argument("--plot", help="default docs/conflict.png (quick: OUT/conflict.png)")
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.models = QUICK_MODELS
        args.rho = args.rho or QUICK_RHOS
    out = Path(args.out or ROOT / "bench" / "out" / ("conflict_quick" if args.quick else "conflict"))
    plot_path = Path(args.plot or (out / "conflict.png" if args.quick else ROOT / "docs" / "conflict.png"))
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        k: getattr(args, k)
        for k in ("rows", "days", "seed", "conversion_rate", "users", "creatives", "epochs", "lr_scale")
    }
    settings |= {"batch_size": args.batch_size, "threads": args.threads, "table_wise": args.table_wise}
    settings |= {"model_options": args.model_options, "hazard_head": args.hazard_head}
    json_path = out / "conflict.json"
    old: dict[str, Any] = {}
    if args.resume and json_path.exists():
        prev = json.loads(json_path.read_text())
        old = prev["rhos"] if prev.get("settings") == settings else {}
    results: dict[str, Any] = {"settings": settings, "rhos": {}}
    models = [m for m in args.models.split(",") if m]
    t_start = time.perf_counter()
    for rho in args.rho or DEFAULT_RHOS:
        key = str(rho)
        cfg = synth_config(args, rho)
        data = ensure_data(cfg, out)
        counts = eval_counts(data)
        per: dict[str, Any] = {"eval": counts, "runs": {}, "oracle": {}}
        results["rhos"][key] = per
        for m in models:
            done = old.get(key, {}).get("runs", {}).get(m)
            if done is not None:
                if args.reevaluate:
                    done["metrics"] = reevaluate(out / f"run_{m}_{rho}", data)
                    print(f"rho={rho} {m}: re-evaluated", flush=True)
                per["runs"][m] = done
            else:
                recipe = recipe_variant(out, f"conflict_{m}", m, None, args)
                res = run_one(
                    recipe, data, out / f"run_{m}_{rho}", args.epochs, args.threads, args.batch_size
                )
                per["runs"][m] = res
                print(
                    f"rho={rho} {m}: {res['samples_per_s']:,.0f} samples/s, wall {res['wall_s']:.0f}s, lifts "
                    + ", ".join(f"{t} {fmt(v, '.2f')}" for t, v in task_lifts(res["metrics"]).items()),
                    flush=True,
                )
            for t, r in per["runs"][m]["metrics"]["tasks"].items():
                o = r.get("oracle_auc", r.get("oracle_c_index"))
                if o is not None:
                    per["oracle"][t] = o
            json_path.write_text(json.dumps(results, indent=1))
        cvr = [r["metrics"]["tasks"]["cvr"] for r in per["runs"].values() if "cvr" in r["metrics"]["tasks"]]
        if cvr and cvr[0].get("oracle_auc") is not None:
            a = float(np.nanmean([c["auc"] for c in cvr if c.get("auc") is not None]))
            se = auc_se(a, counts["conversions"], counts["clicks"] - counts["conversions"])
            per["cvr_auc_se"] = se
            per["cvr_lift_se"] = se / (cvr[0]["oracle_auc"] - 0.5) if math.isfinite(se) else None
        json_path.write_text(json.dumps(results, indent=1))
    results["wall_s"] = time.perf_counter() - t_start
    json_path.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (out / "conflict.md").write_text(text)
    plot(results, plot_path)
    print(text)
    print(f"wrote {json_path}, {out / 'conflict.md'}, {plot_path} ({results['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
