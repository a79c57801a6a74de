"""The multi-task model: embeddings -> (cross, bottom) -> backbone -> per-task towers -> heads.

`build_model(recipe)` is the one constructor; every backbone (shared_bottom, mmoe, ple, home, dtrn)
and the single-task models (a recipe with one task) come out of it. The model's `forward` is the
same in training, evaluation and export (FX-traceable with `torchrec.fx.symbolic_trace`, then
`torch.jit.script`-able), and returns `Dict[str, Tensor]`:

    "<binary task>"         probability [B]
    "<binary task>_logit"   its logit [B] (losses use logits for numerical stability)
    "<product task>"        product of its factors' probabilities [B] (ESMM ctcvr = ctr * cvr)
    "<hazard task>"         hazard per interval [B, L] = sigmoid(logit)
    "<hazard task>_logit"   its logits [B, L]

`forward_with_internals` runs the same computation and also returns the gate weights and expert
outputs that `recsys_mtl.models.diagnostics` summarises; `forward` simply drops them, so the
exported graph carries no diagnostic outputs.

The common input, towers and task options: (docs/METHODS.md, "Notation and the common input").
"""

# No `from __future__ import annotations` here: FX copies `forward`'s annotations into the code it
# generates, and TorchScript must then resolve them as real types (KeyedJaggedTensor), not strings.
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.models.cross import CrossNetwork
from recsys_mtl.models.dense_input import DenseInput
from recsys_mtl.models.dtrn import DTRN
from recsys_mtl.models.embeddings import SparseArch
from recsys_mtl.models.heads import TaskHeads
from recsys_mtl.models.home import HoME
from recsys_mtl.models.mlp import MLP
from recsys_mtl.models.mmoe import MMoE
from recsys_mtl.models.ple import PLE
from recsys_mtl.models.shared_bottom import SharedBottom
from recsys_mtl.recipe import (
    DTRNOptions,
    HoMEOptions,
    MMoEOptions,
    PLEOptions,
    Recipe,
    SharedBottomOptions,
)

Internals = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]


