"""The training loop: Parquet days -> a sharded multi-task model -> a run directory.

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

Throughput: run.json's `samples_per_s` is wall-clock over the training loop (reading, transform,
steps); `samples_per_cpu_s` divides by the process CPU time of the same loop instead (summed over
ranks), which on a machine shared with other work estimates what the loop does on cores of its own.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm import tqdm

from recsys_mtl.checkpoint import (
    RegistryWeights,
    checkpoints_dir,
    latest_checkpoint,
    load_full_weights,
    load_model_weights,
    load_training_checkpoint,
    registry_weights,
    save_training_checkpoint,
)
from recsys_mtl.dataset import DataError, inspect_partitions, list_partitions
from recsys_mtl.distributed import (
    DistContext,
    dense_optimizer,
    init_distributed,
    plan_summary,
    replicated_table_optimizer,
    shard_model,
    shutdown,
)
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.run import METRICS_FILE, RUN_FILE, count_parameters, read_run_info, write_json_atomic
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
    device: str = "cpu"
    overwrite: bool = False
    resume: bool = False  # continue the run in `out` from its latest checkpoint
    warm_start: Path | None = None  # a run directory or checkpoint to take initial weights from
    checkpoint_every: int | None = None  # None: the recipe's
    progress: bool = True
    evaluate: bool = True
    log_every: int = 20


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
    tables: list[pa.Table] = []
    rows = 0
    for info in files:
        pf = pq.ParquetFile(info.path)
        for rg in range(info.num_row_groups):
            tables.append(pf.read_row_group(rg, columns=[f.source for f in transform.dense_features]))
            rows += tables[-1].num_rows
            if rows >= DENSE_STATS_ROWS:
                break
        if rows >= DENSE_STATS_ROWS:
            break
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


def validation_score(metrics: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The early-stopping score of a metrics dict (`recsys_mtl.evaluation.compute_metrics`): the mean
    over tasks of AUC (binary) or C-index (hazard), and the per-task values it averages. Tasks whose
    metric is undefined (one class only) are left out; NaN when none is defined."""
    per_task: dict[str, float] = {}
    for name, m in metrics["tasks"].items():
        v = m.get("auc", m.get("c_index"))
        if v is not None:
            per_task[name] = float(v)
    score = sum(per_task.values()) / len(per_task) if per_task else float("nan")
    return score, per_task


class _EarlyStopping:
    """Per-epoch validation on the held-out days, the best-weights snapshot and the stop rule.

    Every rank scores the whole validation set through the (sharded) model, so each forward's
    collectives line up; rank 0's score is broadcast so all ranks take the same decision.
    """

    def __init__(
        self, recipe: Recipe, cfg: TrainConfig, transform: FeatureTransform, split: DaySplit, patience: int
    ) -> None:
        from recsys_mtl.evaluation import evaluation_reader

        if not split.eval:
            raise ValueError(
                "training.early_stopping_patience needs held-out days to validate on (eval_days >= 1)"
            )
        self.recipe, self.patience = recipe, patience
        self.best_dir = checkpoints_dir(cfg.out) / "best"
        self.reader = evaluation_reader(
            recipe, cfg.data_dir, transform=transform, start=split.eval[0], end=split.eval[-1]
        )
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.seconds = 0.0  # spent validating and snapshotting: not training time
        self.cpu_seconds = 0.0  # the same in process CPU time

    def after_epoch(self, model: torch.nn.Module, epoch: int, step: int, ctx: DistContext) -> bool:
        """Validate after `epoch` (1-based); snapshot the weights when it is the best so far.
        Returns True when training should stop."""
        from recsys_mtl.evaluation import compute_metrics, predict

        t0, c0 = time.perf_counter(), time.process_time()
        score, per_task = validation_score(compute_metrics(self.recipe, predict(model, self.reader)))
        shared = torch.tensor([score], dtype=torch.float64)
        dist.broadcast(shared, src=0)
        score = float(shared.item())
        improved = math.isfinite(score) and score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, epoch
            self._snapshot(model, ctx)
        self.history.append({"epoch": epoch, "step": step, "score": score, "tasks": per_task})
        stop = epoch - self.best_epoch >= self.patience
        if ctx.is_main:
            log.info(
                "epoch %d: validation score %.5f %s (best %.5f at epoch %d)%s",
                epoch,
                score,
                {k: round(v, 5) for k, v in per_task.items()},
                self.best_score,
                self.best_epoch,
                f"; no improvement for {self.patience} epoch(s): stopping" if stop else "",
            )
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        return stop

    def _snapshot(self, model: torch.nn.Module, ctx: DistContext) -> None:
        import torch.distributed.checkpoint as dcp

        if ctx.is_main and self.best_dir.exists():
            shutil.rmtree(self.best_dir)
        dist.barrier()
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(self.best_dir))
        dist.barrier()

    def restore_best(self, model: torch.nn.Module, last_epoch: int, ctx: DistContext) -> None:
        """Load the best epoch's weights back (unless the last epoch was the best), then drop the
        snapshot: the run's final checkpoint holds them from here on."""
        t0, c0 = time.perf_counter(), time.process_time()
        if self.best_epoch and self.best_epoch != last_epoch:
            load_model_weights(model, self.best_dir)
            if ctx.is_main:
                log.info("early stopping: restored the weights of epoch %d", self.best_epoch)
        dist.barrier()
        if ctx.is_main:
            shutil.rmtree(self.best_dir, ignore_errors=True)
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0

    def summary(self, stopped: bool) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "metric": "mean over tasks of AUC (binary) / C-index (hazard) on the held-out days",
            "best_epoch": self.best_epoch or None,
            "best_score": self.best_score if self.best_epoch else None,
            "stopped_early": stopped,
            "validation_seconds": self.seconds,
            "history": self.history,
        }


