"""Benchmark (issue 16, item 2): user-side work once per request, on vs off, per backbone, in one run.

For each backbone (the shipped recipe's features and tables; HoME as shipped, the others with the
recipe's widths), an untrained model (timing does not depend on the weights) is exported twice:

  off  the per-candidate forward as exported before grouped batches (`forward(sparse, dense)`,
       FX-traced and scripted the same way), on the request's rows with the user and context
       features broadcast to every candidate (what the server ran before);
  on   the exported artifact as `recsys_mtl.export.script_model` builds it now
       (`forward_grouped`), on the grouped batch of the same request (one user row).

Both are checked equal (max |on - off| is printed), then timed call by call in turn (--rounds x
--calls calls of each; the median) at 500 and 2,000 candidates, 1 torch thread, as the server runs.
The transform (request -> batch) is timed the same way, and so are rows that are each their own
user (a file; one user row per candidate) through both artifacts. With --profile, the HoME forward
at 2,000 is profiled on vs off (torch.profiler, self CPU time per op): what per-candidate work is
left.

Goal (the issue): on / off <= 0.7 at 2,000 candidates for MMoE and for the shipped HoME recipe.
Run it alone on the machine (nothing else busy); `uptime` is recorded before and after.

usage: .venv/bin/python bench/user_once.py [--models shared_bottom,mmoe,ple,home,home_no_feature_gate,dtrn]
           [--calls 30] [--rounds 5] [--profile] [--out bench/out/user_once.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchrec.fx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_mtl.devtools.fixtures import make_raw_table  # noqa: E402
from recsys_mtl.export import script_model  # noqa: E402
from recsys_mtl.models import build_model  # noqa: E402
from recsys_mtl.recipe import Recipe, load_recipe, recipe_from_dict  # noqa: E402
from recsys_mtl.transform import FeatureBatch, FeatureTransform  # noqa: E402

RECIPE = ROOT / "configs" / "ads_ranker.yaml"
BACKBONES: dict[str, dict[str, Any] | None] = {
    "shared_bottom": {"type": "shared_bottom", "hidden": [128, 64], "tower_hidden": [64]},
    "mmoe": {"type": "mmoe", "num_experts": 4, "expert_hidden": [128, 64], "tower_hidden": [64]},
    "ple": {"type": "ple", "num_levels": 2, "expert_hidden": [128, 64], "tower_hidden": [64]},
    "home": None,  # the shipped recipe's model
    "home_no_feature_gate": {"feature_gate": False},  # the shipped HoME without its feature-gates
    "dtrn": {"type": "dtrn", "tower_hidden": [64]},
}
SIZES = (500, 2000)


def recipe_for(backbone: str) -> Recipe:
    d = load_recipe(RECIPE).to_dict()
    model = BACKBONES[backbone]
    if model is not None:  # a full model, or changes to the shipped one
        d["model"] = model if "type" in model else {**d["model"], **model}
    return recipe_from_dict(d)


def per_candidate_module(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """The forward as exported before grouped batches: `forward(sparse, dense)` traced and scripted."""
    m = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(torchrec.fx.symbolic_trace(m))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def profile(fn: Callable[[], Any], calls: int = 20, top: int = 12) -> list[dict[str, Any]]:
    """Self CPU ms per call of the ops `fn` runs, the `top` most expensive."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    rows = [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1000 / calls, "count": e.count // calls}
        for e in prof.key_averages()
    ]
    rows.sort(key=lambda r: -r["self_ms"])
    total = sum(r["self_ms"] for r in rows)
    return [{**r, "share": r["self_ms"] / total} for r in rows[:top]] + [{"op": "total", "self_ms": total}]


