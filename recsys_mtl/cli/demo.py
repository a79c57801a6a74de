"""Run the main job end to end on generated data, as far as the product is built:

  1. generate synthetic ads data with ground truth (oracle_* columns)
  2. check it against the recipe and measure the oracle (the best any model can reach)
  3. train the recipe's model (HoME by default) with --nproc sharded processes (TorchRec, gloo)
  4. evaluate it on the held-out last day against the oracle and print the per-task metrics

Export, serving and scoring join this command as they land.

example:
  recsys-mtl demo --out demo-out --rows 600000 --days 4 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from recsys_mtl.cli.common import DEFAULT_RECIPE, add_recipe_argument, fail

log = logging.getLogger("recsys_mtl.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="working directory (replaced on each run)")
    p.add_argument("--rows", type=int, default=600_000, help="rows to generate (default 600000)")
    p.add_argument("--days", type=int, default=4, help="day partitions; the last is held out (default 4)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    add_recipe_argument(p)


def run(args: argparse.Namespace) -> int:
    from recsys_mtl.cli import main as cli_main
    from recsys_mtl.data_summary import format_summary, summarize
    from recsys_mtl.dataset import DataError
    from recsys_mtl.recipe import RecipeError, load_recipe
    from recsys_mtl.synth import SynthConfig, generate

    out = Path(args.out)
    data, run_dir = out / "data", out / "run"
    recipe_path = Path(args.recipe or DEFAULT_RECIPE)
    t0 = time.perf_counter()
    try:
        recipe = load_recipe(recipe_path)
        log.info("step 1/3: generating %s rows over %d day(s) into %s", f"{args.rows:,}", args.days, data)
        generate(SynthConfig(rows=args.rows, days=args.days, seed=args.seed), data, overwrite=True)
        log.info("step 2/3: checking the data against recipe '%s' and measuring the oracle", recipe.name)
        summary = summarize(recipe, data)
    except (RecipeError, DataError) as e:
        return fail(e)
    print(format_summary(summary))

    log.info(
        "step 3/3: training %s on %d process(es), evaluating on the last day", recipe.model.type, args.nproc
    )
    train_args = [
        "train",
        "--recipe",
        str(recipe_path),
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--nproc",
        str(args.nproc),
        "--overwrite",
    ]
    if args.epochs:
        train_args += ["--epochs", str(args.epochs)]
    rc = cli_main(train_args)  # with --nproc > 1 it launches its own ranks
    if rc != 0:
        return rc
    info = json.loads((run_dir / "run.json").read_text())
    print(
        f"\ntrained {recipe.model.type} on {info['world_size']} process(es): {info['steps']} steps, "
        f"{info['samples_per_s']:,.0f} samples/s; the metrics above are on the held-out day "
        f"{', '.join(info['data']['eval_days'])} (also in {run_dir / 'metrics.json'})"
    )
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; data in {data}, run in {run_dir}")
    return 0
