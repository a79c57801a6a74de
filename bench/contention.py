"""Benchmark (issue 16): training and serving throughput on a shared machine, per OpenMP policy.

On a machine where other processes also want the CPUs, torch's OpenMP threads spin at every barrier
waiting for siblings that the kernel has descheduled; libgomp's default spin (GOMP_SPINCOUNT
300,000 iterations, about 0.1-0.3 ms, before sleeping) turns each barrier into a timeslice. This
script measures, in one run, for each policy (a set of environment variables given to the process
before torch starts; `product` is what the command line does by itself: its short spin, and in
training the thread governor that drops to fewer threads under contention; `fixed` is the same
with `train --fixed-threads`):

  training  `recsys-mtl train --threads T --max-steps S` (T: the most threads it uses) on generated
            data (200k rows, 3 days, 2,000 users: the issue's setting): samples/s from the run's
            own timed loop (run.json), and the steps at each thread count when the count adapts;
  serving   the exported model's forward on 500 candidates (held-out rows through the manifest's
            transform, --forward-threads torch threads: 1 by default, the shipped serving config's
            `runtime.torch_threads`, which the issue measured): median ms over --calls calls, in a
            fresh process;

quiet, then beside 2 and then 4 single-threaded busy loops (`python -c 'while True: pass'`), and
prints each as a share of the same policy's quiet figure and of the first policy's quiet figure.
Goals (the issue): beside 2 loops >= 45% of quiet, beside 4 >= 30%, for training and for the
serving forward; quiet >= 95% of today's (the `default` policy, libgomp's own).

Run it alone on the machine: it is the contention.

usage: .venv/bin/python bench/contention.py [--policies fixed,product,default,passive,spin10k,...]
           [--threads 2] [--forward-threads 1] [--steps 40] [--calls 60] [--out bench/out/contention]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).with_name("recsys-mtl")
RECIPE = ROOT / "configs" / "ads_ranker.yaml"

# policy -> environment for the measured process (set before torch loads libgomp)
POLICIES: dict[str, dict[str, str]] = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "product": {},  # whatever the product sets by itself (recsys_mtl.threads), nothing forced here
    "fixed": {},  # the product's settings with a fixed thread count (`train --fixed-threads`)
}
# extra `recsys-mtl train` arguments of a policy
TRAIN_ARGS: dict[str, list[str]] = {"fixed": ["--fixed-threads"]}
PRODUCT_POLICIES = ("product", "fixed")

FORWARD = r"""
import json, statistics, sys, time
from recsys_mtl.threads import apply_thread_policy, configure_openmp
configure_openmp()  # before torch loads libgomp, as the command line does
import pyarrow.parquet as pq, torch
from recsys_mtl.loader import load_model
reg, name, data, threads, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
apply_thread_policy(threads)
model = load_model(reg, name)
table = pq.read_table(data).slice(0, 500)
batch = model.features(table.select(model.input_columns))  # one user per row, as measured before
with torch.inference_mode():
    for _ in range(10):
        model.predict(batch)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.predict(batch)
        times.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"ms": statistics.median(times)}))
