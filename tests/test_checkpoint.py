"""recsys_mtl.checkpoint on its own, on real directories: a save/load round trip of a sharded model
under a 1-process gloo group (weights, both optimizers, the RNG, the data-parallel tables' optimizer,
and training that continues exactly as it would have), the latest.json pointer (moved only after a
complete save, crafted or corrupt pointers refused), only the last KEEP checkpoints kept, weights
into a plain unsharded model, and warm-start weights read from a registry against its manifest.

The full trainer's kill-and-resume and N-rank -> 1-rank paths are tests/test_training.py's; these
are the pieces under them. About 7 s (one small model, a few optimizer steps, in this process).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from recsys_mtl.checkpoint import (
    CHECKPOINTS,
    KEEP,
    LATEST,
    TABLE_OPTIM,
    checkpoints_dir,
    latest_checkpoint,
    load_full_weights,
    load_model_weights,
    load_training_checkpoint,
    registry_weights,
    save_training_checkpoint,
)
from recsys_mtl.distributed import (
    DistContext,
    ReplicatedTableOptimizer,
    dense_optimizer,
    init_distributed,
    replicated_table_optimizer,
    shard_model,
    shutdown,
)
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import CURRENT_FILE, IntegrityError, Registry, RegistryError
from recsys_mtl.run import RunError
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform
from tests.conftest import make_raw_table
from tests.serving_support import small_recipe


@pytest.fixture(scope="module")
def group() -> Iterator[DistContext]:
    """A 1-process gloo group for this module (what `recsys-mtl train` starts when nothing
    launched it), destroyed afterwards."""
    ctx = init_distributed("cpu")
    yield ctx
    shutdown(ctx)


@pytest.fixture(scope="module")
def small(recipe: Recipe) -> Recipe:
    return small_recipe(recipe)


@dataclass
class Trainee:
    """What the trainer builds: the DMP model, the dense optimizer, the data-parallel tables' one."""

    model: nn.Module
    dense: torch.optim.Optimizer
    tables: ReplicatedTableOptimizer | None


def build(recipe: Recipe, ctx: DistContext, seed: int) -> Trainee:
    torch.manual_seed(seed)
    model = shard_model(build_model(recipe, embedding_device=torch.device("meta")), recipe, ctx)
    dense = dense_optimizer(
        recipe.training.dense_optimizer, [p for n, p in model.named_parameters() if "sparse_arch." not in n]
    )
    return Trainee(model, dense, replicated_table_optimizer(recipe, model))


def train(t: Trainee, recipe: Recipe, seeds: list[int]) -> list[float]:
    transform = FeatureTransform.from_recipe(recipe)
    losses = []
    for seed in seeds:
        table = make_raw_table(recipe, 128, seed=seed)
        b = transform(table)
        loss, _ = total_loss(recipe, t.model(b.sparse, b.dense), targets_from_table(recipe, table))
        t.dense.zero_grad()
        if t.tables is not None:
            t.tables.zero_grad()
        loss.backward()  # the fused sparse optimizer updates the sharded tables here
        t.dense.step()
        if t.tables is not None:
            t.tables.step()
        losses.append(float(loss.detach()))
    return losses


def local(x: Any) -> torch.Tensor:
    """A state-dict value as one local tensor (a 1-rank ShardedTensor has one shard: the table)."""
    if hasattr(x, "local_shards"):
        (shard,) = x.local_shards()
        return shard.tensor
    return x


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            assert_same_state(x, y)
        elif isinstance(x, list | tuple):
            assert len(x) == len(y), k
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                assert_same_state({f"{k}[{i}]": u}, {f"{k}[{i}]": v})
        elif isinstance(x, torch.Tensor) or hasattr(x, "local_shards"):
            assert torch.equal(local(x), local(y)), k
        else:
            assert x == y, k


def progress(step: int) -> dict[str, Any]:
    return {"step": step, "samples": step * 128, "loss_curve": [{"step": step, "loss": 0.5}], "seconds": 1.0}


# ---- save and load ---------------------------------------------------------------------------------


