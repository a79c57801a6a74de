"""The model pool against a real registry of real exported models (fp32 + int8 companion): a
version is served whole or not at all, the variants that follow a reference move together, and a
slot's error fields clear once it is up to date again.

Three small versions are exported once (about ten seconds) into a template registry; each test
works on its own copy."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recsys_mtl.export import INT8_COMPANION_FILE, MODEL_FILE
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import Registry
from serving.config import ModelRef
from serving.pool import ModelPool
from tests.serving_support import NAME, publish, small_recipe

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:TorchScript will treat type annotations:UserWarning"),
]

FP32 = ModelRef(model=NAME)
INT8 = ModelRef(model=NAME, int8=True)


@pytest.fixture(scope="module")
def template(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with versions 1 (current), 2 and 3 of one small model, each with an int8 build."""
    root = tmp_path_factory.mktemp("pool-template")
    r = small_recipe(recipe)
    for seed in (1, 2, 3):
        publish(root, r, seed=seed, promote=seed == 1, int8_companion=True)
    return root


@pytest.fixture
def reg(template: Path, tmp_path: Path) -> Registry:
    shutil.copytree(template, tmp_path / "registry")
    return Registry(tmp_path / "registry")


def _pool(reg: Registry, on_loaded: Callable[[ModelRef], Any] | None = None) -> ModelPool:
    return ModelPool(reg, warm_up_batch_sizes=(1, 8), on_loaded=on_loaded)


def _versions(pool: ModelPool) -> tuple[str | None, str | None]:
    fp, q = pool.get(FP32), pool.get(INT8)
    return (fp.version if fp else None, q.version if q else None)


