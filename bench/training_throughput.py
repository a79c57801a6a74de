"""Benchmark: training throughput (1 process, 2 sharded processes, a plain-PyTorch baseline), export
and scoring, for the shipped recipe (configs/ads_ranker.yaml, HoME), in one run on the same data.

  1. `recsys-mtl train --nproc 1 --threads 2 --max-steps S --eval-days 1`: samples/s from RUN/run.json
     (the trainer's own figure: the timed loop only, reading + transform + step; not start-up,
     checkpointing or the held-out evaluation that follows).
  2. the same with `--nproc 2 --threads 1` (equal cores), and the sharded overhead
     1 - (2-process samples/s / 1-process samples/s). Goal: <= 20% at equal cores.
  3. a plain-PyTorch baseline of the same model: `MultiTaskModel` with its TorchRec `sparse_arch`
     replaced by one `torch.nn.EmbeddingBag` per feature (features naming one table share its
     weight, as in the model; same dims, hash sizes, pooling and init), every parameter under a
     stock optimizer (dense layers: the recipe's Adam; tables: dense-gradient `torch.optim.Adagrad`
     at the recipe's sparse lr, or `--baseline-table-optimizer adam`), same reader, transform, batch,
     loss, 2 threads and steps, in this process. Timed like the trainer (every step, reading
     included) and in steady state (after --warmup steps). Goal: ours >= 1.5x the baseline.
  4. export of the 1-process run (`recsys_mtl.export.export_run`, fp32 and int8): time and model.pt
     size; then scoring (`recsys_mtl.loader.load_model(...).score(columns)`) of requests of
     --candidates held-out raw rows: median of --requests after warm-up, torch threads 1, one core.

Run it on an otherwise idle machine: with --threads 2 and another process busy on one of the cores,
torch's OpenMP threads spin at every barrier and 2-thread figures collapse (about 10x measured); the
script warns when other processes keep a core busy as it starts (/proc/stat).

usage: python bench/training_throughput.py [--rows 400000] [--days 3] [--steps 200] [--out bench/out]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.cli.train import train_command
from recsys_mtl.distributed import dense_optimizer
from recsys_mtl.models import MultiTaskModel, build_model, total_loss
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import DTRNOptions, Recipe, load_recipe
from recsys_mtl.run import read_run_info
from recsys_mtl.synth import SynthConfig, generate
from recsys_mtl.transform import FeatureTransform

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "ads_ranker.yaml"
BIN = Path(sys.executable).with_name("recsys-mtl")


# ---------------------------------------------------------------------------------------------
# the plain-PyTorch baseline
# ---------------------------------------------------------------------------------------------


class PlainSparseArch(nn.Module):
    """`SparseArch` (pooled, i.e. every model but DTRN) in plain PyTorch: one `nn.EmbeddingBag` per
    sparse feature, looked up from the same KeyedJaggedTensor (per feature values/offsets).

    Features that name the same table (creative_id, clicked_items, converted_items -> `creative`)
    share one weight, as they do in the model; `shared_tables=False` gives each its own table.
    Pooling: id features sum (one value each), multi_id/sequence features their recipe `pooling`
    (sum or mean; an empty list pools to zeros, as in the model). Init as TorchRec's default:
    uniform(+-sqrt(1 / rows)).
    """

    def __init__(self, recipe: Recipe, field_names: list[str], shared_tables: bool = True) -> None:
        super().__init__()
        self.field_names = list(field_names)
        self.bags = nn.ModuleDict()
        owner: dict[str, nn.EmbeddingBag] = {}
        for name in self.field_names:
            f = recipe.feature(name)
            rows, dim = f.num_rows, int(f.embedding_dim or 0)
            mode = "sum" if f.kind == "id" else f.pooling
            bag = nn.EmbeddingBag(rows, dim, mode=mode, include_last_offset=True)
            key = f.table_name if shared_tables else f.name
            if key in owner:
                bag.weight = owner[key].weight  # tied: one table, several features
            else:
                bound = (1.0 / rows) ** 0.5
                nn.init.uniform_(bag.weight, -bound, bound)
                owner[key] = bag
            self.bags[name] = bag

    def forward(
        self, sparse: KeyedJaggedTensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        jts = sparse.to_dict()  # == sparse[name] per feature, split once
        fields = [self.bags[n](jts[n].values(), jts[n].offsets()) for n in self.field_names]
        return fields, [], []


class PlainTorchModel(MultiTaskModel):
    """The recipe's `MultiTaskModel` (same bottom, backbone, towers, heads and forward) on
    `PlainSparseArch` instead of TorchRec's embedding collections."""

    def __init__(self, recipe: Recipe, shared_tables: bool = True) -> None:
        if isinstance(recipe.model, DTRNOptions):
            raise ValueError("the plain baseline pools sequences; DTRN needs them unpooled")
        ref = build_model(recipe, embedding_device=torch.device("meta"))  # no TorchRec tables
        super().__init__(
            PlainSparseArch(recipe, ref.sparse_arch.field_names, shared_tables),  # type: ignore[arg-type]
            ref.bottom if ref.flat_input else None,  # type: ignore[arg-type]
            ref.backbone,
            ref.tower_inputs,
            ref.towers,
            ref.heads,
            ref.head_tasks,
            ref.model_type,
            backbone_tasks=ref.backbone_tasks,
        )


