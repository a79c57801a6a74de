"""Run every benchmark in bench/ (what `make bench` runs); each prints its table and writes JSON
under bench/out/. Figures go into docs/BENCHMARKS.md with the command that produced them."""

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
