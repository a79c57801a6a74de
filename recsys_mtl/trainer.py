"""Training a run: Parquet days -> a sharded multi-task model -> a run directory.

One program for every world size (see `recsys_mtl.distributed`): each rank reads its own row
groups, the model runs under TorchRec's DistributedModelParallel with the sparse optimizer fused
into the embedding backward, and the dense parameters use a standard optimizer from the recipe.

Held-out data: the last `eval_days` day partitions of the range are never trained on; the run is
evaluated on them at the end (quality is measured on held-out data, never on training days). A time split, not
a random one, because that is how the model will be used: trained on the past, scoring tomorrow.

Early stopping (opt-in, recipe `training.early_stopping_patience`): the held-out days then double as
the validation set. After every epoch the model is scored on them (`validation_score`: the mean AUC
of binary tasks and C-index of hazard tasks); an improvement snapshots the weights
(RUN/checkpoints/best, model weights only); training stops once `patience` epochs in a row brought
no improvement, or at `epochs`; the best snapshot is then loaded back, so the final checkpoint,
metrics.json and anything exported from the run hold the best epoch's weights (the dense and fused
optimizer states in that checkpoint stay the last epoch's). Validation time is kept out of the
reported training time and samples/s. A `--resume`d run restarts the patience count.

Held-out items (cold start, recipe `data.holdout_items` > 0): the training reader and the
early-stopping validation reader drop the rows of the items `recsys_mtl.cold_start` holds out, and
the dense standardisation statistics are fitted without them, so no held-out item's row reaches
the model before evaluation. The reader counts the rows it keeps (`ParquetReader.num_rows`), so
the steps per epoch are batches every rank really has. The final evaluation keeps every row and
reports new items (held out, or absent from the training days) apart from known ones
(metrics.json's "cold_start").

Where it lives: this module sets a run up (`_set_up`: threads, seed, run directory or resume, reader,
sharded model, optimizers; `_training_loop`: a resumed run's position or a warm start) and finishes
it (`_finish`: final checkpoint, run.json, evaluation); `recsys_mtl.training_loop` holds the loop
itself, its periodic checkpoints and early stopping.

Throughput: run.json's `samples_per_s` is wall-clock over the training loop (reading, transform,
steps); `samples_per_cpu_s` divides by the process CPU time of the same loop instead (summed over
ranks), which on a machine shared with other work estimates what the loop does on cores of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recsys_mtl.checkpoint import (
    RegistryWeights,
    checkpoints_dir,
    latest_checkpoint,
    load_full_weights,
    load_model_weights,
    load_training_checkpoint,
    registry_weights,
)
from recsys_mtl.cold_start import ColdStartSplit, held_out, require_item_column, training_items
from recsys_mtl.distributed import (
    DistContext,
    dense_optimizer,
    init_distributed,
    plan_summary,
    replicated_table_optimizer,
    shard_model,
    shutdown,
)
from recsys_mtl.label_counts import check_labels, count_labels, describe_counts, resolve_grids, resolved_grids
from recsys_mtl.models import build_model
from recsys_mtl.partitions import DataError, inspect_partitions, list_partitions
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.run import METRICS_FILE, RUN_FILE, count_parameters, read_run_info, write_json_atomic
from recsys_mtl.thread_governor import ThreadGovernor
from recsys_mtl.threads import apply_thread_policy
from recsys_mtl.training_loop import EarlyStopping, TrainingLoop
from recsys_mtl.training_loop import validation_score as validation_score  # re-exported: public API
from recsys_mtl.transform import FeatureTransform

log = logging.getLogger(__name__)

DENSE_STATS_ROWS = 100_000  # rows sampled to fit dense standardisation statistics


@dataclass
class TrainConfig:
    data_dir: Path
    out: Path
    start: str | None = None
    end: str | None = None
    eval_days: int = 1
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    max_steps: int | None = None  # stop early (smoke tests, benchmarks)
    threads: int | None = None  # torch intra-op threads per rank; None: cores / ranks
    # False: a fixed thread count; None: the recipe's training.adapt_threads (thread_governor.py)
    adapt_threads: bool | None = None
    device: str = "cpu"
    overwrite: bool = False
    resume: bool = False  # continue the run in `out` from its latest checkpoint
    warm_start: Path | None = None  # a run directory or checkpoint to take initial weights from
    checkpoint_every: int | None = None  # None: the recipe's
    progress: bool = True
    evaluate: bool = True
    log_every: int = 20
    log_seconds: float = 10.0  # a loss / throughput line in the log this often, bar or no bar
    # True: a task that keeps no training label only warns (the recipe's
    # training.allow_untrained_tasks, set from the command line); False: the recipe decides
    allow_untrained_tasks: bool = False


@dataclass
class DaySplit:
    train: list[dt.date]
    eval: list[dt.date] = field(default_factory=list)


def split_days(recipe: Recipe, cfg: TrainConfig) -> DaySplit:
    days = sorted(list_partitions(cfg.data_dir, cfg.start, cfg.end, recipe.data.partition))
    if cfg.eval_days < 0:
        raise ValueError("eval_days must be >= 0")
    if len(days) <= cfg.eval_days:
        raise DataError(
            f"{len(days)} day(s) in range but {cfg.eval_days} held out for evaluation: nothing left to "
            "train on (use more days or --eval-days 0)",
            cfg.data_dir,
        )
    cut = len(days) - cfg.eval_days
    return DaySplit(train=days[:cut], eval=days[cut:])


def fit_transform(recipe: Recipe, cfg: TrainConfig, split: DaySplit) -> FeatureTransform:
    """The recipe's transform with dense statistics fitted on the first training rows.

    Every rank reads the same sample, so all ranks standardise identically without a collective.
    """
    transform = FeatureTransform.from_recipe(recipe)
    if not transform.dense_features:
        return transform
    files = inspect_partitions(recipe, cfg.data_dir, split.train[0], split.train[-1])
    dense = list(dict.fromkeys(f.source for f in transform.dense_features))
    holdout, item = recipe.data.holdout_items, recipe.data.item_column
    require_item_column(files, item, holdout)
    tables: list[pa.Table] = []
    rows = 0
    for info in files:
        pf = pq.ParquetFile(info.path)
        for rg in range(info.num_row_groups):
            if holdout > 0:  # held-out items' rows are never trained on, statistics included
                t = pf.read_row_group(rg, columns=list(dict.fromkeys([*dense, item])))
                t = t.filter(pa.array(~held_out(t.column(item), holdout))).select(dense)
            else:
                t = pf.read_row_group(rg, columns=dense)
            tables.append(t)
            rows += tables[-1].num_rows
            if rows >= DENSE_STATS_ROWS:
                break
        if rows >= DENSE_STATS_ROWS:
            break
    if rows == 0:  # only possible when every row's item is held out
        raise DataError(
            f"data.holdout_items = {holdout:g} leaves no training rows: every row of the training days "
            "belongs to a held-out item (lower data.holdout_items, or use data with more items)",
            cfg.data_dir,
            item,
        )
    stats = transform.fit_dense_stats(pa.concat_tables(tables).slice(0, DENSE_STATS_ROWS))
    return transform.with_dense_stats(stats)


def _prepare_out(cfg: TrainConfig, ctx: DistContext) -> None:
    if ctx.is_main:
        if cfg.out.exists() and any(cfg.out.iterdir()):
            if not cfg.overwrite:
                raise FileExistsError(f"{cfg.out} is not empty; pass --overwrite to replace it")
            shutil.rmtree(cfg.out)
        cfg.out.mkdir(parents=True, exist_ok=True)
    dist.barrier()


def _steps_per_epoch(reader: ParquetReader) -> int:
    """Full batches every rank can take: collectives need all ranks to step together. The reader's
    `num_rows` counts the rows it yields (held-out items' rows left out), so each rank has them."""
    local = torch.tensor([reader.num_rows // reader.batch_size], dtype=torch.int64)
    dist.all_reduce(local, op=dist.ReduceOp.MIN)
    return int(local.item())


def train(recipe: Recipe, cfg: TrainConfig) -> dict[str, Any]:
    """Train, checkpoint, and (on rank 0) evaluate on the held-out days. Returns run.json's dict."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(recipe, cfg, ctx)
    finally:
        shutdown(ctx)


def _start_or_resume(
    recipe: Recipe, cfg: TrainConfig, ctx: DistContext
) -> tuple[Recipe, FeatureTransform, DaySplit]:
    """A new run writes run.json (status "running") first; a resumed run takes recipe, transform
    statistics and day split from it, so it continues exactly the training it interrupted."""
    if cfg.resume:
        info = read_run_info(cfg.out)
        run_recipe = recipe_from_dict(info["recipe"], str(cfg.out / RUN_FILE))
        if run_recipe != recipe and ctx.is_main:
            log.warning("--resume: using the run's own recipe, not the one given on the command line")
        split = DaySplit(
            train=[dt.date.fromisoformat(d) for d in info["data"]["train_days"]],
            eval=[dt.date.fromisoformat(d) for d in info["data"]["eval_days"]],
        )
        return run_recipe, FeatureTransform.from_spec(info["transform"]), split
    _prepare_out(cfg, ctx)
    split = split_days(recipe, cfg)
    # grid_quantiles -> a concrete grid from the training days, before anything builds a model; the
    # run's recipe (run.json) keeps the grid, so export, serving and evaluation read it as given
    train_files = inspect_partitions(recipe, cfg.data_dir, split.train[0], split.train[-1])
    resolved = resolve_grids(recipe, train_files, split.train[-1])
    if ctx.is_main:
        for name, grid in resolved_grids(recipe, resolved).items():
            log.info("task %s: grid from the training event-time quantiles: %s", name, grid)
    recipe = resolved
    transform = fit_transform(recipe, cfg, split)
    if ctx.is_main:
        write_json_atomic(
            cfg.out / RUN_FILE, {"status": "running", **_run_header(recipe, transform, cfg, split)}
        )
    dist.barrier()
    return recipe, transform, split


def _run_header(
    recipe: Recipe, transform: FeatureTransform, cfg: TrainConfig, split: DaySplit
) -> dict[str, Any]:
    return {
        "recipe": recipe.to_dict(),
        "transform": transform.spec(),
        "data": {
            "dir": str(cfg.data_dir),
            "train_days": [d.isoformat() for d in split.train],
            "eval_days": [d.isoformat() for d in split.eval],
        },
    }


def _warm_start_checkpoint(source: Path) -> Path | RegistryWeights:
    """What to warm-start from: a run directory (its latest checkpoint), a checkpoint directory,
    a registry version directory (its weights.pt, as the nightly job passes) or a registry model
    directory (its current version). Registry sources go through `registry_weights`: pointers
    are checked as names and weights.pt against its manifest's sha256 before anything loads."""
    latest = latest_checkpoint(source)
    if latest is not None:
        return latest[0]
    if (source / ".metadata").is_file():  # a DCP checkpoint directory
        return source
    weights = registry_weights(source)
    if weights is not None:
        return weights
    raise DataError("nothing to warm-start from (no checkpoint in it)", source)


def _train(recipe: Recipe, cfg: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    """Set the run up, position the loop (resume or warm start), run it, finish the run."""
    run = _set_up(recipe, cfg, ctx)
    loop = _training_loop(run, cfg, ctx)
    _log_start(run, ctx, loop.step)
    loop.run()
    return _finish(run, loop, cfg, ctx)


@dataclass
class _Run:
    """What a run trains with once it is set up (`_set_up`)."""

    recipe: Recipe
    transform: FeatureTransform
    split: DaySplit
    threads: int
    batch_size: int
    epochs: int
    reader: ParquetReader
    steps_per_epoch: int
    total_steps: int
    early: EarlyStopping | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    table_optimizer: torch.optim.Optimizer | None
    plan: dict[str, Any]


def _set_up(recipe: Recipe, cfg: TrainConfig, ctx: DistContext) -> _Run:
    """Threads and seed, the run directory (new or resumed), the reader and step count, early
    stopping, the sharded model and its optimizers."""
    # the CPUs this process may use (affinity, cgroup quota), split over this host's ranks
    policy = apply_thread_policy(cfg.threads, ranks=_local_world(ctx))
    if ctx.rank == 0:
        log.info(policy)
    threads = torch.get_num_threads()
    torch.manual_seed(recipe.training.seed + ctx.rank)
    recipe, transform, split = _start_or_resume(recipe, cfg, ctx)
    bs = cfg.batch_size or recipe.training.batch_size
    epochs = cfg.epochs or recipe.training.epochs
    reader = ParquetReader(
        recipe,
        cfg.data_dir,
        start=split.train[0],
        end=split.train[-1],
        transform=transform,
        batch_size=bs,
        rank=ctx.rank,
        world_size=ctx.world_size,
        drop_last=True,
        # hazard labels as they were known at the end of the last training day: no look-ahead
        label_cutoff=split.train[-1],
        # the cold-start measurement's items: never trained on (their rows counted out of num_rows)
        holdout_items=recipe.data.holdout_items,
    )
    # Fail before the first step when a task would keep no label (its loss would be 0 at every
    # step); every rank counts the same files, so every rank raises alike (no collective needed).
    counts = count_labels(recipe, reader.files, split.train[-1])
    if ctx.is_main:
        log.info("training labels (hazard labels as known at the end of %s):", split.train[-1])
        for line in describe_counts(counts):
            log.info("%s", line)
    if cfg.allow_untrained_tasks and not recipe.training.allow_untrained_tasks:
        training = recipe.training.model_copy(update={"allow_untrained_tasks": True})
        recipe = recipe.model_copy(update={"training": training})
    for problem in check_labels(recipe, counts, split.train):  # raises unless allow_untrained_tasks
        if ctx.is_main:
            log.warning("%s Training anyway (training.allow_untrained_tasks).", problem)
    steps_per_epoch = _steps_per_epoch(reader)
    if steps_per_epoch == 0:
        held = f" once data.holdout_items = {recipe.data.holdout_items:g} drops its items' rows"
        raise DataError(
            f"fewer than one batch of {bs} rows per rank in the training days"
            + (held if recipe.data.holdout_items > 0 else ""),
            cfg.data_dir,
        )
    total_steps = steps_per_epoch * epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    early = None
    if patience := recipe.training.early_stopping_patience:
        best_dir = checkpoints_dir(cfg.out) / "best"
        early = EarlyStopping(recipe, cfg.data_dir, transform, split.eval, best_dir, patience)

    model = shard_model(build_model(recipe, embedding_device=torch.device("meta")), recipe, ctx)
    # Everything outside the embedding collections. By name, so the set is the same whatever the
    # plan (a checkpoint's dense optimizer state then fits any world size).
    dense_params = [p for n, p in model.named_parameters() if "sparse_arch." not in n]
    optimizer = dense_optimizer(recipe.training.dense_optimizer, dense_params)
    # Sharded tables are updated by the fused optimizer in backward; data-parallel ones are plain
    # replicated parameters and get the recipe's sparse optimizer here (or they never train).
    table_optimizer = replicated_table_optimizer(recipe, model)
    return _Run(
        recipe=recipe,
        transform=transform,
        split=split,
        threads=threads,
        batch_size=bs,
        epochs=epochs,
        reader=reader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        early=early,
        model=model,
        optimizer=optimizer,
        table_optimizer=table_optimizer,
        plan=plan_summary(model),
    )


def _training_loop(run: _Run, cfg: TrainConfig, ctx: DistContext) -> TrainingLoop:
    """The loop, positioned where a resumed run's latest checkpoint left off (its weights and
    optimizer states loaded), or at step 0 with the weights of a warm start, if any."""
    step, curve, elapsed = 0, [], 0.0
    bs = run.batch_size
    latest = latest_checkpoint(cfg.out) if cfg.resume else None
    if latest is not None:
        ck, progress = latest
        load_training_checkpoint(ck, run.model, run.optimizer, ctx.rank, run.table_optimizer)
        curve, elapsed = list(progress["loss_curve"]), float(progress["seconds"])
        # Position in samples, so a run saved with N ranks resumes with any other number.
        step = int(progress["samples"]) // (bs * ctx.world_size)
        if ctx.is_main:
            same = progress["world_size"] == ctx.world_size and progress["batch_size_per_rank"] == bs
            log.info(
                "resuming from %s at step %d%s",
                ck.name,
                step,
                "" if same else " (different world size or batch: position mapped by samples seen)",
            )
    elif cfg.resume and ctx.is_main:
        log.info("--resume: no checkpoint yet in %s; starting from step 0", cfg.out)
    if cfg.warm_start and latest is None:
        _warm_start(run.model, Path(cfg.warm_start), ctx)
    return TrainingLoop(
        governor=_thread_governor(run, cfg, ctx),
        recipe=run.recipe,
        ctx=ctx,
        reader=run.reader,
        model=run.model,
        optimizer=run.optimizer,
        table_optimizer=run.table_optimizer,
        early=run.early,
        out=cfg.out,
        batch_size=bs,
        steps_per_epoch=run.steps_per_epoch,
        total_steps=run.total_steps,
        checkpoint_every=cfg.checkpoint_every or run.recipe.training.checkpoint_every,
        log_every=cfg.log_every,
        log_seconds=cfg.log_seconds,
        progress_bar=cfg.progress,
        step=step,
        curve=curve,
        elapsed=elapsed,
    )


def _thread_governor(run: _Run, cfg: TrainConfig, ctx: DistContext) -> ThreadGovernor | None:
    """The governor of a single-process CPU run that may adapt its threads (recipe or command
    line); None keeps the count set at start. Ranks of one job keep theirs: a rank's step time
    includes waiting for the others, so it cannot tell its own threads' speed."""
    wanted = cfg.adapt_threads if cfg.adapt_threads is not None else run.recipe.training.adapt_threads
    if not wanted or ctx.world_size > 1 or cfg.device != "cpu" or run.threads < 2:
        return None
    log.info("threads: adaptive, at most %d (fewer while other processes compete for the CPUs)", run.threads)
    return ThreadGovernor(run.threads)


def _warm_start(model: torch.nn.Module, source: Path, ctx: DistContext) -> None:
    """Load a warm start's model weights (see `_warm_start_checkpoint` for the sources)."""
    src = _warm_start_checkpoint(source)
    if isinstance(src, RegistryWeights):  # a registry version's unsharded, verified weights
        with src.open() as weights:  # mapped from the file: no second copy of the tables in memory
            load_full_weights(model, weights)
    else:
        load_model_weights(model, src)
    if ctx.is_main:
        where = src.describe() if isinstance(src, RegistryWeights) else src
        log.info("warm start: model weights from %s", where)


def _log_start(run: _Run, ctx: DistContext, step: int) -> None:
    if not ctx.is_main:
        return
    log.info(
        "training %s (%s) on %d rank(s), %d thread(s) each: days %s..%s, steps %d..%d of %d rows/rank; "
        "held out %s",
        run.recipe.name,
        run.recipe.model.type,
        ctx.world_size,
        run.threads,
        run.split.train[0],
        run.split.train[-1],
        step,
        run.total_steps,
        run.batch_size,
        [d.isoformat() for d in run.split.eval] or "nothing",
    )
    for table, p in run.plan.items():
        log.info("  table %-14s %-13s ranks %s", table, p["sharding_type"], p["ranks"])


def _finish(run: _Run, loop: TrainingLoop, cfg: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    """The final checkpoint, run.json (status "finished") and, on rank 0, the held-out evaluation
    (RUN/metrics.json). Returns run.json's dict, with the metrics when evaluated."""
    seconds, cpu_seconds = loop.train_seconds(), loop.train_cpu_seconds()
    cpu_all = torch.tensor([cpu_seconds], dtype=torch.float64)
    dist.all_reduce(cpu_all)  # every rank's CPU time: the samples count is every rank's too
    cpu_seconds = float(cpu_all.item())
    samples = loop.samples
    loop.save_checkpoint()
    info = _finished_info(run, loop, cfg, ctx, seconds, cpu_seconds)
    if ctx.is_main:
        info["parameters"] = count_parameters(build_model(run.recipe))
        write_json_atomic(cfg.out / RUN_FILE, info)
        log.info(
            "trained to step %d: %s samples in %.1fs (%s samples/s); checkpoint in %s",
            loop.step,
            f"{samples:,}",
            seconds,
            f"{samples / max(seconds, 1e-9):,.0f}",
            cfg.out,
        )
    dist.barrier()
    if cfg.evaluate and run.split.eval and ctx.is_main:
        info["metrics"] = evaluate_run(cfg.out, run.split)
    elif ctx.is_main and not run.split.eval:
        log.info("calibration: no map (no held-out days to fit it on); an export is marked uncalibrated")
    dist.barrier()
    return info


def _finished_info(
    run: _Run, loop: TrainingLoop, cfg: TrainConfig, ctx: DistContext, seconds: float, cpu_seconds: float
) -> dict[str, Any]:
    """run.json of a finished run ("parameters" is filled in by rank 0)."""
    bs, step, samples = run.batch_size, loop.step, loop.samples
    return {
        "status": "finished",
        **_run_header(run.recipe, run.transform, cfg, run.split),
        "world_size": ctx.world_size,
        "threads_per_rank": run.threads,
        "thread_governor": loop.governor.summary() if loop.governor else None,
        "batch_size_per_rank": bs,
        "steps": step,
        "epochs": run.epochs,
        "samples": step * bs * ctx.world_size,
        "seconds": loop.elapsed + seconds,
        # throughput of this invocation only (a resumed run does not count the earlier one)
        "samples_per_s": samples / seconds if seconds > 0 and samples else None,
        "cpu_seconds": cpu_seconds,
        "samples_per_cpu_s": samples / cpu_seconds if cpu_seconds > 0 and samples else None,
        "parameters": None,
        "loss_curve": loop.curve,
        "sharding_plan": run.plan,
        "warm_start": str(cfg.warm_start) if cfg.warm_start else None,
        "early_stopping": run.early.summary(loop.stopped) if run.early else None,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def evaluate_run(run_dir: Path, split: DaySplit) -> dict[str, Any]:
    """Evaluate a finished run on its held-out days and write RUN/metrics.json; fit the
    calibration map on the same rows (recipe `calibration`) and write RUN/calibration.json, with
    the binary tasks' after-calibration metrics out-of-fold (`recsys_mtl.calibration`). Every row
    of those days counts; new items' rows (held out by `data.holdout_items`, or absent from the
    training days) are also reported apart from known ones ("cold_start")."""
    from recsys_mtl.calibration import CALIBRATION_FILE, fit_and_report
    from recsys_mtl.evaluation import compute_metrics, evaluation_reader, expert_usage, predict
    from recsys_mtl.run import load_run

    run = load_run(run_dir)
    days = [d.isoformat() for d in split.eval]
    log.info("evaluating on held-out days %s", days)
    reader = evaluation_reader(
        run.recipe, run.info["data"]["dir"], transform=run.transform, start=split.eval[0], end=split.eval[-1]
    )
    preds = predict(run.model, reader)
    experts = expert_usage(run.model, reader, 20)
    held = fit_and_report(run.recipe, preds, days)
    cal = held.calibration
    (run_dir / CALIBRATION_FILE).unlink(missing_ok=True)  # a resumed run's older map is stale
    if cal is None:
        none = run.recipe.calibration.method == "none"
        why = "recipe calibration.method is none" if none else "no binary task"
        log.info("calibration: none (%s)", why)
    else:
        cal.save(run_dir / CALIBRATION_FILE)
        log.info("calibration: %s maps for %s fitted on %s", cal.method, sorted(cal.maps), days)
    metrics = compute_metrics(
        run.recipe,
        preds,
        experts,
        calibrated=held.out_of_fold,
        calibrated_ranking=held.applied,
        calibration_info=held.metrics_info(),
        cold_start=_cold_start_split(run.recipe, run.info["data"]["dir"], split, preds.items),
    )
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return metrics


def _cold_start_split(
    recipe: Recipe, data_dir: str | Path, split: DaySplit, items: Any
) -> ColdStartSplit | None:
    """Which held-out rows are new items: held out by the hash, or absent from the training days."""
    if items is None:  # the data has no item column
        return None
    known = training_items(recipe, data_dir, split.train)
    cs = ColdStartSplit.of(items, recipe.data.holdout_items, known)
    log.info("cold start: %s of %s evaluation rows are new items (known: %s)", f"{int(cs.new.sum()):,}",
             f"{len(cs.new):,}", known.describe())  # fmt: skip
    return cs


def _local_world(ctx: DistContext) -> int:
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
