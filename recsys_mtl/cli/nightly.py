"""The nightly job for one date: validate the day's partition -> train on the recipe's window of
days before it, warm-started from the serving model -> evaluate new vs serving on the day ->
quality gate per task -> export, publish and promote only if it passes -> report (HTML + PNGs).

Exit codes: 0 published (or nothing to do: the date is already published), 1 internal error,
2 bad arguments or recipe, 3 data validation failed, 4 quality gate failed (nothing published),
5 promotion conflict: the current version changed while the job ran (someone promoted or rolled
back), so the model gated against the old one was not published; a re-run trains the date again
against the new current.
Publishing is a compare-and-swap on current.json, and a version rolled back with `recsys-mtl
rollback` is never promoted again by this job. Idempotent per date (--force re-runs a date); a
killed run resumes from its checkpoint when it is started again. Settings (window, validation
bounds, gate tolerances and floors) are in the recipe's `nightly` section. See docs/OPERATIONS.md
for scheduling and rollback.

example:
  recsys-mtl nightly --date 2026-01-08 --recipe configs/ads_ranker.yaml --data data \\
      --registry registry --name ads_ranker --nproc 2
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_mtl.cli.common import DEFAULT_RECIPE, add_recipe_argument, fail

if TYPE_CHECKING:
    from recsys_mtl.recipe import Recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="the new day to validate and hold out (YYYY-MM-DD)")
    add_recipe_argument(p)
    p.add_argument("--data", required=True, type=Path, help="data directory holding dt=YYYY-MM-DD/")
    p.add_argument("--registry", required=True, type=Path, help="registry root (created on first publish)")
    p.add_argument("--name", help="registry model name (default: the recipe's name)")
    p.add_argument("--nproc", type=int, default=1, help="training processes (default 1)")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("nightly-runs"),
        help="working directory: checkpoints, state and reports of each date (default nightly-runs/)",
    )
    p.add_argument("--force", action="store_true", help="re-run a date that was published or gated")
    p.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    p.add_argument("--threads", type=int, help="torch threads per training rank")
    p.add_argument("--progress", action="store_true", help="show the training progress bar")


def check_fixed_grids(recipe: Recipe, source: Path) -> None:
    """RecipeError for a hazard task with `grid_quantiles`: each night would resolve its grid
    anew from that night's window, so the model warm-started from, gated against and replacing the
    serving one could score different intervals under the same task name. A nightly recipe names
    its grid (copy the one a trial run resolved: run.json's recipe, tasks[...].grid)."""
    from recsys_mtl.recipe import RecipeError

    for t in recipe.tasks:
        if t.grid_quantiles is not None:
            raise RecipeError(
                f"{source}: tasks.{t.name}.grid_quantiles: the nightly job needs a fixed grid (a "
                "quantile grid would change from night to night under the serving model); set "
                f"`grid:` to the boundaries a training run resolved (its run.json, task '{t.name}')"
            )


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.recipe import RecipeError, load_recipe
    from recsys_mtl.registry import RegistryError, check_name

    try:
        date = dt.date.fromisoformat(args.date)
    except ValueError:
        return fail(ValueError(f"--date: expected YYYY-MM-DD, got {args.date!r}"))
    if args.nproc < 1:
        return fail(ValueError("--nproc must be >= 1"))
    recipe_path = Path(args.recipe or DEFAULT_RECIPE)
    try:
        recipe = load_recipe(recipe_path)
        name = check_name("model name", args.name or recipe.name)
        check_fixed_grids(recipe, recipe_path)
    except (RecipeError, RegistryError) as e:
        return fail(e)
    if not args.data.is_dir():
        return fail(FileNotFoundError(f"{args.data}: data directory does not exist"))

    from pipelines.nightly import NightlyConfig, run_nightly
    from recsys_mtl.exit_codes import EXIT_ERROR

    cfg = NightlyConfig(
        date=date,
        recipe_path=recipe_path,
        recipe=recipe,
        data_dir=args.data,
        registry=args.registry,
        name=name,
        work=args.work,
        nproc=args.nproc,
        force=args.force,
        epochs=args.epochs,
        threads=args.threads,
        progress=args.progress,
    )
    try:
        outcome = run_nightly(cfg)
    except Exception as e:  # an internal failure: one clear line, the traceback in the log
        import logging

        logging.getLogger("pipelines.nightly").exception("nightly %s failed", date)
        return fail(e, code=EXIT_ERROR)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    print(f"nightly {date}: {outcome.message}" + (f" [{timings}]" if timings else ""))
    if outcome.report_dir is not None:
        print(f"report: {outcome.report_dir / 'report.html'}")
    return outcome.code
