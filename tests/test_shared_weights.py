"""`load_model(share_weights=True)`: an fp32 model's tensors backed by its weights.pt mapped from the
file (what `serve --workers N` uses so the workers hold one copy). Scores must not change by a bit;
the tensors must really live in the file's mapping; anything unusable leaves the model its own copy.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys_mtl.loader import LoadedModel, load_model
from recsys_mtl.recipe import Recipe
from tests.conftest import make_raw_table
from tests.serving_support import NAME, publish, small_recipe


@pytest.fixture(scope="module")
def registry(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1: fp32 with an int8 companion, promoted."""
    root = tmp_path_factory.mktemp("shared") / "registry"
    publish(root, small_recipe(recipe), seed=1, int8_companion=True)
    return root


def _mapped_from(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from `path`."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def _in_file(model: LoadedModel, path: Path) -> dict[str, bool]:
    """For each of the model's tensors: does its memory lie in a mapping of `path`?"""
    ranges = _mapped_from(path)
    module = model.artifact.module  # type: ignore[attr-defined]
    return {
        name: any(lo <= t.data_ptr() < hi for lo, hi in ranges)
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if t.numel()
    }


def test_shared_weights_score_exactly_the_same_from_the_file(registry: Path, recipe: Recipe) -> None:
    rows: pa.Table = make_raw_table(small_recipe(recipe), 64, seed=5)
    own = load_model(registry, NAME)
    shared = load_model(registry, NAME, share_weights=True)
    weights = registry / NAME / "1" / "weights.pt"
    saved = set(torch.load(weights, mmap=True, weights_only=True))
    # every tensor weights.pt holds is read from the file (the rest: a few index buffers that are
    # not part of the state dict); the private load holds none there
    assert {k for k, mapped in _in_file(shared, weights).items() if mapped} == saved
    assert not any(_in_file(own, weights).values())
    shared.validate()  # the manifest's golden request, as the server checks before serving
    a, b = own.score(rows), shared.score(rows)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    own_state = own.artifact.module.state_dict()  # type: ignore[attr-defined]
    for k, t in shared.artifact.module.state_dict().items():  # type: ignore[attr-defined]
        assert torch.equal(t, own_state[k]), k


def test_int8_builds_keep_their_own_tensors(registry: Path) -> None:
    int8 = load_model(registry, NAME, int8=True, share_weights=True)
    assert not any(_in_file(int8, registry / NAME / "1" / "weights.pt").values())
    int8.validate()


def test_an_unusable_weights_file_leaves_the_model_its_own_copy(
    registry: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    weights = root / NAME / "1" / "weights.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # no longer the sha256 of the manifest
    weights.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="recsys_mtl.loader"):
        model = load_model(root, NAME, share_weights=True)
    assert "weights.pt not shared" in caplog.text
    assert not any(_in_file(model, weights).values())
    model.validate()
