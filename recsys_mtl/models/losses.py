"""Training losses: weighted binary cross-entropy, ESMM's product loss, the logistic-hazard NLL.

Every per-task loss is a weighted mean over rows, sum_i w_i l_i / sum_i w_i, with w_i from
`Targets.weights[task]`: 0 where the task's label is missing (so each task averages over its own
sample space, as PLE asks) times the task's `weight_column` (for hazard tasks the per-creative CTR
weight that also makes each creative count once). A batch whose weights are all 0 gives 0.

`total_loss` sums ``loss_weight * task loss`` over the recipe's tasks with loss_weight > 0:
- binary task with a head: BCE on ``<task>_logit``;
- product task (ESMM, Ma et al. SIGIR 2018): BCE of its label on p = prod of its factors'
  probabilities, computed in log space from the factors' logits. With the shipped recipe that is
  CTR on click plus CTCVR on click AND conversion over all impressions; CVR has loss_weight 0, so it
  is never trained on clicked rows only (which would reintroduce the sample selection bias);
- hazard task: the logistic-hazard NLL (Kitada et al., Applied Sciences 2022). Two hazard tasks
  with loss weights lambda and 1 - lambda give the two-term loss lambda l_short + (1-lambda) l_long.

Equations, papers and our choices: (docs/METHODS.md, "Losses").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys_mtl.recipe import Recipe
from recsys_mtl.targets import Targets

_LN2 = math.log(2.0)
# log p of a product task is capped just below 0 so log(1 - p) stays finite: p <= 1 - 1e-7.
_MAX_LOG_P = math.log1p(-1e-7)


def _weighted_mean(loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    w = weights.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp(min=1e-12)


def weighted_bce_with_logits(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum_i w_i BCE(sigmoid(logit_i), y_i) / sum_i w_i, computed from logits (stable)."""
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return _weighted_mean(loss, weights)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurately (Maechler 2012): expm1 near 0, log1p further away.

    Each branch sees an input clamped to its own range, so torch.where never differentiates
    through a branch's singularity (which would turn the gradient into NaN).
    """
    near = torch.log(-torch.expm1(a.clamp(min=-_LN2, max=_MAX_LOG_P)))
    far = torch.log1p(-torch.exp(a.clamp(max=-_LN2)))
    return torch.where(a > -_LN2, near, far)


def product_bce(
    factor_logits: list[torch.Tensor], labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted BCE of ``labels`` on p = prod_k sigmoid(logit_k), in log space.

    log p = sum_k logsigmoid(logit_k), capped at log(1 - 1e-7); log(1 - p) = log1mexp(log p).
    Exact where p is tiny (rare conversions), and finite where p is near 1.
    """
    log_p = factor_logits[0].new_zeros(factor_logits[0].shape)
    for lg in factor_logits:
        log_p = log_p + F.logsigmoid(lg)
    log_p = log_p.clamp(max=_MAX_LOG_P)
    y = labels.to(log_p.dtype)
    loss = -(y * log_p + (1.0 - y) * log1mexp(log_p))
    return _weighted_mean(loss, weights)


def hazard_nll(
    logits: torch.Tensor,
    interval: torch.Tensor,
    event: torch.Tensor,
    weights: torch.Tensor,
    censored_survives: bool = True,
) -> torch.Tensor:
    """Weighted logistic-hazard negative log-likelihood (Kitada et al. 2022, the discrete-time
    hazard of an ad creative's discontinuation).

    For a row with interval index k and event flag d, hazards h_j = sigmoid(phi_j):
        l = -[ sum_{j<k} log(1 - h_j) + d log h_k + (1 - d) log(1 - h_k) ]
    with log h = logsigmoid(phi) and log(1 - h) = logsigmoid(-phi) for stability.

    Censoring (choice, ``censored_survives=True``, what `total_loss` uses): a row censored in
    interval k (d = 0) counts as having survived interval k, i.e. it contributes log(1 - h_k)
    too - the formula above. With ``censored_survives=False`` it is treated as censored at the
    start of interval k and contributes only sum_{j<k} log(1 - h_j) (the "censored before the
    interval" convention). The recipe has no switch for this (TaskSpec is not a model option).

    Args:
        logits: [B, L] phi.
        interval: [B] int, 0-based interval index k of the event or censoring.
        event: [B] 1 = event (discontinued in interval k), 0 = censored.
        weights: [B] row weights.
        censored_survives: the censoring convention above.
    """
    L = logits.shape[1]
    k = interval.to(torch.long).clamp(0, L - 1).unsqueeze(1)  # [B, 1]
    d = event.to(logits.dtype)
    log_surv = F.logsigmoid(-logits)  # log(1 - h_j)
    log_haz = F.logsigmoid(logits)  # log h_j
    before = (torch.arange(L, device=logits.device).unsqueeze(0) < k).to(logits.dtype)
    survived = (log_surv * before).sum(dim=1)
    censored_term = log_surv.gather(1, k).squeeze(1) if censored_survives else torch.zeros_like(d)
    at_k = d * log_haz.gather(1, k).squeeze(1) + (1.0 - d) * censored_term
    return _weighted_mean(-(survived + at_k), weights)


def total_loss(
    recipe: Recipe, outputs: dict[str, torch.Tensor], targets: Targets
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(sum of loss_weight * task loss, {task: unweighted task loss}) over tasks with loss_weight > 0.

    ``outputs`` is the model's forward dict; targets are moved to the outputs' device. The
    per-task losses are still attached to the graph (call ``.item()`` to log them).
    """
    device = next(iter(outputs.values())).device
    total = torch.zeros((), device=device)
    per_task: dict[str, torch.Tensor] = {}
    for t in recipe.tasks:
        if t.loss_weight <= 0:
            continue
        w = targets.weights[t.name].to(device)
        y = targets.labels[t.name].to(device)
        if t.kind == "hazard":
            loss = hazard_nll(outputs[f"{t.name}_logit"], y, targets.events[t.name].to(device), w)
        elif t.product_of:
            loss = product_bce([outputs[f"{f}_logit"] for f in t.product_of], y, w)
        else:
            loss = weighted_bce_with_logits(outputs[f"{t.name}_logit"], y, w)
        per_task[t.name] = loss
        total = total + t.loss_weight * loss
    return total, per_task
