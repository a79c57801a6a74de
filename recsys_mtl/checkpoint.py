"""Training checkpoints: sharded model and optimizer state with torch.distributed.checkpoint (DCP).

```
RUN/checkpoints/step-00000120/   DCP files: "model" (sharded tables + replicated dense weights)
                                 and "sparse_optim" (the fused row-wise optimizer state, sharded
                                 like the tables); dense_optim.pt (the replicated dense optimizer,
                                 rank 0); replicated_tables_optim.pt (the sparse optimizer of the
                                 data-parallel tables, by table name, rank 0); rng-rank<r>.pt (each
                                 rank's torch RNG); progress.json
RUN/checkpoints/latest.json      {"step": 120, "dir": "step-00000120"}, switched by atomic rename
                                 only after every rank finished writing
```

DCP stores each shard with its global offsets, so a checkpoint written by N ranks loads into any
other number of ranks (TorchRec reshards), or into a plain unsharded model on one CPU
(`no_dist=True`), which is what evaluation and export do. Only the last `KEEP` checkpoints stay.
Everything written here is tensors or JSON: loading never unpickles arbitrary objects
(`torch.load(..., weights_only=True)`).

Pointers are names, never paths: latest.json's `dir` must be a plain directory name
(`recsys_mtl.registry.check_name`, in `recsys_mtl.run.latest_checkpoint`, which reads it), so a
crafted {"dir": "../../x"} is refused, not followed. A warm start from a registry goes through
`Registry` (the same check on current.json's version) and reads weights.pt only after its size and
sha256 match the version's manifest (`registry_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recsys_mtl.atomic_files import write_json_atomic
from recsys_mtl.distributed import ReplicatedTableOptimizer
from recsys_mtl.model_state import predates_expert_banks, read_model_state
from recsys_mtl.models.expert_bank import upgrade_state_dict
from recsys_mtl.registry import Registry, RegistryError

# The run directory's layout, and reading its latest.json, belong to recsys_mtl.run (which loads a
# model from the latest checkpoint); re-exported here, where the trainer and tests look for them.
from recsys_mtl.run import CHECKPOINTS as CHECKPOINTS
from recsys_mtl.run import LATEST, checkpoints_dir
from recsys_mtl.run import latest_checkpoint as latest_checkpoint

log = logging.getLogger(__name__)

KEEP = 2
TABLE_OPTIM = "replicated_tables_optim.pt"


def save_training_checkpoint(
    run_dir: Path,
    model: nn.Module,
    dense_optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
    rank: int,
    table_optimizer: ReplicatedTableOptimizer | None = None,
) -> Path:
    """Every rank calls this at the same step; returns the checkpoint directory."""
    import torch.distributed.checkpoint as dcp

    step = int(progress["step"])
    ck = checkpoints_dir(run_dir) / f"step-{step:08d}"
    state = {"model": model.state_dict(), "sparse_optim": model.fused_optimizer.state_dict()}
    dcp.save(state, checkpoint_id=str(ck))
    torch.save(torch.get_rng_state(), ck / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save(dense_optimizer.state_dict(), ck / "dense_optim.pt")
        if table_optimizer is not None:
            torch.save(table_optimizer.state_dict(), ck / TABLE_OPTIM)
        write_json_atomic(ck / "progress.json", progress)
    dist.barrier()  # every rank's shards are on disk before the pointer moves
    if rank == 0:
        write_json_atomic(checkpoints_dir(run_dir) / LATEST, {"step": step, "dir": ck.name})
        old = sorted(p for p in checkpoints_dir(run_dir).glob("step-*") if p.is_dir() and p != ck)
        for p in old[: max(0, len(old) - (KEEP - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    dist.barrier()
    return ck


def load_model_weights(model: nn.Module, checkpoint: Path) -> None:
    """Load only the model weights of a checkpoint into a (sharded or plain) model in place."""
    model.load_state_dict(read_model_state(model, checkpoint))


def load_training_checkpoint(
    checkpoint: Path,
    model: nn.Module,
    dense_optimizer: torch.optim.Optimizer,
    rank: int,
    table_optimizer: ReplicatedTableOptimizer | None = None,
) -> None:
    """Restore model, the optimizers and this rank's RNG (same or different world size).

    The data-parallel tables' optimizer state is restored when the checkpoint was written under
    the same set of data-parallel tables; a different plan (another world size can move a table
    between table-wise and data-parallel) restarts that state, with a log line: the weights
    themselves always load."""
    import torch.distributed.checkpoint as dcp

    if predates_expert_banks(model, checkpoint):
        # the dense optimizer's state is per parameter, and the banks are other parameters
        raise ValueError(
            f"{checkpoint}: this checkpoint predates the batched experts (each expert a module of its "
            "own), so training cannot resume from it; start a new run (its weights still evaluate, "
            "export and warm-start a new run)"
        )
    state = {"model": model.state_dict(), "sparse_optim": model.fused_optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint))
    model.load_state_dict(state["model"])
    model.fused_optimizer.load_state_dict(state["sparse_optim"])
    dense_optimizer.load_state_dict(torch.load(checkpoint / "dense_optim.pt", weights_only=True))
    if table_optimizer is not None:
        saved = checkpoint / TABLE_OPTIM
        restored = saved.is_file() and table_optimizer.load_state_dict(torch.load(saved, weights_only=True))
        if not restored and rank == 0:
            log.info(
                "checkpoint %s has no optimizer state for the data-parallel tables %s (another plan): "
                "their optimizer starts afresh",
                checkpoint.name,
                table_optimizer.names,
            )
    rng = checkpoint / f"rng-rank{rank}.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True))


def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load unsharded full tensors (a registry version's weights.pt) into a possibly sharded model:
    each rank copies the slices of the tables it holds (TorchRec ShardedTensor shard offsets)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    weights = upgrade_state_dict(model, weights)  # a version published before the expert banks
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"warm-start weights do not fit this model: missing {missing[:5]}")
    for key, dst in state.items():
        src = weights[key]
        if isinstance(dst, ShardedTensor):
            if list(dst.size()) != list(src.shape):
                raise ValueError(
                    f"warm-start weights: {key} is {tuple(src.shape)}, model has {tuple(dst.size())}"
                )
            for shard in dst.local_shards():
                idx = tuple(
                    slice(o, o + n)
                    for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes, strict=True)
                )
                shard.tensor.copy_(src[idx])
        elif isinstance(dst, torch.Tensor):
            if dst.shape != src.shape:
                raise ValueError(
                    f"warm-start weights: {key} is {tuple(src.shape)}, model has {tuple(dst.shape)}"
                )
            dst.copy_(src)
    model.load_state_dict(state)


@dataclass(frozen=True)
class RegistryWeights:
    """A registry version's fp32 weights (weights.pt), checked against its manifest. `open()` maps
    them from the file (`torch.load(mmap=True)`): a warm start never holds a second copy of the
    model in memory (docs/OPERATIONS.md, "Memory")."""

    name: str
    version: str
    path: Path
    verified: bool  # False only for a version exported before weights.pt had a checksum
    registry: Registry
    entry: dict[str, Any] | None  # the manifest's `weights` entry (None: unverified)

    def describe(self) -> str:
        return f"{self.path} (v{self.version}, {'sha256 checked' if self.verified else 'UNVERIFIED'})"

    @contextlib.contextmanager
    def open(self) -> Iterator[dict[str, torch.Tensor]]:
        """The state dict, its tensors mapped from weights.pt, for the length of the block: checked
        again as it is opened (`Registry.verified_path`: the bytes mapped are the bytes checked, and
        a file changed while the block runs is refused when it ends), so copy what you need inside."""
        if self.entry is None:
            yield torch.load(self.path, mmap=True, weights_only=True)
            return
        with self.registry.verified_path(self.name, self.version, self.entry) as p:
            yield torch.load(p, mmap=True, weights_only=True)


def registry_weights(source: Path) -> RegistryWeights | None:
    """The weights a warm start takes from a registry directory, or None if `source` is none.

    `source` is a model directory (REGISTRY/NAME, with current.json: its current version, as the
    nightly job used to pass) or a version directory (REGISTRY/NAME/VERSION, with manifest.json).
    Both are resolved through `Registry`, so current.json's version is checked as a name before
    it becomes a path, and weights.pt's size and sha256 are checked against the manifest's
    `weights` entry here, by streaming it (and again when `open()` maps it). A version exported
    before weights.pt had a checksum (no `weights` entry) loads with a warning.

    Raises:
        RegistryError: a crafted or dangling pointer, no such version, no weights.pt;
            IntegrityError (a subclass): weights.pt does not match its manifest.
    """
    located = Registry.locate(source)
    if located is None:
        return None
    reg, name, version = located
    from recsys_mtl.export import WEIGHTS_FILE

    d = reg.version_dir(name, version)
    entry = reg.manifest(name, version).get("weights")
    if entry is not None:
        with reg.verified_path(name, version, entry):
            pass  # refuse a mismatch now, before a run is set up around it
    else:
        if not (d / WEIGHTS_FILE).is_file():
            raise RegistryError(f"{d}: no {WEIGHTS_FILE} to warm-start from")
        log.warning("%s: exported before weights were checksummed: loading %s unverified", d, WEIGHTS_FILE)
    return RegistryWeights(
        name, version, d / WEIGHTS_FILE, verified=entry is not None, registry=reg, entry=entry
    )