def _steps_per_epoch(reader: ParquetReader) -> int:
    """Full batches every rank can take: collectives need all ranks to step together."""
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
    threads = cfg.threads or max(1, (torch.get_num_threads() or 1) // max(1, _local_world(ctx)))
    torch.set_num_threads(threads)
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
    )
    steps_per_epoch = _steps_per_epoch(reader)
    if steps_per_epoch == 0:
        raise DataError(f"fewer than one batch of {bs} rows per rank in the training days", cfg.data_dir)
    total_steps = steps_per_epoch * epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    patience = recipe.training.early_stopping_patience
    early = _EarlyStopping(recipe, cfg, transform, split, patience) if patience else None

    model = shard_model(build_model(recipe, embedding_device=torch.device("meta")), recipe, ctx)
    # Everything outside the embedding collections. By name, so the set is the same whatever the
    # plan (a checkpoint's dense optimizer state then fits any world size).
    dense_params = [p for n, p in model.named_parameters() if "sparse_arch." not in n]
    optimizer = dense_optimizer(recipe.training.dense_optimizer, dense_params)
    # Sharded tables are updated by the fused optimizer in backward; data-parallel ones are plain
    # replicated parameters and get the recipe's sparse optimizer here (or they never train).
    table_optimizer = replicated_table_optimizer(recipe, model)
    optimizers = [optimizer] + ([table_optimizer] if table_optimizer is not None else [])
    plan = plan_summary(model)

    step, curve, elapsed = 0, [], 0.0
    latest = latest_checkpoint(cfg.out) if cfg.resume else None
    if latest is not None:
        ck, progress = latest
        load_training_checkpoint(ck, model, optimizer, ctx.rank, table_optimizer)
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
        src = _warm_start_checkpoint(Path(cfg.warm_start))
        if isinstance(src, RegistryWeights):  # a registry version's unsharded, verified weights
            load_full_weights(model, torch.load(io.BytesIO(src.data), weights_only=True))
        else:
            load_model_weights(model, src)
        if ctx.is_main:
            where = src.describe() if isinstance(src, RegistryWeights) else src
            log.info("warm start: model weights from %s", where)

    if ctx.is_main:
        log.info(
            "training %s (%s) on %d rank(s), %d thread(s) each: days %s..%s, steps %d..%d of %d rows/rank; "
            "held out %s",
            recipe.name,
            recipe.model.type,
            ctx.world_size,
            threads,
            split.train[0],
            split.train[-1],
            step,
            total_steps,
            bs,
            [d.isoformat() for d in split.eval] or "nothing",
        )
        for table, p in plan.items():
            log.info("  table %-14s %-13s ranks %s", table, p["sharding_type"], p["ranks"])

    every = cfg.checkpoint_every or recipe.training.checkpoint_every

    def train_seconds() -> float:
        """Time in this invocation's loop, less validation (early stopping)."""
        return time.perf_counter() - t0 - (early.seconds if early else 0.0)

    def train_cpu_seconds() -> float:
        """The same in process CPU time (all threads). On a shared machine wall time also counts
        waiting for a core; samples per CPU-second estimates the rate on dedicated cores."""
        return time.process_time() - c0 - (early.cpu_seconds if early else 0.0)

    def progress_now() -> dict[str, Any]:
        return {
            "step": step,
            "samples": step * bs * ctx.world_size,
            "world_size": ctx.world_size,
            "batch_size_per_rank": bs,
            "seconds": elapsed + train_seconds(),
            "loss_curve": curve,
        }

    model.train()
    window: dict[str, float] = {}
    window_steps = 0
    first_step = step
    stopped = False
    postfix: dict[str, str] = {}
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not (cfg.progress and ctx.is_main),
        mininterval=0.5 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s
    )
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            reader.set_epoch(epoch)
            for i, batch in enumerate(reader.iter_batches(skip=skip), start=skip):
                if i >= steps_per_epoch or step >= total_steps:
                    break
                outputs = model(batch.features.sparse, batch.features.dense)
                loss, per_task = total_loss(recipe, outputs, batch.targets)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in optimizers:
                    opt.step()
                step += 1
                window["loss"] = window.get("loss", 0.0) + float(loss.detach())
                for k, v in per_task.items():
                    window[k] = window.get(k, 0.0) + float(v.detach())
                window_steps += 1
                if not math.isfinite(window["loss"]):
                    raise FloatingPointError(
                        f"loss is {window['loss']} at step {step}; lower the learning rates"
                    )
                if step % cfg.log_every == 0 or step == total_steps:
                    point = {k: v / window_steps for k, v in window.items()}
                    curve.append({"step": step, **point})
                    window, window_steps = {}, 0
                    rate = (step - first_step) * bs * ctx.world_size / train_seconds()
                    postfix.update(loss=f"{point['loss']:.4f}", samples_s=f"{rate:,.0f}")
                    bar.set_postfix(postfix, refresh=False)  # the bar redraws at its own pace
                bar.update(1)
                if step % every == 0 and step < total_steps:
                    save_training_checkpoint(
                        cfg.out, model, optimizer, progress_now(), ctx.rank, table_optimizer
                    )
                if early is not None and step % steps_per_epoch == 0:
                    if early.after_epoch(model, step // steps_per_epoch, step, ctx):
                        stopped, total_steps = True, step  # ends both loops
                    postfix["val"] = f"{early.history[-1]['score']:.4f}"
                    bar.set_postfix(postfix, refresh=False)
        if early is not None:
            early.restore_best(model, step // steps_per_epoch if step % steps_per_epoch == 0 else -1, ctx)
    finally:
        bar.close()
    seconds, cpu_seconds = train_seconds(), train_cpu_seconds()
    cpu_all = torch.tensor([cpu_seconds], dtype=torch.float64)
    dist.all_reduce(cpu_all)  # every rank's CPU time: the samples count is every rank's too
    cpu_seconds = float(cpu_all.item())
    samples = (step - first_step) * bs * ctx.world_size
    save_training_checkpoint(cfg.out, model, optimizer, progress_now(), ctx.rank, table_optimizer)
    info: dict[str, Any] = {
        "status": "finished",
        **_run_header(recipe, transform, cfg, split),
        "world_size": ctx.world_size,
        "threads_per_rank": threads,
        "batch_size_per_rank": bs,
        "steps": step,
        "epochs": epochs,
        "samples": step * bs * ctx.world_size,
        "seconds": elapsed + seconds,
        # throughput of this invocation only (a resumed run does not count the earlier one)
        "samples_per_s": samples / seconds if seconds > 0 and samples else None,
        "cpu_seconds": cpu_seconds,
        "samples_per_cpu_s": samples / cpu_seconds if cpu_seconds > 0 and samples else None,
        "parameters": None,
        "loss_curve": curve,
        "sharding_plan": plan,
        "warm_start": str(cfg.warm_start) if cfg.warm_start else None,
        "early_stopping": early.summary(stopped) if early else None,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if ctx.is_main:
        info["parameters"] = count_parameters(build_model(recipe))
        write_json_atomic(cfg.out / RUN_FILE, info)
        log.info(
            "trained to step %d: %s samples in %.1fs (%s samples/s); checkpoint in %s",
            step,
            f"{samples:,}",
            seconds,
            f"{samples / max(seconds, 1e-9):,.0f}",
            cfg.out,
        )
    dist.barrier()
    if cfg.evaluate and split.eval and ctx.is_main:
        info["metrics"] = evaluate_run(cfg.out, split)
    dist.barrier()
    return info


def evaluate_run(run_dir: Path, split: DaySplit) -> dict[str, Any]:
    """Evaluate a finished run on its held-out days and write RUN/metrics.json."""
    from recsys_mtl.evaluation import evaluate
    from recsys_mtl.run import load_run

    run = load_run(run_dir)
    log.info("evaluating on held-out days %s", [d.isoformat() for d in split.eval])
    metrics = evaluate(
        run.model, run.recipe, run.transform, run.info["data"]["dir"], start=split.eval[0], end=split.eval[-1]
    )
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return metrics


def _local_world(ctx: DistContext) -> int:
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
