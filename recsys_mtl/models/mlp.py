"""Multi-layer perceptrons: the building block of bottoms, experts and towers.

Where MLPs sit in the model: (docs/METHODS.md, "Notation and the common input")."""

from __future__ import annotations

from torch import nn

from recsys_mtl.models.user_once import Input, UserOnce, linear


class MLP(nn.Module):
    """Stacked ``Linear -> ReLU (-> Dropout)`` layers; the activation follows every layer, the last
    one included, as in MMoE's experts and TorchRec's ``torchrec.modules.mlp.MLP``.

    An empty ``hidden`` list makes an identity (``out_dim == in_dim``), so a recipe can switch a
    bottom or tower off with ``[]``.

    Args:
        in_dim: input width.
        hidden: widths of the layers.
        dropout: dropout probability after each activation (0 disables it).
    """

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = d

    def forward(self, x: Input) -> Input:
        if isinstance(x, UserOnce) and len(self.layers) > 0:  # trace-time: a grouped batch
            first = self.layers[0]
            assert isinstance(first, nn.Linear)
            h = linear(x, first.weight, first.bias)  # the user's columns multiplied once per user
            for layer in self.layers[1:]:
                h = layer(h)
            return h
        return self.layers(x)  # an empty MLP passes a grouped input on as it is
