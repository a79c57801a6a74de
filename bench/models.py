"""Benchmark: every backbone on synthetic data with ground truth, against the oracle.

For each rho (task relatedness of CTR and CVR), generates data (`recsys_mtl.synth`), then trains
and evaluates (the real `recsys-mtl train` CLI, one process) each model on the shipped recipe with
only `model.type` changed: shared_bottom, mmoe, ple, home, dtrn, plus a single-task model per head
task (CVR single-task is the classic one trained on clicked rows only). The last day is held out.

Prints and writes (bench/out/models/models_rho*.json and models.md under --out):
  per task AUC / C-index and oracle-lift = (metric - 0.5) / (oracle - 0.5); training samples/s;
  expert diagnostics (zero-activation share per expert, mean gate weight per task) for MMoE and HoME.

World size and optimisation knobs (issue 3's quality investigation): --users / --creatives set the
generator's vocabularies (impressions per user = rows / users, roughly), --lr-scale multiplies the
recipe's dense and sparse learning rates, --batch-size overrides the recipe's batch.

--decompose adds, per run, what the model learned of the true logit (module `decompose`): the
held-out oracle logit is split, with the generator's own world (`build_world`, same seed), into
  main   everything but the user x creative term: user, creative, category, format, position, hour,
         device, wear-out effects;
  cat    the user x creative interaction through the creative's category centroid
         (<z_u, A sqrt(0.6) c_category>, learnable from a user's taste for 200 categories);
  idio   the rest of the interaction, <z_u, A sqrt(0.4) eps_creative> (needs user x creative data);
and the model's logit is regressed on the three (OLS): a slope of 1 means that part is learned at
the right scale, 0 means not at all. It also reports the AUC an oracle reaches with main only and
with main + cat (the ceiling of a model that learns no / only category-level interaction), the
impressions per user and per creative seen in training, an AUC standard error (Hanley-McNeil) for
the sparse CVR evaluation, and for hazard tasks the C-index with the risk taken over the first k
intervals only, k = the intervals the training window's label cutoff lets any label reach.

usage:
  python bench/models.py --rows 600000 --days 6 --rho 0.8 --rho -0.5 --conversion-rate 0.02
  python bench/models.py --rows 400000 --days 10 --rho 0.8 --users 2000 --creatives 500 \\
      --models mmoe,home --single-task '' --epochs 2 --decompose --out bench/out/quality/u2000
  python bench/models.py --compare-tables RUN_A RUN_B   # tables left untrained (identical weights)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from recsys_mtl.cli.train import train_command
from recsys_mtl.recipe import keep_tasks
from recsys_mtl.run import read_run_info
from recsys_mtl.synth import SCHEMA, SynthConfig, generate
from recsys_mtl.targets import UNIT_DAYS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).with_name("recsys-mtl")
BACKBONES = ["shared_bottom", "mmoe", "ple", "home", "dtrn"]
BINARY = ["ctr", "cvr", "ctcvr"]
HAZARD = ["hazard_short", "hazard_long"]


# --------------------------------------------------------------------------------------------
# data, recipes, runs
# --------------------------------------------------------------------------------------------


def data_key(cfg: SynthConfig) -> str:
    """A directory name that identifies the generated data (the knobs this benchmark sets)."""
    return (
        f"data_r{cfg.rows}_d{cfg.days}_s{cfg.seed}_rho{cfg.rho}_cv{cfg.conversion_rate}"
        f"_u{cfg.users}_c{cfg.creatives}"
    )


def ensure_data(cfg: SynthConfig, out: Path) -> Path:
    """The data of `cfg` under `out`, generated unless a directory with exactly this config and the
    current generator's columns exists (an older generator's data is regenerated)."""
    data = out / data_key(cfg)
    meta = data / "_synth.json"
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    fresh = meta.exists() and json.loads(meta.read_text())["config"] == want
    if fresh:
        first = next(data.glob("dt=*/*.parquet"), None)
        fresh = first is not None and pq.read_schema(first).names == SCHEMA.names
    if not fresh:
        generate(cfg, data, overwrite=True, progress=False)
    return data


def recipe_variant(
    out: Path, name: str, model_type: str | None, single_task: str | None, args: argparse.Namespace
) -> Path:
    """The shipped recipe with only the model type changed (default options), or a single-task
    shared-bottom model, then the knobs of `add_world_arguments` in `args`: learning rates (dense
    and sparse) multiplied by `lr_scale`; with `table_wise`, every table sharded table-wise
    (`training.sharding_types: [table_wise]`; before the fix in recsys_mtl/distributed.py this
    worked around data-parallel tables never being trained, docs/QUALITY_INVESTIGATION.md);
    `model_options` (e.g. `{"cross_layers": 2}`) added to every model's options but dtrn's, the
    single-task models' included; `hazard_head` sets every hazard task's head form,
    `hazard_tower_features` their `tower_features`, `hazard_features_only` their `reads_backbone:
    false`, `hazard_on_backbone` / `hazard_detached` make them read the backbone, training it or
    not; `train_seed` the recipe's training seed; `drop_features` leaves those features out."""
    lr_scale, table_wise = args.lr_scale, args.table_wise
    model_options, hazard_head = args.model_options, args.hazard_head
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
        # the classic single-task model reads its own shared-bottom network (ids included): a
        # task the recipe keeps off the backbone keeps only its tower_features as a side input
        task.pop("reads_backbone", None)
        keep_tasks(d, [single_task])  # its gate settings for the other tasks go with them
    if table_wise:
        d["training"]["sharding_types"] = ["table_wise"]
    if args.drop_features:
        dropped = set(args.drop_features.split(","))
        unknown = dropped - {f["name"] for f in d["features"]}
        if unknown:
            raise SystemExit(f"--drop-features: not features of the recipe: {sorted(unknown)}")
        d["features"] = [f for f in d["features"] if f["name"] not in dropped]
        for t in d["tasks"]:  # a dropped feature leaves the towers that read it too
            if "tower_features" in t:
                t["tower_features"] = [f for f in t["tower_features"] if f not in dropped]
    if model_options and d["model"]["type"] != "dtrn":
        d["model"].update(model_options)
    for t in d["tasks"]:
        if t["kind"] == "hazard" and hazard_head:
            t["hazard_head"] = hazard_head
        if t["kind"] == "hazard" and args.hazard_on_backbone:
            t.update(reads_backbone=True, trains_shared=True)
        if t["kind"] == "hazard" and args.hazard_detached:
            t.update(reads_backbone=True, trains_shared=False)
        if t["kind"] == "hazard" and args.hazard_tower_features is not None:
            t["tower_features"] = [f for f in args.hazard_tower_features.split(",") if f]
        if t["kind"] == "hazard" and args.hazard_features_only:
            t["reads_backbone"] = False
    if args.train_seed is not None:
        d["training"]["seed"] = args.train_seed
    if lr_scale != 1.0:
        for opt in ("dense_optimizer", "sparse_optimizer"):
            d["training"][opt]["lr"] = d["training"][opt]["lr"] * lr_scale
    p = out / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def run_one(
    recipe: Path, data: Path, out: Path, epochs: int, threads: int, batch_size: int | None = None
) -> dict[str, Any]:
    """`recsys-mtl train` (1 process) of `recipe` on `data` into `out`: throughput and metrics."""
    cmd = train_command(
        recipe,
        data,
        out,
        program=[str(BIN)],
        epochs=epochs,
        threads=threads,
        no_progress=True,
        overwrite=True,
        batch_size=batch_size or None,
        # windows under 7 training days leave the weekly hazard no label: measured as untrained
        allow_untrained_tasks=True,
    )
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    info = read_run_info(out)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "samples_per_s": info["samples_per_s"],
        "wall_s": time.perf_counter() - t0,
        "steps": info["steps"],
        "metrics": metrics,
    }


