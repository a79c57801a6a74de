"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task
Learning with Multi-gate Mixture-of-Experts", KDD 2018).

n experts E_i(x); per task k a gate g_k(x) = softmax(W_k x) over the n experts (Eq. 6);
f_k = sum_i g_k(x)_i E_i(x) (Eq. 5); y_k = tower_k(f_k) (the towers live in the model).

Equations, paper and our choices: (docs/METHODS.md, "MMoE").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.expert_bank import ExpertBank
from recsys_mtl.models.gates import Gate, mix
from recsys_mtl.models.user_once import Input

BackboneOut = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]


class MMoE(nn.Module):
    """MMoE over one shared input, or over one input per task (DTRN + MMoE).

    ``forward(x)``: the experts run once on x and every task's gate reads x (the paper's model).
    ``forward_per_task(xs)``: task k's gate and all experts run on xs[k], so each task mixes the
    experts' view of its own representation (DTRN, arXiv 2308.05996, with MMoE on top; the experts
    cost T times more).

    Both return (per-task f_k, gates {task: [B, n]}, expert outputs {name: [B, d]}); expert names
    are ``expert_<i>``, or ``expert_<i>@<task>`` per task input. The n experts run as one
    `ExpertBank` (one batched kernel per layer).
    """

    def __init__(
        self, in_dim: int, tasks: list[str], num_experts: int, expert_hidden: list[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.experts = ExpertBank(num_experts, in_dim, expert_hidden, "none", dropout)
        self.experts.set_legacy([f"experts.{i}" for i in range(num_experts)], gated_layout=False)
        self.gates = nn.ModuleDict({t: Gate(in_dim, num_experts) for t in self.tasks})
        self.expert_names: list[str] = [f"expert_{i}" for i in range(num_experts)]
        d = self.experts.out_dim
        self.out_dims: dict[str, int] = {t: d for t in self.tasks}
        self.gate_experts: dict[str, list[str]] = {t: list(self.expert_names) for t in self.tasks}
        self.task_gates: dict[str, str] = {t: t for t in self.tasks}

    def forward(self, x: Input) -> BackboneOut:
        stacked = self.experts(x)  # [B, n, d]
        reprs: dict[str, torch.Tensor] = {}
        gates: dict[str, torch.Tensor] = {}
        for t in self.tasks:
            g = self.gates[t](x)
            gates[t] = g
            reprs[t] = mix(g, stacked)
        experts: dict[str, torch.Tensor] = {n: stacked[:, i] for i, n in enumerate(self.expert_names)}
        return reprs, gates, experts

    def forward_per_task(self, xs: dict[str, torch.Tensor]) -> BackboneOut:
        reprs: dict[str, torch.Tensor] = {}
        gates: dict[str, torch.Tensor] = {}
        experts: dict[str, torch.Tensor] = {}
        for t in self.tasks:
            x = xs[t]
            stacked = self.experts(x)
            g = self.gates[t](x)
            gates[t] = g
            reprs[t] = mix(g, stacked)
            for i, n in enumerate(self.expert_names):
                experts[f"{n}@{t}"] = stacked[:, i]
        return reprs, gates, experts
