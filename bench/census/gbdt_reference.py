"""A non-neural reference on the same census-income split: gradient-boosted trees, one per task.

What a strong, untuned tabular baseline reaches on exactly this data and split, to tell how much of
a gap to a target is the data rather than the model. scikit-learn's HistGradientBoostingClassifier
with native categorical splits (the 32 categorical columns as category codes, the 7 numeric
columns as numbers; `?` -> missing), fit on the train day with its own early stopping on 10% of it,
scored once on the validation and the test day. Default hyperparameters apart from learning rate
0.05 and at most 1000 iterations; nothing is tuned, so it is a reference, not a competitor.

Prints a small table and writes OUT/gbdt_reference.json.

usage: OMP_NUM_THREADS=1 python bench/census/gbdt_reference.py [--data bench/out/census/data]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `bench.census` importable
    sys.path.insert(0, str(ROOT))

from bench.census.convert import CATEGORICAL, DAYS, LABELS, NUMERIC  # noqa: E402
from recsys_mtl.metrics import auc  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "out" / "census"


def load(data: Path, split: str) -> dict[str, np.ndarray]:
    t = pq.read_table(data / f"dt={DAYS[split]}", columns=[*NUMERIC, *CATEGORICAL, *LABELS])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def matrix(cols: dict[str, np.ndarray], codes: dict[str, dict[str, int]]) -> np.ndarray:
    """Numeric columns as floats, categorical ones as codes learned on train (unseen/missing: NaN)."""
    num = [cols[c].astype(np.float64) for c in NUMERIC]
    cat = [np.array([codes[c].get(v, np.nan) for v in cols[c]], np.float64) for c in CATEGORICAL]
    return np.stack(num + cat, axis=1)


def main() -> int:
    from sklearn.ensemble import HistGradientBoostingClassifier

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_OUT / "data", help="converted census data")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write gbdt_reference.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    parts = {s: load(args.data, s) for s in DAYS}
    codes = {
        c: {v: i for i, v in enumerate(sorted({v for v in parts["train"][c] if v is not None}))}
        for c in CATEGORICAL
    }
    x = {s: matrix(p, codes) for s, p in parts.items()}
    is_cat = [False] * len(NUMERIC) + [True] * len(CATEGORICAL)
    res: dict[str, dict[str, float]] = {}
    for task in LABELS:
        t0 = time.perf_counter()
        model = HistGradientBoostingClassifier(
            categorical_features=is_cat,
            learning_rate=0.05,
            max_iter=1000,
            early_stopping=True,
            validation_fraction=0.1,
            random_state=args.seed,
        )
        model.fit(x["train"], parts["train"][task])
        res[task] = {s: auc(model.predict_proba(x[s])[:, 1], parts[s][task]) for s in ("validation", "test")}
        res[task]["iterations"] = int(model.n_iter_)
        res[task]["fit_s"] = time.perf_counter() - t0
    print("| task | validation AUC | test AUC | trees | fit s |\n|---|---:|---:|---:|---:|")
    for task, r in res.items():
        print(f"| {task} | {r['validation']:.4f} | {r['test']:.4f} | {r['iterations']} | {r['fit_s']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gbdt_reference.json").write_text(json.dumps({"seed": args.seed, "tasks": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
