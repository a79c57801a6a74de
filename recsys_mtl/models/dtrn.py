"""DTRN: Deep Task-specific Bottom Representation Network (Liu et al., CIKM 2023, arXiv 2308.05996).

Each task gets its own bottom representation instead of one shared embedding output:

- Task-specific interest module (TIM): for task t and behaviour sequence b, the interest u_{t,b}
  is target attention of the candidate item q (the embedding of the id feature whose table the
  sequence shares, e.g. ``creative_id`` for ``clicked_items``) over the sequence K_b. The
  attention network is shared by every (t, b): score(q, k) = w2 . ReLU(FiLM_{t,b}(W1 [q; k; q-k; q*k]))
  with FiLM_{t,b}(h) = gamma_{t,b} * h + beta_{t,b}, and (gamma, beta) = 1 + / 0 + H([e_t; e_b]) from
  a small hypernetwork H on learned task and behaviour-type embeddings, so the parameters grow with
  T*B*d_e, not T*B networks. Weights are a softmax over the real (unmasked) positions; an empty
  sequence gives u = 0. (choice, recipe options: ``interest_pooling`` "target_attention" (default,
  DIN-style with softmax weights) or "mean" (masked mean, no attention); ``interest_modulation``
  "film" (default, FiLM on the attention's hidden layer) or "none" (one attention for all tasks).)
- Task-specific representation refinement (TRM): per task t, SENet over the F field embeddings:
  s_f = mean of field f's embedding, a_t = sigmoid(W2_t ReLU(W1_t s)) (reduction ratio
  ``senet_reduction``), refined field f = a_{t,f} * e_f.
- r_t = concat(refined fields, u_{t,*}, dense), through the optional shared bottom MLP.
  DTRN alone: tower_t(r_t) (towers live in the model). ``with_mmoe``: task t's gate and the
  experts run on r_t (MMoE.forward_per_task).

Equations, paper and our choices: (docs/METHODS.md, "DTRN").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.mlp import MLP
from recsys_mtl.models.mmoe import MMoE
from recsys_mtl.recipe import DTRNOptions

BackboneOut = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]


class FiLMTargetAttention(nn.Module):
    """Target attention shared by all (task, behaviour) pairs, FiLM-modulated per pair.

    forward(q [B, D], keys [B, L, D], mask [B, L], gamma [T, H], beta [T, H]) -> [B, T, D]:
    u_t = sum_l softmax_l(score_t(q, k_l)) k_l over real positions.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(4 * dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(
        self, q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        qe = q.unsqueeze(1).expand_as(keys)
        h = self.inp(torch.cat([qe, keys, qe - keys, qe * keys], dim=-1))  # [B, L, H], shared by tasks
        h = torch.relu(h.unsqueeze(1) * gamma.unsqueeze(1) + beta.unsqueeze(1))  # [B, T, L, H]
        scores = self.out(h).squeeze(-1)  # [B, T, L]
        m = mask.unsqueeze(1)
        # a large finite negative (not -inf) keeps all-padding rows finite; their weights are then
        # zeroed by the mask, so an empty sequence yields u = 0
        w = torch.softmax(scores.masked_fill(m == 0, -1e9), dim=-1) * m
        return torch.bmm(w, keys)  # [B, T, L] x [B, L, D]


class SENet(nn.Module):
    """Squeeze-and-excitation over F fields (Hu et al. 2018, as in FiBiNET): a = sigmoid(W2 ReLU(W1 s))."""

    def __init__(self, num_fields: int, reduction: int) -> None:
        super().__init__()
        r = max(1, num_fields // reduction)
        self.net = nn.Sequential(nn.Linear(num_fields, r), nn.ReLU(), nn.Linear(r, num_fields), nn.Sigmoid())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class DTRN(nn.Module):
    """DTRN backbone (see the module docstring).

    forward(fields, sequences, masks, dense) -> (r_t or MMoE f_t per task, gates, expert outputs).

    Args:
        tasks: head task names.
        field_dims: widths of the pooled field embeddings (SparseArch.field_names order).
        sequence_dims: widths of the behaviour sequences (SparseArch.sequence_names order).
        candidate_fields: per sequence, the index in ``fields`` of its candidate-item embedding.
        dense_dim: number of dense features.
        opts: the recipe's `DTRNOptions`.
    """

    def __init__(
        self,
        tasks: list[str],
        field_dims: list[int],
        sequence_dims: list[int],
        candidate_fields: list[int],
        dense_dim: int,
        opts: DTRNOptions,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        T, nb = len(self.tasks), len(sequence_dims)
        if not field_dims:
            raise ValueError("DTRN needs at least one id or multi_id feature (its SENet refines fields)")
        if len(set(sequence_dims)) > 1:
            raise ValueError(
                f"DTRN's shared attention needs one embedding width for all sequences, got {sequence_dims}"
            )
        self.num_behaviours = nb
        self.candidate_fields = list(candidate_fields)
        h = opts.attention_hidden
        self.attention_hidden = h
        self.attend: bool = nb > 0 and opts.interest_pooling == "target_attention"
        self.modulated: bool = self.attend and opts.interest_modulation == "film"
        if self.attend:
            self.attention = FiLMTargetAttention(sequence_dims[0], h)
        if self.modulated:
            de = opts.task_embedding_dim
            self.task_emb = nn.Parameter(torch.randn(T, de) * 0.1)
            self.behaviour_emb = nn.Parameter(torch.randn(nb, de) * 0.1)
            self.hyper = nn.Sequential(nn.Linear(2 * de, h), nn.ReLU(), nn.Linear(h, 2 * h))
            # small (not zero) last layer: FiLM starts near the identity, yet every hypernetwork
            # parameter and the task/behaviour embeddings get gradient from the first step
            nn.init.normal_(self.hyper[2].weight, std=0.01)
            nn.init.zeros_(self.hyper[2].bias)
        # without modulation one attention (gamma = 1, beta = 0) serves every task
        self.register_buffer("identity_gamma", torch.ones(1, h), persistent=False)
        self.register_buffer("identity_beta", torch.zeros(1, h), persistent=False)
        self.senets = nn.ModuleDict({t: SENet(len(field_dims), opts.senet_reduction) for t in self.tasks})
        # field index of every concatenated embedding column: expands a_t [B, F] to [B, sum D_f]
        self.register_buffer(
            "field_index",
            torch.repeat_interleave(torch.arange(len(field_dims)), torch.tensor(field_dims)),
            persistent=False,
        )
        r_dim = sum(field_dims) + nb * (sequence_dims[0] if nb else 0) + dense_dim
        self.bottom = MLP(r_dim, list(opts.bottom_hidden), opts.dropout)
        self.with_mmoe: bool = opts.with_mmoe
        self.mmoe = (
            MMoE(self.bottom.out_dim, self.tasks, opts.num_experts, list(opts.expert_hidden), opts.dropout)
            if opts.with_mmoe
            else None
        )
        d = self.mmoe.out_dims[self.tasks[0]] if self.mmoe is not None else self.bottom.out_dim
        self.out_dims: dict[str, int] = {t: d for t in self.tasks}
        self.gate_experts: dict[str, list[str]] = self.mmoe.gate_experts if self.mmoe is not None else {}
        self.task_gates: dict[str, str] = self.mmoe.task_gates if self.mmoe is not None else {}

    def film(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta), each [num_behaviours, T, H]: the hypernetwork on every (behaviour, task) pair."""
        T, nb = len(self.tasks), self.num_behaviours
        pairs = torch.cat(
            [
                self.behaviour_emb.unsqueeze(1).expand(nb, T, self.behaviour_emb.shape[1]),
                self.task_emb.unsqueeze(0).expand(nb, T, self.task_emb.shape[1]),
            ],
            dim=-1,
        )
        out = self.hyper(pairs)  # [nb, T, 2H]
        h = self.attention_hidden
        return 1.0 + out[..., :h], out[..., h:]

    def forward(
        self,
        fields: list[torch.Tensor],
        sequences: list[torch.Tensor],
        masks: list[torch.Tensor],
        dense: torch.Tensor,
    ) -> BackboneOut:
        # ---- interests u_{t,b}: [B, T, D] per behaviour ([B, 1, D] when shared by all tasks) ----
        interests: list[torch.Tensor] = []
        if self.modulated:  # build-time constants below
            gamma, beta = self.film()
            for b in range(self.num_behaviours):
                q = fields[self.candidate_fields[b]]
                interests.append(self.attention(q, sequences[b], masks[b], gamma[b], beta[b]))
        elif self.attend:
            for b in range(self.num_behaviours):
                q = fields[self.candidate_fields[b]]
                interests.append(
                    self.attention(q, sequences[b], masks[b], self.identity_gamma, self.identity_beta)
                )
        else:
            for b in range(self.num_behaviours):
                m = masks[b].unsqueeze(-1)
                mean = (sequences[b] * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
                interests.append(mean.unsqueeze(1))
        per_task = self.modulated
        # ---- SENet refinement per task ----
        emb = torch.cat(fields, dim=1)  # [B, sum D_f]
        squeeze = torch.stack([f.mean(dim=1) for f in fields], dim=1)  # [B, F]
        reprs: dict[str, torch.Tensor] = {}
        for i, t in enumerate(self.tasks):
            a = self.senets[t](squeeze).index_select(1, self.field_index)
            parts = [emb * a, *[u[:, i if per_task else 0, :] for u in interests], dense]
            reprs[t] = self.bottom(torch.cat(parts, dim=1))
        if self.mmoe is not None:  # build-time constant
            return self.mmoe.forward_per_task(reprs)
        empty: dict[str, torch.Tensor] = {}
        return reprs, empty, dict(empty)
