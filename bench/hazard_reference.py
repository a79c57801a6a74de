"""Reference for the hazard tasks: a person-period logistic hazard on subject-level covariates.

Is the held-out hazard ranking learnable from the training labels at all, and from what? This fits
the discrete-time proportional-odds model (one intercept per interval + a linear covariate score;
Tutz & Schmid, "Modeling Discrete Time-to-Event Data", 2016, ch. 3) with scikit-learn's logistic
regression on person-period rows: a subject (a creative on a day) censored or stopping in interval
k contributes rows j = 0..k, labelled 1 only at j = k when it stopped there. The labels are the
training days' labels censored at the end of the last training day, exactly as the trainer sees
them (`recsys_mtl.targets.censor_at_cutoff`). Covariates are per subject, aggregated from its rows
of the day: log(1 + creative age), age < 3 days, log(impressions of the subject that day) and its
observed CTR that day. The held-out (last) day is scored by the covariate score, and Harrell's
C-index is printed beside the oracle's, for each covariate set.

Not a product model: the day's impressions and CTR of a creative are aggregates the rows do not
carry as features (docs/QUALITY_INVESTIGATION.md, "2026-12-01").

usage:
  .venv/bin/python bench/hazard_reference.py DATA_DIR [--task hazard_short] [--recipe R]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression

from recsys_mtl.evaluation import oracle_lift
from recsys_mtl.metrics import c_index
from recsys_mtl.partitions import list_partitions
from recsys_mtl.recipe import TaskSpec, load_recipe
from recsys_mtl.targets import censor_at_cutoff

ROOT = Path(__file__).resolve().parents[1]
COVARIATES = ["log age", "age < 3 days", "log impressions", "observed CTR"]
SETS = [[0], [0, 1], [2], [3], [0, 1, 2, 3]]


def subjects(files: list[Path], task: TaskSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(covariates [S, 4], interval [S], event [S], oracle hazards [S, L]) of one day's subjects."""
    assert task.interval_column and task.event_column and task.subject_column
    cols = [task.subject_column, "creative_age_days", task.interval_column, task.event_column, "click"]
    t = pq.ParquetDataset(files).read(columns=[*cols, task.oracle_prefix])
    _, first, inv = np.unique(t[task.subject_column].to_numpy(), return_index=True, return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    clicks = np.bincount(inv, weights=t["click"].to_numpy().astype(np.float64))
    age = t["creative_age_days"].to_numpy()[first].astype(np.float64)
    x = np.column_stack([np.log1p(age), (age < 3).astype(np.float64), np.log(n), clicks / n])
    k = t[task.interval_column].to_numpy()[first].astype(np.int64)
    e = t[task.event_column].to_numpy()[first] > 0
    oracle = np.stack(t[task.oracle_prefix].to_numpy(zero_copy_only=False)[first]).astype(np.float64)
    return x, k, e, oracle


def person_periods(
    days: dict[dt.date, list[Path]], task: TaskSpec, cutoff: dt.date
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covariates, interval index, stopped) rows of the training days, censored at `cutoff`."""
    xs, js, ys = [], [], []
    for day, files in days.items():
        x, k, e, _ = subjects(files, task)
        observable = (cutoff - day).days + 1
        k, e, seen = censor_at_cutoff(task, k, e, np.full(len(k), observable, dtype=np.float64))
        x, k, e = x[seen], k[seen], e[seen]
        for j in range(int(k.max()) + 1 if len(k) else 0):
            m = k >= j
            xs.append(x[m])
            js.append(np.full(int(m.sum()), j))
            ys.append((k[m] == j) & e[m])
    return np.concatenate(xs), np.concatenate(js), np.concatenate(ys)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="generated data (dt=YYYY-MM-DD/ partitions), last day held out")
    ap.add_argument("--task", action="append", help="hazard task(s) (default: every hazard task)")
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "ads_ranker.yaml")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    days = list_partitions(args.data, partition=recipe.data.partition)
    if len(days) < 2:
        raise SystemExit(f"{args.data}: need at least two day partitions (train days + a held-out day)")
    *train_days, held = sorted(days)
    train = {d: days[d] for d in train_days}
    cutoff = train_days[-1]
    names = args.task or [t.name for t in recipe.tasks if t.kind == "hazard"]
    for name in names:
        task = recipe.task(name)
        task = task.model_copy(update={"subject_column": recipe.subject_column(task)})
        x, j, y = person_periods(train, task, cutoff)
        xh, kh, eh, oh = subjects(days[held], task)
        o_c = c_index(kh, eh, 1.0 - np.prod(1.0 - oh, axis=1))
        print(
            f"{name}: {len(y):,} training person-periods with {int(y.sum()):,} stops; held-out "
            f"{held}: {len(kh):,} subjects, {int(eh.sum()):,} events, oracle C {o_c:.3f}"
        )
        onehot = np.eye(task.num_intervals)[np.minimum(j, task.num_intervals - 1)]
        for cols in SETS:
            fit = LogisticRegression(C=10.0, max_iter=2000).fit(np.column_stack([onehot, x[:, cols]]), y)
            coef = fit.coef_[0, task.num_intervals :]
            c = c_index(kh, eh, xh[:, cols] @ coef)  # proportional odds: the score ranks the risk
            lift = oracle_lift(c, o_c)
            label = ", ".join(COVARIATES[i] for i in cols)
            print(f"  {label:55s} C {c:.3f}  lift {lift:5.2f}  coefficients {np.round(coef, 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
