"""Convert the UCI Census-Income (KDD) test half to the project's Parquet layout, with a fixed split.

Input: `datasets/census-income/census-income.test.gz` (99,762 rows, 42 columns, ", "-separated, no
header; see the README beside it). Output, one data directory with three consecutive day partitions:

    OUT/dt=2026-01-01/part-00000.parquet   train       first 70% of the shuffled rows (69,833)
    OUT/dt=2026-01-02/part-00000.parquet   validation  next 10%                      ( 9,976)
    OUT/dt=2026-01-03/part-00000.parquet   test        last 20%                      (19,953)
    OUT/_census.json                        split, sizes, label rates, source checksum

Why day partitions rather than three data directories: the trainer holds out the *last*
`eval_days` partitions of its date range and evaluates them at the end (and, with early stopping,
after every epoch). So `train --end 2026-01-02 --eval-days 1` trains on the train day, validates on
the validation day and never reads the test day, whose day the benchmark evaluates once at the end
(`recsys-mtl evaluate --start 2026-01-03`). Dense statistics are fitted on the train day only
(`trainer.fit_transform`). One directory, no special-case reader code.

The split: rows are shuffled with `numpy.random.default_rng(2026).permutation(99762)`; positions
[0, 0.7n) of the permutation are train, [0.7n, 0.8n) validation, [0.8n, n) test (bounds floored).
Rows keep the permutation's order inside each partition.

Columns (snake_case of the README's names): the 7 numeric columns as nullable int64, every other
feature column as a string (codes such as the industry recode stay strings: categories, not
magnitudes), `?` -> null, surrounding spaces stripped. The label sources (column 8, marital stat;
column 42, income) are replaced by 0/1 int8 labels `marital` (1 = "Never married") and `income`
(1 = "50000+."). `instance_weight` (column 25) is kept for reference but is no feature (the
recipe does not read it). `row_id` is the row's 0-based line number in the source file: provenance
only, to check the split; it is not a user id (census has no users, so GAUC does not apply and the
recipe's user column is absent from the data, which evaluation accepts by skipping GAUC).

usage: python bench/census/convert.py [--src census-income.test.gz] [--out bench/out/census/data]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
# the data file travels with the repository (datasets/census-income/README.md: source, licence)
DEFAULT_SRC = ROOT / "datasets" / "census-income" / "census-income.test.gz"
DEFAULT_OUT = ROOT / "bench" / "out" / "census" / "data"

NUM_ROWS = 99_762
SPLIT_SEED = 2026
FRACTIONS = (0.7, 0.1, 0.2)  # train, validation, test
SPLITS = ("train", "validation", "test")
DAYS = {"train": "2026-01-01", "validation": "2026-01-02", "test": "2026-01-03"}

# The README's column names, in file order (1-based column k is COLUMNS[k - 1]).
_README_NAMES = [
    "age",
    "class of worker",
    "detailed industry recode",
    "detailed occupation recode",
    "education",
    "wage per hour",
    "enroll in edu inst last wk",
    "marital stat",
    "major industry code",
    "major occupation code",
    "race",
    "hispanic origin",
    "sex",
    "member of a labor union",
    "reason for unemployment",
    "full or part time employment stat",
    "capital gains",
    "capital losses",
    "dividends from stocks",
    "tax filer stat",
    "region of previous residence",
    "state of previous residence",
    "detailed household and family stat",
    "detailed household summary in household",
    "instance weight",
    "migration code-change in msa",
    "migration code-change in reg",
    "migration code-move within reg",
    "live in this house 1 year ago",
    "migration prev res in sunbelt",
    "num persons worked for employer",
    "family members under 18",
    "country of birth father",
    "country of birth mother",
    "country of birth self",
    "citizenship",
    "own business or self employed",
    "fill inc questionnaire for veteran's admin",
    "veterans benefits",
    "weeks worked in year",
    "year",
    "income",
]


def snake(name: str) -> str:
    """'migration code-change in msa' -> 'migration_code_change_in_msa'; "veteran's" -> 'veterans'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("'", "")).strip("_")


COLUMNS = [snake(n) for n in _README_NAMES]
NUMERIC = [COLUMNS[k - 1] for k in (1, 6, 17, 18, 19, 31, 40)]
WEIGHT = COLUMNS[25 - 1]
MARITAL_SOURCE, INCOME_SOURCE = COLUMNS[8 - 1], COLUMNS[42 - 1]
# Every column that is neither numeric, nor a label source, nor the instance weight is categorical
# (the README: treat the codes in columns 3, 4, 39 and 41 as categorical, not as numbers).
CATEGORICAL = [c for c in COLUMNS if c not in (*NUMERIC, WEIGHT, MARITAL_SOURCE, INCOME_SOURCE)]
LABELS = ("income", "marital")