def bench_size(
    tf: FeatureTransform,
    modules: tuple[torch.jit.ScriptModule, torch.jit.ScriptModule],
    rows: Any,
    calls: int,
    rounds: int,
) -> tuple[dict[str, Any], Callable[[], Any], Callable[[], Any]]:
    """One request size: (results, off forward, on forward)."""
    off_module, on_module = modules
    cands, shared = tf.request_of(rows)
    off_batch: FeatureBatch = tf(cands, shared=shared)
    on_batch: FeatureBatch = tf.grouped(cands, shared=shared)
    # rows that are each their own user (a file; a request sending user features per candidate):
    # the grouped artifact with one user row per candidate vs the per-candidate one
    file_off: FeatureBatch = tf(rows)
    file_on: FeatureBatch = tf.grouped(rows)

    def per_row_off() -> Any:
        return off_module(file_off.sparse, file_off.dense)

    def per_row_on() -> Any:
        return on_module(file_on.sparse, file_on.dense, file_on.group)

    def off() -> Any:
        return off_module(off_batch.sparse, off_batch.dense)

    def on() -> Any:
        return on_module(on_batch.sparse, on_batch.dense, on_batch.group)

    def transform_off() -> Any:
        return tf(cands, shared=shared)

    def transform_on() -> Any:
        return tf.grouped(cands, shared=shared)

    a, b = off(), on()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    for _ in range(5):
        off(), on()
    timed = {
        "off": off,
        "on": on,
        "transform_off": transform_off,
        "transform_on": transform_on,
        "per_row_off": per_row_off,
        "per_row_on": per_row_on,
    }
    times: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(rounds):
        for _ in range(calls):  # one call of each in turn: drift and neighbours fall on all alike
            for k, fn in timed.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        **{f"{k}_ms": v for k, v in med.items()},
        "forward_ratio": med["on"] / med["off"],
        "transform_plus_forward_ratio": (med["on"] + med["transform_on"])
        / (med["off"] + med["transform_off"]),
        "per_row_ratio": med["per_row_on"] / med["per_row_off"],
        "max_abs_diff": diff,
        "calls": len(times["off"]),
    }
    return result, off, on


def bench_backbone(name: str, calls: int, rounds: int, want_profile: bool) -> dict[str, Any]:
    recipe = recipe_for(name)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    tf = FeatureTransform.from_recipe(recipe)
    modules = (per_candidate_module(model), script_model(model))
    table = make_raw_table(recipe, max(SIZES), seed=7)
    result: dict[str, Any] = {"model": recipe.model.type}
    with torch.inference_mode():
        for n in SIZES:
            r, off, on = bench_size(tf, modules, table.slice(0, n), calls, rounds)
            result[str(n)] = r
            print(
                f"{name:14s} n={n:5d}  forward off {r['off_ms']:6.2f} ms  on {r['on_ms']:6.2f} ms  "
                f"on/off {r['forward_ratio']:.2f}   transform off {r['transform_off_ms']:5.2f} "
                f"on {r['transform_on_ms']:5.2f} ms   one user per row on/off {r['per_row_ratio']:.2f}   "
                f"max|diff| {r['max_abs_diff']:.1e}",
                flush=True,
            )
            if want_profile and n == max(SIZES):
                result["profile"] = {"off": profile(off), "on": profile(on)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(BACKBONES), help="backbones, comma-separated")
    ap.add_argument("--calls", type=int, default=30, help="forwards per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (off, on)")
    ap.add_argument("--profile", action="store_true", help="profile HoME's forward at 2,000 on vs off")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "user_once.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the server's inference thread
    out: dict[str, Any] = {
        "uptime_before": uptime(),
        "threads": 1,
        "calls": args.calls,
        "rounds": args.rounds,
    }
    print("uptime before:", out["uptime_before"], flush=True)
    for name in args.models.split(","):
        out[name] = bench_backbone(name, args.calls, args.rounds, args.profile and name == "home")
    out["uptime_after"] = uptime()
    print("uptime after:", out["uptime_after"], flush=True)
    if "home" in out and "profile" in out["home"]:
        for side in ("off", "on"):
            print(f"\nHoME forward at 2,000, {side}: self CPU ms per call by op")
            for r in out["home"]["profile"][side]:
                share = f"{100 * r['share']:5.1f}%" if "share" in r else ""
                print(f"  {r['op']:40s} {r['self_ms']:7.3f} {share}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
