"""Evaluate a trained run on Parquet days: per task AUC, GAUC, logloss and calibration (binary
tasks; CVR on clicked rows only), C-index, integrated Brier score and survival calibration over
survival subjects (a creative on a day; hazard tasks), and the expert-usage diagnostics of
mixture-of-experts models.

On synthetic data (with `oracle_*` columns) every task also gets the oracle's metrics and
oracle_lift = (model - 0.5) / (oracle - 0.5): 0 is chance, 1 is the best any model can reach.
The run's own recipe and feature transform (with its dense statistics) are used.

Calibration: when the run has a map (RUN/calibration.json, fitted on its held-out days), each
binary task is also reported after it: ECE, pred/obs, logloss, AUC and a reliability table (10
equal-count bins: mean predicted, observed rate, rows), before -> after. On the days the map was
fitted on, the after-numbers are out-of-fold (folds by user, each calibrated by a map fitted on the
others); on any other day the saved map is applied as the exported model applies it.

Cold start: every row is evaluated, and the rows of new items are also reported apart from the
known ones (AUC / C-index, oracle lift, logloss per task; metrics.json's "cold_start"). An item is
new when the run's `data.holdout_items` hash held it out of training, or when no row of the run's
training days (run.json: data.dir, data.train_days) has it; if those days cannot be read any more,
a warning says so and the hash alone decides.

Prints a compact table; --out also writes the full metrics as JSON (no NaN: undefined is null).

example:
  recsys-mtl evaluate --run runs/ads --data demo-out/data --start 2026-01-07 --out metrics.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys_mtl.cli.common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="training run directory (holds run.json and checkpoints/)")
    p.add_argument("--data", required=True, help="data directory holding dt=YYYY-MM-DD/ partitions")
    p.add_argument("--start", help="first day (YYYY-MM-DD, inclusive); default: the first partition")
    p.add_argument("--end", help="last day (YYYY-MM-DD, inclusive); default: the last partition")
    p.add_argument("--batch-size", type=int, help="rows per forward pass (default: the recipe's)")
    p.add_argument("--out", help="write the metrics JSON here (e.g. metrics.json)")
    p.add_argument(
        "--no-calibration", action="store_true", help="ignore the run's calibration map (raw scores only)"
    )


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.atomic_files import write_json_atomic
    from recsys_mtl.calibration import load_run_calibration
    from recsys_mtl.cold_start import run_training_items
    from recsys_mtl.evaluation import evaluate_days, format_metrics
    from recsys_mtl.run import load_run

    if args.batch_size is not None and args.batch_size < 1:
        return fail(ValueError(f"--batch-size must be at least 1, got {args.batch_size}"))
    if not Path(args.run).is_dir():
        return fail(FileNotFoundError(f"{args.run}: run directory does not exist"))
    if not Path(args.data).is_dir():  # before the model loads: a typo should fail at once
        return fail(FileNotFoundError(f"{args.data}: data directory does not exist"))
    try:
        loaded = load_run(args.run)
        calibration = None if args.no_calibration else load_run_calibration(args.run)
        known = run_training_items(loaded.recipe, loaded.info)  # None (and a warning): unknown
        metrics = evaluate_days(
            loaded.model,
            loaded.recipe,
            loaded.transform,
            args.data,
            start=args.start,
            end=args.end,
            batch_size=args.batch_size,
            calibration=calibration,
            known_items=known,
        )
    except (OSError, ValueError) as e:  # RunError, RecipeError, DataError, TransformError
        return fail(e)
    print(format_metrics(metrics), file=sys.stdout)
    if args.out:
        try:
            write_json_atomic(Path(args.out), metrics)
        except OSError as e:
            return fail(OSError(f"cannot write {args.out}: {e.strerror or e}"))
    return 0
