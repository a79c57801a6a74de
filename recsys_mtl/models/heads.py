"""Task heads: tower outputs -> logits and probabilities, and ESMM's product tasks.

- binary task t: one logistic unit, ``t_logit`` [B] and ``t`` = sigmoid [B].
- hazard task t over a grid of L intervals: L logistic units (the logistic-hazard model of
  Kitada et al., Applied Sciences 2022): ``t_logit`` [B, L] = phi_l(x) and ``t`` [B, L] =
  h_l(x) = sigmoid(phi_l(x)) = P(stop in interval l | running at its start).
  How phi_l depends on the tower output z is a choice (the task's ``hazard_head``):
    "shared" (default)  phi_l = b_l + w.z + v_l.z, v_l starting at zero: the discrete-time
                        proportional-odds model (Cox 1972; Tutz & Schmid, "Modeling Discrete
                        Time-to-Event Data", 2016, ch. 3) plus per-interval deviations;
    "independent"       phi_l = b_l + w_l.z, one free unit per interval.
  Why "shared": a label cutoff (training data ends before late intervals can be observed) means
  no label reaches the late intervals of a long grid, and the units of those intervals never get
  a gradient. Independent units then keep their random initial slopes, and the risk 1 - S(t_L),
  which sums over all intervals, is partly noise. With a shared score every interval carries the
  covariate effect learned where labels exist, and v_l moves only where data says it should.
  (Measured on synthetic data: +0.1 hazard C-index lift over "independent", within the
  evaluation's noise; docs/QUALITY_INVESTIGATION.md.)
- product task (``product_of``, ESMM, Ma et al. SIGIR 2018: pCTCVR = pCTR * pCVR): ``t`` [B] is
  the product of its tasks' probabilities. It has no logit of its own; the loss works from its
  factors' logits in log space.

Equations, papers and our choices: (docs/METHODS.md, "Task heads", "Discrete-time hazard").
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
        self.shared_hazard: list[str] = [
            t.name for t in tasks if t.kind == "hazard" and t.hazard_head_form == "shared"
        ]
        self.heads = nn.ModuleDict()
        # hazard tasks with a shared head: the proportional-odds score w.z ([B, 1])
        self.scores = nn.ModuleDict()
        for t in tasks:
            if t.product_of:
                continue
            head = nn.Linear(in_dims[t.name], 1 if t.kind == "binary" else t.num_intervals)
            # Start near the base rates of ranking data instead of at p = 0.5 (choice): clicks and
            # conversions are rare, and so is a creative's stop in any one interval. A hazard head
            # at 0.5 would start every survival curve near zero, and intervals that no label reaches
            # yet (past the label cutoff) would stay there.
            nn.init.constant_(head.bias, _INIT_BIAS[t.kind])
            if t.name in self.shared_hazard:
                nn.init.zeros_(head.weight)  # the deviations v_l start at zero
                self.scores[t.name] = nn.Linear(in_dims[t.name], 1, bias=False)
            self.heads[t.name] = head

    def forward(self, towers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for t in self.binary:
            logit = self.heads[t](towers[t]).squeeze(-1)
            out[t + "_logit"] = logit
            out[t] = torch.sigmoid(logit)
        for t in self.hazard:
            logit = self.heads[t](towers[t])
            if t in self.shared_hazard:  # resolved when FX traces the model: no branch in the graph
                logit = logit + self.scores[t](towers[t])
            out[t + "_logit"] = logit
            out[t] = torch.sigmoid(logit)
        for t in self.products:
            names = self.factors[t]
            p = out[names[0]]
            for n in names[1:]:
                p = p * out[n]
            out[t] = p
        return out