"""


@contextmanager
def busy_loops(n: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def env_for(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    env.update(POLICIES[policy])
    if policy not in PRODUCT_POLICIES:
        env["RECSYS_MTL_OMP_POLICY"] = "inherit"  # the product leaves the variables as given
    return env


def train_once(data: Path, out: Path, policy: str, threads: int, steps: int) -> tuple[float, dict | None]:
    """samples/s of one run, and its thread governor's summary (None with a fixed count)."""
    cmd = [
        str(BIN), "train", "--recipe", str(RECIPE), "--data", str(data), "--out", str(out),
        "--threads", str(threads), "--max-steps", str(steps), "--epochs", "100", "--eval-days", "0",
        "--no-progress",
        "--overwrite", "--allow-untrained-tasks", *TRAIN_ARGS.get(policy, []),
    ]  # fmt: skip
    r = subprocess.run(cmd, env=env_for(policy), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    info = json.loads((out / "run.json").read_text())
    return float(info["samples_per_s"]), info.get("thread_governor")


def forward_once(registry: Path, data_file: Path, policy: str, threads: int, calls: int) -> float:
    cmd = [sys.executable, "-c", FORWARD, str(registry), "bench", str(data_file), str(threads), str(calls)]
    r = subprocess.run(cmd, env=env_for(policy), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"forward failed:\n{r.stderr[-3000:]}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["ms"])


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """Data (200k rows, 3 days, 2,000 users) and a published model of a short training run."""
    data = work / "data"
    if not data.exists():
        subprocess.run(
            [str(BIN), "generate", "--out", str(data), "--rows", "200000", "--days", "3", "--seed", "5",
             "--users", "2000"],
            check=True, capture_output=True,
        )  # fmt: skip
    registry = work / "registry"
    if not (registry / "bench" / "current.json").exists():
        run = work / "run_model"
        train_once(data, run, "fixed", 2, 40)
        subprocess.run(
            [str(BIN), "export", "--run", str(run), "--registry", str(registry), "--name", "bench",
             "--promote"],
            check=True, capture_output=True,
        )  # fmt: skip
    data_file = sorted(data.glob("dt=*/*.parquet"))[-1]
    return data, registry, data_file


def table(
    res: dict[str, dict[str, dict[int, list[Any]]]],
    policies: list[str],
    conditions: list[int],
    args: argparse.Namespace,
) -> str:
    """Medians over the rounds; beside loops as a share of the same policy's quiet figure, quiet as
    a ratio to the first policy's."""
    base = policies[0]
    med = {p: {m: {n: statistics.median(res[p][m][n]) for n in conditions} for m in ("train", "forward")}
           for p in policies}  # fmt: skip
    busy = [n for n in conditions if n]
    quiet = 0 in conditions
    head = ["policy"] + ["training quiet (samples/s)"] * quiet
    head += [f"training beside {n} loops" for n in busy] + [f"quiet vs {base}"] * quiet
    head += ["forward quiet (ms)"] * quiet + [f"forward beside {n} loops" for n in busy]
    head += [f"quiet vs {base}"] * quiet
    lines = [
        f"training threads {args.threads}, {args.steps} training steps; forward at 500 candidates "
        f"(median of {args.calls}), {args.forward_threads} thread(s); median of {args.rounds} round(s)",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for p in policies:
        tr, fw = med[p]["train"], med[p]["forward"]
        cells = [p]
        if quiet:
            cells.append(f"{tr[0]:,.0f}")
        cells += [f"{tr[n]:,.0f}" + (f" ({tr[n] / tr[0]:.0%})" if quiet else "") for n in busy]
        if quiet:
            cells += [f"{tr[0] / med[base]['train'][0]:.2f}x", f"{fw[0]:.2f}"]
        cells += [f"{fw[n]:.2f}" + (f" ({fw[0] / fw[n]:.0%})" if quiet else "") for n in busy]
        if quiet:
            cells.append(f"{med[base]['forward'][0] / fw[0]:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    if args.rounds > 1:
        lines += ["", "every round (samples/s): " + "; ".join(
            f"{p} {n} loops " + ", ".join(f"{v:,.0f}" for v in res[p]["train"][n])
            for p in policies for n in conditions
        )]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="fixed,product,default,passive")
    ap.add_argument("--threads", type=int, default=2, help="training threads")
    ap.add_argument(
        "--forward-threads", type=int, default=1,
        help="serving forward threads (default 1: the shipped serving config's runtime.torch_threads)",
    )  # fmt: skip
    ap.add_argument("--steps", type=int, default=40, help="training steps per measurement (2,048 rows each)")
    ap.add_argument("--calls", type=int, default=60, help="forward calls per measurement")
    ap.add_argument("--loops", default="0,2,4", help="busy loops beside the measurement, per condition")
    ap.add_argument(
        "--rounds", type=int, default=1,
        help="measure every policy this many times per condition, alternating; the table shows medians",
    )  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "contention"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, registry, data_file = prepare(out)
    policies = [p for p in args.policies.split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; known: {sorted(POLICIES)}")
    conditions = [int(n) for n in args.loops.split(",") if n]
    # policy -> measure -> loops -> one figure per round
    res: dict[str, dict[str, dict[int, list[Any]]]] = {
        p: {m: {n: [] for n in conditions} for m in ("train", "forward", "threads")} for p in policies
    }
    with tempfile.TemporaryDirectory() as tmp:
        for loops in conditions:  # per condition, every policy back to back: drift falls on all alike
            with busy_loops(loops):
                for _ in range(args.rounds):
                    for p in policies:
                        run = Path(tmp) / f"run_{p}"
                        rate, governor = train_once(data, run, p, args.threads, args.steps)
                        ms = forward_once(registry, data_file, p, args.forward_threads, args.calls)
                        res[p]["train"][loops].append(rate)
                        res[p]["forward"][loops].append(ms)
                        # steps at each thread count when the count adapted (the product's default)
                        res[p]["threads"][loops].append(governor["steps_at"] if governor else None)
                        print(
                            f"{loops} loops, {p}: {rate:,.0f} samples/s, forward {ms:.2f} ms"
                            + (f", steps per thread count {governor['steps_at']}" if governor else ""),
                            flush=True,
                        )
    text = table(res, policies, conditions, args)
    print(text)
    (out / "contention.md").write_text(text + "\n")
    (out / "contention.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
