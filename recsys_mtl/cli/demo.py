"""Run the main job end to end on generated data, as far as the product is built:
generate synthetic ads data with ground truth, check it against the shipped recipe and print
a summary (rows, label rates, the oracle's AUC per task and C-index per hazard grid).

Later stages (train, evaluate, export, serve, score) join this command as they land.

example:
  recsys-mtl demo --out demo-out --rows 200000 --days 3
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from recsys_mtl.cli.common import DEFAULT_RECIPE, add_recipe_argument, fail

log = logging.getLogger("recsys_mtl.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="working directory (replaced on each run)")
    p.add_argument("--rows", type=int, default=200_000, help="rows to generate (default 200000)")
    p.add_argument("--days", type=int, default=3, help="day partitions (default 3)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    add_recipe_argument(p)


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.data_summary import format_summary, summarize
    from recsys_mtl.dataset import DataError
    from recsys_mtl.recipe import RecipeError, load_recipe
    from recsys_mtl.synth import SynthConfig, generate

    out = Path(args.out)
    data = out / "data"
    t0 = time.perf_counter()
    try:
        recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
        log.info("step 1/2: generating %s rows over %s day(s) into %s", f"{args.rows:,}", args.days, data)
        generate(SynthConfig(rows=args.rows, days=args.days, seed=args.seed), data, overwrite=True)
        log.info("step 2/2: checking the data against recipe '%s' and measuring the oracle", recipe.name)
        summary = summarize(recipe, data)
    except (RecipeError, DataError) as e:
        return fail(e)
    print(format_summary(summary))
    print(f"demo finished in {time.perf_counter() - t0:.1f}s; data in {data}")
    return 0