# --------------------------------------------------------------------------------------------
# what the model learned (--decompose)
# --------------------------------------------------------------------------------------------


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def auc_se(auc_value: float, n_pos: int, n_neg: int) -> float:
    """Hanley-McNeil (1982) standard error of an AUC with n_pos positives and n_neg negatives."""
    if not (math.isfinite(auc_value) and n_pos and n_neg):
        return float("nan")
    a = auc_value
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def entity_stats(data: Path, days: list[str]) -> dict[str, float]:
    """Training impressions per user and per creative: the mean over entities seen, and the mean
    the typical impression sees (impression-weighted: what an embedding row is trained on)."""
    import pyarrow.parquet as pq

    res: dict[str, float] = {}
    for col in ("user_id", "creative_id"):
        ids = np.concatenate([pq.read_table(data / f"dt={d}", columns=[col])[col].to_numpy() for d in days])
        counts = np.bincount(np.unique(ids, return_inverse=True)[1]).astype(np.float64)
        res[f"{col}_seen"] = float(len(counts))
        res[f"{col}_mean"] = float(counts.mean())
        res[f"{col}_weighted"] = float((counts**2).sum() / counts.sum())
    return res


def decompose(run_dir: Path, data: Path, cfg: SynthConfig) -> dict[str, Any]:
    """What a trained run learned of the true CTR / CVR logits, and hazard C-index within the
    trained horizon (see the module docstring)."""
    from recsys_mtl.evaluation import evaluation_reader, per_creative, predict
    from recsys_mtl.metrics import auc, c_index
    from recsys_mtl.run import load_run
    from recsys_mtl.synth.world import build_world, world_rng

    run = load_run(run_dir)
    eval_days = run.info["data"]["eval_days"]
    train_days = run.info["data"]["train_days"]
    reader = evaluation_reader(
        run.recipe, data, transform=run.transform, start=eval_days[0], end=eval_days[-1]
    )
    preds = predict(run.model, reader)
    world = build_world(cfg)
    # the category centroids are the first draw of the world's part 1 (world.build_world)
    centroids = world_rng(cfg.seed, 1).standard_normal((cfg.categories, cfg.latent_dim))
    c = centroids[world.creative_category]
    assert preds.users is not None and preds.items is not None
    res: dict[str, Any] = {"train": entity_stats(data, train_days)}
    for task, vecs in (("ctr", world.creative_az), ("cvr", world.creative_bz)):
        if task not in preds.scores or task not in preds.oracle:
            continue
        m = preds.eval_mask[task]
        y = preds.labels[task][m]
        model = _logit(preds.scores[task][m])
        oracle = _logit(preds.oracle[task][m])
        # the category part of each creative's interaction vector: OLS on its category centroid
        coef, *_ = np.linalg.lstsq(c, vecs.astype(np.float64), rcond=None)
        cat_vecs = c @ coef
        resid = vecs - cat_vecs
        cat_r2 = 1.0 - float((resid**2).sum() / ((vecs - vecs.mean(axis=0)) ** 2).sum())
        zu = world.user_z[preds.users[m]].astype(np.float64)
        inter = np.einsum("ij,ij->i", zu, vecs[preds.items[m]].astype(np.float64))
        cat = np.einsum("ij,ij->i", zu, cat_vecs[preds.items[m]])
        parts = {"main": oracle - inter, "cat": cat, "idio": inter - cat}
        x = np.column_stack([np.ones(len(model)), *parts.values()])
        beta, *_ = np.linalg.lstsq(x, model, rcond=None)
        fitted = x @ beta
        r2 = 1.0 - float(((model - fitted) ** 2).sum() / ((model - model.mean()) ** 2).sum())
        a = auc(model, y)
        res[task] = {
            "rows": int(m.sum()),
            "positives": int(y.sum()),
            "auc": a,
            "auc_se": auc_se(a, int(y.sum()), int(len(y) - y.sum())),
            "oracle_auc": auc(oracle, y),
            "oracle_auc_main": auc(parts["main"], y),
            "oracle_auc_main_cat": auc(parts["main"] + parts["cat"], y),
            "var": {k: float(v.var()) for k, v in parts.items()},
            "slope": {k: float(b) for k, b in zip(parts, beta[1:], strict=True)},
            "r2_model_on_parts": r2,
            "category_share_of_interaction_vectors": cat_r2,
        }
    n_train_days = len(train_days)
    for t in run.recipe.tasks:
        if t.kind != "hazard" or t.name not in preds.oracle:
            continue
        assert t.grid is not None
        # intervals that some training label can reach: subjects of the first training day were
        # observable for n_train_days days at the cutoff (recsys_mtl.targets.censor_at_cutoff)
        ends = np.asarray(t.grid[1:], dtype=np.float64) * UNIT_DAYS[t.unit]
        k = max(1, min(t.num_intervals, int(np.searchsorted(ends, n_train_days, side="right"))))
        ct = per_creative(t.name, preds)
        assert ct.oracle is not None
        risk_k = 1.0 - np.prod(1.0 - ct.hazard[:, :k], axis=1)
        o_risk_k = 1.0 - np.prod(1.0 - ct.oracle[:, :k], axis=1)
        ck, ok = c_index(ct.interval, ct.event, risk_k), c_index(ct.interval, ct.event, o_risk_k)
        res[t.name] = {
            "trained_intervals": k,
            "intervals": t.num_intervals,
            "c_index_trained_horizon": ck,
            "oracle_c_index_trained_horizon": ok,
            "lift_trained_horizon": (ck - 0.5) / (ok - 0.5) if ok > 0.5 else float("nan"),
            "subjects": len(ct.interval),
            "events": int(ct.event.sum()),
        }
    return res


