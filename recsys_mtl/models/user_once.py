"""The shared input of a grouped batch: the request-level part once per user, the rest per candidate.

A score request ranks B candidates for one user: the user's features (and the request's context)
are the same in every row. Written per candidate, the model embeds and pools the user's behaviour
sequences B times and multiplies the user's columns of the input by the first layers' weights B
times. A grouped batch (`recsys_mtl.transform.FeatureBatch` with a ``group``) holds the
request-level features once per user (U user rows) and the candidates' own features per candidate
(B rows), with ``group[b]`` the user row of candidate b (docs/METHODS.md, "User-side work once").

`UserOnce` is the model input x of such a batch, kept in its two parts: ``user`` [U, in_u] (the
columns of request-level features) and ``item`` [B, in_i] (every other column). A layer that is
linear in x computes

    x W^T + b = item W_i^T + b + (user W_u^T)[group]

so the user's part is multiplied once per user, not once per candidate (`linear`); any other layer
reads the per-candidate x rebuilt in its original column order (`full`, computed once and kept).
Both are exact: the same products, summed in another order (float rounding only).

This is a plain Python object that `torch.fx` traces through: the exported graph holds only the
tensor operations, and every branch below is decided at trace time by the type of x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class UserOnce:
    """x of a grouped batch in two parts (see the module docstring).

    Args:
        user: [U, in_u] the request-level columns, one row per user.
        item: [B, in_i] the other columns, one row per candidate.
        group: [B] int64, the user row of each candidate.
        user_cols, item_cols: [in_u], [in_i] int64, where those columns sit in x.
        order: [in] int64, the inverse permutation: x = cat([item, user[group]], 1)[:, order].
    """

    def __init__(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        group: torch.Tensor,
        user_cols: torch.Tensor,
        item_cols: torch.Tensor,
        order: torch.Tensor,
    ) -> None:
        self.user = user
        self.item = item
        self.group = group
        self.user_cols = user_cols
        self.item_cols = item_cols
        self.order = order
        self._full: torch.Tensor | None = None

    def full(self) -> torch.Tensor:
        """[B, in]: x per candidate in its original column order (built once, then reused)."""
        if self._full is None:
            both = torch.cat([self.item, self.user.index_select(0, self.group)], dim=1)
            self._full = both.index_select(1, self.order)
        return self._full

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """F.linear(x, weight, bias) with the user columns' product computed once per user."""
        # (W_u x_u + b) per user, gathered per candidate, then W_i x_i accumulated into it in place:
        # one [B, out] buffer written by the gather and updated by the product, as the per-candidate
        # product's bias broadcast would be (a separate add of two [B, out] tensors cost as much as
        # the product saved: docs/BENCHMARKS.md, "User-side work once")
        per_user = F.linear(self.user, weight.index_select(1, self.user_cols), bias)
        out = per_user.index_select(0, self.group)
        return out.addmm_(self.item, weight.index_select(1, self.item_cols).t())


Input = torch.Tensor | UserOnce


def dense(x: Input) -> torch.Tensor:
    """x as one [B, in] tensor (a layer that is not linear in x reads it whole)."""
    return x.full() if isinstance(x, UserOnce) else x


def linear(x: Input, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear on x, split by user and candidate when x is a `UserOnce`."""
    if isinstance(x, UserOnce):  # decided at trace time: the graph holds one form
        return x.linear(weight, bias)
    return F.linear(x, weight, bias)
