"""Benchmark: what a 32-float vector per candidate costs the scoring server (issue 18, item 3).

One run, two real `recsys-mtl serve` processes on loopback ports, each with the small test model
(`recsys_mtl.devtools.fixtures`: the shipped recipe with small tables, a few Adam steps, fp32):
one with the shipped recipe (its `creative_content`, a 32-float vector per candidate), one with the
same recipe without that feature (removed from the features and from the hazard towers' inputs).
For each recipe and wire format (JSON, Arrow with the vector as a fixed_size_list<float32>[32]):

- over HTTP: the latency of one request of `--candidates` candidates (500), sent alone (one
  client, keep-alive, a short pause between requests so the server is idle when each arrives):
  p50 and p95 over `--reps` requests. The four (recipe, format) targets are sent round-robin, so
  background load on a shared machine falls on all of them alike;
- in process (this process, the same bodies, medians of `--calls` calls): the server's own stages,
  `decode` (parse + Arrow conversion + the request limits), `check` (`check_against_model`, the
  vector checks included), `transform` and `forward`; and the decode time's share of the HTTP p50
  (decode + check over p50);
- the request bytes per format.

It prints a markdown table (and writes it, with the raw numbers, under `--out`). JSON bodies carry
the vectors as float32 values written as Python floats (up to 17 significant digits, as
`numpy.float32(...).tolist()` gives them): what a client that does not round sends.

usage: .venv/bin/python bench/vector_serving.py [--candidates 500] [--reps 200] [--calls 30]
           [--requests 8] [--threads 1] [--out bench/out/vector_serving]
Run it alone on the machine (no other CPU-bound work): the numbers are latencies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from serving_load_scenarios import Request, make_requests  # noqa: E402

from recsys_mtl.devtools.fixtures import NAME, publish, small_recipe, write_config  # noqa: E402
from recsys_mtl.devtools.server_process import serve  # noqa: E402
from recsys_mtl.loader import LoadedModel, load_model  # noqa: E402
from recsys_mtl.recipe import Recipe, load_recipe, recipe_from_dict  # noqa: E402
from serving.config import Runtime  # noqa: E402
from serving.request import ARROW_STREAM, JSON, check_against_model, decode, encode_arrow_request  # noqa: E402

ROOT = HERE.parent
FORMATS = {"json": JSON, "arrow": ARROW_STREAM}
GAP_S = 0.005  # pause between two timed requests (the server is idle when each arrives)


def without_vectors(recipe: Recipe) -> Recipe:
    """The same recipe without its vector features (and without them in any tower's inputs)."""
    d = recipe.to_dict()
    vectors = {f["name"] for f in d["features"] if f["kind"] == "vector"}
    d["features"] = [f for f in d["features"] if f["name"] not in vectors]
    for t in d["tasks"]:
        if t.get("tower_features"):
            t["tower_features"] = [x for x in t["tower_features"] if x not in vectors]
    return recipe_from_dict(d)


def with_fixed_size_vectors(recipe: Recipe, r: Request) -> bytes:
    """The request's Arrow body with each vector column a fixed_size_list<float32>[dim] (what an
    Arrow client sends; `make_requests` writes Python lists, which Arrow reads as list<double>)."""
    cols: dict[str, pa.Array] = {}
    for name, values in r.candidates.items():
        f = recipe.feature(name)
        cols[name] = (
            pa.array(values, pa.list_(pa.float32(), f.dim)) if f.kind == "vector" else pa.array(values)
        )
    return encode_arrow_request(pa.table(cols), r.user_id, features=r.features)


def median_ms(fn: Callable[[int], object], calls: int, warm: int = 3) -> float:
    for i in range(warm):
        fn(i)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def in_process(model: LoadedModel, bodies: dict[str, list[bytes]], calls: int) -> dict[str, float]:
    """Median ms of the server's stages on these bodies, per format: decode, check, transform, forward."""
    limits = Runtime(max_candidates=10**6)
    out: dict[str, float] = {}
    for fmt, ctype in FORMATS.items():
        bs = bodies[fmt]
        reqs = [decode(b, ctype, limits) for b in bs]
        out[f"decode_{fmt}_ms"] = median_ms(
            lambda i, bs=bs, ct=ctype: decode(bs[i % len(bs)], ct, limits), calls
        )
        out[f"check_{fmt}_ms"] = median_ms(
            lambda i, reqs=reqs: check_against_model(reqs[i % len(reqs)], model, limits), calls
        )
    reqs = [decode(b, JSON, limits) for b in bodies["json"]]
    for r in reqs:
        check_against_model(r, model, limits)
    k = len(reqs)
    out["transform_ms"] = median_ms(
        lambda i: model.features(reqs[i % k].candidates, shared=reqs[i % k].features), calls
    )
    batches = [model.features(r.candidates, shared=r.features) for r in reqs]
    out["forward_ms"] = median_ms(lambda i: model.predict(batches[i % k]), calls)
    return out


def http_latencies(targets: dict[tuple[str, str], tuple[str, list[bytes]]], reps: int, warm: int) -> dict:
    """Per (recipe, format): latencies (ms) of `reps` lone requests, the targets round-robin."""
    lat: dict[tuple[str, str], list[float]] = {key: [] for key in targets}
    with ExitStack() as stack:
        clients = {
            url: stack.enter_context(httpx.Client(base_url=url, timeout=60)) for url, _ in targets.values()
        }
        keys = list(targets)
        for rep in range(warm + reps):
            for j in range(len(keys)):
                key = keys[(rep + j) % len(keys)]  # rotate the order: no target always goes first
                url, bodies = targets[key]
                time.sleep(GAP_S)
                t0 = time.perf_counter()
                resp = clients[url].post(
                    "/score", content=bodies[rep % len(bodies)], headers={"content-type": FORMATS[key[1]]}
                )
                ms = 1000 * (time.perf_counter() - t0)
                if resp.status_code != 200:
                    raise RuntimeError(f"{key}: HTTP {resp.status_code} {resp.text[:300]}")
                if rep >= warm:
                    lat[key].append(ms)
    return lat


def table(rows: list[dict[str, Any]], n: int) -> str:
    cols = [
        ("recipe", "---", lambda r: r["recipe"]),
        ("format", "---", lambda r: r["format"]),
        ("request bytes", "---:", lambda r: f"{r['bytes']:,}"),
        ("p50 ms", "---:", lambda r: f"{r['p50_ms']:.2f}"),
        ("p95 ms", "---:", lambda r: f"{r['p95_ms']:.2f}"),
        ("decode ms", "---:", lambda r: f"{r['decode_ms']:.2f}"),
        ("check ms", "---:", lambda r: f"{r['check_ms']:.2f}"),
        ("(decode + check) / p50", "---:", lambda r: f"{100 * r['decode_share']:.0f}%"),
        ("transform ms", "---:", lambda r: f"{r['transform_ms']:.2f}"),
        ("forward ms", "---:", lambda r: f"{r['forward_ms']:.2f}"),
    ]
    lines = [
        "| " + " | ".join(c[0] for c in cols) + " |",
        "|" + "|".join(c[1] for c in cols) + "|",
        *("| " + " | ".join(c[2](r) for c in cols) + " |" for r in rows),
    ]
    intro = (
        f"{n} candidates per request, one request at a time (p50/p95 over HTTP; stages in process, medians)"
    )
    return intro + "\n\n" + "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=500, help="candidates per request (500)")
    ap.add_argument("--reps", type=int, default=200, help="timed HTTP requests per recipe and format (200)")
    ap.add_argument("--warm", type=int, default=10, help="untimed HTTP requests first, per target (10)")
    ap.add_argument("--calls", type=int, default=30, help="in-process calls per stage (30)")
    ap.add_argument("--requests", type=int, default=8, help="distinct request bodies, cycled (8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, server and in process (1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "vector_serving"))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = small_recipe(load_recipe(ROOT / "configs" / "ads_ranker.yaml"))
    recipes = {"with vector (32 floats)": shipped, "without vector": without_vectors(shipped)}
    n = args.candidates
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vector-serving-") as tmp, ExitStack() as stack:
        targets: dict[tuple[str, str], tuple[str, list[bytes]]] = {}
        stages: dict[str, dict[str, float]] = {}
        bodies: dict[str, dict[str, list[bytes]]] = {}
        for i, (label, recipe) in enumerate(recipes.items()):
            reg = Path(tmp) / f"registry-{i}"
            publish(reg, recipe, seed=1)
            reqs = make_requests(recipe, n, args.requests, seed=n)
            bodies[label] = {
                "json": [r.json_body for r in reqs],
                "arrow": [with_fixed_size_vectors(recipe, r) for r in reqs],
            }
            stages[label] = in_process(load_model(reg, NAME), bodies[label], args.calls)
            cfg = write_config(
                Path(tmp) / f"serving-{i}.yaml",
                runtime={
                    "torch_threads": args.threads,
                    "max_candidates": max(n, 2000),
                    "max_json_values": 10**6,
                    "max_vector_values": 10**7,
                    "max_body_bytes": 64 * 1024 * 1024,
                    "warm_up_batch_sizes": [1, n],
                },
                experiments=[],
                default={"name": "control", "model": NAME},
            )
            server = stack.enter_context(serve(reg, cfg, out_dir / f"server-{i}.log"))
            for fmt in FORMATS:
                targets[(label, fmt)] = (server.url, bodies[label][fmt])
            print(f"{label}: published and serving at {server.url}", flush=True)
        lat = http_latencies(targets, args.reps, args.warm)
    for (label, fmt), ms in lat.items():
        s = stages[label]
        p50 = float(np.percentile(ms, 50))
        results.append(
            {
                "recipe": label,
                "format": fmt,
                "bytes": int(statistics.mean(len(b) for b in bodies[label][fmt])),
                "p50_ms": p50,
                "p95_ms": float(np.percentile(ms, 95)),
                "decode_ms": s[f"decode_{fmt}_ms"],
                "check_ms": s[f"check_{fmt}_ms"],
                "decode_share": (s[f"decode_{fmt}_ms"] + s[f"check_{fmt}_ms"]) / p50,
                "transform_ms": s["transform_ms"],
                "forward_ms": s["forward_ms"],
            }
        )
    results.sort(key=lambda r: (r["format"], r["recipe"]))
    md = table(results, n)
    (out_dir / "vector_serving.json").write_text(
        json.dumps({"args": vars(args), "results": results, "command": " ".join(sys.argv)}, indent=2)
    )
    (out_dir / "table.md").write_text(md + "\n")
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
