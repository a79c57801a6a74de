"""Benchmark: saturation throughput of `recsys-mtl serve --workers N` (issue 17, item 1).

What it does: exports the SHIPPED recipe at full size (bench/serving_load_scenarios.py
`publish_full_model`) into a temporary registry, and for each worker count starts a real server
(`--workers N`, runtime.torch_threads from `--threads`), waits until every worker is ready, and
drives it with `wrk` (a light C load generator: `apt-get install wrk`): `--connections` keep-alive
connections sending 500-candidate JSON requests (a few different users and candidate sets, cycled)
as fast as the server answers, for `--duration` seconds after a warm-up. Reported per worker
count: requests/s, candidates/s, latency p50/p99 (wrk's, under saturation: they include queueing),
non-2xx answers, and which workers answered (requests counted per pid from their /metrics is not
possible: the counters sum; the test of that is tests/test_server_workers.py).

The generator shares the machine with the server: on a small box its CPU time is part of what the
server does not get. `uptime` before and after says how quiet the machine was.

usage: .venv/bin/python bench/serving_workers.py [--workers 1,2] [--candidates 500] [--duration 20]
           [--connections 8] [--threads 1] [--out bench/out/serving_workers]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_load_scenarios import make_requests, publish_full_model

from recsys_mtl.devtools.fixtures import write_config
from recsys_mtl.devtools.server_process import ServerProcess
from recsys_mtl.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
# wrk's Lua: each thread cycles through the request bodies given after `--`
LUA = """
local bodies = {}
local n = 0
init = function(args)
  for i, p in ipairs(args) do
    local f = io.open(p, "rb"); bodies[i] = f:read("*a"); f:close()
  end
end
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", "/score", {["Content-Type"] = "application/json"}, bodies[n])
end
"""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()


def wait_all_ready(server: ServerProcess, workers: int, timeout: float = 600) -> set[int]:
    """Until `workers` distinct pids answered /readyz 200 on fresh connections."""
    ready: set[int] = set()
    deadline = time.time() + timeout
    while len(ready) < workers:
        if time.time() > deadline:
            raise TimeoutError(f"only {sorted(ready)} ready:\n{server.log()[-3000:]}")
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                pid = c.get("/healthz").json()["pid"]
                if c.get("/readyz").status_code == 200:
                    ready.add(pid)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return ready


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, bodies: list[Path], script: Path, seconds: int, connections: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url, "--"]
    out = subprocess.run(cmd + [str(b) for b in bodies], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))

    def parse(v: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)$", v)
        assert m is not None, v
        return _ms(m.group(1), m.group(2))

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": parse(lat["50"]),
        "p99_ms": parse(lat["99"]),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "raw": out,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="runtime.torch_threads of each worker")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serving_workers")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(ROOT / "configs" / "ads_ranker.yaml")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        publish_full_model(root / "registry", recipe)
        print(f"published the shipped recipe in {time.perf_counter() - t0:.0f}s", flush=True)
        bodies = []
        for i, req in enumerate(make_requests(recipe, args.candidates, count=8, seed=1)):
            bodies.append(root / f"body{i}.json")
            bodies[-1].write_bytes(req.json_body)
        script = root / "score.lua"
        script.write_text(LUA)
        runtime = {"torch_threads": args.threads, "warm_up_batch_sizes": [1, 100, 500, 2000]}
        config = write_config(root / "serving.yaml", runtime=runtime)
        before = uptime()
        for n in [int(x) for x in args.workers.split(",")]:
            server = ServerProcess(root / "registry", config, args.out / f"server-w{n}.log", workers=n)
            try:
                pids = wait_all_ready(server, n)
                run_wrk(server.url, bodies, script, args.warmup, args.connections)
                got = run_wrk(server.url, bodies, script, args.duration, args.connections)
            finally:
                server.stop()
            got |= {
                "workers": n,
                "pids": sorted(pids),
                "candidates_per_s": got["requests_per_s"] * args.candidates,
            }
            print(
                f"workers={n}: {got['requests_per_s']:.1f} req/s, {got['candidates_per_s']:.0f} cand/s, "
                f"p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms, non-2xx {got['non_2xx']}",
                flush=True,
            )
            results.append(got)
        after = uptime()
    base = results[0]["candidates_per_s"]
    lines = [
        f"uptime before: {before}",
        f"uptime after:  {after}",
        "",
        "| workers | requests/s | candidates/s | vs first | p50 ms | p99 ms | non-2xx |",
        "|---------|-----------:|-------------:|---------:|-------:|-------:|--------:|",
    ]
    for r in results:
        lines.append(
            f"| {r['workers']} | {r['requests_per_s']:.1f} | {r['candidates_per_s']:,.0f} | "
            f"{r['candidates_per_s'] / base:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non_2xx']} |"
        )
    report = "\n".join(lines)
    print(report)
    (args.out / "report.md").write_text(report + "\n")
    summary = {"args": {**vars(args), "out": str(args.out)}, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
