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

`forward_grouped(sparse, dense, group)` is the same function on a grouped batch: U user rows holding
the request-level (user and context) features, then B candidate rows holding the item features,
``group[b]`` the user row of candidate b. The user's embeddings are looked up and pooled once per
user, and the first layers that are linear in the input multiply the user's columns once per user
(`recsys_mtl.models.user_once`); the outputs are the per-candidate ones, [B] / [B, L]. This is the
form that is exported (`ExportedForm`): training runs `forward`, serving the same modules through
`forward_grouped`, and tests hold both equal (docs/METHODS.md, "User-side work once").

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
from recsys_mtl.models.user_once import UserOnce
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
        self._set_grouping()

    def _set_grouping(self) -> None:
        """Which parts of the input are request-level, for `forward_grouped` (build-time lists and
        non-persistent buffers derived from the recipe: state dicts stay as they were)."""
        arch = self.sparse_arch
        self.field_request_level: list[bool] = list(arch.field_request_level)
        self.sequence_request_level: list[bool] = list(arch.sequence_request_level)
        if isinstance(self.dense_input, DenseInput):
            shared_rl = list(self.dense_input.out_request_level)
            raw_rl = list(self.dense_input.raw_request_level)
        else:  # pragma: no cover - build_model always passes a DenseInput
            shared_rl, raw_rl = [], []
        self.user_fields: list[int] = [i for i, rl in enumerate(self.field_request_level) if rl]
        self.item_fields: list[int] = [i for i, rl in enumerate(self.field_request_level) if not rl]
        self.has_user_dense: bool = any(shared_rl)
        self.has_item_dense: bool = not all(shared_rl)
        # columns of x = cat([*fields, dense_input(dense)]) that are request-level, and the others
        user_cols: list[int] = []
        item_cols: list[int] = []
        pos = 0
        for rl, d in zip(self.field_request_level, arch.field_dims, strict=True):
            (user_cols if rl else item_cols).extend(range(pos, pos + d))
            pos += d
        for j, rl in enumerate(shared_rl):
            (user_cols if rl else item_cols).append(pos + j)
        order = [0] * (len(user_cols) + len(item_cols))
        for k, c in enumerate(item_cols + user_cols):
            order[c] = k

        def buffer(name: str, values: list[int] | list[bool], dtype: torch.dtype) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

        buffer("x_user_cols", user_cols, torch.long)
        buffer("x_item_cols", item_cols, torch.long)
        buffer("x_order", order, torch.long)
        buffer("dense_user_cols", [j for j, rl in enumerate(shared_rl) if rl], torch.long)
        buffer("dense_item_cols", [j for j, rl in enumerate(shared_rl) if not rl], torch.long)
        buffer("dense_request_level", shared_rl, torch.bool)
        buffer("raw_request_level", raw_rl, torch.bool)

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
        return self._towers_and_heads(reprs, dense), gates, experts

    def forward_grouped(
        self, sparse: KeyedJaggedTensor, dense: torch.Tensor, group: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        outputs, _, _ = self.forward_grouped_with_internals(sparse, dense, group)
        return outputs

    def forward_grouped_with_internals(
        self, sparse: KeyedJaggedTensor, dense: torch.Tensor, group: torch.Tensor
    ) -> Internals:
        """`forward_with_internals` on a grouped batch (module docstring): `sparse` and `dense`
        hold U + B rows (users first), `group` [B] int64 the user row of each candidate."""
        fields, sequences, masks = self.sparse_arch(sparse)  # one lookup for users and candidates
        b = group.size(0)
        u = dense.size(0) - b

        def per_candidate(t: torch.Tensor, request_level: bool) -> torch.Tensor:
            # a request-level part is gathered from its user's row, an item part read as it is
            return t.narrow(0, 0, u).index_select(0, group) if request_level else t.narrow(0, u, b)

        def per_candidate_columns(t: torch.Tensor, request_level: torch.Tensor) -> torch.Tensor:
            # the same column by column: [B, width] from a [U + B, width] tensor
            return torch.where(request_level, per_candidate(t, True), per_candidate(t, False))

        # the raw dense columns per candidate (the towers' side inputs read them)
        raw = per_candidate_columns(dense, self.raw_request_level)
        shared_dense = self.dense_input(dense)  # [U + B, width]: each row's own columns are right
        if self.flat_input:
            user_parts = [fields[i].narrow(0, 0, u) for i in self.user_fields]
            item_parts = [fields[i].narrow(0, u, b) for i in self.item_fields]
            if self.has_user_dense:  # build-time flags
                user_parts.append(shared_dense.narrow(0, 0, u).index_select(1, self.dense_user_cols))
            if self.has_item_dense:
                item_parts.append(shared_dense.narrow(0, u, b).index_select(1, self.dense_item_cols))
            x = UserOnce(
                _cat_columns(user_parts, u, dense),
                _cat_columns(item_parts, b, dense),
                group,
                self.x_user_cols,
                self.x_item_cols,
                self.x_order,
            )
            reprs, gates, experts = self.backbone(self.bottom(x))
        else:  # DTRN: its input is per candidate throughout; the lookups were once per user
            reprs, gates, experts = self.backbone(
                [per_candidate(f, rl) for f, rl in zip(fields, self.field_request_level, strict=True)],
                [per_candidate(s, rl) for s, rl in zip(sequences, self.sequence_request_level, strict=True)],
                [per_candidate(m, rl) for m, rl in zip(masks, self.sequence_request_level, strict=True)],
                per_candidate_columns(shared_dense, self.dense_request_level),
            )
        return self._towers_and_heads(reprs, raw), gates, experts

    def _towers_and_heads(
        self, reprs: dict[str, torch.Tensor], dense: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per head task its tower on (representation, side features of the raw `dense`), then the heads."""
        towers: dict[str, torch.Tensor] = {}
        for t in self.head_tasks:  # a build-time list: FX unrolls it, TorchScript sees no branch
            # a task that does not read the backbone has no representation there: its
            # TowerInput takes the side features from `dense` alone
            rep = reprs[t] if t in self.backbone_tasks else dense
            towers[t] = self.towers[t](self.tower_inputs[t](rep, dense))
        return self.heads(towers)


class ExportedForm(MultiTaskModel):
    """The model as it is exported: `forward` is `forward_grouped` (what `torch.fx` traces is a
    class's `forward`). `recsys_mtl.export` gives a copy of the trained model this class; the
    modules, parameters and their names are the model's own."""

    def forward(  # type: ignore[override]
        self, sparse: KeyedJaggedTensor, dense: torch.Tensor, group: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.forward_grouped(sparse, dense, group)


def _cat_columns(parts: list[torch.Tensor], rows: int, like: torch.Tensor) -> torch.Tensor:
    """The parts side by side; no part is a [rows, 0] tensor (a recipe without request-level or
    without item features)."""
    if not parts:  # build-time: the list's length is fixed by the recipe
        return like.new_zeros(rows, 0)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


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
