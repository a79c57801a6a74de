"""The model loader (recsys_mtl.loader) on its own: `load_model` against a real registry that holds
small exported models, the `LoadedModel` it returns (tasks, inputs, golden validation, the score
keys and shapes the module documents), and every refusal it documents: a checksum or size
mismatch, a missing or unloadable artifact, a bad or foreign manifest, an unknown version, an int8
build that is not there, golden scores this host does not reproduce.

Two models are exported once for the module (about 2 s); each test that breaks something breaks a
copy. The server's use of the loader is tests/test_serving_components.py's and
tests/test_server_*.py's; the exporter's side is tests/test_export.py's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys_mtl.loader import (
    ARTIFACT_LOADERS,
    MANIFEST_KIND,
    LoadedModel,
    ModelLoadError,
    TorchScriptArtifact,
    load_model,
    synthetic_columns,
)
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import CURRENT_FILE, MANIFEST_FILE, Registry, RegistryError
from recsys_mtl.transform import TransformError
from tests.conftest import make_raw_table
from tests.serving_support import NAME, publish, small_recipe

BINARY = ["ctr", "cvr", "ctcvr"]
HAZARD = ["hazard_short", "hazard_long"]


@pytest.fixture(scope="module")
def small(recipe: Recipe) -> Recipe:
    return small_recipe(recipe)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, small: Recipe) -> Path:
    """v1: fp32, promoted. v2: fp32 with an int8 companion, not promoted. Read-only for tests."""
    root = tmp_path_factory.mktemp("loader") / "registry"
    publish(root, small, seed=1)
    publish(root, small, seed=2, promote=False, int8_companion=True)
    return root


@pytest.fixture
def copy(registry: Path, tmp_path: Path) -> Path:
    """A copy of the module's registry that a test may break."""
    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    return root


@pytest.fixture(scope="module")
def rows(small: Recipe) -> pa.Table:
    return make_raw_table(small, 50, seed=7)