def test_save_then_load_restores_everything_and_training_continues_identically(
    group: DistContext, small: Recipe, tmp_path: Path
) -> None:
    a = build(small, group, seed=0)
    assert a.tables is not None  # the small recipe has data-parallel tables: their optimizer too
    train(a, small, [1, 2])
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    ck = save_training_checkpoint(tmp_path, a.model, a.dense, progress(2), group.rank, a.tables)
    assert ck == tmp_path / CHECKPOINTS / "step-00000002"
    for f in (".metadata", "dense_optim.pt", TABLE_OPTIM, "rng-rank0.pt", "progress.json"):
        assert (ck / f).is_file(), f
    assert json.loads((checkpoints_dir(tmp_path) / LATEST).read_text()) == {"step": 2, "dir": ck.name}

    b = build(small, group, seed=99)  # other initial weights
    torch.manual_seed(5)  # and another RNG state
    load_training_checkpoint(ck, b.model, b.dense, group.rank, b.tables)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    assert_same_state(a.dense.state_dict(), b.dense.state_dict())
    assert b.tables is not None
    assert_same_state(a.tables.state_dict(), b.tables.state_dict())
    assert_same_state(a.model.fused_optimizer.state_dict(), b.model.fused_optimizer.state_dict())
    # the point of all of it: the resumed model trains on exactly as the original does
    assert train(a, small, [3, 4]) == train(b, small, [3, 4])
    assert_same_state(a.model.state_dict(), b.model.state_dict())


def test_latest_checkpoint_returns_the_pointer_and_its_progress(
    group: DistContext, small: Recipe, tmp_path: Path
) -> None:
    assert latest_checkpoint(tmp_path) is None  # no checkpoints at all
    t = build(small, group, seed=0)
    ck = save_training_checkpoint(tmp_path, t.model, t.dense, progress(7), group.rank, t.tables)
    assert latest_checkpoint(tmp_path) == (ck, progress(7))


def test_only_the_last_checkpoints_stay(group: DistContext, small: Recipe, tmp_path: Path) -> None:
    t = build(small, group, seed=0)
    for step in (10, 20, 30, 40):
        save_training_checkpoint(tmp_path, t.model, t.dense, progress(step), group.rank, t.tables)
    kept = sorted(p.name for p in checkpoints_dir(tmp_path).iterdir() if p.is_dir())
    assert kept == ["step-00000030", "step-00000040"] and len(kept) == KEEP
    ck, prog = latest_checkpoint(tmp_path) or (None, None)
    assert ck is not None and ck.name == "step-00000040" and prog == progress(40)


def test_a_save_that_fails_before_the_pointer_moves_leaves_the_last_good_one(
    group: DistContext, small: Recipe, tmp_path: Path
) -> None:
    """The pointer moves only after every file is written: a save that fails half-way (here its
    progress cannot be written as JSON) leaves latest.json on the previous, complete checkpoint,
    which still loads."""
    t = build(small, group, seed=0)
    train(t, small, [1])
    good = save_training_checkpoint(tmp_path, t.model, t.dense, progress(1), group.rank, t.tables)
    pointer = (checkpoints_dir(tmp_path) / LATEST).read_bytes()
    train(t, small, [2])
    with pytest.raises(ValueError):
        save_training_checkpoint(
            tmp_path, t.model, t.dense, {**progress(2), "seconds": math.nan}, group.rank, t.tables
        )
    assert (checkpoints_dir(tmp_path) / LATEST).read_bytes() == pointer
    assert latest_checkpoint(tmp_path) == (good, progress(1))
    half = checkpoints_dir(tmp_path) / "step-00000002"
    assert half.is_dir() and not (half / "progress.json").exists()
    assert not [p for p in half.iterdir() if p.name.startswith(".progress.json")]  # no temp file left
    fresh = build(small, group, seed=3)
    load_training_checkpoint(good, fresh.model, fresh.dense, group.rank, fresh.tables)
    before = build(small, group, seed=0)
    train(before, small, [1])
    assert_same_state(before.model.state_dict(), fresh.model.state_dict())


