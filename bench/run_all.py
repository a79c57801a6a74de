"""Run the core benchmarks (what `make bench` runs: reading and training throughput); each prints
its table and writes JSON under bench/out/. The other scripts in bench/ each answer one question
(quality, serving load, memory, workers, contention, ...) and are run by hand with the command
docs/BENCHMARKS.md gives beside each table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["reader_throughput.py", "training_throughput.py"]

if __name__ == "__main__":
    rc = 0
    for b in BENCHES:
        print(f"== {b}", flush=True)
        rc |= subprocess.run([sys.executable, str(HERE / b), *sys.argv[1:]]).returncode
    sys.exit(rc)