def compare_tables(run_a: Path, run_b: Path) -> dict[str, dict[str, Any]]:
    """Per embedding table of two finished runs: its sharding type in run_a's plan, whether its
    weights are bit-identical in both checkpoints (a table trained on different data never is),
    and its largest |weight| in run_a (an untrained table stays within its init bound)."""
    import torch

    from recsys_mtl.run import load_run

    a, b = load_run(run_a), load_run(run_b)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    plan = a.info.get("sharding_plan") or {}
    out: dict[str, dict[str, Any]] = {}
    for key, w in sa.items():
        if ".embedding_bags." not in key or not key.endswith(".weight"):
            continue
        table = key.split(".embedding_bags.")[1].split(".")[0]
        out[table] = {
            "sharding_type": plan.get(table, {}).get("sharding_type"),
            "identical": bool(sb[key].shape == w.shape and torch.equal(w, sb[key])),
            "max_abs": float(w.abs().max()),
            "init_bound": (1.0 / w.shape[0]) ** 0.5,
        }
    return out


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def lift(res: dict[str, Any], task: str) -> float | None:
    """Oracle-lift of `task` in a run result, None when absent."""
    r = res["metrics"]["tasks"].get(task)
    return None if r is None else r.get("oracle_lift")


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        "| model | "
        + " | ".join(f"{t} AUC (lift)" for t in BINARY)
        + " | "
        + " | ".join(f"{t} C (lift)" for t in HAZARD)
        + " | lift vs truth: "
        + " / ".join(BINARY + HAZARD)
        + " | train samples/s |"
    )
    lines = [head, "|" + "---|" * (3 + len(BINARY) + len(HAZARD))]
    oracle: dict[str, float] = {}
    for name, res in rows.items():
        tasks = res["metrics"]["tasks"]
        cells = []
        for t in BINARY:
            r = tasks.get(t)
            cells.append("" if r is None else f"{fmt(r['auc'])} ({fmt(r.get('oracle_lift'), '.2f')})")
            if r and r.get("oracle_auc") is not None:
                oracle[t] = r["oracle_auc"]
        for t in HAZARD:
            r = tasks.get(t)
            cells.append("" if r is None else f"{fmt(r['c_index'])} ({fmt(r.get('oracle_lift'), '.2f')})")
            if r and r.get("oracle_c_index") is not None:
                oracle[t] = r["oracle_c_index"]
        # expected_lift: against the true probabilities, free of label noise (and of censoring)
        truth = " / ".join(fmt((tasks.get(t) or {}).get("expected_lift"), ".2f") for t in BINARY + HAZARD)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {truth} | {res['samples_per_s']:,.0f} |")
    if oracle:
        lines.append("| oracle | " + " | ".join(fmt(oracle.get(t)) for t in BINARY + HAZARD) + " | | |")
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