def test_table_optimizer_state_of_another_plan_starts_afresh(
    group: DistContext, small: Recipe, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint without the data-parallel tables' optimizer state (written under a plan that
    had none of them here) still loads: the weights do, that optimizer restarts, with a log line."""
    a = build(small, group, seed=0)
    train(a, small, [1])
    ck = save_training_checkpoint(tmp_path, a.model, a.dense, progress(1), group.rank, None)
    assert not (ck / TABLE_OPTIM).exists()
    b = build(small, group, seed=8)
    with caplog.at_level(logging.INFO, logger="recsys_mtl.checkpoint"):
        load_training_checkpoint(ck, b.model, b.dense, group.rank, b.tables)
    assert "optimizer starts afresh" in caplog.text
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    untouched = build(small, group, seed=8)
    assert b.tables is not None and untouched.tables is not None and a.tables is not None
    assert_same_state(untouched.tables.state_dict(), b.tables.state_dict())
    with pytest.raises(AssertionError):  # ... not the trained state of `a`
        assert_same_state(a.tables.state_dict(), b.tables.state_dict())


def test_weights_load_into_a_plain_unsharded_model(group: DistContext, small: Recipe, tmp_path: Path) -> None:
    t = build(small, group, seed=0)
    train(t, small, [1, 2])
    ck = save_training_checkpoint(tmp_path, t.model, t.dense, progress(2), group.rank, t.tables)
    plain = build_model(small)  # CPU tables, no DMP: what evaluation and export load into
    load_model_weights(plain, ck)
    assert_same_state(t.model.state_dict(), plain.state_dict())


# ---- the pointer -----------------------------------------------------------------------------------


def _checkpoint_stub(run: Path, name: str = "step-00000005") -> Path:
    ck = checkpoints_dir(run) / name
    ck.mkdir(parents=True)
    (ck / "progress.json").write_text(json.dumps(progress(5)))
    return ck


@pytest.mark.parametrize(
    "pointer",
    [
        '{"step": 5, "dir": "../../etc"}',
        '{"step": 5, "dir": "../step-00000005"}',
        '{"step": 5, "dir": "/tmp"}',
        '{"step": 5, "dir": ".hidden"}',
        '{"step": 5, "dir": ""}',
        '{"step": 5, "dir": 5}',
        '{"step": 5, "dir": null}',
        '{"step": 5}',
        '{"step": 5, "dir": "step-00000009"}',  # a checkpoint that is not there
        "[]",
        "null",
        '{"step": 5, "dir": "step-0000',  # truncated
        "",
    ],
)
def test_a_bad_pointer_is_refused_not_followed(tmp_path: Path, pointer: str) -> None:
    _checkpoint_stub(tmp_path)
    (checkpoints_dir(tmp_path) / LATEST).write_text(pointer)
    with pytest.raises(RunError, match="not a usable checkpoint pointer"):
        latest_checkpoint(tmp_path)


def test_a_checkpoint_without_readable_progress_is_refused(tmp_path: Path) -> None:
    ck = _checkpoint_stub(tmp_path)
    (checkpoints_dir(tmp_path) / LATEST).write_text(json.dumps({"step": 5, "dir": ck.name}))
    assert latest_checkpoint(tmp_path) == (ck, progress(5))
    (ck / "progress.json").write_text('{"step": 5, "samp')
    with pytest.raises(RunError, match="not a usable checkpoint pointer"):
        latest_checkpoint(tmp_path)
    (ck / "progress.json").unlink()
    with pytest.raises(RunError, match="not a usable checkpoint pointer"):
        latest_checkpoint(tmp_path)


def test_the_pointer_is_followed_not_the_newest_directory(tmp_path: Path) -> None:
    """A directory of a later step that latest.json does not name (a save that died) is ignored."""
    ck = _checkpoint_stub(tmp_path)
    (checkpoints_dir(tmp_path) / "step-00000009").mkdir()
    (checkpoints_dir(tmp_path) / LATEST).write_text(json.dumps({"step": 5, "dir": ck.name}))
    assert latest_checkpoint(tmp_path) == (ck, progress(5))


# ---- full weights (warm start) ---------------------------------------------------------------------


def test_full_weights_load_into_a_sharded_model(group: DistContext, small: Recipe) -> None:
    torch.manual_seed(11)
    src = build_model(small).state_dict()
    t = build(small, group, seed=0)
    load_full_weights(t.model, src)
    assert_same_state(src, t.model.state_dict())


def test_full_weights_that_do_not_fit_are_refused(small: Recipe) -> None:
    model = build_model(small)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = build_model(small).state_dict()
    key = next(k for k in full if "user_id" in k)
    with pytest.raises(ValueError, match=re.escape(f"do not fit this model: missing ['{key}']")):
        load_full_weights(model, {k: v for k, v in full.items() if k != key})
    assert_same_state(before, model.state_dict())  # checked before anything is copied
    with pytest.raises(ValueError, match=re.escape(f"{key} is (3, 4), model has")):
        load_full_weights(model, {**full, key: torch.zeros(3, 4)})


# ---- warm-start weights from a registry --------------------------------------------------------------


def _weights_blob(seed: int) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.full((3,), float(seed))}, buf)
    return buf.getvalue()


def _entry(blob: bytes) -> dict[str, Any]:
    sha = hashlib.sha256(blob).hexdigest()
    return {"format": "torch-state-dict", "file": "weights.pt", "sha256": sha, "bytes": len(blob)}


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    """Model "m": v1 and v2 with checksummed weights (1 current), v3 exported before weights had a
    checksum (no `weights` entry)."""
    r = Registry(tmp_path / "registry")
    for seed in (1, 2):
        blob = _weights_blob(seed)
        r.publish("m", {"weights.pt": blob}, {"weights": _entry(blob)})
    r.publish("m", {"weights.pt": _weights_blob(3)}, {})
    r.promote("m", "1")
    return r


def test_registry_weights_of_a_model_dir_are_its_current_version(reg: Registry) -> None:
    w = registry_weights(reg.root / "m")
    assert w is not None and (w.name, w.version, w.verified) == ("m", "1", True)
    assert w.path == reg.root / "m" / "1" / "weights.pt"
    assert "sha256 checked" in w.describe() and "v1" in w.describe()
    with w.open() as state:
        assert torch.equal(state["w"], torch.full((3,), 1.0))
        # mapped from weights.pt itself, not read into the process's memory (a second model copy)
        assert _mapped_from(state["w"]) == w.path.resolve()


def _mapped_from(t: torch.Tensor) -> Path | None:
    """The file whose mapping (/proc/self/maps) holds the tensor's data, if any."""
    addr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi and len(parts) == 6 and parts[5].startswith("/"):
            return Path(parts[5])
    return None


