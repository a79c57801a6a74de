"""CVR against the truth on two populations: the clicked rows (where CVR is evaluated) and all
impressions (where it is served, ESMM's point), for finished runs on synthetic data.

For each run: the CVR lift against the true conversion probabilities (`oracle_cvr`) with
`recsys_mtl.metrics.expected_auc` (no label noise), on the held-out day's clicked rows and on all
its rows, and the mean predicted against the mean true CVR on each population (calibration: a
model trained on clicked rows only carries their selection bias onto the impressions).

usage:
  .venv/bin/python bench/cvr_population.py DATA RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from recsys_mtl.evaluation import evaluation_reader, oracle_lift, predict
from recsys_mtl.metrics import expected_auc
from recsys_mtl.run import load_run


def truth_lift(score: np.ndarray, truth: np.ndarray) -> float:
    """`expected_lift` of metrics.json, on whichever rows are given."""
    return oracle_lift(expected_auc(score, truth), expected_auc(truth, truth))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="the runs' data directory (with oracle_cvr)")
    ap.add_argument("runs", type=Path, nargs="+", help="finished run directories")
    args = ap.parse_args()
    print(
        "| run | lift vs truth, clicked rows | all impressions | mean pCVR clicked / all "
        "| true CVR clicked / all |"
    )
    print("|---|---:|---:|---:|---:|")
    for run_dir in args.runs:
        run = load_run(run_dir)
        days = run.info["data"]["eval_days"]
        reader = evaluation_reader(
            run.recipe, args.data, transform=run.transform, start=days[0], end=days[-1]
        )
        preds = predict(run.model, reader)
        if "cvr" not in preds.oracle:
            raise SystemExit(f"{run_dir}: no cvr task with an oracle column in {args.data}")
        s, o = preds.scores["cvr"].astype(np.float64), preds.oracle["cvr"].astype(np.float64)
        m = preds.eval_mask["cvr"]
        print(
            f"| {run_dir.name} | {truth_lift(s[m], o[m]):.3f} | {truth_lift(s, o):.3f} "
            f"| {s[m].mean():.4f} / {s.mean():.4f} | {o[m].mean():.4f} / {o.mean():.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
