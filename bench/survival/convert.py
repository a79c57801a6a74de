"""Convert the GBSG2 breast-cancer survival data (bundled with lifelines) to the project's Parquet
layout: one row per patient, a fixed train / validation / test split as three day partitions.

Source: `lifelines.datasets.load_gbsg2()`, the CSV `lifelines/datasets/gbsg2.csv` inside the
lifelines wheel (686 patients of the German Breast Cancer Study Group 2 trial, Schumacher et al.,
J Clin Oncol 1994; as distributed in R's TH.data package and used by Sauerbrei & Royston, JRSS A
1999). lifelines is MIT-licensed; the data are published research data redistributed by
lifelines and TH.data. Nothing of it is committed here: this script writes it from the installed
wheel into bench/out/ (git-ignored), and records the CSV's sha256 and the lifelines version.

Output, one data directory with three consecutive day partitions (like bench/census/convert.py, so
`recsys-mtl train --end <validation day>` trains on the train day, validates on the validation day,
and never reads the test day):

    OUT/dt=2026-01-01/part-00000.parquet   train       first 60% of the shuffled patients (411)
    OUT/dt=2026-01-02/part-00000.parquet   validation  next 15%                          (103)
    OUT/dt=2026-01-03/part-00000.parquet   test        last 25%                          (172)
    OUT/_gbsg2.json                         split, sizes, event rates, source checksum, version

The split: `numpy.random.default_rng(2026).permutation(686)`; positions [0, 0.6n) train,
[0.6n, 0.75n) validation, [0.75n, n) test (bounds floored). Why 60/15/25 rather than census's
70/10/20: the C-index's standard error shrinks with the number of comparable pairs, so the test
split gets the most patients a validation split large enough to early-stop on leaves (172 test
patients, 67 events: a C-index standard error near 0.03).

Columns, one row per patient (`pid` = the row's 0-based position in the CSV, the survival subject):
`time` (days to recurrence or censoring, float64), `event` (1 = recurrence-free survival ended by
recurrence or death, 0 = censored: the source's `cens`), covariates `hor_th` (hormonal therapy:
yes/no), `menostat` (Pre/Post), `tgrade` (tumour grade I/II/III) as strings, and `age` (years),
`tsize` (tumour size, mm), `pnodes` (positive lymph nodes), `progrec` / `estrec` (progesterone /
oestrogen receptor, fmol) as int64.

usage: python bench/survival/convert.py [--out bench/out/survival/data]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench" / "out" / "survival" / "data"

NUM_ROWS = 686
SPLIT_SEED = 2026
FRACTIONS = (0.6, 0.15, 0.25)  # train, validation, test
SPLITS = ("train", "validation", "test")
DAYS = {"train": "2026-01-01", "validation": "2026-01-02", "test": "2026-01-03"}

# source column -> ours
RENAME = {"horTh": "hor_th", "cens": "event"}
CATEGORICAL = ["hor_th", "menostat", "tgrade"]
NUMERIC = ["age", "tsize", "pnodes", "progrec", "estrec"]
TIME, EVENT, SUBJECT = "time", "event", "pid"
COLUMNS = [SUBJECT, *CATEGORICAL, *NUMERIC, TIME, EVENT]
# the categories each categorical column may take (a new value is a conversion error, not a new id)
LEVELS = {"hor_th": ["no", "yes"], "menostat": ["Pre", "Post"], "tgrade": ["I", "II", "III"]}


def source_path() -> Path:
    """The CSV inside the installed lifelines package (ImportError without lifelines)."""
    import lifelines.datasets

    return Path(lifelines.datasets.__file__).with_name("gbsg2.csv")


def load_table() -> pa.Table:
    """All 686 patients in source order, typed, with our column names."""
    from lifelines.datasets import load_gbsg2

    df = load_gbsg2().rename(columns=RENAME)
    if len(df) != NUM_ROWS:
        raise ValueError(f"load_gbsg2() returned {len(df)} rows, expected {NUM_ROWS}")
    if df.isna().any().any():
        raise ValueError("GBSG2 has missing values: the converter expects none")
    cols: dict[str, pa.Array] = {SUBJECT: pa.array(np.arange(len(df), dtype=np.int64))}
    for c in CATEGORICAL:
        vals = df[c].astype(str).tolist()
        bad = sorted(set(vals) - set(LEVELS[c]))
        if bad:
            raise ValueError(f"column {c}: unexpected values {bad}")
        cols[c] = pa.array(vals, pa.string())
    for c in NUMERIC:
        cols[c] = pa.array(df[c].to_numpy(dtype=np.int64))
    cols[TIME] = pa.array(df[TIME].to_numpy(dtype=np.float64))
    cols[EVENT] = pa.array(df[EVENT].to_numpy(dtype=np.int8))
    return pa.table(cols)


def split_bounds(n: int = NUM_ROWS) -> dict[str, tuple[int, int]]:
    """Positions [lo, hi) of the permutation that make each split (floored cumulative fractions)."""
    a = int(n * FRACTIONS[0])
    b = int(n * (FRACTIONS[0] + FRACTIONS[1]))
    return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def split_indices(n: int = NUM_ROWS, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Patient indices (source order, 0-based) of each split, in the permutation's order."""
    perm = np.random.default_rng(seed).permutation(n)
    return {name: perm[lo:hi] for name, (lo, hi) in split_bounds(n).items()}


def convert(out: Path = DEFAULT_OUT) -> dict[str, Any]:
    """Write the three partitions and `_gbsg2.json`; returns the summary it wrote."""
    table = load_table()
    src = source_path()
    out.mkdir(parents=True, exist_ok=True)
    n = table.num_rows
    summary: dict[str, Any] = {
        "source": "lifelines.datasets.load_gbsg2 (lifelines/datasets/gbsg2.csv)",
        "lifelines_version": importlib.metadata.version("lifelines"),
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "rows": n,
        "time_unit": "days",
        "split_seed": SPLIT_SEED,
        "split_rule": f"numpy.random.default_rng({SPLIT_SEED}).permutation({n}); positions [0, 0.6n) "
        "train, [0.6n, 0.75n) validation, [0.75n, n) test (floored)",
        "splits": {},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for name, idx in split_indices(n).items():
        part = table.take(pa.array(idx))
        d = out / f"dt={DAYS[name]}"
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.parquet"):
            old.unlink()
        pq.write_table(part, d / "part-00000.parquet", compression="zstd")
        ev = part.column(EVENT).to_numpy()
        summary["splits"][name] = {
            "day": DAYS[name],
            "rows": part.num_rows,
            "events": int(ev.sum()),
            "event_rate": float(ev.mean()),
            "median_time_days": float(np.median(part.column(TIME).to_numpy())),
        }
    (out / "_gbsg2.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="data directory to write")
    args = ap.parse_args()
    summary = convert(args.out)
    for name, s in summary["splits"].items():
        print(
            f"{name:<10} {s['day']}  {s['rows']:>3} patients  {s['events']:>3} events "
            f"({s['event_rate']:.1%})  median time {s['median_time_days']:.0f} days"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
