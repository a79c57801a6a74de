"""Experts of mixture-of-experts backbones, and HoME's feature-gate.

- `Expert`: an MLP expert. Plain (MMoE, Ma et al. KDD 2018: E_i(x), ReLU MLP) or with HoME's fix
  for expert collapse (Kuaishou, arXiv 2408.05430, Sec. "Expert normalization & Swish"):
  E(x) = Swish(Norm(MLP(x))), Norm = BatchNorm (default) or LayerNorm (choice).
- `FeatureGate`: HoME's feature-gate FG(x) = 2 * sigmoid(x B A) with low rank r, applied as
  x * FG(x) so each expert sees its own view of the input.

Equations, papers and our choices: (docs/METHODS.md, "MMoE", "HoME").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.mlp import MLP


class Expert(nn.Module):
    """One expert network.

    ``norm="none"``: ReLU MLP over ``hidden`` (the ReLU also follows the last layer): the expert of
    MMoE / PLE (Ma et al. 2018 Eq. 5: f_k = sum_i g_k(x)_i E_i(x); Tang et al. 2020 Eq. 2-4).

    ``norm="batch"`` or ``"layer"``: HoME's E(x) = Swish(Norm(MLP(x))) (arXiv 2408.05430, fix 1):
    ReLU hidden layers, then a linear output layer, its normalisation and Swish (SiLU). The
    normalisation keeps every expert's output on one scale, so no expert can dominate the gates by
    magnitude; Swish has no dead zone, so an expert cannot collapse into constant zeros. BatchNorm
    is the default, LayerNorm an option (choice), e.g. for batch size 1 in training.

    Args:
        in_dim: input width.
        hidden: layer widths; the last is the expert's output width.
        norm: "none" | "batch" | "layer".
        dropout: dropout after hidden activations.
    """

    def __init__(self, in_dim: int, hidden: list[int], norm: str = "none", dropout: float = 0.0) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("an expert needs at least one layer (expert_hidden is empty)")
        if norm not in ("none", "batch", "layer"):
            raise ValueError(f"unknown expert norm {norm!r}")
        self.out_dim: int = hidden[-1]
        if norm == "none":
            self.net: nn.Module = MLP(in_dim, hidden, dropout)
        else:
            body = MLP(in_dim, hidden[:-1], dropout)
            out = nn.Linear(body.out_dim, hidden[-1])
            n: nn.Module = nn.BatchNorm1d(hidden[-1]) if norm == "batch" else nn.LayerNorm(hidden[-1])
            self.net = nn.Sequential(body, out, n, nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FeatureGate(nn.Module):
    """HoME feature-gate (arXiv 2408.05430, fix 3 "expert underfitting"): x * 2 * sigmoid(x B A).

    B is d x r and A is r x d (a LoRA-style low-rank map). The factor 2 centres the gate on 1, and
    with ``zero_init`` (choice, the default; recipe `HoMEOptions.feature_gate_zero_init`) A starts
    at zeros so the gate starts as the identity: every expert first sees the plain input, then
    learns which input fields to emphasise. (With A = 0 the gradient reaches B only after A has
    moved, as in LoRA.) Without it A keeps PyTorch's default Linear initialisation.
    """

    def __init__(self, dim: int, rank: int, zero_init: bool = True) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)  # B
        self.up = nn.Linear(rank, dim, bias=False)  # A
        if zero_init:
            nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 * torch.sigmoid(self.up(self.down(x))))


class GatedExpert(nn.Module):
    """An `Expert` behind its own optional `FeatureGate` (HoME gives each expert its own view)."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        norm: str = "none",
        dropout: float = 0.0,
        feature_gate_rank: int = 0,
        feature_gate_zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.feature_gate: nn.Module = (
            FeatureGate(in_dim, feature_gate_rank, feature_gate_zero_init)
            if feature_gate_rank > 0
            else nn.Identity()
        )
        self.expert = Expert(in_dim, hidden, norm, dropout)
        self.out_dim: int = self.expert.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expert(self.feature_gate(x))