class TowerInput(nn.Module):
    """What a task's tower reads: the backbone's representation of the task, detached when the
    task does not train the shared layers (`trains_shared: false`), and concatenated with the
    recipe's `tower_features`, raw columns of the dense input (a vector feature: its whole block,
    missing indicator included), a side input as in wide & deep's wide part: the tower sees those
    statistics (or that content) directly, not only through the shared layers. With
    `reads_backbone: false` the tower reads the side input alone.

    Why: a task whose labels are shared by every row of one item over many days (a creative's
    stop time) is fitted best on the training days by memorising the item through its id
    embedding, which ranks held-out creatives backwards (docs/QUALITY_INVESTIGATION.md); read from
    item statistics instead, it generalises."""

    def __init__(self, dense_columns: list[int], detached: bool, reads_backbone: bool = True) -> None:
        super().__init__()
        self.detached: bool = detached
        self.reads_backbone: bool = reads_backbone
        self.has_side: bool = len(dense_columns) > 0
        # derived from the recipe, so not part of the state dict (checkpoints stay as they were)
        self.register_buffer("columns", torch.tensor(dense_columns, dtype=torch.long), persistent=False)

    def in_dim(self, rep_dim: int) -> int:
        """Width of the tower's input for a backbone output of width `rep_dim`."""
        return (rep_dim if self.reads_backbone else 0) + int(self.columns.numel())

    def forward(self, rep: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        if not self.reads_backbone:  # build-time flags: FX keeps one branch, TorchScript sees none
            return dense.index_select(1, self.columns)
        if self.detached:
            rep = rep.detach()
        if self.has_side:
            rep = torch.cat([rep, dense.index_select(1, self.columns)], dim=1)
        return rep


class MultiTaskModel(nn.Module):
    """Embeddings -> bottom -> backbone -> towers -> heads (see the module docstring for outputs).

    Attributes:
        sparse_arch: the TorchRec embedding collections (`SparseArch`).
        dense_input: scalar dense features as they are, vector features projected (`DenseInput`).
        bottom: optional DCN-v2 cross layers (``cross_layers``), then a shared MLP on the flat
            input (identity when both are off; DTRN keeps its bottom inside the backbone,
            applied to each task's r_t).
        backbone: SharedBottom | MMoE | PLE | HoME | DTRN.
        tower_inputs: per head task `TowerInput` (detaching, side features).
        towers: per head task MLP (``tower_hidden``).
        heads: `TaskHeads`.
    """

    def __init__(
        self,
        sparse_arch: SparseArch,
        bottom: nn.Module | None,
        backbone: nn.Module,
        tower_inputs: nn.ModuleDict,
        towers: nn.ModuleDict,
        heads: TaskHeads,
        head_tasks: list[str],
        model_type: str,
        backbone_tasks: list[str] | None = None,
        dense_input: DenseInput | None = None,
    ) -> None:
        super().__init__()
        self.sparse_arch = sparse_arch
        self.dense_input = dense_input if dense_input is not None else nn.Identity()
        self.has_vector_noise: bool = dense_input is not None and dense_input.has_noise
        self.flat_input: bool = bottom is not None
        self.bottom = bottom if bottom is not None else nn.Identity()
        self.backbone = backbone
        self.tower_inputs = tower_inputs
        self.towers = towers
        self.heads = heads
        self.head_tasks: list[str] = list(head_tasks)
        # the head tasks the backbone builds a representation for (`reads_backbone` true)
        self.backbone_tasks: list[str] = list(head_tasks if backbone_tasks is None else backbone_tasks)
        self.model_type: str = model_type

    # metadata for diagnostics (plain Python, never part of the traced graph)
    @property
    def gate_experts(self) -> dict[str, list[str]]:
        """Gate key -> the expert names its weights refer to, in order."""
        return dict(getattr(self.backbone, "gate_experts", {}))

    @property
    def task_gates(self) -> dict[str, str]:
        """Head task -> key of the gate that feeds its tower (empty for models without gates)."""
        return dict(getattr(self.backbone, "task_gates", {}))

    def forward(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs, _, _ = self.forward_with_internals(sparse, dense)
        return outputs

    def forward_with_internals(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> Internals:
        """(outputs, gates {key: [B, n] weights}, experts {name: [B, d] activations})."""
        fields, sequences, masks = self.sparse_arch(sparse)
        if self.has_vector_noise:  # build-time flag: noise on vector values, training mode only
            dense = self.dense_input.augment(dense)
        shared_dense = self.dense_input(dense)  # towers' side features read the raw `dense`
        if self.flat_input:  # build-time constant: every backbone but DTRN reads one flat x
            x = self.bottom(torch.cat([*fields, shared_dense], dim=1))
            reprs, gates, experts = self.backbone(x)
        else:
            reprs, gates, experts = self.backbone(fields, sequences, masks, shared_dense)
        towers: dict[str, torch.Tensor] = {}
        for t in self.head_tasks:  # a build-time list: FX unrolls it, TorchScript sees no branch
            # a task that does not read the backbone has no representation there: its
            # TowerInput takes the side features from `dense` alone
            rep = reprs[t] if t in self.backbone_tasks else dense
            towers[t] = self.towers[t](self.tower_inputs[t](rep, dense))
        return self.heads(towers), gates, experts


def _candidate_fields(recipe: Recipe, arch: SparseArch) -> list[int]:
    """Per sequence feature, the index in ``arch.field_names`` of the candidate item's id feature:
    the id feature on the sequence's table (item-group and the recipe's item column preferred)."""
    out: list[int] = []
    for name in arch.sequence_names:
        seq = recipe.feature(name)
        cands = [
            f
            for f in recipe.features
            if f.kind == "id" and f.table_name == seq.table_name and f.name in arch.field_names
        ]
        if not cands:
            raise ValueError(
                f"DTRN: sequence '{name}' uses table '{seq.table_name}', but no id feature on that table "
                "gives the candidate item to attend with (e.g. creative_id with the same `table`)"
            )
        cands.sort(key=lambda f: (f.source != recipe.data.item_column, f.group != "item"))
        out.append(arch.field_names.index(cands[0].name))
    return out


def build_model(recipe: Recipe, embedding_device: torch.device | None = None) -> MultiTaskModel:
    """The model a recipe describes.

    Args:
        recipe: a validated recipe; ``recipe.model`` picks the backbone and its options.
        embedding_device: where the embedding tables are created (None: CPU). Pass
            ``torch.device("meta")`` to let TorchRec's DistributedModelParallel materialise the
            sharded tables itself.
    """
    opts = recipe.model
    heads_tasks = recipe.head_tasks
    # the backbone (gates, task and category experts) is built for the tasks that read it only:
    # a `reads_backbone: false` task would leave its gates and own experts untrained
    names = [t.name for t in heads_tasks if t.reads_backbone]
    dense_input = DenseInput(list(recipe.features))
    dense_dim = dense_input.out_dim
    is_dtrn = isinstance(opts, DTRNOptions)
    arch = SparseArch(recipe, unpooled_sequences=is_dtrn, device=embedding_device)
    bottom: nn.Module | None = None
    backbone: nn.Module
    if is_dtrn:
        assert isinstance(opts, DTRNOptions)
        backbone = DTRN(
            names, arch.field_dims, arch.sequence_dims, _candidate_fields(recipe, arch), dense_dim, opts
        )
    else:
        flat = sum(arch.field_dims) + dense_dim
        mlp = MLP(flat, list(opts.bottom_hidden), opts.dropout)
        if opts.cross_layers:
            bottom = nn.Sequential(CrossNetwork(flat, opts.cross_layers, opts.cross_rank), mlp)
        else:
            bottom = mlp
        d = mlp.out_dim
        if isinstance(opts, SharedBottomOptions):
            backbone = SharedBottom(d, names, list(opts.hidden), opts.dropout)
        elif isinstance(opts, MMoEOptions):
            backbone = MMoE(d, names, opts.num_experts, list(opts.expert_hidden), opts.dropout)
        elif isinstance(opts, PLEOptions):
            backbone = PLE(
                d,
                names,
                opts.num_levels,
                opts.specific_experts,
                opts.shared_experts,
                list(opts.expert_hidden),
                opts.dropout,
            )
        elif isinstance(opts, HoMEOptions):
            backbone = HoME(d, names, {t.name: t.category for t in heads_tasks if t.reads_backbone}, opts)
        else:  # pragma: no cover - the recipe's discriminated union has no other member
            raise ValueError(f"unknown model type {opts.type!r}")
    out_dims: dict[str, int] = backbone.out_dims  # type: ignore[assignment]
    layout = recipe.dense_layout  # a vector tower feature is its whole block of raw columns
    tower_inputs = nn.ModuleDict(
        {
            t.name: TowerInput(
                [c for f in t.tower_features for c in range(layout[f][0], sum(layout[f]))],
                not t.trains_shared,
                t.reads_backbone,
            )
            for t in heads_tasks
        }
    )
    head_names = [t.name for t in heads_tasks]
    towers = nn.ModuleDict(
        {
            t: MLP(tower_inputs[t].in_dim(out_dims.get(t, 0)), list(opts.tower_hidden), opts.dropout)
            for t in head_names
        }
    )
    heads = TaskHeads(list(recipe.tasks), {t: towers[t].out_dim for t in head_names})
    return MultiTaskModel(
        arch,
        bottom,
        backbone,
        tower_inputs,
        towers,
        heads,
        head_names,
        opts.type,
        backbone_tasks=names,
        dense_input=dense_input,
    )
