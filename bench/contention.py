"""Benchmark (issue 16): training and serving throughput on a shared machine, per OpenMP policy.

On a machine where other processes also want the CPUs, torch's OpenMP threads spin at every barrier
waiting for siblings that the kernel has descheduled; libgomp's default spin (GOMP_SPINCOUNT
300,000 iterations, about 0.1-0.3 ms, before sleeping) turns each barrier into a timeslice. This
script measures, in one run, for each policy (a set of environment variables given to the process
before torch starts):

  training  `recsys-mtl train --threads T --max-steps S` on generated data (200k rows, 3 days, 2,000
            users: the issue's setting): samples/s from the run's own timed loop (run.json);
  serving   the exported model's forward on 500 candidates (held-out rows through the manifest's
            transform, torch threads T): median ms over --calls calls, in a fresh process;

quiet, then beside 2 and then 4 single-threaded busy loops (`python -c 'while True: pass'`), and
prints each as a share of the same policy's quiet figure and of the first policy's quiet figure.
Goals (the issue): beside 2 loops >= 45% of quiet, beside 4 >= 30%, for training and for the
serving forward; quiet >= 95% of today's (the `default` policy, libgomp's own).

Run it alone on the machine: it is the contention.

usage: .venv/bin/python bench/contention.py [--policies default,passive,spin10k,...]
           [--threads 2] [--steps 40] [--calls 60] [--out bench/out/contention]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
}
LOOPS = (0, 2, 4)

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
    if policy != "product":
        env["RECSYS_MTL_OMP_POLICY"] = "inherit"  # the product leaves the variables as given
    return env


def train_once(data: Path, out: Path, policy: str, threads: int, steps: int) -> float:
    cmd = [
        str(BIN), "train", "--recipe", str(RECIPE), "--data", str(data), "--out", str(out),
        "--threads", str(threads), "--max-steps", str(steps), "--eval-days", "0", "--no-progress",
        "--overwrite", "--allow-untrained-tasks",
    ]  # fmt: skip
    r = subprocess.run(cmd, env=env_for(policy), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return float(json.loads((out / "run.json").read_text())["samples_per_s"])


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
        train_once(data, run, "default", 2, 40)
        subprocess.run(
            [str(BIN), "export", "--run", str(run), "--registry", str(registry), "--name", "bench",
             "--promote"],
            check=True, capture_output=True,
        )  # fmt: skip
    data_file = sorted(data.glob("dt=*/*.parquet"))[-1]
    return data, registry, data_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="default,passive,spin10k,product")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="training steps per measurement (2,048 rows each)")
    ap.add_argument("--calls", type=int, default=60, help="forward calls per measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "contention"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, registry, data_file = prepare(out)
    policies = [p for p in args.policies.split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; known: {sorted(POLICIES)}")
    res: dict[str, dict[str, dict[int, float]]] = {p: {"train": {}, "forward": {}} for p in policies}
    with tempfile.TemporaryDirectory() as tmp:
        for loops in LOOPS:  # per condition, every policy back to back: drift falls on all alike
            with busy_loops(loops):
                for p in policies:
                    run = Path(tmp) / f"run_{p}"
                    res[p]["train"][loops] = train_once(data, run, p, args.threads, args.steps)
                    res[p]["forward"][loops] = forward_once(registry, data_file, p, args.threads, args.calls)
                    print(
                        f"{loops} loops, {p}: {res[p]['train'][loops]:,.0f} samples/s, "
                        f"forward {res[p]['forward'][loops]:.2f} ms",
                        flush=True,
                    )
    base = policies[0]
    lines = [
        f"threads {args.threads}, {args.steps} training steps, "
        f"forward at 500 candidates (median of {args.calls})",
        "",
        "| policy | training quiet (samples/s) | beside 2 loops | beside 4 loops | quiet vs "
        f"{base} | forward quiet (ms) | beside 2 loops | beside 4 loops | quiet vs {base} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in policies:
        tr, fw = res[p]["train"], res[p]["forward"]
        lines.append(
            f"| {p} | {tr[0]:,.0f} | {tr[2]:,.0f} ({tr[2] / tr[0]:.0%}) | "
            f"{tr[4]:,.0f} ({tr[4] / tr[0]:.0%}) | "
            f"{tr[0] / res[base]['train'][0]:.2f}x | {fw[0]:.2f} | {fw[2]:.2f} ({fw[0] / fw[2]:.0%}) | "
            f"{fw[4]:.2f} ({fw[0] / fw[4]:.0%}) | {res[base]['forward'][0] / fw[0]:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    (out / "contention.md").write_text(text + "\n")
    (out / "contention.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