def split_bounds(n: int = NUM_ROWS) -> dict[str, tuple[int, int]]:
    """Positions [lo, hi) of the permutation that make each split (floored cumulative fractions)."""
    a = int(n * FRACTIONS[0])
    b = int(n * (FRACTIONS[0] + FRACTIONS[1]))
    return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def read_rows(src: Path, limit: int | None = None) -> list[list[str]]:
    """The file's rows as lists of 42 stripped strings (`limit`: the first rows only, for tests)."""
    rows: list[list[str]] = []
    with gzip.open(src, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            parts = [p.strip() for p in line.rstrip("\n").split(", ")]
            if len(parts) != len(COLUMNS):
                raise ValueError(f"{src}:{i + 1}: {len(parts)} fields, expected {len(COLUMNS)}")
            rows.append(parts)
    return rows


def to_table(rows: list[list[str]]) -> pa.Table:
    """Typed Arrow table of all rows in file order (row_id, features, instance_weight, labels)."""
    by_col = list(zip(*rows, strict=True)) if rows else [() for _ in COLUMNS]
    raw = dict(zip(COLUMNS, by_col, strict=True))
    cols: dict[str, pa.Array] = {"row_id": pa.array(np.arange(len(rows), dtype=np.int64))}
    for c in COLUMNS:
        if c in (MARITAL_SOURCE, INCOME_SOURCE):
            continue
        vals = raw[c]
        missing = [v == "?" for v in vals]
        if c in NUMERIC:
            cols[c] = pa.array(
                [None if m else int(v) for v, m in zip(vals, missing, strict=True)], pa.int64()
            )
        elif c == WEIGHT:
            cols[c] = pa.array([float(v) for v in vals], pa.float64())
        else:
            cols[c] = pa.array([None if m else v for v, m in zip(vals, missing, strict=True)], pa.string())
    income = list(raw[INCOME_SOURCE])
    bad = sorted({v for v in income if v not in ("50000+.", "- 50000.")})
    if bad:
        raise ValueError(f"unexpected income values {bad[:5]}")
    cols["income"] = pa.array(np.array([v == "50000+." for v in income], np.int8))
    cols["marital"] = pa.array(np.array([v == "Never married" for v in raw[MARITAL_SOURCE]], np.int8))
    return pa.table(cols)


def split_indices(n: int = NUM_ROWS, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Row indices (file order, 0-based) of each split, in the permutation's order."""
    perm = np.random.default_rng(seed).permutation(n)
    return {name: perm[lo:hi] for name, (lo, hi) in split_bounds(n).items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(
    src: Path = DEFAULT_SRC, out: Path = DEFAULT_OUT, limit: int | None = None, row_group_size: int = 16_384
) -> dict[str, object]:
    """Write the three partitions and `_census.json`; returns the summary it wrote.

    `limit` converts only the first `limit` rows (tests), split with the same rule over that many
    rows (so it is not a subset of the full split). The permutation uses n = the rows read.
    """
    table = to_table(read_rows(src, limit))
    n = table.num_rows
    if limit is None and n != NUM_ROWS:
        raise ValueError(f"{src}: {n} rows, expected {NUM_ROWS}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "source": str(src),
        "source_sha256": sha256(src),
        "rows": n,
        "split_seed": SPLIT_SEED,
        "split_rule": f"numpy.random.default_rng({SPLIT_SEED}).permutation({n}); "
        "positions [0, 0.7n) train, [0.7n, 0.8n) validation, [0.8n, n) test (floored)",
        "splits": {},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for name, idx in split_indices(n).items():
        part = table.take(pa.array(idx))
        d = out / f"dt={DAYS[name]}"
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.parquet"):
            old.unlink()
        pq.write_table(part, d / "part-00000.parquet", row_group_size=row_group_size, compression="zstd")
        summary["splits"][name] = {  # type: ignore[index]
            "day": DAYS[name],
            "rows": part.num_rows,
            **{f"{lab}_rate": float(np.mean(part.column(lab).to_numpy())) for lab in LABELS},
        }
    (out / "_census.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="census-income.test.gz")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="data directory to write")
    ap.add_argument("--limit", type=int, help="convert only the first N rows (smoke tests)")
    args = ap.parse_args()
    summary = convert(args.src, args.out, args.limit)
    for name, s in summary["splits"].items():  # type: ignore[attr-defined]
        print(
            f"{name:<10} {s['day']}  {s['rows']:>6,} rows  income {s['income_rate']:.4f}  "
            f"marital {s['marital_rate']:.4f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
