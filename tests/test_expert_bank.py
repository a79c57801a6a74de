"""ExpertBank: k experts as one batched operation compute what k separate expert modules compute
(forward and gradients, every norm, with and without feature-gates, shared or per-expert input),
and state dicts written before the banks still load, into the same outputs."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.checkpoint import load_full_weights
from recsys_mtl.model_state import predates_expert_banks, read_model_state
from recsys_mtl.models import build_model
from recsys_mtl.models.expert_bank import ExpertBank, bank_groups, legacy_state_template, upgrade_state_dict
from recsys_mtl.models.experts import GatedExpert
from recsys_mtl.recipe import recipe_from_dict

# Written by the code before the banks (commit 2957340, experts as separate modules): per model,
# the recipe, a state dict with BatchNorm statistics moved by three training batches, a batch of
# 16 rows and the eval-mode outputs on it.
LEGACY = Path(__file__).parent / "data" / "legacy_experts.pt"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(bank: ExpertBank, seed: int) -> ExpertBank:
    """Parameters and BatchNorm statistics away from their initial values (zero-initialised A,
    unit norms), so a mixed-up expert index cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if bank.batch_norm is not None:
            bank.batch_norm.running_mean.normal_(0, 0.5, generator=g)  # type: ignore[union-attr]
            bank.batch_norm.running_var.uniform_(0.5, 2.0, generator=g)  # type: ignore[union-attr]
    return bank


CASES = list(itertools.product(["none", "batch", "layer"], [0, 3], [False, True], [True, False]))


@pytest.mark.parametrize(("norm", "rank", "per_expert", "training"), CASES)
def test_bank_equals_separate_experts(norm: str, rank: int, per_expert: bool, training: bool) -> None:
    torch.manual_seed(0)
    bank = _perturbed(ExpertBank(3, 10, [7, 5], norm, 0.0, rank, True, per_expert), seed=1)
    bank.train(training)
    refs = bank.reference_experts()
    x = torch.randn(3, 32, 10) if per_expert else torch.randn(32, 10)
    xb, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = bank(xb)
    assert out.shape == (32, 3, 5)
    ref = torch.stack([e(xr[i] if per_expert else xr) for i, e in enumerate(refs)], dim=1)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    # the same gradients, for the input and for every expert's parameters
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert xb.grad is not None and xr.grad is not None
    torch.testing.assert_close(xb.grad, xr.grad, atol=2e-5, rtol=1e-4)
    grads = _perturbed(ExpertBank(3, 10, [7, 5], norm, 0.0, rank, True, per_expert), seed=2)
    with torch.no_grad():  # the references' gradients, gathered into a bank of the same shape
        for p in grads.parameters():
            p.zero_()
        ref_grads = [_grad_module(e) for e in refs]
        grads.copy_from(ref_grads)
    for (name, p), q in zip(bank.named_parameters(), grads.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q, atol=2e-5, rtol=1e-4, msg=name)
    if training and norm == "batch":  # and the same running statistics after the step
        again = bank.reference_experts()
        for e, r in zip(again, refs, strict=True):
            bn_new = next(m for m in e.modules() if isinstance(m, torch.nn.BatchNorm1d))
            bn_ref = next(m for m in r.modules() if isinstance(m, torch.nn.BatchNorm1d))
            torch.testing.assert_close(bn_new.running_mean, bn_ref.running_mean)
            torch.testing.assert_close(bn_new.running_var, bn_ref.running_var)


def _grad_module(e: GatedExpert) -> GatedExpert:
    """A copy of `e` whose parameters are `e`'s gradients."""
    g = copy.deepcopy(e)
    with torch.no_grad():
        for (_, dst), (name, src) in zip(g.named_parameters(), e.named_parameters(), strict=True):
            assert src.grad is not None, name
            dst.copy_(src.grad)
    return g


def test_round_trip_through_separate_experts() -> None:
    bank = _perturbed(ExpertBank(4, 6, [5, 3], "batch", 0.1, 2, False), seed=3)
    other = ExpertBank(4, 6, [5, 3], "batch", 0.1, 2, False)
    other.copy_from(bank.reference_experts())
    for (name, a), b in zip(bank.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_bank_groups_keep_the_experts_order() -> None:
    assert bank_groups(["x", "x", "x"]) == [("x", 0, 3)]
    assert bank_groups(["sh", "sh", "cat_a", "in_a", "in_b", "in_a"]) == [
        ("sh", 0, 2),
        ("cat_a", 2, 3),
        ("in_a", 3, 4),
        ("in_b", 4, 5),
        ("in_a", 5, 6),
    ]


def _legacy() -> dict[str, dict]:
    return torch.load(LEGACY, weights_only=False)


@pytest.mark.parametrize("name", ["mmoe", "ple", "home", "dtrn_mmoe", "home_layer"])
def test_a_state_dict_from_before_the_banks_loads_into_the_same_outputs(name: str) -> None:
    case = _legacy()[name]
    model = build_model(recipe_from_dict(case["recipe"])).eval()
    with pytest.raises(RuntimeError):  # the old keys do not fit the banks as they are
        model.load_state_dict(case["state"])
    model.load_state_dict(upgrade_state_dict(model, case["state"]))
    sparse = KeyedJaggedTensor(keys=case["keys"], values=case["values"], lengths=case["lengths"])
    with torch.no_grad():
        out = model(sparse, case["dense"])
    assert set(out) == set(case["outputs"])
    for k, v in case["outputs"].items():
        torch.testing.assert_close(out[k], v, atol=1e-5, rtol=1e-5, msg=k)
    # a current state dict passes through unchanged
    current = model.state_dict()
    assert upgrade_state_dict(model, current).keys() == current.keys()


def test_warm_start_weights_from_before_the_banks() -> None:
    """A registry version's weights.pt written before the banks warm-starts a new model."""
    case = _legacy()["home"]
    model = build_model(recipe_from_dict(case["recipe"])).eval()
    load_full_weights(model, case["state"])
    sparse = KeyedJaggedTensor(keys=case["keys"], values=case["values"], lengths=case["lengths"])
    with torch.no_grad():
        out = model(sparse, case["dense"])
    torch.testing.assert_close(out["ctr"], case["outputs"]["ctr"], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_checkpoint_from_before_the_banks_is_read_and_converted(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    case = _legacy()["mmoe"]
    model = build_model(recipe_from_dict(case["recipe"])).eval()
    dcp.save({"model": case["state"]}, checkpoint_id=str(tmp_path / "old"), no_dist=True)
    assert predates_expert_banks(model, tmp_path / "old")
    model.load_state_dict(read_model_state(model, tmp_path / "old", no_dist=True))
    sparse = KeyedJaggedTensor(keys=case["keys"], values=case["values"], lengths=case["lengths"])
    with torch.no_grad():
        out = model(sparse, case["dense"])
    torch.testing.assert_close(out["ctr"], case["outputs"]["ctr"], atol=1e-5, rtol=1e-5)
    # the legacy template names exactly the old checkpoint's keys
    assert set(legacy_state_template(model, model.state_dict())) == set(case["state"])
    # and a checkpoint in the current layout is read as it is
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path / "new"), no_dist=True)
    assert not predates_expert_banks(model, tmp_path / "new")
    state = read_model_state(model, tmp_path / "new", no_dist=True)
    assert state.keys() == model.state_dict().keys()
