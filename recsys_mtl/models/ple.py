"""PLE: Progressive Layered Extraction, built from CGC layers (Tang et al., "Progressive Layered
Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations",
RecSys 2020).

CGC (Eq. 2-4): task k has m_k specific experts, all tasks see m_s shared experts; task k's gate
g_k(x) = softmax(W_k x) mixes [its specific experts, the shared experts].
PLE (Eq. 5-6): L extraction levels. At level j, task k's experts read task k's previous output,
the shared experts read the shared previous output, task k's gate reads task k's previous
output, and a shared gate (over all experts of the level) produces the next shared output at every
level but the last. Level 1 reads x everywhere. The last level's task outputs feed the towers.
(Each task's loss averaging over its own sample space is the losses' job: per-task row weights.)

Equations, paper and our choices: (docs/METHODS.md, "PLE").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.expert_bank import ExpertBank
from recsys_mtl.models.gates import Gate, mix
from recsys_mtl.models.user_once import Input

BackboneOut = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]


class _Extraction(nn.Module):
    """One CGC extraction level; ``with_shared_gate`` on every level but the last. Each task's
    specific experts and the shared experts run as one `ExpertBank` each (they read different
    inputs from level 2 on)."""

    def __init__(
        self,
        level: int,
        in_dim: int,
        tasks: list[str],
        specific: int,
        shared: int,
        hidden: list[int],
        with_shared_gate: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.level = level
        self.specific = nn.ModuleDict(
            {t: ExpertBank(specific, in_dim, hidden, "none", dropout) for t in tasks}
        )
        for t, bank in self.specific.items():
            bank.set_legacy([f"{t}.{j}" for j in range(specific)], gated_layout=False)
        self.shared = ExpertBank(shared, in_dim, hidden, "none", dropout)
        self.shared.set_legacy([f"shared.{j}" for j in range(shared)], gated_layout=False)
        self.task_gates = nn.ModuleDict({t: Gate(in_dim, specific + shared) for t in tasks})
        self.with_shared_gate = with_shared_gate
        n_all = specific * len(tasks) + shared
        self.shared_gate = Gate(in_dim, n_all) if with_shared_gate else None
        self.out_dim: int = hidden[-1]
        p = f"L{level}/"
        self.specific_names: dict[str, list[str]] = {
            t: [f"{p}{t}_{j}" for j in range(specific)] for t in tasks
        }
        self.shared_names: list[str] = [f"{p}shared_{j}" for j in range(shared)]
        self.gate_experts: dict[str, list[str]] = {
            f"{p}{t}": self.specific_names[t] + self.shared_names for t in tasks
        }
        if with_shared_gate:
            self.gate_experts[f"{p}shared"] = [
                n for t in tasks for n in self.specific_names[t]
            ] + self.shared_names

    def forward(
        self, task_in: dict[str, Input], shared_in: Input
    ) -> tuple[dict[str, torch.Tensor], Input, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p = f"L{self.level}/"
        experts: dict[str, torch.Tensor] = {}
        gates: dict[str, torch.Tensor] = {}
        shared_outs = self.shared(shared_in)  # [B, shared, d]
        for i, n in enumerate(self.shared_names):
            experts[n] = shared_outs[:, i]
        task_out: dict[str, torch.Tensor] = {}
        all_specific: list[torch.Tensor] = []
        for t in self.tasks:
            outs = self.specific[t](task_in[t])  # [B, specific, d]
            for i, n in enumerate(self.specific_names[t]):
                experts[n] = outs[:, i]
            all_specific.append(outs)
            g = self.task_gates[t](task_in[t])
            gates[p + t] = g
            task_out[t] = mix(g, torch.cat([outs, shared_outs], dim=1))
        shared_out = shared_in
        if self.shared_gate is not None:  # build-time constant
            g = self.shared_gate(shared_in)
            gates[p + "shared"] = g
            shared_out = mix(g, torch.cat([*all_specific, shared_outs], dim=1))
        return task_out, shared_out, gates, experts


class PLE(nn.Module):
    """PLE with ``num_levels`` CGC levels (num_levels = 1 is CGC itself).

    forward(x) -> (per-task last-level output, gates {"L<j>/<task>" | "L<j>/shared": [B, n]},
    expert outputs {"L<j>/<task>_<i>" | "L<j>/shared_<i>": [B, d]}).
    """

    def __init__(
        self,
        in_dim: int,
        tasks: list[str],
        num_levels: int,
        specific_experts: int,
        shared_experts: int,
        expert_hidden: list[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        levels: list[_Extraction] = []
        d = in_dim
        for j in range(1, num_levels + 1):
            lvl = _Extraction(
                j, d, self.tasks, specific_experts, shared_experts, expert_hidden, j < num_levels, dropout
            )
            levels.append(lvl)
            d = lvl.out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dims: dict[str, int] = {t: d for t in self.tasks}
        self.gate_experts: dict[str, list[str]] = {}
        for lvl in levels:
            self.gate_experts.update(lvl.gate_experts)
        self.task_gates: dict[str, str] = {t: f"L{num_levels}/{t}" for t in self.tasks}

    def forward(self, x: Input) -> BackboneOut:
        task_in: dict[str, Input] = {t: x for t in self.tasks}
        shared_in = x
        gates: dict[str, torch.Tensor] = {}
        experts: dict[str, torch.Tensor] = {}
        for lvl in self.levels:
            task_in, shared_in, g, e = lvl(task_in, shared_in)
            gates.update(g)
            experts.update(e)
        return task_in, gates, experts
