"""Task heads: tower outputs -> logits and probabilities, and ESMM's product tasks.

- binary task t: one logistic unit, ``t_logit`` [B] and ``t`` = sigmoid [B].
- hazard task t over a grid of L intervals: L logistic units (the logistic-hazard model of
  Kitada et al., Applied Sciences 2022): ``t_logit`` [B, L] = phi_l(x) and ``t`` [B, L] =
  h_l(x) = sigmoid(phi_l(x)) = P(stop in interval l | running at its start).
- product task (``product_of``, ESMM, Ma et al. SIGIR 2018: pCTCVR = pCTR * pCVR): ``t`` [B] is
  the product of its tasks' probabilities. It has no logit of its own; the loss works from its
  factors' logits in log space.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.recipe import TaskSpec

_INIT_BIAS = {"binary": -2.0, "hazard": -4.0}  # sigmoid: 0.12 and 0.018


class TaskHeads(nn.Module):
    """All heads of a recipe's tasks.

    forward(tower_outputs {head task: [B, d]}) -> {task: prob, task_logit: logit} for head tasks
    plus {product task: prob}.
    """

    def __init__(self, tasks: list[TaskSpec], in_dims: dict[str, int]) -> None:
        super().__init__()
        self.binary: list[str] = [t.name for t in tasks if t.kind == "binary" and not t.product_of]
        self.hazard: list[str] = [t.name for t in tasks if t.kind == "hazard"]
        self.products: list[str] = [t.name for t in tasks if t.product_of]
        self.factors: dict[str, list[str]] = {t.name: list(t.product_of) for t in tasks if t.product_of}
        self.heads = nn.ModuleDict()
        for t in tasks:
            if t.product_of:
                continue
            head = nn.Linear(in_dims[t.name], 1 if t.kind == "binary" else t.num_intervals)
            # Start near the base rates of ranking data instead of at p = 0.5 (choice): clicks and
            # conversions are rare, and so is a creative's stop in any one interval. A hazard head
            # at 0.5 would start every survival curve near zero, and intervals that no label reaches
            # yet (past the label cutoff) would stay there.
            nn.init.constant_(head.bias, _INIT_BIAS[t.kind])
            self.heads[t.name] = head

    def forward(self, towers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for t in self.binary:
            logit = self.heads[t](towers[t]).squeeze(-1)
            out[t + "_logit"] = logit
            out[t] = torch.sigmoid(logit)
        for t in self.hazard:
            logit = self.heads[t](towers[t])
            out[t + "_logit"] = logit
            out[t] = torch.sigmoid(logit)
        for t in self.products:
            names = self.factors[t]
            p = out[names[0]]
            for n in names[1:]:
                p = p * out[n]
            out[t] = p
        return out
