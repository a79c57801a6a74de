"""Cross network: explicit feature crosses on the flat input before the bottom MLP.

DCN-v2 (Wang et al., "DCN V2: Improved Deep & Cross Network", WWW 2021), eq. (1):

    x_{l+1} = x_0 * (W_l x_l + b_l) + x_l

with `*` the element-wise product. After one layer, unit j holds x_0j * sum_k W_jk x_0k: every
pairwise product of input units (a user embedding's units times a creative embedding's, for
instance) is one linear read-out away. A concatenate-then-MLP model has to build such products out
of ReLUs, which it learns slowly; the ranking signal of the synthetic world (and of real ads data)
is largely a user x item bilinear term <z_u, A z_i> (docs/QUALITY_INVESTIGATION.md).

Low rank (DCN-v2 section 3.2, "DCN-Mix" without the mixture): W_l = U_l V_l with U_l: d x r and
V_l: r x d, a recipe option (`model.cross_rank`) for wide inputs (choice: full rank by default).

Equations, paper and our choices: (docs/METHODS.md, "Cross layers (DCN-v2)").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.user_once import Input, dense


class CrossLayer(nn.Module):
    """One DCN-v2 cross: x0 * (W x + b) + x, W full rank or U V of rank ``rank``."""

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is None or rank >= dim:
            self.project: nn.Module = nn.Linear(dim, dim)
        else:
            self.project = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.project(x) + x


class CrossNetwork(nn.Module):
    """``num_layers`` stacked `CrossLayer`s; the output has the input's width.

    Args:
        dim: width of the flat input (concatenated pooled embeddings and dense features).
        num_layers: cross layers (each adds one degree to the polynomial of the input).
        rank: low rank of each layer's matrix (None: full rank).
    """

    def __init__(self, dim: int, num_layers: int, rank: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CrossLayer(dim, rank) for _ in range(num_layers)])
        self.in_dim = dim
        self.out_dim = dim

    def forward(self, x0: Input) -> torch.Tensor:
        x0 = dense(x0)  # x0 * (W x + b) is not linear in x: per candidate
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