def decomposition_table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per (model, task) of `decompose` results."""
    lines = [
        "| model | task | AUC (+-SE) | oracle AUC: main / main+cat / full | slope main / cat / idio "
        "| R2 | var main / cat / idio |",
        "|---|---|---|---|---|---|---|",
    ]
    hz = []
    for name, res in rows.items():
        d = res.get("decompose")
        if not d:
            continue
        for t in ("ctr", "cvr"):
            r = d.get(t)
            if not r:
                continue
            s, v = r["slope"], r["var"]
            lines.append(
                f"| {name} | {t} | {fmt(r['auc'])} +-{fmt(r['auc_se'], '.3f')} | "
                f"{fmt(r['oracle_auc_main'])} / {fmt(r['oracle_auc_main_cat'])} / {fmt(r['oracle_auc'])} | "
                f"{s['main']:.2f} / {s['cat']:.2f} / {s['idio']:.2f} | {r['r2_model_on_parts']:.2f} | "
                f"{v['main']:.2f} / {v['cat']:.2f} / {v['idio']:.2f} |"
            )
        for t in HAZARD:
            r = d.get(t)
            if r:
                hz.append(
                    f"| {name} | {t} | {r['trained_intervals']} of {r['intervals']} | "
                    f"{fmt(r['c_index_trained_horizon'])} | {fmt(r['oracle_c_index_trained_horizon'])} | "
                    f"{fmt(r['lift_trained_horizon'], '.2f')} | {r['subjects']} / {r['events']} |"
                )
    first = next((r["decompose"]["train"] for r in rows.values() if r.get("decompose")), None)
    out = "\n".join(lines)
    if hz:
        out += (
            "\n\nHazard C-index with the risk over the trained intervals only:\n\n"
            "| model | task | trained intervals | C | oracle C | lift | subjects / events |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(hz)
        )
    if first:
        out += (
            f"\n\nTraining impressions per user: mean {first['user_id_mean']:.1f} over "
            f"{first['user_id_seen']:.0f} users seen, {first['user_id_weighted']:.1f} for the typical "
            f"impression; per creative: mean {first['creative_id_mean']:.1f} over "
            f"{first['creative_id_seen']:.0f}, {first['creative_id_weighted']:.1f} for the typical "
            "impression."
        )
    return out


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def add_world_arguments(ap: argparse.ArgumentParser) -> None:
    """Data and training knobs shared with bench/conflict.py."""
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--conversion-rate", type=float, default=0.02, help="conversions per click (rare)")
    ap.add_argument("--users", type=int, default=SynthConfig.users, help="generator users (default 20000)")
    ap.add_argument(
        "--creatives", type=int, default=SynthConfig.creatives, help="generator creatives (default 5000)"
    )
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr-scale", type=float, default=1.0, help="multiplies the dense and sparse LRs")
    ap.add_argument("--batch-size", type=int, help="rows per step (default: the recipe's 2048)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--model-options",
        type=json.loads,
        default={},
        help="JSON added to every model's options (not dtrn's), e.g. '{\"cross_layers\": 2}'",
    )
    ap.add_argument(
        "--hazard-head",
        choices=["shared", "independent"],
        help="every hazard task's head form (default: the recipe's, i.e. shared)",
    )
    ap.add_argument(
        "--hazard-detached",
        action="store_true",
        help="hazard towers read the backbone's output detached: their losses train only their "
        "towers and heads (`reads_backbone: true, trains_shared: false`)",
    )
    ap.add_argument(
        "--hazard-on-backbone",
        action="store_true",
        help="hazard towers read the backbone and train it (`reads_backbone: true, trains_shared: "
        "true`: the recipe before 2026-12-01's creative statistics)",
    )
    ap.add_argument(
        "--hazard-tower-features",
        help="comma-separated dense features fed straight into every hazard tower "
        "(`tower_features`; '' for none; default: the recipe's)",
    )
    ap.add_argument(
        "--train-seed", type=int, help="the recipe's training.seed (init, shuffling; default: the recipe's)"
    )
    ap.add_argument(
        "--hazard-features-only",
        action="store_true",
        help="hazard towers read only their tower_features, not the backbone (`reads_backbone: false`)",
    )
    ap.add_argument(
        "--drop-features",
        default="",
        help="comma-separated recipe features to leave out (an ablation, e.g. "
        "creative_daily_impressions,creative_ctr_to_date)",
    )
    ap.add_argument(
        "--table-wise",
        action="store_true",
        help="shard every table table-wise (default: the recipe's table_wise + data_parallel)",
    )


def synth_config(args: argparse.Namespace, rho: float) -> SynthConfig:
    return SynthConfig(
        rows=args.rows,
        days=args.days,
        seed=args.seed,
        rho=rho,
        conversion_rate=args.conversion_rate,
        users=args.users,
        creatives=args.creatives,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_arguments(ap)
    ap.add_argument("--rho", type=float, action="append", help="repeatable; default 0.8 and -0.5")
    ap.add_argument("--models", default=",".join(BACKBONES))
    ap.add_argument(
        "--single-task",
        default="ctr,cvr,hazard_short,hazard_long",
        help="head tasks to train single-task models for ('' for none)",
    )
    ap.add_argument("--decompose", action="store_true", help="also decompose what each model learned")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "models"))
    ap.add_argument(
        "--compare-tables",
        nargs=2,
        metavar="RUN",
        help="only compare the embedding tables of two finished runs (which ones never trained)",
    )
    args = ap.parse_args()
    if args.compare_tables:
        for name, r in compare_tables(*map(Path, args.compare_tables)).items():
            print(
                f"{name:16s} {r['sharding_type'] or '-':14s} identical in both runs: {r['identical']!s:5s} "
                f"max|w| {r['max_abs']:.4f} (init bound {r['init_bound']:.4f})"
            )
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for rho in args.rho or [0.8, -0.5]:
        cfg = synth_config(args, rho)
        data = ensure_data(cfg, out)
        rows: dict[str, dict[str, Any]] = {}
        jobs = [(m, f"run_{m}_{rho}", m, None) for m in args.models.split(",") if m]
        jobs += [
            (f"single-task {t}", f"run_single_{t}_{rho}", None, t) for t in args.single_task.split(",") if t
        ]
        for key, run_name, model_type, single in jobs:
            recipe_name = f"bench_{model_type}" if model_type else f"bench_single_{single}"
            recipe = recipe_variant(out, recipe_name, model_type, single, args)
            run_dir = out / run_name
            rows[key] = run_one(recipe, data, run_dir, args.epochs, args.threads, args.batch_size)
            if args.decompose:
                rows[key]["decompose"] = decompose(run_dir, data, cfg)
            print(
                f"rho={rho} {key}: {rows[key]['samples_per_s']:,.0f} samples/s, "
                f"wall {rows[key]['wall_s']:.0f}s",
                flush=True,
            )
        header = (
            f"### rho = {rho}\n\nData: `SynthConfig(rows={args.rows}, days={args.days}, seed={args.seed}, "
            f"rho={rho}, conversion_rate={args.conversion_rate}, users={args.users}, "
            f"creatives={args.creatives})`, last day held out; {args.epochs} epoch(s), lr x{args.lr_scale}, "
            f"batch {args.batch_size or 'recipe'}, sharding "
            f"{'table_wise only' if args.table_wise else 'recipe (table_wise + data_parallel)'}, "
            f"model options {args.model_options or 'default'}, hazard head {args.hazard_head or 'recipe'}, "
            f"1 process, {args.threads} threads.\n"
        )
        text = header + "\n" + table(rows) + "\n\n" + diagnostics(rows)
        if args.decompose:
            text += "\n" + decomposition_table(rows) + "\n"
        print(text, flush=True)
        report.append(text)
        (out / f"models_rho{rho}.json").write_text(json.dumps(rows, indent=1))
    (out / "models.md").write_text("\n\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
