"""Shared-Bottom: the multi-task baseline (Caruana, "Multitask Learning", 1997; the baseline of
MMoE, Ma et al. KDD 2018, Fig. 1a): one MLP on x shared by all tasks, then one tower per task.

Equations and paper: (docs/METHODS.md, "Shared-Bottom")."""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.mlp import MLP
from recsys_mtl.models.user_once import Input, dense


class SharedBottom(nn.Module):
    """h = MLP(x), every task reads the same h (its tower lives in the model).

    forward(x) -> (per-task representation, gates {}, experts {}): the same triple as the MoE
    backbones, with nothing to diagnose.
    """

    def __init__(self, in_dim: int, tasks: list[str], hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.bottom = MLP(in_dim, hidden, dropout)
        self.out_dims: dict[str, int] = {t: self.bottom.out_dim for t in self.tasks}
        self.gate_experts: dict[str, list[str]] = {}
        self.task_gates: dict[str, str] = {}

    def forward(
        self, x: Input
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        h = dense(self.bottom(x))  # an empty MLP hands a grouped input back as it is
        reprs: dict[str, torch.Tensor] = {t: h for t in self.tasks}
        empty: dict[str, torch.Tensor] = {}
        return reprs, empty, dict(empty)
