"""Train a multi-task model from a recipe on day-partitioned Parquet, into a run directory.

The last --eval-days day partitions of the range are held out and evaluated at the end
(RUN/metrics.json). Training runs under TorchRec's DistributedModelParallel at every world size:
--nproc N launches N local ranks through torch.distributed.run (torchrun), gloo on CPU, with the
embedding tables placed by TorchRec's sharding planner. Under your own launcher (e.g.
`torchrun --nnodes M --nproc-per-node N -m recsys_mtl.cli train ...`) leave --nproc out.

examples:
  recsys-mtl train --recipe configs/ads_ranker.yaml --data data --out runs/home
  recsys-mtl train --data data --out runs/home2 --nproc 2 --epochs 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recsys_mtl.cli.common import DEFAULT_RECIPE, add_recipe_argument, fail

log = logging.getLogger("recsys_mtl.train")

# `python -m recsys_mtl.cli` of this interpreter: the program of a `train_command` run as a child
PYTHON_CLI = (sys.executable, "-m", "recsys_mtl.cli")


def train_command(
    recipe: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    program: Sequence[str] = (),
    **options: str | int | Path | bool | None,
) -> list[str]:
    """`recsys-mtl train --recipe RECIPE --data DATA --out OUT` and then `options` in the order
    given: `eval_days=0` -> `--eval-days 0`, `overwrite=True` -> `--overwrite`; None and False leave
    an option out. `program` comes first (`PYTHON_CLI`, or the console script); empty, the list is
    the arguments of `recsys_mtl.cli.main`. An option `train` does not have is a ValueError.
    The nightly job, the demo and the benchmarks build their training command lines here."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    cmd = [*program, "train", "--recipe", str(recipe), "--data", str(data), "--out", str(out)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if flag not in parser._option_string_actions:
            raise ValueError(f"recsys-mtl train has no option {flag}")
        if value is None or value is False:
            continue
        cmd += [flag] if value is True else [flag, str(value)]
    return cmd


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_argument(p)
    p.add_argument("--data", required=True, type=Path, help="data directory holding dt=YYYY-MM-DD/")
    p.add_argument("--out", required=True, type=Path, help="run directory to create")
    p.add_argument("--start", help="first day of the range (YYYY-MM-DD); default: the first partition")
    p.add_argument("--end", help="last day of the range (YYYY-MM-DD); default: the last partition")
    p.add_argument(
        "--eval-days",
        type=int,
        default=1,
        help="last days of the range held out for evaluation (default 1; 0 = no evaluation)",
    )
    p.add_argument("--epochs", type=int, help="passes over the training days (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="rows per step per rank (default: the recipe's)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--nproc", type=int, default=1, help="local training processes (ranks); default 1")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per rank (default: the CPUs available / ranks); a single-process run "
        "uses fewer while other processes compete for the CPUs, unless --fixed-threads",
    )
    p.add_argument(
        "--fixed-threads",
        action="store_true",
        help="keep the thread count for the whole run (the recipe's training.adapt_threads: false)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (any number of ranks)",
    )
    p.add_argument(
        "--warm-start",
        type=Path,
        metavar="RUN_OR_CHECKPOINT",
        help="start from the weights of an earlier run (its latest checkpoint), a checkpoint "
        "directory, or a registry version directory",
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the recipe's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-untrained-tasks",
        action="store_true",
        help="train even when a task keeps no training label (e.g. a window shorter than a hazard "
        "grid's first interval): a warning instead of the error; that task's head stays untrained "
        "(the recipe's training.allow_untrained_tasks)",
    )


def _launch(args: argparse.Namespace) -> int:
    """Re-run this same command as --nproc ranks under torch.distributed's elastic launcher (what
    torchrun runs), rendezvous on a free loopback port. The launcher is called as a library so our
    arguments never pass through torchrun's own option parser (it would take `--start` for its
    `--start-method`)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from recsys_mtl.distributed import free_port

    port = free_port()
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=args.nproc,
        run_id=f"recsys-mtl-train-{port}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        max_restarts=0,
        monitor_interval=1,
    )
    log.info("launching %d ranks on 127.0.0.1:%d", args.nproc, port)
    try:
        elastic_launch(config, sys.executable)("-m", "recsys_mtl.cli", *args._argv)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        log.error("training failed on rank(s) %s", sorted(f.local_rank for f in e.failures.values()))
        return next((c for c in codes if c and c > 0), 1)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        return fail(ValueError("--nproc must be >= 1"))
    from recsys_mtl.partitions import DataError
    from recsys_mtl.recipe import RecipeError, load_recipe
    from recsys_mtl.run import RunError
    from recsys_mtl.trainer import TrainConfig, train

    if args.nproc > 1 and "RANK" not in os.environ:
        try:  # a bad recipe is reported once, here, not once per rank
            load_recipe(args.recipe or DEFAULT_RECIPE)
        except RecipeError as e:
            return fail(e)
        return _launch(args)

    cfg = TrainConfig(
        data_dir=args.data,
        out=args.out,
        start=args.start,
        end=args.end,
        eval_days=args.eval_days,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        threads=args.threads,
        adapt_threads=False if args.fixed_threads else None,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        resume=args.resume,
        warm_start=args.warm_start,
        checkpoint_every=args.checkpoint_every,
        allow_untrained_tasks=args.allow_untrained_tasks,
    )
    try:
        recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
        info = train(recipe, cfg)
    except (RecipeError, DataError, RunError, FileExistsError, ValueError) as e:
        return fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        from recsys_mtl.evaluation import format_metrics

        print(f"run: {args.out}  steps: {info['steps']}  samples/s: {info['samples_per_s']:,.0f}")
        if "metrics" in info:
            print(format_metrics(info["metrics"]))
    return 0
