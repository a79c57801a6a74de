"""Peak memory of export and load against the model's size (issue 17, item 2).

Builds the shipped recipe (configs/ads_ranker.yaml) with large user_id and creative tables
(random init: training does not change the sizes), then, each step in its own process so each
peak is its own:

    export        export_model, fp32 (model.pt + weights.pt)
    export+int8   export_model with the int8 companion (model.int8.pt as well)
    load          load_model of the fp32 version (what a server does at start)
    load int8     load_model of the int8 companion
    reload        a hot reload: one version loaded, a second loaded beside it, the first dropped
                  (what serving/pool.py does; measured here with load_model, no server)

Each child reports its peak RSS (VmHWM in /proc/self/status) and its RSS once torch and
the package are imported (the floor every process pays, whatever the model), and the table
divides both by the model's size (the sum of its parameter bytes). With `--baseline-worktree`
every step runs first against that checkout (PYTHONPATH pointed at it, same interpreter), so one
run gives before and after.

    .venv/bin/python bench/memory.py --user-rows 10000019 --creative-rows 1000003 \\
        --baseline-worktree /tmp/mem_base

With `--server-workers 1,4` (this checkout only) it then starts `recsys-mtl serve --workers N` on
the exported model for each N and reports, once every worker is ready, the whole process tree's
RSS (which counts a page shared by several workers in each of them) and PSS (which divides it
among them: the memory the tree really takes), split into anonymous and file-backed.

A benchmark, not a test: about a minute of CPU per step at the sizes above.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAME = "mem"


def _rss_mb() -> float:
    """The current resident set size (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    """This process's high-water RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    exec from the parent that forked the child, so a child of a large process reports its size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- children -----------------------------------------------------------------------------------


def _recipe(user_rows: int, creative_rows: int) -> Any:
    from recsys_mtl.recipe import load_recipe, recipe_from_dict

    d = load_recipe(REPO / "configs" / "ads_ranker.yaml").to_dict()
    for f in d["features"]:
        if f["name"] == "user_id":
            f["hash_size"] = user_rows
        elif f.get("table") == "creative" or f["name"] == "creative_id":
            f["hash_size"] = creative_rows
    return recipe_from_dict(d)


def child_export(args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    import torch

    import recsys_mtl
    from recsys_mtl.export import export_model
    from recsys_mtl.models import build_model
    from recsys_mtl.transform import FeatureTransform

    floor = _rss_mb()
    recipe = _recipe(args.user_rows, args.creative_rows)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    transform = FeatureTransform.from_recipe(recipe)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with_model = _rss_mb()
    t0 = time.perf_counter()
    res = export_model(model, recipe, transform, args.registry, NAME, promote=True, int8_companion=args.int8)
    files = {p.name: p.stat().st_size for p in res.path.iterdir()}
    return {
        "package": str(Path(recsys_mtl.__file__).parent),
        "model_bytes": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "floor_mb": floor,
        "with_model_mb": with_model,
        "peak_mb": _peak_mb(),
        "seconds": time.perf_counter() - t0,
        "version": res.version,
        "files": files,
    }


def child_load(args: argparse.Namespace) -> dict[str, Any]:
    import gc
    import warnings
    import weakref

    warnings.simplefilter("ignore")
    import recsys_mtl
    from recsys_mtl.loader import load_model

    floor = _rss_mb()
    t0 = time.perf_counter()
    m = load_model(args.registry, NAME, args.version, int8=args.int8)
    m.validate()
    out: dict[str, Any] = {
        "package": str(Path(recsys_mtl.__file__).parent),
        "floor_mb": floor,
        "peak_mb": _peak_mb(),
        "loaded_mb": _rss_mb(),
        "seconds": time.perf_counter() - t0,
    }
    if args.reload_to:
        # a hot reload: the new version loads while the old one serves, then the old one goes
        new = load_model(args.registry, NAME, args.reload_to, int8=args.int8)
        new.validate()
        out["reload_peak_mb"] = _peak_mb()
        gone = weakref.ref(m.artifact.module)
        del m
        out["old_freed_by_refcount"] = gone() is None  # no gc.collect (the server freezes instead)
        gc.collect()
        out["old_freed_after_collect"] = gone() is None
        out["after_reload_mb"] = _rss_mb()
        del new
    return out


# ---- parent -------------------------------------------------------------------------------------


def _run(tree: Path, argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {tree} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(tree: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    reg = work / "registry"
    sizes = ["--user-rows", str(args.user_rows), "--creative-rows", str(args.creative_rows)]
    out: dict[str, Any] = {}
    out["export"] = _run(tree, ["--child", "export", "--registry", str(reg), *sizes])
    out["export+int8"] = _run(tree, ["--child", "export", "--int8", "--registry", str(reg), *sizes])
    out["load"] = _run(tree, ["--child", "load", "--registry", str(reg), "--version", "1"])
    out["load int8"] = _run(tree, ["--child", "load", "--int8", "--registry", str(reg), "--version", "2"])
    out["reload"] = _run(
        tree, ["--child", "load", "--registry", str(reg), "--version", "1", "--reload-to", "2"]
    )
    if tree == REPO and args.server_workers:  # `serve --workers` exists in this code only
        out["servers"] = [server_memory(reg, int(n), work) for n in args.server_workers.split(",")]
    return out


def _tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (/proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _mem_kib(pid: int) -> dict[str, int]:
    """RSS (counts shared pages in every process) and PSS (shares them out) of one process, KiB."""
    got: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            got[key] = int(rest.split()[0])
    return got


def server_memory(registry: Path, workers: int, work: Path) -> dict[str, Any]:
    """`recsys-mtl serve --workers N` on the registry's current version, once every worker is
    ready: the RSS and PSS of the whole process tree (the supervisor and its workers)."""
    sys.path.insert(0, str(REPO / "bench"))
    from serving_workers import wait_all_ready

    from recsys_mtl.devtools.fixtures import write_config
    from recsys_mtl.devtools.server_process import ServerProcess

    config = write_config(
        work / f"serving-{workers}.yaml",
        runtime={"torch_threads": 1, "warm_up_batch_sizes": [1, 100]},
        experiments=[{"name": "exp", "salt": "s", "variants": [{"name": "a", "weight": 1, "model": NAME}]}],
    )
    server = ServerProcess(registry, config, work / f"server-{workers}.log", workers=workers)
    try:
        wait_all_ready(server, workers)
        time.sleep(2)  # let warm-up allocations settle
        pids = _tree_pids(server.proc.pid)
        per = {p: _mem_kib(p) for p in pids}
    finally:
        server.stop()
    total = {k: sum(m.get(k, 0) for m in per.values()) / 1024 for k in ("Rss", "Pss", "Pss_Anon", "Pss_File")}
    return {"workers": workers, "processes": len(pids), **{f"{k.lower()}_mb": v for k, v in total.items()}}


def workers_table(rows: list[dict[str, Any]], model_mb: float) -> str:
    base = rows[0]["pss_mb"]
    lines = [
        "| workers | processes | sum of RSS MiB | PSS MiB (anon + file) | PSS vs the first row "
        "| PSS / model |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['processes']} | {r['rss_mb']:,.0f} | {r['pss_mb']:,.0f} "
            f"({r['pss_anon_mb']:,.0f} + {r['pss_file_mb']:,.0f}) | {r['pss_mb'] / base:.2f}x | "
            f"{r['pss_mb'] / model_mb:.2f} |"
        )
    return "\n".join(lines)


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per (code, step)."""
    lines = [
        "| code | step | peak RSS MiB | x model | floor MiB | (peak - floor) / model | files MiB |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for code, steps in results.items():
        model_mb = steps["export"]["model_bytes"] / 2**20  # MiB, like RSS
        for step, r in steps.items():
            peak = r["reload_peak_mb"] if step == "reload" else r["peak_mb"]
            files = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(r.get("files", {}).items()))
            extra = ""
            if step == "reload":
                extra = (
                    f" (after: {r['after_reload_mb']:.0f} MiB; old freed by refcount: "
                    f"{r['old_freed_by_refcount']})"
                )
            lines.append(
                f"| {code} | {step} | {peak:.0f} | {peak / model_mb:.2f} | {r['floor_mb']:.0f} | "
                f"{(peak - r['floor_mb']) / model_mb:.2f} | {files}{extra} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--user-rows", type=int, default=10_000_019)
    ap.add_argument("--creative-rows", type=int, default=1_000_003)
    ap.add_argument("--baseline-worktree", type=Path, help="a checkout of the code before the change")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument(
        "--server-workers",
        default="",
        help="also start `serve --workers N` for each N (e.g. 1,4) on the exported model and report "
        "the process tree's RSS and PSS once every worker is ready",
    )
    ap.add_argument("--child", choices=["export", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--registry", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--version", default="current", help=argparse.SUPPRESS)
    ap.add_argument("--reload-to", help=argparse.SUPPRESS)
    ap.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = child_export if args.child == "export" else child_load
        print(json.dumps(fn(args)))
        return
    trees = {"after": REPO}
    if args.baseline_worktree:
        trees = {"before": args.baseline_worktree.resolve(), **trees}
    results: dict[str, dict[str, Any]] = {}
    for code, tree in trees.items():
        with tempfile.TemporaryDirectory(prefix=f"mem-{code}-") as work:
            results[code] = measure(tree, args, Path(work))
        m = results[code]["export"]
        print(
            f"{code}: {tree} ({m['package']}); model {m['parameters']:,} parameters, "
            f"{m['model_bytes'] / 2**20:.0f} MiB",
            file=sys.stderr,
        )
    servers = results["after"].pop("servers", None)
    if args.json:
        args.json.write_text(json.dumps({**results, "servers": servers}, indent=2))
    print(table(results))
    if servers:
        print()
        print(workers_table(servers, results["after"]["export"]["model_bytes"] / 2**20))


if __name__ == "__main__":
    main()