def run_baseline(
    recipe: Recipe,
    data: Path,
    info: dict[str, Any],
    *,
    steps: int,
    warmup: int,
    threads: int,
    table_optimizer: str,
    shared_tables: bool,
) -> dict[str, Any]:
    """Train `PlainTorchModel` with the trainer's loop on the 1-process run's days and transform."""
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.training.seed)
    train_days = info["data"]["train_days"]
    bs = int(info["batch_size_per_rank"])
    reader = ParquetReader(
        recipe,
        data,
        start=train_days[0],
        end=train_days[-1],
        transform=FeatureTransform.from_spec(info["transform"]),
        batch_size=bs,
        drop_last=True,
        label_cutoff=dt.date.fromisoformat(train_days[-1]),  # as the trainer: no look-ahead
    )
    steps_per_epoch = reader.num_rows // bs
    if steps_per_epoch == 0:
        raise SystemExit(f"baseline: fewer than {bs} training rows")
    model = PlainTorchModel(recipe, shared_tables)
    tables = list(model.sparse_arch.parameters())  # tied weights listed once
    table_ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    spec = recipe.training.sparse_optimizer
    opt_dense = dense_optimizer(recipe.training.dense_optimizer, dense)
    opt_tables: torch.optim.Optimizer = (
        torch.optim.Adagrad(tables, lr=spec.lr, eps=spec.eps)
        if table_optimizer == "adagrad"
        else torch.optim.Adam(tables, lr=spec.lr, eps=spec.eps)
    )
    model.train()
    step, losses = 0, []
    t0 = time.perf_counter()
    t_warm = t0
    while step < steps:
        reader.set_epoch(step // steps_per_epoch)
        for i, batch in enumerate(reader.iter_batches()):
            if i >= steps_per_epoch or step >= steps:
                break
            outputs = model(batch.features.sparse, batch.features.dense)
            loss, per_task = total_loss(recipe, outputs, batch.targets)
            opt_dense.zero_grad(set_to_none=True)
            opt_tables.zero_grad(set_to_none=True)
            loss.backward()
            opt_dense.step()
            opt_tables.step()
            losses.append(float(loss.detach()))  # the trainer reads every loss too
            for v in per_task.values():
                float(v.detach())
            step += 1
            if step == warmup:
                t_warm = time.perf_counter()
    t1 = time.perf_counter()
    steady_steps = steps - warmup if warmup < steps else steps
    if warmup >= steps:
        t_warm = t0
    return {
        "steps": steps,
        "warmup_steps": warmup if warmup < steps else 0,
        "batch_size": bs,
        "threads": threads,
        "table_optimizer": f"torch.optim.{'Adagrad' if table_optimizer == 'adagrad' else 'Adam'} "
        "(dense gradients)",
        "dense_optimizer": f"torch.optim.{type(opt_dense).__name__}",
        "shared_tables": shared_tables,
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples_per_s_all_steps": steps * bs / (t1 - t0),
        "samples_per_s_steady": steady_steps * bs / (t1 - t_warm),
        "seconds": t1 - t0,
        "last_loss": statistics.fmean(losses[-20:]),
    }


# ---------------------------------------------------------------------------------------------
# training runs, export, scoring
# ---------------------------------------------------------------------------------------------


def train_cmd(
    recipe: Path, data: Path, out: Path, nproc: int, threads: int, steps: int, batch_size: int | None
) -> list[str]:
    return train_command(
        recipe,
        data,
        out,
        program=[str(BIN)],
        nproc=nproc,
        threads=threads,
        max_steps=steps,
        eval_days=1,
        # enough passes for --max-steps on small data (each epoch is >= 1 step); the run stops at S
        epochs=steps,
        no_progress=True,
        overwrite=True,
        batch_size=batch_size or None,
        allow_untrained_tasks=True,  # throughput on a few days: the weekly hazard keeps no label
    )


def run_train(cmd: list[str], out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    info = read_run_info(out)
    curve = info.get("loss_curve") or []
    return {
        "command": shlex.join(cmd),
        "world_size": info["world_size"],
        "threads_per_rank": info["threads_per_rank"],
        "batch_size_per_rank": info["batch_size_per_rank"],
        "steps": info["steps"],
        "samples": info["samples"],
        "samples_per_s": info["samples_per_s"],
        "train_seconds": info["seconds"],
        "wall_s": wall,  # start-up, planning, training, checkpoint and held-out evaluation
        "sharding_plan": info.get("sharding_plan"),
        "parameters": info.get("parameters"),
        "last_loss": curve[-1]["loss"] if curve else None,
        "info": info,
    }


def held_out_table(data: Path, days: list[str], columns: list[str]) -> pa.Table:
    files = sorted(p for d in days for p in (data / f"dt={d}").glob("*.parquet"))
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in files)


def cores_in_use(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other processes over `seconds` (this one sleeps meanwhile), from
    /proc/stat; None where there is no /proc."""

    def sample() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (1.0 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1)


def one_core() -> set[int] | None:
    """Pin this process to one core (torch, pyarrow, affinity); returns the old affinity."""
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if hasattr(os, "sched_setaffinity"):
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {sorted(old)[0]})
        return old
    return None


def export_and_score(
    run_dir: Path, data: Path, registry: Path, *, candidates: int, requests: int, warm: int
) -> dict[str, Any]:
    from recsys_mtl.export import export_run
    from recsys_mtl.loader import load_model

    out: dict[str, Any] = {}
    for kind in ("fp32", "int8"):
        t0 = time.perf_counter()
        res = export_run(run_dir, registry, "bench", int8=kind == "int8")
        out[kind] = {
            "export_wall_s": time.perf_counter() - t0,  # load_run (DCP) + script + parity + publish
            "export_seconds": res.seconds,  # export_model alone
            "model_pt_bytes": res.bytes,
            "max_abs_diff_vs_eager": res.max_abs_diff,
            "version": res.version,
        }
    info = read_run_info(run_dir)
    old = one_core()
    try:
        models = {k: load_model(registry, "bench", out[k]["version"]) for k in out}
        cols = models["fp32"].input_columns
        table = held_out_table(data, info["data"]["eval_days"], cols)
        n = min(candidates, table.num_rows)
        span = max(1, table.num_rows - n + 1)
        reqs = [table.slice((i * n) % span, n) for i in range(requests)]
        for k, m in models.items():
            for r in reqs[:warm]:
                m.score(r)
            times = []
            for r in reqs:
                t0 = time.perf_counter()
                m.score(r)
                times.append(time.perf_counter() - t0)
            out[k].update(
                score_ms_median=1e3 * statistics.median(times),
                score_ms_p90=1e3 * float(np.quantile(times, 0.9)),
                candidates=n,
                requests=len(times),
            )
        a, b = models["fp32"].score(reqs[0]), models["int8"].score(reqs[0])
        out["int8_vs_fp32_max_abs_diff"] = {
            t: float(np.abs(a[t] - b[t]).max()) for t in models["fp32"].task_names
        }
    finally:
        if old is not None:
            os.sched_setaffinity(0, old)
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000, help="generated rows (all days)")
    ap.add_argument("--days", type=int, default=3, help="generated days; the last is held out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200, help="training steps per run (--max-steps)")
    ap.add_argument("--warmup", type=int, default=10, help="baseline steps left out of steady state")
    ap.add_argument("--batch-size", type=int, help="rows per step per rank (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=2, help="cores compared: 1 process x N threads")
    ap.add_argument(
        "--baseline-table-optimizer",
        choices=["adagrad", "adam"],
        default="adagrad",
        help="stock optimizer for the baseline's tables (dense gradients); default adagrad",
    )
    ap.add_argument(
        "--baseline-unshared-tables",
        action="store_true",
        help="baseline: one table per feature even where the recipe shares one (more parameters)",
    )
    ap.add_argument("--candidates", type=int, default=2000, help="rows per scoring request")
    ap.add_argument("--requests", type=int, default=20, help="timed scoring requests (median)")
    ap.add_argument("--skip-sharded", action="store_true", help="no --nproc run")
    ap.add_argument("--skip-baseline", action="store_true", help="no plain-PyTorch baseline")
    ap.add_argument(
        "--recipe", type=Path, default=RECIPE, help="recipe to measure (default: the shipped one)"
    )
    ap.add_argument("--skip-export", action="store_true", help="no export / scoring")
    ap.add_argument("--workdir", help="keep data and runs here (default: a temporary directory)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    recipe_path = args.recipe.resolve()
    nproc = args.threads  # sharded run: one thread per process, same cores as the 1-process run
    recipe = load_recipe(recipe_path)
    this_cmd = shlex.join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv])
    others = cores_in_use()
    busy = others is not None and others > 0.3
    if busy:
        print(
            f"WARNING: other processes are using {others:.1f} core(s) right now, so throughput figures "
            "(2-thread ones most) are not representative; run on an idle machine",
            file=sys.stderr,
            flush=True,
        )
    result: dict[str, Any] = {
        "command": this_cmd,
        "other_cores_in_use_at_start": others,
        "recipe": os.path.relpath(recipe_path, ROOT),
        "model": recipe.model.type,
        "data": {"rows": args.rows, "days": args.days, "seed": args.seed},
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "data"
        t0 = time.perf_counter()
        generate(
            SynthConfig(rows=args.rows, days=args.days, seed=args.seed), data, overwrite=True, progress=False
        )
        result["data"]["generate_s"] = time.perf_counter() - t0
        print(
            f"generated {args.rows:,} rows over {args.days} days in {result['data']['generate_s']:.1f}s",
            flush=True,
        )

        runs: dict[str, dict[str, Any]] = {}
        one = work / "run_nproc1"
        runs["1 process"] = run_train(
            train_cmd(recipe_path, data, one, 1, args.threads, args.steps, args.batch_size), one
        )
        print(f"1 process: {runs['1 process']['samples_per_s']:,.0f} samples/s", flush=True)
        if not args.skip_sharded and nproc > 1:
            two = work / f"run_nproc{nproc}"
            key = f"{nproc} processes (sharded)"
            runs[key] = run_train(
                train_cmd(recipe_path, data, two, nproc, 1, args.steps, args.batch_size), two
            )
            print(f"{key}: {runs[key]['samples_per_s']:,.0f} samples/s", flush=True)
        info1 = runs["1 process"].pop("info")
        for r in runs.values():
            r.pop("info", None)
        result["training"] = runs
        sps1 = runs["1 process"]["samples_per_s"]

        baseline = None
        if not args.skip_baseline:
            baseline = run_baseline(
                recipe,
                data,
                info1,
                steps=args.steps,
                warmup=args.warmup,
                threads=args.threads,
                table_optimizer=args.baseline_table_optimizer,
                shared_tables=not args.baseline_unshared_tables,
            )
            baseline["speedup_like_for_like"] = sps1 / baseline["samples_per_s_all_steps"]
            baseline["speedup_vs_steady"] = sps1 / baseline["samples_per_s_steady"]
            result["baseline"] = baseline
            print(f"baseline: {baseline['samples_per_s_all_steps']:,.0f} samples/s", flush=True)

        export = None
        if not args.skip_export:
            export = export_and_score(
                one,
                data,
                work / "registry",
                candidates=args.candidates,
                requests=args.requests,
                warm=3,
            )
            result["export"] = export

    # ---- tables --------------------------------------------------------------------------------
    d = result["data"]
    head = (
        f"`{this_cmd}`\n\nRecipe {result['recipe']} ({recipe.model.type}), SynthConfig(rows={d['rows']:,}, "
        f"days={d['days']}, seed={d['seed']}), last day held out; batch "
        f"{runs['1 process']['batch_size_per_rank']} per rank, {args.steps} steps per run, "
        f"{os.cpu_count()} cores on this machine"
        + (
            f"; BUSY machine ({others:.1f} cores used by other processes at start): not representative."
            if busy
            else "."
        )
    )
    print(f"\n### 1-2. Training throughput (TorchRec DMP)\n\n{head}\n")
    for name, r in runs.items():
        print(f"- {name}: `{r['command']}`")
    print(
        "\n| run | processes x threads | samples/s | vs 1 process | train s | wall s (incl. start-up, eval) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['world_size']} x {r['threads_per_rank']} | {fmt(r['samples_per_s'])} | "
            f"{r['samples_per_s'] / sps1:.2f} | {r['train_seconds']:.1f} | {r['wall_s']:.1f} |"
        )
    if len(runs) > 1:
        sps2 = list(runs.values())[1]["samples_per_s"]
        result["sharded_overhead"] = 1.0 - sps2 / sps1
        result["goal_sharded_overhead_le_20pct"] = result["sharded_overhead"] <= 0.20
        ok = "meets" if result["goal_sharded_overhead_le_20pct"] else "misses"
        print(f"\nSharded overhead at equal cores: {result['sharded_overhead']:.1%} ({ok} the <= 20% goal)")
        plan = list(runs.values())[1]["sharding_plan"] or {}
        print("Plan: " + ", ".join(f"{t} {p['sharding_type']} {p['ranks']}" for t, p in plan.items()))

    if baseline is not None:
        print(f"\n### 3. Ours vs a plain-PyTorch baseline of the same model\n\n{head}\n")
        tables = "tables shared as in the recipe" if baseline["shared_tables"] else "one table per feature"
        print(
            f"Baseline: `PlainTorchModel` (in bench/training_throughput.py), nn.EmbeddingBag per feature "
            f"({tables}), "
            f"{baseline['dense_optimizer']} (dense layers) + {baseline['table_optimizer']} (tables), "
            f"{baseline['threads']} threads, same reader, transform, loss and loop, in-process. Ours: "
            f"TorchRec DMP, fused {recipe.training.sparse_optimizer.name} on the tables, 1 process x "
            f"{args.threads} threads. Steady state skips the first {baseline['warmup_steps']} baseline "
            "steps; ours is the trainer's samples_per_s (every step).\n"
        )
        print("| path | parameters | samples/s | ours / it | loss (last steps) |")
        print("|---|---:|---:|---:|---:|")
        print(
            f"| ours (1 process, {args.threads} threads) | {fmt(runs['1 process']['parameters'])} | "
            f"{fmt(sps1)} | 1.00 | {fmt(runs['1 process']['last_loss'], '.4f')} |"
        )
        print(
            f"| baseline, every step (like ours) | {fmt(baseline['parameters'])} | "
            f"{fmt(baseline['samples_per_s_all_steps'])} | {baseline['speedup_like_for_like']:.2f} | "
            f"{baseline['last_loss']:.4f} |"
        )
        print(
            f"| baseline, steady state | {fmt(baseline['parameters'])} | "
            f"{fmt(baseline['samples_per_s_steady'])} | {baseline['speedup_vs_steady']:.2f} | |"
        )
        result["goal_ours_ge_1_5x_baseline"] = baseline["speedup_like_for_like"] >= 1.5
        ok = "meets" if result["goal_ours_ge_1_5x_baseline"] else "misses"
        print(f"\nOurs / baseline: {baseline['speedup_like_for_like']:.2f}x ({ok} the >= 1.5x goal)")

    if export is not None:
        print(f"\n### 4. Export and scoring\n\n{head}\n")
        print(
            "Export: `recsys_mtl.export.export_run` of the 1-process run (wall: load_run + script + "
            "parity check + publish). Scoring: `load_model(...).score(columns)` on requests of "
            f"{export['fp32']['candidates']:,} held-out raw rows, median of {export['fp32']['requests']} "
            "after 3 warm-up requests, torch threads 1, pinned to one core.\n"
        )
        print("| artifact | export s | model.pt MB | score ms / request (median) | p90 ms | rows/s |")
        print("|---|---:|---:|---:|---:|---:|")
        for k in ("fp32", "int8"):
            e = export[k]
            print(
                f"| {k} | {e['export_wall_s']:.1f} | {e['model_pt_bytes'] / 1e6:.2f} | "
                f"{e['score_ms_median']:.2f} | {e['score_ms_p90']:.2f} | "
                f"{fmt(e['candidates'] / (e['score_ms_median'] / 1e3))} |"
            )
        ratio = export["fp32"]["model_pt_bytes"] / export["int8"]["model_pt_bytes"]
        diffs = ", ".join(f"{t} {v:.2g}" for t, v in export["int8_vs_fp32_max_abs_diff"].items())
        print(f"\nint8 model.pt is {ratio:.2f}x smaller; max |int8 - fp32| score on one request: {diffs}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_throughput.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
