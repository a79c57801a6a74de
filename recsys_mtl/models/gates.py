"""Gating networks of mixture-of-experts backbones.

- `Gate`: g(x) = softmax(W x) over n experts (MMoE, Ma et al. KDD 2018, Eq. 6), optionally with a
  fixed 0/1 mask over the experts whose zeros become -inf logits, so the node gives them exactly
  zero weight (HoME's hierarchy, arXiv 2408.05430; PLE's CGC gates are written the same way).
- `SelfGate`: HoME's self-gate over a node's own experts (sigmoid for one expert, softmax for
  several), added as a residual path so those experts always receive gradient.
- `mix`: sum_i g_i E_i for stacked expert outputs.

Equations, papers and our choices: (docs/METHODS.md, "MMoE", "PLE", "HoME").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.user_once import Input, linear


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """sum_i weights[:, i] * experts[:, i, :]: [B, n] x [B, n, d] -> [B, d].

    A broadcast product and a sum, not `torch.bmm` of [B, 1, n] x [B, n, d]: B products of one
    row each took 0.6-1.0 ms at B = 2,000 and n = 4 or 6 on this CPU (0.15-0.2 ms this way),
    a fifth of HoME's forward (docs/BENCHMARKS.md, "Batched experts")."""
    return (weights.unsqueeze(-1) * experts).sum(dim=1)


class Gate(nn.Module):
    """Softmax gate over ``num_experts``: g(x) = softmax(W x + m), W without bias as in MMoE Eq. 6.

    ``mask`` (length num_experts, 1 = visible) adds m = 0 / -inf to the logits, so a hidden
    expert's weight is exactly 0 and it gets no gradient through this gate. The mask is a fixed
    non-persistent buffer derived from the recipe, not a learned or saved parameter.
    """

    def __init__(self, in_dim: int, num_experts: int, mask: list[bool] | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts, bias=False)
        self.num_experts = num_experts
        self.masked: bool = mask is not None
        if mask is not None:
            if len(mask) != num_experts or not any(mask):
                raise ValueError("a gate mask needs one flag per expert and at least one visible expert")
            m = torch.tensor([0.0 if v else float("-inf") for v in mask])
            self.register_buffer("logit_mask", m, persistent=False)
        else:
            self.register_buffer("logit_mask", torch.zeros(num_experts), persistent=False)

    def forward(self, x: Input) -> torch.Tensor:
        logits = linear(x, self.linear.weight, None)
        if self.masked:  # a build-time constant: FX bakes the branch in
            logits = logits + self.logit_mask
        return torch.softmax(logits, dim=-1)


class SelfGate(nn.Module):
    """HoME self-gate (arXiv 2408.05430, fix 3): a residual path over a node's own k experts.

    weights = sigmoid(W x) when k == 1, softmax(W x) when k > 1; output sum_j weights_j E_j(x),
    which the node adds to its main gated mixture.
    """

    def __init__(self, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)
        self.single: bool = num_experts == 1

    def forward(self, x: Input) -> torch.Tensor:
        logits = linear(x, self.linear.weight, self.linear.bias)
        if self.single:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)
