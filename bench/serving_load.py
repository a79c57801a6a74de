"""Benchmark: end-to-end latency of the scoring server under load (issue #5).

What it does, in one run:
  1. Builds the SHIPPED recipe (configs/ads_ranker.yaml, HoME) at full size, trains it for a few Adam
     steps on random rows (non-trivial weights and dense statistics), exports it into a temporary
     registry and starts a real `recsys-mtl serve` subprocess on a free loopback port (one variant,
     fp32, survival curves on: the same work as `LoadedModel.score`).
  2. For each candidates-per-request size N and wire format (JSON; Arrow IPC, which also asks for
     the scores back in Arrow with `Accept: application/vnd.apache.arrow.stream`):
     - a saturation probe: a closed loop of a few concurrent clients for a few seconds, which gives
       the server's maximum requests/s at that size (concurrent requests are micro-batched);
     - a fixed-rate run at a fraction of that (default 50%) for `--duration` seconds: p50/p95/p99
       latency, achieved requests/s and candidates/s, errors;
     - the in-process baseline on the same N rows: `load_model(...).score(rows)` (transform +
       forward + survival curves), median of `--baseline-calls` calls before and as many after the
       load runs, on one worker thread with the server's torch thread count, paced like a server
       (see `model_thread`, `GAP_S`); and a breakdown of the server's own stages, in-process.
  3. At N=500: where the time goes, in ONE open-loop run whose requests go round-robin to several
     variants (same background load for all): JSON and Arrow with each client, Arrow request with a
     JSON response, no survival curves (a ~20x smaller response), GET /healthz (the HTTP floor),
     the service without HTTP (`ScoringService.score` + render in-process), and the baseline.
  4. A soak at `--soak-rate` (default 70%) of the 500-candidate JSON saturation rate for
     `--soak-seconds`: p50, p99, p99/p50, errors, and the server's resident memory (VmRSS) after
     warm-up and at the end.

Method (why the numbers are not flattered):
  - OPEN LOOP. Request i is due at its INTENDED send time t0 + i / rate, whether or not earlier
    requests have returned; each is sent by its own task, and its latency is measured from that
    intended time to the end of the response body. If the server (or this client) falls behind,
    the delay shows up in the latency instead of silently lowering the offered rate: no coordinated
    omission. Arrivals are evenly spaced (not Poisson), so at 50% load there is no queueing from
    bunched arrivals; what is left is the server's own time.
  - The generator stays out of the way: request bodies are precomputed bytes (a few different users
    and candidate sets, cycled), the client runs on uvloop in its own process (the server is a
    subprocess), connections are kept alive in an httpx pool, and JSON responses are read but not
    parsed (Arrow ones are opened to count their rows). The client's CPU time and its send lag
    (actual - intended send time) are reported so one can check it was not the bottleneck.
    `--client raw` swaps httpx for a minimal HTTP/1.1 client on asyncio streams (~0.5 ms vs ~2-4 ms
    of client time per request on a busy 2-core box).
  - Server-side numbers come from its own /metrics (request latency inside the app, transform +
    forward time per merged batch, requests merged per forward) and its CPU time from /proc.
  - The run is bounded: after the schedule ends, outstanding requests get `--grace` seconds, then
    are cancelled and counted as errors.

usage: .venv/bin/python bench/serving_load.py [--quick] [--sizes 100,500,2000] [--formats json,arrow]
           [--duration 15] [--soak-seconds 60] [--threads 2] [--client httpx|raw] [--out bench/out/serving]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from serving_load_client import CONTENT_TYPES, SENDERS, RunStats
from serving_load_scenarios import SOAK_SIZE, make_requests, publish_full_model, run_size, run_soak
from serving_load_tables import markdown, ratios

from recsys_mtl.devtools.fixtures import NAME, write_config
from recsys_mtl.devtools.server_process import serve
from recsys_mtl.loader import load_model
from recsys_mtl.recipe import load_recipe

# The load generator (clients, closed and open loops) is bench/serving_load_client.py; the model,
# the requests, the in-process baseline and the runs are bench/serving_load_scenarios.py; the
# report's tables are bench/serving_load_tables.py.
ROOT = Path(__file__).resolve().parents[1]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        la = os.getloadavg()
        return f"load average: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes", default=None, help="candidates per request (default 100,500,2000; quick 100,500)"
    )
    ap.add_argument("--formats", default="json,arrow", help="wire formats: json,arrow")
    ap.add_argument(
        "--duration", type=float, default=None, help="fixed-rate seconds per scenario (15; quick 3)"
    )
    ap.add_argument("--probe-seconds", type=float, default=None, help="saturation probe seconds (4; quick 2)")
    ap.add_argument("--probe-clients", type=int, default=4, help="concurrent clients of the saturation probe")
    ap.add_argument("--load", type=float, default=0.5, help="fixed rate as a share of saturation (0.5)")
    ap.add_argument("--soak-seconds", type=float, default=None, help="soak duration (60; quick 8; 0 = skip)")
    ap.add_argument("--soak-rate", type=float, default=0.7, help="soak rate as a share of saturation (0.7)")
    ap.add_argument("--threads", type=int, default=2, help="server torch threads (runtime.torch_threads)")
    ap.add_argument(
        "--baseline-calls", type=int, default=None, help="in-process calls per size (30; quick 8)"
    )
    ap.add_argument("--requests-per-size", type=int, default=8, help="distinct precomputed requests")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds to wait for stragglers after a run")
    ap.add_argument(
        "--client",
        choices=sorted(SENDERS),
        default="httpx",
        help="load-generator HTTP client: httpx (default) or raw (minimal HTTP/1.1 on asyncio streams)",
    )
    ap.add_argument(
        "--no-attribution",
        dest="attribution",
        action="store_false",
        help="skip the N=500 attribution runs (/healthz floor, no survival curves, the other client)",
    )
    ap.add_argument(
        "--attribution-seconds", type=float, default=None, help="the N=500 attribution run (45; quick 9)"
    )
    ap.add_argument("--quick", action="store_true", help="a fast smoke run (short runs, sizes 100,500)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "serving"))
    args = ap.parse_args(argv)
    q = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("100,500" if q else "100,500,2000")).split(",")]
    args.formats = [f.strip() for f in args.formats.split(",")]
    bad = [f for f in args.formats if f not in CONTENT_TYPES]
    if bad:
        ap.error(f"unknown format(s) {bad}; choose from {sorted(CONTENT_TYPES)}")
    args.duration = args.duration if args.duration is not None else (3.0 if q else 15.0)
    args.probe_seconds = args.probe_seconds if args.probe_seconds is not None else (2.0 if q else 4.0)
    args.soak_seconds = args.soak_seconds if args.soak_seconds is not None else (8.0 if q else 60.0)
    if args.attribution_seconds is None:
        args.attribution_seconds = 9.0 if q else 45.0
    args.baseline_calls = args.baseline_calls if args.baseline_calls is not None else (8 if q else 30)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)  # the baseline runs with the server's torch thread count
    recipe = load_recipe(ROOT / "configs" / "ads_ranker.yaml")
    report: dict[str, Any] = {
        "command": " ".join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "uptime_start": uptime(),
    }
    print(f"# {report['uptime_start']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        reg = Path(tmp) / "registry"
        t0 = time.perf_counter()
        publish_full_model(reg, recipe)
        print(f"published {recipe.name} (home, full size) in {time.perf_counter() - t0:.1f}s", flush=True)
        requests = {n: make_requests(recipe, n, args.requests_per_size, seed=n) for n in args.sizes}
        if SOAK_SIZE not in requests and args.soak_seconds > 0:
            requests[SOAK_SIZE] = make_requests(recipe, SOAK_SIZE, args.requests_per_size, seed=SOAK_SIZE)
        cfg = write_config(
            Path(tmp) / "serving.yaml",
            runtime={
                "torch_threads": args.threads,
                "interop_threads": 1,
                "max_candidates": 2000,
                "max_batch_candidates": 4096,
                "reload_interval_s": 2.0,
                "warm_up_batch_sizes": [1, 100, 500, 2000],
            },
            # one variant, fp32, survival curves on: the same work as `LoadedModel.score`
            experiments=[],
            default={"name": "control", "model": NAME, "survival_curves": True},
        )

        # The in-process model lives in this (client) process; it runs only while the server is idle.
        model = load_model(reg, NAME)
        gc.collect()
        gc.freeze()  # the setup's objects are long-lived: keep the collector off them during runs

        runs: list[RunStats] = []
        baseline: dict[int, dict[str, Any]] = {}
        soak: dict[str, Any] = {}
        sat: dict[tuple[int, str], float] = {}
        with serve(reg, cfg, out_dir / "server.log") as server:
            pid = server.proc.pid
            report["server_cmdline"] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
            for n in args.sizes:
                baseline[n] = run_size(server, model, n, requests[n], args, runs, sat, cfg, reg)
            if args.soak_seconds > 0:
                soak = run_soak(server, args, requests[SOAK_SIZE], sat)
                runs.append(soak.pop("stats"))
        report["uptime_end"] = uptime()

    report["baseline"] = {str(n): b for n, b in baseline.items()}
    report["runs"] = [asdict(r) for r in runs]
    report["soak"] = soak
    report["ratios"] = ratios(runs, baseline)
    table = markdown(report, runs, baseline, soak, args)
    report["markdown"] = table
    (out_dir / "serving_load.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "table.md").write_text(table)
    print()
    print(table)
    print(f"# {report['uptime_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
