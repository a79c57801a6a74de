"""Benchmark: synthetic-data generation and Parquet reader throughput on one core.

Measures, in one run on the same generated data:
  - generator rows/s (`recsys-mtl generate`, everything: two passes, sequences, Parquet writing)
  - baseline: pyarrow decode only (`ParquetFile.read_row_group` of the recipe's columns)
  - reader, storage order: decode + the feature transform + targets (the training input path)
  - reader with the recipe's shuffle buffer (block shuffle, `Table.take`)
Everything is pinned to one core (torch, pyarrow CPU and IO pools) so rows/s is per core.
Goal (issue 2): reader >= 300k rows/s per core for the shipped recipe.

usage: python bench/reader_throughput.py [--rows 1000000] [--days 4] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import load_recipe
from recsys_mtl.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]


def one_core() -> None:
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    one_core()
    recipe = load_recipe(ROOT / "configs" / "ads_ranker.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        generate(SynthConfig(rows=args.rows, days=args.days, seed=1), data, progress=False)
        gen_s = time.perf_counter() - t0

        reader = ParquetReader(recipe, data, shuffle_buffer=0)
        n = reader.num_rows

        def decode_only() -> None:
            for u in reader.units:
                pq.ParquetFile(u.info.path).read_row_group(u.row_group, columns=reader.columns)

        def read_all(r: ParquetReader) -> None:
            for _ in r:
                pass

        shuffled = ParquetReader(recipe, data)
        rows = {
            "generate (write Parquet)": n / gen_s,
            "baseline: pyarrow decode only": n / best_of(decode_only, args.repeats),
            "reader, storage order": n / best_of(lambda: read_all(reader), args.repeats),
            f"reader, shuffle buffer {shuffled.shuffle_buffer:,}": n
            / best_of(lambda: read_all(shuffled), args.repeats),
        }

    base = rows["baseline: pyarrow decode only"]
    print(
        f"\n{n:,} rows, recipe ads_ranker ({len(recipe.features)} features), batch "
        f"{recipe.training.batch_size}, one core\n"
    )
    print("| path | rows/s (1 core) | vs decode-only |")
    print("|---|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:,.0f} | {v / base:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "rows": n,
        "rows_per_s": rows,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    (out / "reader_throughput.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
