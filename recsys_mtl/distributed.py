"""Process group and TorchRec sharding: one code path for 1 process, N processes and N machines.

Training always runs under TorchRec's `DistributedModelParallel` (DMP), with a world of one process
when nothing launched us: the embedding tables then get TorchRec's fused kernels (FBGEMM table-batched
embeddings with the sparse optimizer applied in backward, touching only the rows a batch uses)
whatever the world size, and a 1-process run is the same program as a sharded one.

- Launch: under `torchrun` (or any launcher that sets RANK / WORLD_SIZE / MASTER_ADDR /
  MASTER_PORT) we join that group; otherwise we start a 1-process group on a free loopback port.
- Backend: NCCL when training on CUDA, gloo on CPU.
- Placement: TorchRec's `EmbeddingShardingPlanner`, constrained by the recipe's
  `training.sharding_types`. gloo has no reduce-scatter, so on CPU `row_wise` is dropped (with a
  log line) and the planner picks among the rest (table-wise / data-parallel by default).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recsys_mtl.recipe import OptimizerSpec, Recipe

log = logging.getLogger(__name__)

# Sharding types that need collectives gloo lacks.
_NEEDS_REDUCE_SCATTER = {"row_wise"}


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool  # we created the group (so we destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the launcher's process group, or start a 1-process one on loopback."""
    use_cuda = device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, False)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    else:
        # A fresh port per group, passed directly: writing MASTER_PORT into os.environ would leak it
        # into every child process started later (a test process that trained in-process made all
        # its later `recsys-mtl train` subprocesses collide on one port: EADDRINUSE).
        rank, world = 0, 1
        dist.init_process_group(
            backend=backend, rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}"
        )
    return DistContext(rank, world, local_rank, dev, backend, True)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def allowed_sharding_types(recipe: Recipe, backend: str) -> list[str]:
    types = list(recipe.training.sharding_types)
    if backend == "gloo":
        dropped = [t for t in types if t in _NEEDS_REDUCE_SCATTER]
        if dropped:
            log.info("gloo backend: dropping sharding types %s (they need reduce-scatter)", dropped)
        types = [t for t in types if t not in _NEEDS_REDUCE_SCATTER]
    if not types:
        raise ValueError(
            f"training.sharding_types {recipe.training.sharding_types} leaves nothing usable on "
            f"{backend}; allow table_wise or data_parallel"
        )
    return types


def sparse_optimizer_class(spec: OptimizerSpec) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer TorchRec fuses into the embedding kernels, and its arguments."""
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    classes: dict[str, type[torch.optim.Optimizer]] = {
        "rowwise_adagrad": RowWiseAdagrad,
        "adagrad": torch.optim.Adagrad,
        "adam": torch.optim.Adam,
        "sgd": torch.optim.SGD,
    }
    if spec.name not in classes:
        raise ValueError(
            f"training.sparse_optimizer.name: {spec.name!r} has no fused kernel; use one of {sorted(classes)}"
        )
    kwargs: dict[str, Any] = {"lr": spec.lr}
    if spec.name != "sgd":
        kwargs["eps"] = spec.eps
    if spec.weight_decay:
        kwargs["weight_decay"] = spec.weight_decay
    return classes[spec.name], kwargs


def dense_optimizer(spec: OptimizerSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, eps=spec.eps, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, eps=spec.eps, weight_decay=spec.weight_decay)
    if spec.name == "adagrad":
        return torch.optim.Adagrad(params, lr=spec.lr, eps=spec.eps, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"training.dense_optimizer.name: {spec.name!r} is for embedding tables only")


def replicated_tables(model: nn.Module) -> dict[str, nn.Parameter]:
    """The embedding tables the planner made `data_parallel`, by parameter name.

    Table-wise (and row-wise, column-wise) tables become FBGEMM kernels that apply the sparse
    optimizer inside backward. A data-parallel table is different: DMP replicates it on every
    rank as a plain dense parameter whose gradient DDP all-reduces, and the in-backward optimizer
    registered before sharding does not follow it. Without an optimizer of its own it would keep
    its random initial values for the whole run (found by the oracle-lift investigation:
    position, hour, device, category never trained). TorchRec marks the fused parameters with
    `_in_backward_optimizers`; the table parameters without that mark are these.
    """
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    return {n: p for n, p in in_backward_optimizer_filter(model.named_parameters()) if "sparse_arch." in n}


class ReplicatedTableOptimizer:
    """The recipe's sparse optimizer, run as an ordinary optimizer over the data-parallel tables,
    so a table is updated by the same rule (and learning rate) whichever way the planner placed it.
    Its state is saved by table name: a checkpoint only restores it under the same set of tables."""

    def __init__(self, recipe: Recipe, tables: dict[str, nn.Parameter]) -> None:
        opt_cls, opt_kwargs = sparse_optimizer_class(recipe.training.sparse_optimizer)
        self.names = sorted(tables)
        self.optimizer = opt_cls([tables[n] for n in self.names], **opt_kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "state": self.optimizer.state_dict()}

    def load_state_dict(self, blob: dict[str, Any]) -> bool:
        """Restore `blob` if it was saved for the same tables; False (nothing loaded) otherwise."""
        if list(blob.get("names", [])) != self.names:
            return False
        self.optimizer.load_state_dict(blob["state"])
        return True


def replicated_table_optimizer(recipe: Recipe, model: nn.Module) -> ReplicatedTableOptimizer | None:
    """The optimizer of the data-parallel tables of a DMP model; None when the plan has none."""
    tables = replicated_tables(model)
    return ReplicatedTableOptimizer(recipe, tables) if tables else None


def _table_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for m in model.modules():
        for attr in ("embedding_bag_configs", "embedding_configs"):
            if hasattr(m, attr) and callable(getattr(m, attr)):
                names += [c.name for c in getattr(m, attr)()]
    return list(dict.fromkeys(names))


def shard_model(model: nn.Module, recipe: Recipe, ctx: DistContext) -> nn.Module:
    """Attach the fused sparse optimizer, plan table placement, and wrap the model in DMP.

    `model` must have been built with its tables on the meta device (`build_model(recipe,
    embedding_device=torch.device("meta"))`) so DMP materialises only this rank's shards.
    """
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    opt_cls, opt_kwargs = sparse_optimizer_class(recipe.training.sparse_optimizer)
    sparse_arch = model.get_submodule("sparse_arch")
    _apply_optimizer_in_backward(opt_cls, list(sparse_arch.parameters()), opt_kwargs)
    types = allowed_sharding_types(recipe, ctx.backend)
    constraints = {name: ParameterConstraints(sharding_types=types) for name in _table_names(model)}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device=ctx.device.type),
        constraints=constraints,
    )
    plan = planner.collective_plan(model, None, dist.GroupMember.WORLD)
    return DistributedModelParallel(model, device=ctx.device, plan=plan)


def plan_summary(dmp: nn.Module) -> dict[str, dict[str, Any]]:
    """Table -> {sharding_type, ranks}: where the planner put each table (for logs and tests)."""
    out: dict[str, dict[str, Any]] = {}
    for _module, plan in dmp.plan.plan.items():  # type: ignore[union-attr]
        for table, ps in plan.items():
            ranks = sorted({int(r) for r in (ps.ranks or [])})
            out[table] = {"sharding_type": ps.sharding_type, "ranks": ranks}
    return out