def test_registry_weights_of_a_version_dir_are_that_version(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = registry_weights(reg.root / "m" / "2")
    assert w is not None and w.version == "2"
    with w.open() as state:
        assert torch.equal(state["w"], torch.full((3,), 2.0))
    monkeypatch.chdir(tmp_path)  # a relative path resolves like an absolute one
    w = registry_weights(Path("registry/m/2"))
    assert w is not None and (w.name, w.version) == ("m", "2")
    w = registry_weights(Path("registry") / "m")
    assert w is not None and w.version == "1"


def test_registry_weights_of_something_else_are_none(reg: Registry, tmp_path: Path) -> None:
    assert registry_weights(tmp_path) is None
    assert registry_weights(reg.root) is None
    assert registry_weights(tmp_path / "nope") is None
    fresh = Registry(tmp_path / "r2")
    fresh.publish("n", {"weights.pt": b"x"}, {})
    assert registry_weights(fresh.root / "n") is None  # nothing promoted: no current.json


def test_registry_weights_that_do_not_match_their_manifest_are_refused(reg: Registry) -> None:
    p = reg.root / "m" / "2" / "weights.pt"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    p.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        registry_weights(reg.root / "m" / "2")
    p.write_bytes(bytes(blob[:-1]))
    with pytest.raises(IntegrityError, match="the manifest says"):
        registry_weights(reg.root / "m" / "2")
    p.unlink()
    with pytest.raises(RegistryError, match="cannot read it"):
        registry_weights(reg.root / "m" / "2")


def test_unchecksummed_registry_weights_load_with_a_warning(
    reg: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="recsys_mtl.checkpoint"):
        w = registry_weights(reg.root / "m" / "3")
    assert w is not None and not w.verified
    with w.open() as state:
        assert torch.equal(state["w"], torch.full((3,), 3.0))
    assert "UNVERIFIED" in w.describe() and "loading weights.pt unverified" in caplog.text
    (reg.root / "m" / "3" / "weights.pt").unlink()
    with pytest.raises(RegistryError, match=re.escape("no weights.pt to warm-start from")):
        registry_weights(reg.root / "m" / "3")


def test_registry_weights_changed_after_the_check_are_refused_when_opened(reg: Registry) -> None:
    """open() checks the file again as it maps it: the bytes loaded are the bytes checked."""
    w = registry_weights(reg.root / "m" / "2")
    assert w is not None
    p = reg.root / "m" / "2" / "weights.pt"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    p.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="sha256 mismatch"), w.open():
        pass


@pytest.mark.parametrize("version", ["../../etc", "9", ".tmp-x", "latest"])
def test_registry_weights_refuse_a_crafted_or_dangling_current(reg: Registry, version: str) -> None:
    (reg.root / "m" / CURRENT_FILE).write_text(json.dumps({"version": version}))
    with pytest.raises(RegistryError, match=r"refusing its pointer|no version '9'"):
        registry_weights(reg.root / "m")


def test_verified_registry_weights_warm_start_a_sharded_model(
    group: DistContext, small: Recipe, tmp_path: Path
) -> None:
    """The warm-start path end to end, below the trainer: a plain model's weights published with
    their checksum, read back through registry_weights, loaded into a sharded model."""
    torch.manual_seed(21)
    plain = build_model(small)
    buf = io.BytesIO()
    torch.save(plain.state_dict(), buf)
    blob = buf.getvalue()
    reg = Registry(tmp_path / "registry")
    reg.publish("m", {"weights.pt": blob}, {"weights": _entry(blob)}, promote=True)
    w = registry_weights(reg.root / "m")
    assert w is not None and w.verified
    t = build(small, group, seed=0)
    with w.open() as state:  # mapped from the file, checked as it is opened
        load_full_weights(t.model, state)
    assert_same_state(plain.state_dict(), t.model.state_dict())
    assert os.path.samefile(w.path, reg.root / "m" / "1" / "weights.pt")
