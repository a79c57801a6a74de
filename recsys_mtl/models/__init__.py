"""Multi-task ranking models on TorchRec: Shared-Bottom, MMoE, PLE, HoME, DTRN; heads for binary,
ESMM product and discrete-time hazard tasks; their losses and MoE diagnostics.

Public API:
    build_model(recipe, embedding_device=None) -> MultiTaskModel
    MultiTaskModel.forward(sparse: KeyedJaggedTensor, dense: Tensor) -> Dict[str, Tensor]
    MultiTaskModel.forward_with_internals(sparse, dense) -> (outputs, gates, experts)
    MultiTaskModel.forward_grouped(sparse, dense, group) -> the same outputs per candidate, on a
        grouped batch (user rows, then candidate rows): what is exported (docs/METHODS.md,
        "User-side work once")
    total_loss(recipe, outputs, targets) -> (loss, {task: loss})
    expert_diagnostics(model, batches, zero_threshold=1e-6) -> JSON-able dict

Equations, papers and our choices: (docs/METHODS.md, "Notation and the common input" and after).
"""

from recsys_mtl.models.diagnostics import expert_diagnostics
from recsys_mtl.models.losses import hazard_nll, product_bce, total_loss, weighted_bce_with_logits
from recsys_mtl.models.model import MultiTaskModel, build_model

__all__ = [
    "MultiTaskModel",
    "build_model",
    "expert_diagnostics",
    "hazard_nll",
    "product_bce",
    "total_loss",
    "weighted_bce_with_logits",
]
