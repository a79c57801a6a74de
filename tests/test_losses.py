"""Losses: weighted BCE, ESMM's product loss in log space, the logistic-hazard NLL (checked against
numbers worked out by hand, censoring included), and total_loss over the shipped recipe."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import pytest
import torch

from recsys_mtl.models import build_model
from recsys_mtl.models.losses import (
    hazard_nll,
    log1mexp,
    product_bce,
    total_loss,
    weighted_bce_with_logits,
)
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform
from tests.conftest import make_raw_table


def test_hazard_nll_hand_computed() -> None:
    # One grid of L = 3 intervals with hazards h = (0.5, 0.25, 0.75), i.e. logits (0, ln 1/3, ln 3).
    # l = -[ sum_{j<k} log(1 - h_j) + d log h_k + (1 - d) log(1 - h_k) ]
    #   a) k=1, d=1 (event in interval 1):   -[ln 0.5 + ln 0.25]           = ln 2 + ln 4     = 2.0794415
    #   b) k=2, d=0 (censored in interval 2, counts as having survived it):
    #                                        -[ln 0.5 + ln 0.75 + ln 0.25] = ln 2 + ln 4/3 + ln 4 = 2.3671236
    #   c) k=0, d=0 (censored in the first interval): -ln 0.5             = 0.6931472
    #   d) k=2, d=1 (event in interval 2):   -[ln 0.5 + ln 0.75 + ln 0.75] = ln 2 + 2 ln 4/3 = 1.2685113
    # weights (1, 2, 1, 0.5): (2.0794415 + 2 * 2.3671236 + 0.6931472 + 0.5 * 1.2685113) / 4.5 = 1.8091315
    phi = torch.tensor([0.0, math.log(1 / 3), math.log(3)]).repeat(4, 1)
    k = torch.tensor([1, 2, 0, 2])
    d = torch.tensor([1.0, 0.0, 0.0, 1.0])
    per_row = [2.0794415, 2.3671236, 0.6931472, 1.2685113]
    for i, want in enumerate(per_row):
        got = hazard_nll(phi[i : i + 1], k[i : i + 1], d[i : i + 1], torch.ones(1))
        assert float(got) == pytest.approx(want, abs=1e-6), i
    got = hazard_nll(phi, k, d, torch.tensor([1.0, 2.0, 1.0, 0.5]))
    assert float(got) == pytest.approx(1.8091315, abs=1e-6)
    # the other censoring convention (censored at the start of interval k) drops log(1 - h_k):
    #   b) -[ln 0.5 + ln 0.75] = 0.9808293;  c) nothing survived before interval 0: 0
    other = [2.0794415, 0.9808293, 0.0, 1.2685113]
    for i, want in enumerate(other):
        got = hazard_nll(phi[i : i + 1], k[i : i + 1], d[i : i + 1], torch.ones(1), censored_survives=False)
        assert float(got) == pytest.approx(want, abs=1e-6), i


def test_hazard_nll_weights_and_stability() -> None:
    phi = torch.tensor([[40.0, -40.0], [-40.0, 40.0], [0.3, -0.2]], requires_grad=True)
    k, d = torch.tensor([0, 1, 1]), torch.tensor([1.0, 1.0, 0.0])
    # zero-weight rows do not count, and the mean is over the weights that remain
    only_last = hazard_nll(phi, k, d, torch.tensor([0.0, 0.0, 3.0]))
    alone = hazard_nll(phi[2:], k[2:], d[2:], torch.ones(1))
    assert float(only_last) == pytest.approx(float(alone), abs=1e-6)
    # confident and right: near zero loss, finite gradients, even at |logit| = 40
    loss = hazard_nll(phi[:2], k[:2], d[:2], torch.ones(2))
    assert 0 <= float(loss) < 1e-8
    loss.backward()
    assert torch.isfinite(phi.grad).all()
    # all weights zero: 0, not NaN
    assert float(hazard_nll(phi, k, d, torch.zeros(3))) == 0.0


def test_weighted_bce() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0, 30.0])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    w = torch.tensor([1.0, 0.5, 0.0, 2.0])
    p = torch.sigmoid(logits.double())
    manual = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    want = float((manual * w).sum() / w.sum())
    assert float(weighted_bce_with_logits(logits, y, w)) == pytest.approx(want, rel=1e-6)


def test_log1mexp() -> None:
    xs = [-1e-6, -0.1, -0.69, -0.7, -5.0, -50.0]
    getcontext().prec = 60  # reference in 60-digit decimals: float64 log(1 - exp(-50)) is just 0
    ref = torch.tensor([float((1 - Decimal(x).exp()).ln()) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(torch.tensor(xs, dtype=torch.float64)), ref, rtol=1e-9, atol=0)
    x = torch.tensor([-1e-6, -40.0, -2.0], requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_esmm_product_loss() -> None:
    ctr = torch.tensor([0.3, -2.0, 1.5, 4.0, 0.0])
    cvr = torch.tensor([-1.0, 0.5, -3.0, 2.0, 0.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])  # click AND conversion
    w = torch.ones(5)
    p = (torch.sigmoid(ctr) * torch.sigmoid(cvr)).double()  # pCTCVR = pCTR * pCVR
    naive = float((-(y * torch.log(p) + (1 - y) * torch.log1p(-p))).mean())
    assert float(product_bce([ctr, cvr], y, w)) == pytest.approx(naive, rel=1e-5)
    # extreme logits: the log-space form stays finite where a naive product would give log(0)
    big = torch.tensor([60.0, -60.0], requires_grad=True)
    loss = product_bce([big, big.flip(0)], torch.tensor([0.0, 1.0]), torch.ones(2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    # p -> 1 with label 0 is capped (p <= 1 - 1e-7), not infinite
    sure = torch.tensor([80.0])
    assert 0 < float(product_bce([sure, sure], torch.zeros(1), torch.ones(1))) < 17


def test_total_loss_on_shipped_recipe(recipe: Recipe) -> None:
    d = recipe.to_dict()
    for f in d["features"]:
        if f.get("hash_size"):
            f["hash_size"] = min(f["hash_size"], 97)
    d["model"] = {"type": "mmoe", "num_experts": 2, "expert_hidden": [8], "tower_hidden": [4]}
    r = recipe_from_dict(d)
    model = build_model(r)
    table = make_raw_table(r, 64, seed=3)
    b, tg = FeatureTransform.from_recipe(r)(table), targets_from_table(r, table)
    out = model(b.sparse, b.dense)
    loss, per = total_loss(r, out, tg)
    # cvr has loss_weight 0: it is trained only through ctcvr, over all impressions (ESMM)
    assert set(per) == {"ctr", "ctcvr", "hazard_short", "hazard_long"}
    want = per["ctr"] + per["ctcvr"] + 0.5 * per["hazard_short"] + 0.5 * per["hazard_long"]
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    # each term is the documented loss on the documented outputs
    w = tg.weights
    assert float(per["ctr"]) == pytest.approx(
        float(weighted_bce_with_logits(out["ctr_logit"], tg.labels["ctr"], w["ctr"])), rel=1e-6
    )
    ctcvr_label = torch.tensor(
        table.column("click").to_numpy() * table.column("conversion").to_numpy()
    ).float()
    assert torch.equal(tg.labels["ctcvr"], ctcvr_label)
    assert float(per["ctcvr"]) == pytest.approx(
        float(product_bce([out["ctr_logit"], out["cvr_logit"]], ctcvr_label, w["ctcvr"])), rel=1e-6
    )
    # hazard rows are weighted by the per-creative weight column
    hw = torch.tensor(table.column("hazard_weight").to_numpy())
    torch.testing.assert_close(w["hazard_short"], hw)
    h = "hazard_short"
    assert float(per[h]) == pytest.approx(
        float(hazard_nll(out[h + "_logit"], tg.labels[h], tg.events[h], hw)), rel=1e-6
    )
    loss.backward()
    assert model.heads.heads["cvr"].weight.grad is not None  # cvr learns through ctcvr
