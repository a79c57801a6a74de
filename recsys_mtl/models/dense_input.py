"""The dense part of the shared input: scalar features as they are, vector features projected.

A vector feature (a creative's image/text embedding from a pretrained encoder, `dim` values plus a
missing indicator) enters the shared input through a learned linear projection to its
`embedding_dim` columns, as Kitada et al. (2022, "Ad Creative Discontinuation Prediction with
Multi-Modal Multi-Task Neural Survival Networks") feed image and text features into their shared
layers: the projection learns which directions of the encoder's space matter for the tasks, and its
width keeps a 256- or 768-dim vector from crowding out the ids and statistics. The missing indicator
is one of the projection's inputs, so "no vector" gets a learned offset instead of reading as the
origin of the encoder's space. (docs/METHODS.md, "Content vectors".)

Input columns follow `recsys_mtl.recipe.dense_layout`: the scalars first, then each vector's block.
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.recipe import FeatureSpec, dense_layout


class DenseInput(nn.Module):
    """[B, dense width] -> [B, scalars + sum of projection widths]: scalars, then each projection.

    Attributes:
        projections: per vector feature (recipe order) a `nn.Linear(dense_width, embedding_dim)`.
        out_dim: width of the output.
    """

    def __init__(self, features: list[FeatureSpec]) -> None:
        super().__init__()
        layout = dense_layout(features)
        vectors = [f for f in features if f.kind == "vector"]
        self.num_scalars: int = sum(1 for f in features if f.kind == "dense")
        self.has_vectors: bool = len(vectors) > 0
        # python ints (build-time constants: FX bakes the slices in, TorchScript sees List[int])
        self.starts: list[int] = [layout[f.name][0] for f in vectors]
        self.widths: list[int] = [layout[f.name][1] for f in vectors]
        self.projections = nn.ModuleList(
            [nn.Linear(layout[f.name][1], int(f.embedding_dim or 0)) for f in vectors]
        )
        self.out_dim: int = self.num_scalars + sum(int(f.embedding_dim or 0) for f in vectors)
        # per output column: does it come from a request-level (user/context) feature? Each output
        # column reads one feature, so a grouped batch can take it from that feature's rows.
        self.out_request_level: list[bool] = [f.request_level for f in features if f.kind == "dense"] + [
            f.request_level for f in vectors for _ in range(int(f.embedding_dim or 0))
        ]
        # the same for the raw input columns (`dense_layout`), which the towers' side inputs read
        raw = [False] * sum(w for _, w in layout.values())
        for f in features:
            if f.name in layout and f.request_level:
                start, width = layout[f.name]
                raw[start : start + width] = [True] * width
        self.raw_request_level: list[bool] = raw
        # training-only noise on each vector's values (not on its missing flag), per column
        noise = torch.zeros(sum(f.dense_width for f in features if f.kind in ("dense", "vector")))
        for f in vectors:
            start = layout[f.name][0]
            noise[start : start + int(f.dim or 0)] = f.train_noise
        self.has_noise: bool = bool((noise > 0).any())
        self.register_buffer("noise_std", noise, persistent=False)  # from the recipe: not in checkpoints

    def augment(self, dense: torch.Tensor) -> torch.Tensor:
        """`dense` with the vectors' `train_noise` added, in training mode only: every reader of the
        vectors (this projection and the towers' side inputs) sees the same noisy row. Exported
        models are traced in eval mode, so the artifact carries no noise."""
        if self.training and self.has_noise:
            return dense + torch.randn_like(dense) * self.noise_std
        return dense

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        if not self.has_vectors:  # build-time flag: recipes without vectors keep the old graph
            return dense
        parts = [dense[:, : self.num_scalars]]
        for i, proj in enumerate(self.projections):
            parts.append(proj(dense[:, self.starts[i] : self.starts[i] + self.widths[i]]))
        return torch.cat(parts, dim=1)
