"""Mixture-of-experts diagnostics (the faults HoME, arXiv 2408.05430, is about): expert collapse
shows as experts whose activations are (near) zero most of the time, expert degradation and
underfitting as gates that put (almost) no weight on some experts.

They come from `MultiTaskModel.forward_with_internals`, which runs the same computation as the
exported `forward` but also returns gate weights and expert outputs, so diagnosing never changes
the scripted model.

What each number means: (docs/METHODS.md, "Expert health diagnostics").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.models.model import MultiTaskModel

DEFAULT_ZERO_THRESHOLD = 1e-6


def _as_inputs(batch: Any) -> tuple[KeyedJaggedTensor, torch.Tensor]:
    """A `FeatureBatch` (``.sparse``/``.dense``) or a (sparse, dense) pair."""
    if hasattr(batch, "sparse") and hasattr(batch, "dense"):
        return batch.sparse, batch.dense
    sparse, dense = batch
    return sparse, dense


@torch.no_grad()
def expert_diagnostics(
    model: MultiTaskModel, batches: Iterable[Any], zero_threshold: float = DEFAULT_ZERO_THRESHOLD
) -> dict[str, Any]:
    """Expert usage over ``batches`` (run in eval mode; the model's mode is restored).

    Returns a JSON-able dict:
        gate_weights   {task: [mean weight per expert]} of the gate that feeds the task's tower,
                       in the order of ``gate_experts[task]``;
        gate_experts   {task: [expert names]};
        zero_share     {expert: share of its activations with |a| < zero_threshold}, over all
                       output units and rows (an expert run on several task inputs, as in
                       DTRN + MMoE, pools all of them: "expert_0@ctr" counts as "expert_0");
        gates          {gate key: {"experts": [names], "mean_weight": [...]}} for every gate,
                       including PLE's lower levels, HoME's level-1 and self-gates;
        zero_threshold the threshold used; rows: rows seen.
    Models without experts (shared_bottom, dtrn without MMoE) give empty mappings.
    """
    was_training = model.training
    model.eval()
    gate_sum: dict[str, torch.Tensor] = {}
    zero_count: dict[str, float] = {}
    total_count: dict[str, float] = {}
    rows = 0
    try:
        for batch in batches:
            sparse, dense = _as_inputs(batch)
            _, gates, experts = model.forward_with_internals(sparse, dense)
            rows += int(dense.shape[0])
            for k, g in gates.items():
                s = g.double().sum(dim=0)
                gate_sum[k] = gate_sum[k] + s if k in gate_sum else s
            for k, a in experts.items():
                name = k.split("@", 1)[0]
                zero_count[name] = zero_count.get(name, 0.0) + float((a.abs() < zero_threshold).sum())
                total_count[name] = total_count.get(name, 0.0) + float(a.numel())
    finally:
        model.train(was_training)
    gate_experts = model.gate_experts
    means: dict[str, list[float]] = {k: (v / max(rows, 1)).tolist() for k, v in gate_sum.items()}
    task_gates = model.task_gates
    return {
        "gate_weights": {t: means[g] for t, g in task_gates.items() if g in means},
        "gate_experts": {t: list(gate_experts[g]) for t, g in task_gates.items() if g in means},
        "zero_share": {n: zero_count[n] / total_count[n] for n in zero_count if total_count[n] > 0},
        "gates": {k: {"experts": list(gate_experts.get(k, [])), "mean_weight": v} for k, v in means.items()},
        "zero_threshold": zero_threshold,
        "rows": rows,
    }
