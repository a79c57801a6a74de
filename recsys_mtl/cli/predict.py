"""Write per-row scores of every task to Parquet, for a trained run or a registry version.

Rows are scored by the server's own loader (feature transform, TorchScript artifact,
postprocessing: recsys_mtl.loader), so offline and served scores of a row are equal. A --run is
first exported into a temporary registry, exactly as `recsys-mtl export` would publish it.

Output (--out): a directory gets one file per day, OUT/dt=YYYY-MM-DD/part-0.parquet, each written
under a temporary name and renamed when complete; a path ending in .parquet gets one file with a
`dt` date column. Rows keep the input's order. Columns: the kept columns (--keep; default the
recipe's user and item columns where the data has them), `<task>` (binary: probability),
`<task>_risk` (hazard: 1 - S at the grid's horizon), and with --hazards / --survival
`<task>_hazard` / `<task>_survival` (list<float32>, one value per interval).

Memory is bounded by --batch-size: files are read in batches and each batch is written as it is
scored, for any number of days. A log line per day gives rows and rows/s.

Exit codes: 0 written; 1 the model failed to load or validate, or a write failed; 2 bad arguments
or data (a missing column names its file; an unknown task names the known ones).

examples:
  recsys-mtl predict --registry registry --name ads_ranker --data data --start 2026-01-07 \\
      --out scores
  recsys-mtl predict --run runs/home --data data --start 2026-01-07 --end 2026-01-07 \\
      --out scores.parquet --tasks ctr hazard_short --survival --keep user_id creative_id click
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys_mtl.cli.common import fail
from recsys_mtl.exit_codes import EXIT_ERROR


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="training run directory (run.json, checkpoints/)")
    src.add_argument("--registry", type=Path, help="registry root directory (with --name)")
    p.add_argument("--name", help="model name in the registry, e.g. ads_ranker")
    p.add_argument("--version", default="current", help="registry version: a version, current or latest")
    p.add_argument("--int8", action="store_true", help="score with the int8 build (registry or run)")
    p.add_argument("--data", required=True, type=Path, help="data directory holding dt=YYYY-MM-DD/")
    p.add_argument("--start", help="first day (YYYY-MM-DD, inclusive); default: the first partition")
    p.add_argument("--end", help="last day (YYYY-MM-DD, inclusive); default: the last partition")
    p.add_argument("--out", required=True, type=Path, help="output directory, or a FILE.parquet")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to write (default: all)")
    p.add_argument("--hazards", action="store_true", help="add <task>_hazard lists per hazard task")
    p.add_argument("--survival", action="store_true", help="add <task>_survival lists per hazard task")
    p.add_argument(
        "--keep",
        nargs="*",
        metavar="COL",
        help="input columns copied to the output (ids, labels); default: the recipe's user and item "
        "columns; --keep with no column keeps none",
    )
    p.add_argument("--batch-size", type=int, default=65_536, help="rows read and scored at a time")


def run(args: argparse.Namespace) -> int:
    # Cheap checks first: a typo should not wait for torch to import.
    if args.batch_size < 1:
        return fail(ValueError(f"--batch-size must be at least 1, got {args.batch_size}"))
    if args.registry is not None and not args.name:
        return fail(ValueError("--registry needs --name"))
    if args.run is not None and (args.name or args.version != "current"):
        return fail(ValueError("--name and --version go with --registry, not --run"))
    if args.run is not None and not args.run.is_dir():
        return fail(FileNotFoundError(f"{args.run}: run directory does not exist"))
    if args.registry is not None and not args.registry.is_dir():
        return fail(FileNotFoundError(f"{args.registry}: registry directory does not exist"))
    if not args.data.is_dir():
        return fail(FileNotFoundError(f"{args.data}: data directory does not exist"))

    from recsys_mtl.batch_predict import PredictOptions, model_from_registry, model_from_run, predict
    from recsys_mtl.export import ExportError
    from recsys_mtl.loader import ModelLoadError

    try:
        if args.run is not None:
            model = model_from_run(args.run, int8=args.int8)
        else:
            model = model_from_registry(args.registry, args.name, args.version, int8=args.int8)
    except (ModelLoadError, ExportError) as e:  # the artifact itself: not the arguments
        return fail(e, code=EXIT_ERROR)
    except (OSError, ValueError) as e:  # RunError, RegistryError (no such model or version)
        return fail(e)
    options = PredictOptions(
        tasks=args.tasks,
        hazards=args.hazards,
        survival=args.survival,
        keep=args.keep,
        batch_size=args.batch_size,
    )
    try:
        days = predict(model, args.data, args.out, start=args.start, end=args.end, options=options)
    except ValueError as e:  # DataError, TransformError, unknown task
        return fail(e)
    except OSError as e:
        return fail(OSError(f"cannot write {args.out}: {e.strerror or e}"), code=EXIT_ERROR)
    rows = sum(d.rows for d in days)
    seconds = sum(d.seconds for d in days)
    print(
        f"scored {rows:,} rows of {len(days)} day(s) with {model.name} version {model.version} "
        f"in {seconds:.1f}s ({rows / seconds if seconds else 0:,.0f} rows/s) -> {args.out}",
        file=sys.stdout,
    )
    return 0
