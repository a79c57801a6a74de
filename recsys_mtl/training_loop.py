"""The training loop of one run: the steps over the epochs, the loss curve, the progress bar, the
periodic checkpoints and, when the recipe asks for it, per-epoch early stopping.

`recsys_mtl.trainer` sets a run up (reader, sharded model, optimizers, a resumed run's position),
hands it to `TrainingLoop`, and writes run.json from what the loop measured; the rules (held-out
days, early stopping, what the timings count) are in that module's docstring.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from recsys_mtl.checkpoint import load_model_weights, save_training_checkpoint
from recsys_mtl.distributed import DistContext
from recsys_mtl.label_counts import LabelError
from recsys_mtl.models import total_loss
from recsys_mtl.reader import ParquetReader
from recsys_mtl.recipe import Recipe
from recsys_mtl.thread_governor import ThreadGovernor
from recsys_mtl.transform import FeatureTransform

log = logging.getLogger("recsys_mtl.trainer")  # the trainer's log lines, wherever they are written


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


class EarlyStopping:
    """Per-epoch validation on the held-out days (without the held-out items' rows, recipe
    `data.holdout_items`), the best-weights snapshot and the stop rule.

    Every rank scores the whole validation set through the (sharded) model, so each forward's
    collectives line up; rank 0's score is broadcast so all ranks take the same decision.
    """

    def __init__(
        self,
        recipe: Recipe,
        data_dir: Path,
        transform: FeatureTransform,
        eval_days: list[dt.date],
        best_dir: Path,
        patience: int,
    ) -> None:
        from recsys_mtl.evaluation import evaluation_reader

        if not eval_days:
            raise ValueError(
                "training.early_stopping_patience needs held-out days to validate on (eval_days >= 1)"
            )
        self.recipe, self.patience = recipe, patience
        self.best_dir = best_dir
        # the held-out items (data.holdout_items) stay out of validation too: early stopping must
        # not pick the epoch by them (the final evaluation reports them, as new items)
        self.reader = evaluation_reader(
            recipe,
            data_dir,
            transform=transform,
            start=eval_days[0],
            end=eval_days[-1],
            holdout_items=recipe.data.holdout_items,
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


class TrainingLoop:
    """One invocation's loop over the training steps, and what it measured.

    `step`, `curve` and `elapsed` start where a resumed run's checkpoint left off (0, [] and 0.0 for
    a new run); `run()` takes `step` to `total_steps`, or to the epoch at which early stopping stops
    (`stopped`). Every rank runs it in step with the others: the collectives of a step, a
    checkpoint or a validation line up.
    """

    def __init__(
        self,
        *,
        recipe: Recipe,
        ctx: DistContext,
        reader: ParquetReader,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        table_optimizer: torch.optim.Optimizer | None,
        early: EarlyStopping | None,
        out: Path,
        batch_size: int,
        steps_per_epoch: int,
        total_steps: int,
        checkpoint_every: int,
        log_every: int,
        progress_bar: bool,
        step: int = 0,
        log_seconds: float = 10.0,
        curve: list[dict[str, float]] | None = None,
        elapsed: float = 0.0,
        governor: ThreadGovernor | None = None,
    ) -> None:
        self.recipe, self.ctx, self.reader = recipe, ctx, reader
        self.model, self.optimizer, self.table_optimizer = model, optimizer, table_optimizer
        self.optimizers = [optimizer] + ([table_optimizer] if table_optimizer is not None else [])
        self.early = early
        self.governor = governor  # times each step and sets the thread count of the next
        self.out = out
        self.bs = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.every = checkpoint_every
        self.log_every = log_every
        self.progress_bar = progress_bar
        self.log_seconds = log_seconds
        self._last_log = time.perf_counter()
        self._rate = 0.0  # samples/s at the latest loss-curve point
        self.step = step
        self.first_step = step
        self.curve: list[dict[str, float]] = curve if curve is not None else []
        self.elapsed = elapsed  # seconds of the earlier invocations of a resumed run
        self.stopped = False
        self.t0, self.c0 = time.perf_counter(), time.process_time()  # set again as the loop starts
        self._window: dict[str, float] = {}
        self._window_steps = 0
        self._postfix: dict[str, str] = {}
        # per task, the sum of |loss| since the epoch started (the zero-loss check, `_check_losses`)
        self._epoch_abs_loss: dict[str, float] = {}
        self._epoch_steps = 0
        self._losses_checked = False

    # -- what the loop measured --------------------------------------------------------------

    def train_seconds(self) -> float:
        """Time in this invocation's loop, less validation (early stopping)."""
        return time.perf_counter() - self.t0 - (self.early.seconds if self.early else 0.0)

    def train_cpu_seconds(self) -> float:
        """The same in process CPU time (all threads). On a shared machine wall time also counts
        waiting for a core; samples per CPU-second estimates the rate on dedicated cores."""
        return time.process_time() - self.c0 - (self.early.cpu_seconds if self.early else 0.0)

    @property
    def samples(self) -> int:
        """Samples trained on in this invocation, over all ranks."""
        return (self.step - self.first_step) * self.bs * self.ctx.world_size

    def progress(self) -> dict[str, Any]:
        """The position a checkpoint records (and a resumed run starts from)."""
        return {
            "step": self.step,
            "samples": self.step * self.bs * self.ctx.world_size,
            "world_size": self.ctx.world_size,
            "batch_size_per_rank": self.bs,
            "seconds": self.elapsed + self.train_seconds(),
            "loss_curve": self.curve,
        }

    def save_checkpoint(self) -> None:
        save_training_checkpoint(
            self.out, self.model, self.optimizer, self.progress(), self.ctx.rank, self.table_optimizer
        )

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Train to `total_steps` (or until early stopping stops), then restore the best epoch's
        weights when early stopping is on."""
        self.model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (self.progress_bar and self.ctx.is_main),
            mininterval=0.5 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s
        )
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        try:
            while self.step < self.total_steps:
                epoch, skip = divmod(self.step, self.steps_per_epoch)
                self.reader.set_epoch(epoch)
                started = time.perf_counter()  # a step's time: reading its batch + the step
                for i, batch in enumerate(self.reader.iter_batches(skip=skip), start=skip):
                    if i >= self.steps_per_epoch or self.step >= self.total_steps:
                        break
                    self._train_step(batch)
                    if self.governor is not None:
                        self.governor.after_step(time.perf_counter() - started)
                    self._record_loss(bar)
                    self._log_progress()
                    bar.update(1)
                    self._after_step(bar)  # checkpoints and validation: not a step's time
                    started = time.perf_counter()
            if self._epoch_steps and not self._losses_checked:
                self._check_losses()  # a run shorter than an epoch (--max-steps): judge what it ran
            if self.early is not None:
                epoch, rest = divmod(self.step, self.steps_per_epoch)
                self.early.restore_best(self.model, epoch if rest == 0 else -1, self.ctx)
        finally:
            bar.close()

    def _check_losses(self) -> None:
        """Raise `LabelError` when a task's loss was exactly 0 at every step since the epoch began,
        on every rank: no row weighed in its loss, so its head learned nothing (`recsys_mtl.
        label_counts.check_labels` catches most such tasks before the first step; this catches the
        rest, e.g. labels present but never inside the task's sample space in the rows read).
        All ranks reach it at the same step and decide on the summed losses, so all raise alike."""
        names = sorted(self._epoch_abs_loss)
        if not names:
            return
        sums = torch.tensor([self._epoch_abs_loss[n] for n in names], dtype=torch.float64)
        dist.all_reduce(sums)
        steps, epoch = self._epoch_steps, -(-self.step // self.steps_per_epoch)
        self._epoch_abs_loss, self._epoch_steps, self._losses_checked = {}, 0, True
        dead = [n for n, v in zip(names, sums.tolist(), strict=True) if v == 0.0]
        if not dead:
            return
        message = (
            f"task(s) {dead}: the loss was exactly 0 at every one of the {steps} step(s) of epoch "
            f"{epoch}, on every rank: no training row had a label that weighs in the loss, so the "
            "head learned nothing. Fix: check the task's labels against the data (`recsys-mtl "
            "summary` counts the hazard labels left after the label cutoff), its `label_cutoff` "
            "(`none` when each row's follow-up is known), `train_on` and `weight_column`."
        )
        if not self.recipe.training.allow_untrained_tasks:
            raise LabelError(message)
        if self.ctx.is_main:
            log.warning("%s Training anyway (training.allow_untrained_tasks).", message)

    def _train_step(self, batch: Any) -> None:
        """One optimizer step on one batch; its losses go into the current logging window."""
        outputs = self.model(batch.features.sparse, batch.features.dense)
        loss, per_task = total_loss(self.recipe, outputs, batch.targets)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.step += 1
        window = self._window
        window["loss"] = window.get("loss", 0.0) + float(loss.detach())
        for k, v in per_task.items():
            value = float(v.detach())
            window[k] = window.get(k, 0.0) + value
            self._epoch_abs_loss[k] = self._epoch_abs_loss.get(k, 0.0) + abs(value)
        self._window_steps += 1
        self._epoch_steps += 1
        if not math.isfinite(window["loss"]):
            raise FloatingPointError(
                f"loss is {window['loss']} at step {self.step}; lower the learning rates"
            )

    def _record_loss(self, bar: tqdm) -> None:
        """Every `log_every` steps (and at the last): the window's mean losses join the loss curve."""
        if self.step % self.log_every == 0 or self.step == self.total_steps:
            point = {k: v / self._window_steps for k, v in self._window.items()}
            self.curve.append({"step": self.step, **point})
            self._window, self._window_steps = {}, 0
            self._rate = (self.step - self.first_step) * self.bs * self.ctx.world_size / self.train_seconds()
            self._postfix.update(loss=f"{point['loss']:.4f}", samples_s=f"{self._rate:,.0f}")
            bar.set_postfix(self._postfix, refresh=False)  # the bar redraws at its own pace

    def _log_progress(self) -> None:
        """Every `log_seconds` (and at the last step) a log line with the latest loss-curve point
        and throughput, whether or not a progress bar is drawn: a log file or `--no-progress`
        still shows them."""
        now = time.perf_counter()
        last = self.step == self.total_steps
        if not self.ctx.is_main or not self.curve or (now - self._last_log < self.log_seconds and not last):
            return
        self._last_log = now
        log.info(
            "step %d/%d (%.0f%%): loss %.4f, %s samples/s",
            self.step, self.total_steps, 100.0 * self.step / max(self.total_steps, 1),
            self.curve[-1]["loss"], f"{self._rate:,.0f}",
        )  # fmt: skip

    def _after_step(self, bar: tqdm) -> None:
        """A periodic checkpoint, and at the end of each epoch the early-stopping validation."""
        if self.step % self.steps_per_epoch == 0:
            self._check_losses()
        if self.step % self.every == 0 and self.step < self.total_steps:
            self.save_checkpoint()
        if self.early is not None and self.step % self.steps_per_epoch == 0:
            if self.early.after_epoch(self.model, self.step // self.steps_per_epoch, self.step, self.ctx):
                self.stopped, self.total_steps = True, self.step  # ends both loops
            self._postfix["val"] = f"{self.early.history[-1]['score']:.4f}"
            bar.set_postfix(self._postfix, refresh=False)