def edit_manifest(root: Path, version: str, change: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite a version's manifest.json in place (what a corrupted or hand-edited file looks like)."""
    p = root / NAME / version / MANIFEST_FILE
    m = json.loads(p.read_text())
    change(m)
    p.write_text(json.dumps(m))


def set_artifact_bytes(root: Path, version: str, data: bytes) -> None:
    """Replace model.pt and make the manifest's checksum match it: a file that passes the check."""
    (root / NAME / version / "model.pt").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    edit_manifest(root, version, lambda m: m["artifact"].update(sha256=sha, bytes=len(data)))


# ---- loading --------------------------------------------------------------------------------------


def test_versions_resolve_current_latest_and_explicit(registry: Path) -> None:
    m = load_model(registry, NAME)  # "current"
    assert (m.name, m.version, m.path) == (NAME, "1", registry / NAME / "1")
    assert load_model(str(registry), NAME, "latest").version == "2"
    assert load_model(Registry(registry), NAME, 2).version == "2"  # an int, a Registry
    assert m.manifest == json.loads((registry / NAME / "1" / MANIFEST_FILE).read_text())
    assert m.manifest["kind"] == MANIFEST_KIND


def test_the_loaded_model_describes_itself_from_its_manifest(registry: Path, small: Recipe) -> None:
    m = load_model(registry, NAME, "1")
    assert m.build == "primary" and not m.int8
    assert isinstance(m.artifact, TorchScriptArtifact) and m.artifact.format == "torchscript"
    assert m.task_names == [*BINARY, *HAZARD]
    grids = {t.name: t.num_intervals for t in m.tasks if t.kind == "hazard"}
    assert grids == {t.name: len(t.grid) - 1 for t in small.tasks if t.kind == "hazard"}
    assert all(t.grid is None and t.num_intervals == 0 for t in m.tasks if t.kind == "binary")
    assert m.transform.spec() == m.manifest["transform"]
    assert set(m.input_columns) == {f.source for f in small.features}
    assert m.golden_outputs == m.manifest["golden"]["outputs"]


def test_scores_have_the_documented_keys_shapes_and_relations(registry: Path, rows: pa.Table) -> None:
    m = load_model(registry, NAME)
    m.validate()
    s = m.score(rows)
    n = rows.num_rows
    want = {*BINARY, *HAZARD, *(f"{h}_survival" for h in HAZARD), *(f"{h}_risk" for h in HAZARD)}
    assert set(s) == want
    for t in BINARY:
        assert s[t].shape == (n,) and s[t].dtype == np.float32
        assert ((s[t] >= 0) & (s[t] <= 1)).all()
    for t in m.tasks:
        if t.kind != "hazard":
            continue
        h, surv, risk = s[t.name], s[f"{t.name}_survival"], s[f"{t.name}_risk"]
        assert h.shape == surv.shape == (n, t.num_intervals) and risk.shape == (n,)
        assert ((h >= 0) & (h <= 1)).all()
        np.testing.assert_allclose(surv, np.cumprod(1 - h.astype(np.float64), axis=1), rtol=1e-5, atol=1e-6)
        assert (np.diff(surv, axis=1) <= 1e-7).all()  # survival never rises
        np.testing.assert_allclose(risk, 1 - surv[:, -1], atol=1e-6)


def test_scores_follow_row_order_whatever_the_input_form(registry: Path, rows: pa.Table) -> None:
    m = load_model(registry, NAME)
    s = m.score(rows)
    rev = m.score(rows.take(np.arange(rows.num_rows)[::-1]))
    for k in s:
        np.testing.assert_allclose(rev[k], s[k][::-1], atol=1e-6)
    for form in (rows.to_batches()[0], rows.to_pydict()):
        other = m.score(form)
        for k in s:
            np.testing.assert_allclose(other[k], s[k], atol=1e-6)
    one = m.score(rows.slice(3, 1))
    for k in s:
        np.testing.assert_allclose(one[k], s[k][3:4], atol=1e-5)  # a row alone scores as in a batch


def test_score_refuses_what_it_documents(registry: Path, rows: pa.Table) -> None:
    m = load_model(registry, NAME)
    assert set(m.score(rows, tasks=["cvr", "cvr"])) == {"cvr"}  # asked twice, given once
    assert set(m.score(rows, tasks=["hazard_long"])) == {
        "hazard_long",
        "hazard_long_survival",
        "hazard_long_risk",
    }
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        m.score(rows, tasks=["ctr", "nope"])
    with pytest.raises(ValueError, match="no rows to score"):
        m.score(rows.slice(0, 0))
    with pytest.raises(TransformError) as e:
        m.score(rows.drop_columns(["device"]))
    assert e.value.field == "device"


def test_synthetic_columns_are_a_valid_request(registry: Path) -> None:
    m = load_model(registry, NAME)
    cols = synthetic_columns(m.transform, 5, seed=3)
    assert set(cols) == set(m.input_columns) and all(len(v) == 5 for v in cols.values())
    assert cols == synthetic_columns(m.transform, 5, seed=3)  # the seed decides everything
    json.dumps(cols, allow_nan=False)  # JSON-able, all finite
    ids = [f.source for f in m.transform.features if f.kind == "id"]
    assert all(cols[c][1] is None for c in ids)  # a missing id in every id column
    assert m.score(cols)["ctr"].shape == (5,)
    m.warm_up((1, 3))


def test_the_int8_companion_is_loaded_on_request(registry: Path, rows: pa.Table) -> None:
    fp32 = load_model(registry, NAME, "2")
    int8 = load_model(registry, NAME, "2", int8=True)
    assert int8.build == "int8" and int8.int8 and not fp32.int8
    assert int8.golden_outputs == fp32.manifest["companions"]["int8"]["golden_outputs"]
    assert int8.golden_outputs != fp32.golden_outputs
    int8.validate()
    a, b = fp32.score(rows), int8.score(rows)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 0.05  # the same weights, int8 tables
    with pytest.raises(ModelLoadError, match="no int8 build in this version"):
        load_model(registry, NAME, "1", int8=True)


def test_an_other_torch_version_is_a_warning_not_a_refusal(
    copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edit_manifest(copy, "1", lambda m: m["versions"].update(torch="1.0.0"))
    with caplog.at_level(logging.WARNING, logger="recsys_mtl.loader"):
        m = load_model(copy, NAME, "1")
    assert f"was exported with torch 1.0.0; this process runs torch {torch.__version__}" in caplog.text
    m.validate()


def test_a_registered_artifact_format_is_loaded_through_its_loader(
    copy: Path, rows: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Formats sit behind ARTIFACT_LOADERS: a manifest naming another registered format loads with
    that loader, from the verified file (a path, so a large model is never read into memory)."""
    seen: list[bytes] = []

    def loader(path: Path) -> TorchScriptArtifact:
        seen.append(Path(path).read_bytes())
        return TorchScriptArtifact.from_path(path)

    monkeypatch.setitem(ARTIFACT_LOADERS, "other", loader)
    edit_manifest(copy, "1", lambda m: m["artifact"].update(format="other"))
    m = load_model(copy, NAME, "1")
    assert seen == [(copy / NAME / "1" / "model.pt").read_bytes()]
    m.validate()


# ---- refusals: the artifact -------------------------------------------------------------------------


def test_a_modified_artifact_is_refused(copy: Path) -> None:
    p = copy / NAME / "1" / "model.pt"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # same size, one bit
    p.write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch.*refusing to load it"):
        load_model(copy, NAME, "1")
    p.write_bytes(bytes(blob[:-10]))
    with pytest.raises(ModelLoadError, match=r"bytes, the manifest says \d+"):
        load_model(copy, NAME, "1")
    p.unlink()
    with pytest.raises(ModelLoadError, match="cannot read it"):
        load_model(copy, NAME, "1")


def test_a_checksummed_file_that_is_no_model_is_refused(copy: Path) -> None:
    set_artifact_bytes(copy, "1", b"not a TorchScript archive")
    with pytest.raises(ModelLoadError, match="the torchscript artifact failed to load"):
        load_model(copy, NAME, "1")


def test_a_crafted_artifact_path_is_refused(copy: Path) -> None:
    """The manifest names a file of another version: refused as a name, never followed."""
    edit_manifest(copy, "2", lambda m: m["artifact"].update(file="../1/model.pt"))
    with pytest.raises(ModelLoadError, match="invalid file name"):
        load_model(copy, NAME, "2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("artifact"), "no artifact entry"),
        (lambda m: m["artifact"].pop("sha256"), "no artifact entry"),
        (lambda m: m.update(artifact="model.pt"), "no artifact entry"),
        (lambda m: m["artifact"].update(format="onnx"), "artifact format 'onnx' is not supported here"),
        (lambda m: m.update(kind="something-else"), "not a recsys-mtl-model manifest version 1"),
        (lambda m: m.update(manifest_version=2), "not a recsys-mtl-model manifest version 1"),
        (lambda m: m.pop("transform"), "feature transform spec is unusable"),
        (lambda m: m["transform"].update(version=99), "feature transform spec is unusable"),
        (lambda m: m["transform"]["features"][0].update(kind="nope"), "feature transform spec is unusable"),
    ],
    ids=[
        "no-artifact",
        "no-sha256",
        "artifact-not-an-object",
        "unknown-format",
        "other-kind",
        "other-manifest-version",
        "no-transform",
        "transform-version",
        "bad-feature",
    ],
)
def test_a_bad_manifest_is_a_model_load_error(
    copy: Path, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    edit_manifest(copy, "1", change)
    with pytest.raises(ModelLoadError, match=message):
        load_model(copy, NAME, "1")


@pytest.mark.parametrize(
    ("change", "int8"),
    [
        (lambda m: m.update(transform="x"), False),
        (lambda m: m["transform"].update(features=5), False),
        (lambda m: m.update(tasks=[{"kind": "binary"}]), False),
        (lambda m: m.update(tasks="x"), False),
        (lambda m: m.update(versions="x"), False),
        (lambda m: m["artifact"].update(bytes="abc"), False),
        (lambda m: m.update(companions="x"), True),
    ],
    ids=[
        "transform-str",
        "features-int",
        "task-without-name",
        "tasks-str",
        "versions-str",
        "bytes-str",
        "companions-str",
    ],
)
def test_a_manifest_field_of_the_wrong_type_is_a_documented_error(
    copy: Path, change: Callable[[dict[str, Any]], Any], int8: bool
) -> None:
    edit_manifest(copy, "1", change)
    with pytest.raises((ModelLoadError, RegistryError)):
        load_model(copy, NAME, "1", int8=int8)


# ---- refusals: the registry ---------------------------------------------------------------------------


def test_an_unreadable_manifest_is_a_registry_error(copy: Path) -> None:
    p = copy / NAME / "1" / MANIFEST_FILE
    p.write_text(p.read_text()[:100])  # truncated
    with pytest.raises(RegistryError, match="unreadable manifest"):
        load_model(copy, NAME, "1")
    p.write_text("[1, 2]")
    with pytest.raises(RegistryError, match="not a JSON object"):
        load_model(copy, NAME, "1")
    p.unlink()  # a directory without its manifest is no version
    with pytest.raises(RegistryError, match="has no version '1'"):
        load_model(copy, NAME, "1")


def test_unknown_names_versions_and_pointers_are_registry_errors(copy: Path, tmp_path: Path) -> None:
    for args, message in [
        ((NAME, "7"), "has no version '7'"),
        ((NAME, "../1"), "invalid version"),
        (("nope", "current"), "'nope' has no current version"),
        (("nope", "latest"), "'nope' has no versions"),
        (("../x", "1"), "invalid model name"),
    ]:
        with pytest.raises(RegistryError, match=message):
            load_model(copy, *args)
    with pytest.raises(RegistryError, match="has no current version"):
        load_model(tmp_path / "empty", NAME)
    (copy / NAME / CURRENT_FILE).write_text(json.dumps({"version": "../../etc"}))
    with pytest.raises(RegistryError, match="refusing its pointer"):
        load_model(copy, NAME)
    assert load_model(copy, NAME, "1").version == "1"  # an explicit version needs no pointer


# ---- validation ---------------------------------------------------------------------------------------


def _shift_golden(m: dict[str, Any]) -> None:
    ctr = m["golden"]["outputs"]["ctr"]
    m["golden"]["outputs"]["ctr"] = [v + 0.01 for v in ctr]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_shift_golden, "'ctr' differs from the exported golden scores"),
        (lambda m: m.pop("golden"), "no golden request to validate with"),
        (lambda m: m["golden"].pop("outputs"), "no golden request to validate with"),
        (
            lambda m: m["golden"]["outputs"].update(extra=[0.5]),
            "output 'extra' missing from the model's outputs",
        ),
        (lambda m: m["golden"]["outputs"].update(ctr=[0.5]), "output 'ctr' has shape"),
        (lambda m: m["golden"]["columns"].pop("device"), "scoring the golden request failed: device"),
    ],
    ids=["other-scores", "no-golden", "no-outputs", "unknown-output", "other-shape", "broken-request"],
)
def test_validate_refuses_what_this_host_does_not_reproduce(
    copy: Path, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    edit_manifest(copy, "1", change)
    m = load_model(copy, NAME, "1")  # loading checks the artifact; validating checks its scores
    assert isinstance(m, LoadedModel)
    with pytest.raises(ModelLoadError, match=message):
        m.validate()


def test_validate_tolerance_is_atol(copy: Path) -> None:
    edit_manifest(copy, "1", _shift_golden)
    m = load_model(copy, NAME, "1")
    m.validate(atol=0.02)  # within the tolerance asked for
    with pytest.raises(ModelLoadError):
        m.validate(atol=0.005)