def _corrupt(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit in the middle of the weights
    path.write_bytes(bytes(blob))


def _status(pool: ModelPool) -> dict[str, dict[str, Any]]:
    return {s["ref"]: s for s in pool.status()}


@pytest.mark.parametrize("broken", [MODEL_FILE, INT8_COMPANION_FILE])
def test_a_version_with_one_bad_build_is_refused_for_every_variant(reg: Registry, broken: str) -> None:
    """v2's model.pt (or model.int8.pt) fails its checksum while its other build is intact: the
    fp32 and the int8 variants both keep serving v1 (before: the variant whose build was intact
    moved to v2, so half the users got a version the other half had refused)."""
    pool = _pool(reg)
    assert pool.refresh([FP32, INT8]) == []
    assert _versions(pool) == ("1", "1")
    _corrupt(reg.version_dir(NAME, "2") / broken)
    reg.promote(NAME, "2")
    errors = pool.refresh([FP32, INT8])
    assert len(errors) == 2 and all("v2 refused" in e and "sha256 mismatch" in e for e in errors), errors
    build = "primary" if broken == MODEL_FILE else "int8"
    assert all(f"its {build} build failed" in e for e in errors)
    assert _versions(pool) == ("1", "1")
    for s in _status(pool).values():
        assert s["version"] == "1" and "v2 refused" in s["last_error"] and s["last_error_at"]
    # the refused version is not retried on every round, and still not served
    assert len(pool.refresh([FP32, INT8])) == 2 and _versions(pool) == ("1", "1")
    # a good version after it moves both
    reg.promote(NAME, "3")
    assert pool.refresh([FP32, INT8]) == []
    assert _versions(pool) == ("3", "3")


def test_variants_switch_together_and_read_current_once(reg: Registry) -> None:
    """A promote that lands while the pool is bringing the variants up (here: from the pool's own
    on_loaded hook, the first moment a variant could have switched) moves neither variant in that
    round: both switch to the version current when the round read it, in one step."""
    seen: list[tuple[str | None, str | None]] = []
    armed = [False]

    def on_loaded(ref: ModelRef) -> None:
        if not armed[0]:
            return
        seen.append(_versions(pool))
        if len(seen) == 1:
            reg.promote(NAME, "3")  # someone promotes while the round is in progress

    pool = _pool(reg, on_loaded)
    assert pool.refresh([FP32, INT8]) == []
    armed[0] = True
    reg.promote(NAME, "2")
    assert pool.refresh([FP32, INT8]) == []
    # every time a variant reported its switch, both already served v2 (never one on v1)
    assert seen == [("2", "2"), ("2", "2")]
    assert _versions(pool) == ("2", "2")
    assert pool.refresh([FP32, INT8]) == []  # the next round picks up the promote to v3, both again
    assert _versions(pool) == ("3", "3")
    # a pinned reference to the version the followers hold shares their loaded build
    pinned = ModelRef(model=NAME, version="3")
    assert pool.refresh([FP32, INT8, pinned]) == []
    assert pool.get(pinned) is pool.get(FP32)


def test_a_later_successful_load_clears_the_error_fields(reg: Registry) -> None:
    """`GET /models` shows last_error / last_error_at only while they hold: once a slot serves
    what its reference resolves to, both are cleared (before: last_error_at stayed forever)."""
    pool = _pool(reg)
    assert pool.refresh([FP32, INT8]) == []
    for f in (MODEL_FILE, INT8_COMPANION_FILE):
        _corrupt(reg.version_dir(NAME, "2") / f)
    reg.promote(NAME, "2")
    assert pool.refresh([FP32, INT8])
    assert all(s["last_error"] and s["last_error_at"] for s in _status(pool).values())
    # rolled back to what the slots hold: up to date again, nothing to report
    reg.promote(NAME, "1")
    assert pool.refresh([FP32, INT8]) == []
    for s in _status(pool).values():
        assert (s["version"], s["last_error"], s["last_error_at"]) == ("1", None, None)
    # fails again, then a new version loads: cleared by the load
    reg.promote(NAME, "2")
    assert pool.refresh([FP32, INT8])
    reg.promote(NAME, "3")
    assert pool.refresh([FP32, INT8]) == []
    for s in _status(pool).values():
        assert (s["version"], s["last_error"], s["last_error_at"]) == ("3", None, None)
        assert s["loaded_at"]


def test_an_unresolvable_reference_fails_alone(reg: Registry) -> None:
    pool = _pool(reg)
    pinned = ModelRef(model=NAME, version="9")
    errors = pool.refresh([FP32, INT8, pinned])
    assert len(errors) == 1 and "cannot resolve ads_ranker@9" in errors[0]
    assert _versions(pool) == ("1", "1") and pool.get(pinned) is None
    pool.prune([FP32])
    assert [s["ref"] for s in pool.status()] == ["ads_ranker@current"] and pool.get(INT8) is None


def test_a_reload_of_several_models_swaps_each_before_loading_the_next(
    recipe: Recipe, tmp_path: Path
) -> None:
    """Two models move in one round: the first is served at its new version, and its old build is
    no longer held by the pool, before the second one's new build loads. So a reload needs room
    for one more model at a time, not one per model of the config."""
    import gc
    import weakref

    from recsys_mtl.devtools.fixtures import train_small_model
    from recsys_mtl.export import export_model

    reg = Registry(tmp_path / "registry")
    r = small_recipe(recipe)
    other = "other_ranker"
    for seed in (1, 2):
        publish(reg.root, r, seed=seed, promote=seed == 1)
        net, transform = train_small_model(r, seed)
        export_model(net, r, transform, reg, other, promote=seed == 1)
    refs = [FP32, ModelRef(model=other)]
    seen: list[tuple[str, list[str | None], bool]] = []
    old: dict[str, weakref.ref[Any]] = {}

    def on_loaded(ref: ModelRef) -> None:
        if old:
            gc.collect()
            versions = [m.version if (m := pool.get(x)) else None for x in refs]
            seen.append((ref.model, versions, old[ref.model]() is None))

    pool = _pool(reg, on_loaded)
    assert pool.refresh(refs) == []
    old.update({x.model: weakref.ref(pool.get(x)) for x in refs})
    reg.promote(NAME, "2")
    reg.promote(other, "2")
    assert pool.refresh(refs) == []
    # the first model switched (its v1 gone from memory) while the second still served v1
    assert seen == [(NAME, ["2", "1"], True), (other, ["2", "2"], True)]
