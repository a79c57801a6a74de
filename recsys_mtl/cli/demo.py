"""Run the main job end to end on generated data, as far as the product is built:

  1. generate synthetic ads data with ground truth (oracle_* columns)
  2. check it against the recipe and measure the oracle (the best any model can reach)
  3. train the recipe's model (HoME by default) with --nproc sharded processes (TorchRec, gloo)
  4. evaluate it on the held-out last day against the oracle and print the per-task metrics
  5. export it (TorchScript) into a local registry, promote it, load it back through the
     checksum-verified scorer and score a sample request of candidates for every task

Serving over HTTP joins this command when the server lands.

example:
  recsys-mtl demo --out demo-out --rows 600000 --days 4 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_mtl.cli.common import DEFAULT_RECIPE, add_recipe_argument, fail

if TYPE_CHECKING:
    from recsys_mtl.scorer import LoadedModel

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
        log.info("step 1/4: generating %s rows over %d day(s) into %s", f"{args.rows:,}", args.days, data)
        generate(SynthConfig(rows=args.rows, days=args.days, seed=args.seed), data, overwrite=True)
        log.info("step 2/4: checking the data against recipe '%s' and measuring the oracle", recipe.name)
        summary = summarize(recipe, data)
    except (RecipeError, DataError) as e:
        return fail(e)
    print(format_summary(summary))

    log.info(
        "step 3/4: training %s on %d process(es), evaluating on the last day", recipe.model.type, args.nproc
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
    log.info("step 4/4: exporting to the registry %s and scoring a sample request", out / "registry")
    from recsys_mtl.export import export_run
    from recsys_mtl.scorer import load_model

    exported = export_run(run_dir, out / "registry", recipe.name, promote=True)
    model = load_model(out / "registry", recipe.name)
    print(_score_sample(model, data, info_days=json.loads((run_dir / "run.json").read_text())))
    print(f"exported version {exported.version} to {out / 'registry' / recipe.name}")
    print(
        f"\ntrained {recipe.model.type} on {info['world_size']} process(es): {info['steps']} steps, "
        f"{info['samples_per_s']:,.0f} samples/s; the metrics above are on the held-out day "
        f"{', '.join(info['data']['eval_days'])} (also in {run_dir / 'metrics.json'})"
    )
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; data in {data}, run in {run_dir}")
    return 0


def _score_sample(model: LoadedModel, data: Path, info_days: dict[str, Any], n: int = 8) -> str:
    """Score the first `n` impressions of the held-out day as one request; a compact table of every
    per-candidate score (binary probabilities and each hazard grid's risk = 1 - S(horizon))."""
    import pyarrow.parquet as pq

    day = info_days["data"]["eval_days"][-1]
    table = pq.read_table(next((data / f"dt={day}").glob("*.parquet"))).slice(0, n)
    scores = model.score(table)
    cols = [k for k, v in scores.items() if v.ndim == 1]
    lines = [
        f"sample request: {n} candidates from day {day}",
        " ".join(["creative".rjust(9), *(c.rjust(17) for c in cols)]),
    ]
    creatives = table.column("creative_id").to_pylist()
    for i in range(n):
        lines.append(" ".join([str(creatives[i]).rjust(9), *(f"{scores[c][i]:17.4f}" for c in cols)]))
    return "\n".join(lines)
