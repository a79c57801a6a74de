"""Export and the registry end to end: one small MMoE run trained through the real CLI, exported
through the real CLI (fp32 promoted, then int8), loaded by the loader and compared with the eager
model; plus the registry's atomicity, versioning and promotion, tamper detection, and HoME/DTRN
exports. About a minute in all."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.calibration import CalibratedModel, load_run_calibration
from recsys_mtl.checkpoint import LATEST, checkpoints_dir, latest_checkpoint, registry_weights
from recsys_mtl.export import MODEL_FILE, WEIGHTS_FILE, export_model, export_run
from recsys_mtl.loader import LoadedModel, ModelLoadError, load_model
from recsys_mtl.metrics import auc
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.registry import (
    CURRENT_FILE,
    MANIFEST_FILE,
    TMP_PREFIX,
    IntegrityError,
    Registry,
    RegistryError,
)
from recsys_mtl.run import LoadedRun, RunError, load_run
from recsys_mtl.synth import SynthConfig, generate
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform, TransformError
from tests.conftest import BIN, RECIPE_PATH, cli, make_raw_table

NAME = "small"
BINARY = ("ctr", "cvr", "ctcvr")
HAZARD = ("hazard_short", "hazard_long")

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:TorchScript will treat type annotations:UserWarning"),
]


@dataclass
class Exported:
    run_dir: Path
    data: Path
    registry: Path
    run: LoadedRun
    eval_day: pa.Table
    fp32: LoadedModel
    int8: LoadedModel
    export_stdout: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Generate 2 days, train MMoE 60 steps on day 1 (day 2 held out) and export fp32 --promote
    through the CLI; then export int8 without promoting."""
    tmp = tmp_path_factory.mktemp("export")
    data = tmp / "data"
    cfg = SynthConfig(
        rows=40_000,
        days=2,
        seed=5,
        ctr=0.15,
        conversion_rate=0.3,
        users=3_000,
        creatives=600,
        campaigns=300,
        advertisers=100,
        rows_per_file=20_000,
    )
    generate(cfg, data, progress=False)
    d = yaml.safe_load(RECIPE_PATH.read_text())
    d["name"] = NAME
    d["model"] = {"type": "mmoe", "num_experts": 3, "expert_hidden": [32], "tower_hidden": [16]}
    d["training"].update(
        batch_size=512,
        shuffle_buffer=20_000,
        allow_untrained_tasks=True,  # 1 training day: no full week for hazard_long's weekly grid
        dense_optimizer={"name": "adam", "lr": 0.003},
        sparse_optimizer={"name": "rowwise_adagrad", "lr": 0.1},
    )
    recipe = tmp / "small.yaml"
    recipe.write_text(yaml.safe_dump(d))
    run_dir, reg = tmp / "run", tmp / "registry"
    r = cli(
        *("train", "--recipe", str(recipe), "--data", str(data), "--out", str(run_dir)),
        *("--max-steps", "60", "--no-progress"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = cli("export", "--run", str(run_dir), "--registry", str(reg), "--name", NAME, "--promote")
    assert r1.returncode == 0, r1.stderr[-3000:]
    # int8 in-process (export_run is what the CLI calls), which saves a second torch start-up
    assert export_run(run_dir, reg, NAME, int8=True).version == "2"
    run = load_run(run_dir)
    eval_day = pq.read_table(data / f"dt={run.info['data']['eval_days'][0]}")
    return Exported(
        run_dir=run_dir,
        data=data,
        registry=reg,
        run=run,
        eval_day=eval_day,
        fp32=load_model(reg, NAME, "1"),
        int8=load_model(reg, NAME, "2"),
        export_stdout=r1.stdout,
    )


def eager_outputs(
    model: Callable[[KeyedJaggedTensor, torch.Tensor], dict[str, torch.Tensor]],
    transform: FeatureTransform,
    rows: pa.Table,
    shared: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """The eager per-candidate forward on `rows` (with `shared` broadcast to every row)."""
    b = transform(rows, shared=shared)
    with torch.inference_mode():
        return model(b.sparse, b.dense)


# ---------------------------------------------------------------------------------------------
# the exported model
# ---------------------------------------------------------------------------------------------


def test_fp32_export_matches_eager_at_several_batch_sizes(exported: Exported) -> None:
    m = exported.fp32
    assert not m.int8 and m.version == "1"
    # the run held out a day, so it has a calibration map, which the artifact applies after the
    # model (recsys_mtl/calibration.py): compare with the eager model under the same wrapper
    cal = load_run_calibration(exported.run_dir)
    assert cal is not None and m.manifest["calibration"]["calibrated"]
    wrapper = CalibratedModel(exported.run.model, cal)

    def eager(sparse: KeyedJaggedTensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        return wrapper.calibrate(exported.run.model(sparse, dense))

    transform = exported.run.transform
    # one user per row (a file), and a request: one user's features once for all its candidates
    cases = [(exported.eval_day.slice(0, n), None) for n in (1, 7, 512, 2000)]
    cases += [transform.request_of(exported.eval_day.slice(0, n)) for n in (1, 500, 2000)]
    for rows, shared in cases:  # tracing can freeze lengths: several batch sizes
        n = len(next(iter(rows.values()))) if isinstance(rows, dict) else rows.num_rows
        want = eager_outputs(eager, transform, rows, shared)
        got = m.score(rows, shared=shared)
        for t in BINARY:
            assert got[t].shape == (n,)
            assert float(np.abs(got[t] - want[t].numpy()).max()) <= 1e-5, (n, t)
        for t in HAZARD:
            h = want[t].numpy()
            assert got[t].shape == h.shape == (n, len(m.manifest["grids"][t]["grid"]) - 1)
            assert float(np.abs(got[t] - h).max()) <= 1e-5, (n, t)
            surv = np.cumprod(1.0 - h, axis=1)
            assert float(np.abs(got[f"{t}_survival"] - surv).max()) <= 1e-5, (n, t)
            np.testing.assert_allclose(got[f"{t}_risk"], 1.0 - surv[:, -1], atol=1e-5)
            assert np.all(np.diff(got[f"{t}_survival"], axis=1) <= 0)  # survival never rises
    # a subset of tasks; unknown tasks and missing columns are clear errors
    rows = exported.eval_day.slice(0, 3)
    assert set(m.score(rows, tasks=["ctr"])) == {"ctr"}
    assert set(m.score(rows, tasks=["hazard_long"])) == {
        "hazard_long",
        "hazard_long_survival",
        "hazard_long_risk",
    }
    with pytest.raises(ValueError, match="unknown task"):
        m.score(rows, tasks=["nope"])
    with pytest.raises(TransformError, match="user_id: missing column"):
        m.score(rows.drop_columns(["user_id"]))
    # a dict of plain lists (what a JSON request becomes) scores the same as the Arrow table
    as_lists = {c: rows.column(c).to_pylist() for c in m.input_columns}
    np.testing.assert_array_equal(m.score(as_lists)["ctr"], m.score(rows)["ctr"])


def test_int8_keeps_auc_on_the_held_out_day(exported: Exported) -> None:
    day = exported.eval_day
    tg = targets_from_table(exported.run.recipe, day)
    fp, q = exported.fp32.score(day), exported.int8.score(day)
    assert exported.int8.int8
    for t in BINARY:
        mask = tg.eval_mask[t].numpy() > 0
        y = tg.labels[t].numpy()[mask]
        a_fp, a_q = auc(fp[t][mask], y), auc(q[t][mask], y)
        assert abs(a_fp - a_q) <= 0.002, (t, a_fp, a_q)
    for t in HAZARD:
        assert np.isfinite(q[t]).all() and float(np.abs(q[t] - fp[t]).max()) < 0.05
    # and the file is smaller: int8 rows (with FBGEMM's 16-byte row alignment) vs fp32 rows
    b_fp = exported.fp32.manifest["artifact"]["bytes"]
    b_q = exported.int8.manifest["artifact"]["bytes"]
    assert b_q < 0.6 * b_fp, (b_fp, b_q)


def test_manifest_fields_and_checksum(exported: Exported) -> None:
    reg = Registry(exported.registry)
    for v, int8 in (("1", False), ("2", True)):
        m = reg.manifest(NAME, v)
        for key in (
            "recipe",
            "transform",
            "tasks",
            "grids",
            "data",
            "metrics",
            "artifact",
            "created_at",
            "outputs",
            "versions",
            "int8",
            "source_run",
            "golden",
        ):
            assert key in m, key
        assert m["name"] == NAME and m["version"] == v and m["int8"] is int8
        blob = (exported.registry / NAME / v / MODEL_FILE).read_bytes()
        assert m["artifact"]["sha256"] == hashlib.sha256(blob).hexdigest()
        assert m["artifact"]["bytes"] == len(blob) and m["artifact"]["format"] == "torchscript"
        # the transform spec carries the dense statistics fitted in training
        assert m["transform"] == exported.run.transform.spec()
        assert all(f["stats"] is not None for f in m["transform"]["features"] if f["kind"] == "dense")
        assert m["recipe"] == exported.run.recipe.to_dict()
        assert m["data"]["train_range"] == ["2026-01-01", "2026-01-01"]
        assert m["data"]["eval_days"] == ["2026-01-02"]
        assert m["metrics"] == json.loads((exported.run_dir / "metrics.json").read_text())
        assert m["source_run"]["path"] == str(exported.run_dir.resolve())
        assert m["versions"]["torch"] == torch.__version__ and m["versions"]["torchrec"]
        assert m["grids"]["hazard_short"]["num_intervals"] == 14
        assert m["outputs"]["ctr"]["shape"] == ["N"]
        assert m["outputs"]["hazard_long"]["shape"] == ["N", 16]
        assert [t["name"] for t in m["tasks"]] == [*BINARY, *HAZARD]
        assert m["export"]["parity"]["max_abs_diff"] <= (0.05 if int8 else 1e-5)
        weights = (exported.registry / NAME / v / WEIGHTS_FILE).read_bytes()
        assert m["weights"] == {
            "format": "torch-state-dict",
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "bytes": len(weights),
        }
    exported.fp32.validate()
    exported.int8.validate()
    assert "exported small version 1 (fp32" in exported.export_stdout
    assert "current: 1" in exported.export_stdout


def test_versions_increment_and_promote_is_explicit(exported: Exported, tmp_path: Path) -> None:
    reg = Registry(exported.registry)
    # the fixture exported 1 with --promote, then 2 without: current stayed at 1
    assert reg.versions(NAME) == ["1", "2"]
    assert reg.current(NAME) == "1" and reg.resolve(NAME) == "1" and reg.resolve(NAME, "latest") == "2"
    assert reg.names() == [NAME]
    # a third export with promote switches current from 1 to 3 (on a copy of the registry)
    root = tmp_path / "reg"
    shutil.copytree(exported.registry, root)
    other = Registry(root)
    res = export_run(exported.run_dir, other, NAME, promote=True)
    assert res.version == "3" and res.promoted and other.current(NAME) == "3"
    cur = json.loads((root / NAME / CURRENT_FILE).read_text())
    assert cur["version"] == "3" and cur["previous"] == "1"
    other.promote(NAME, 1)  # roll back (an int is accepted for integer versions)
    assert other.current(NAME) == "1" and load_model(other, NAME).version == "1"
    with pytest.raises(RegistryError, match="no version '7'"):
        other.promote(NAME, "7")
    assert other.current(NAME) == "1"
    # a name nothing was promoted for
    other.publish("fresh", {"model.pt": b"x"}, {})
    assert other.current("fresh") is None
    with pytest.raises(RegistryError, match="no current version"):
        load_model(other, "fresh")


def test_a_tampered_model_is_refused_before_loading(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "reg"
    shutil.copytree(exported.registry / NAME / "1", root / NAME / "1")
    p = root / NAME / "1" / MODEL_FILE
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit in the middle of the weights
    p.write_bytes(bytes(blob))

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.jit.load called on an unverified file")

    monkeypatch.setattr(torch.jit, "load", no_load)
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch.*refusing to load"):
        load_model(root, NAME, "1")


def test_a_fresh_process_loads_without_training_code(exported: Exported) -> None:
    day = exported.data / "dt=2026-01-02"
    code = f"""
import json, sys
import pyarrow.parquet as pq
from recsys_mtl.loader import load_model
for v in ("current", "2"):
    m = load_model({str(exported.registry)!r}, {NAME!r}, v)
    m.validate()
    s = m.score(pq.read_table({str(day)!r}).slice(0, 50))
    print(json.dumps({{"version": m.version, "ctr": s["ctr"].tolist()}}))
training = ("recsys_mtl.models", "recsys_mtl.trainer", "recsys_mtl.run", "recsys_mtl.export",
            "recsys_mtl.reader", "recsys_mtl.partitions", "recsys_mtl.evaluation")
print(json.dumps(sorted(k for k in sys.modules if k.startswith(training))))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    rows = exported.eval_day.slice(0, 50)
    for line, m in zip(lines[:2], (exported.fp32, exported.int8), strict=True):
        out = json.loads(line)
        assert out["version"] == m.version
        np.testing.assert_allclose(out["ctr"], m.score(rows)["ctr"], atol=1e-6)
    assert json.loads(lines[2]) == []


# ---------------------------------------------------------------------------------------------
# the registry's atomicity
# ---------------------------------------------------------------------------------------------


def test_a_crash_mid_export_leaves_no_visible_version(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "reg"
    shutil.copytree(exported.registry / NAME, root / NAME)
    reg = Registry(root)
    before = sorted(p.name for p in (root / NAME).iterdir())
    current = (root / NAME / CURRENT_FILE).read_bytes()

    def failing_rename(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "simulated crash at the commit")

    monkeypatch.setattr(os, "rename", failing_rename)
    run = exported.run
    with pytest.raises(OSError, match="simulated crash"):
        export_model(run.model, run.recipe, run.transform, reg, NAME, promote=True)
    monkeypatch.undo()
    assert sorted(p.name for p in (root / NAME).iterdir()) == before  # no temp dir, no version
    assert (root / NAME / CURRENT_FILE).read_bytes() == current
    assert reg.versions(NAME) == ["1", "2"]

    # a hard kill leaves its temp dir behind: invisible to readers, collected once it is stale
    stale, fresh = root / NAME / f"{TMP_PREFIX}dead", root / NAME / f"{TMP_PREFIX}live"
    for d in (stale, fresh):
        d.mkdir()
        (d / MODEL_FILE).write_bytes(b"half")
        (d / MANIFEST_FILE).write_text("{}")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert reg.versions(NAME) == ["1", "2"]
    with pytest.raises(RegistryError):
        reg.resolve(NAME, f"{TMP_PREFIX}dead")
    assert reg.publish(NAME, {"model.pt": b"x"}, {"kind": "test"}) == "3"
    assert not stale.exists() and fresh.exists()  # an in-flight export of another process stays


def test_concurrent_publishers_never_share_a_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    got: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(5):
            v = reg.publish("m", {"model.pt": f"{i}-{j}".encode()}, {"who": f"{i}-{j}"})
            with lock:
                got.append(v)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=int) == [str(i) for i in range(1, 21)]
    assert reg.versions("m") == [str(i) for i in range(1, 21)]
    # every version holds exactly what its publisher wrote
    for v in reg.versions("m"):
        who = reg.manifest("m", v)["who"]
        assert (reg.root / "m" / v / "model.pt").read_bytes() == who.encode()
    assert not [p for p in (reg.root / "m").iterdir() if p.name.startswith(TMP_PREFIX)]
    # a stray non-version directory in the way is skipped, not retried forever
    (reg.root / "m" / "21").mkdir()
    (reg.root / "m" / "21" / "junk").write_text("x")
    assert reg.publish("m", {"model.pt": b"z"}, {}) == "22"
    # an explicit version is never overwritten; bad names are refused
    assert reg.publish("m", {"model.pt": b"a"}, {}, version="2026-01-03") == "2026-01-03"
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish("m", {"model.pt": b"b"}, {}, version="2026-01-03")
    assert (reg.root / "m" / "2026-01-03" / "model.pt").read_bytes() == b"a"
    assert reg.versions("m")[-1] == "2026-01-03" and reg.next_version("m") == "23"
    for bad in ("../x", ".hidden", "current", "a/b", ""):
        with pytest.raises(RegistryError, match="invalid"):
            reg.publish("m", {"model.pt": b"c"}, {}, version=bad)


def test_export_refuses_bad_input(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    cases = [
        (["--run", str(tmp_path / "nope")], "run directory does not exist"),
        (["--run", str(tmp_path)], "not a training run (no run.json)"),
        (["--run", str(tmp_path), "--version", "../up"], "invalid version"),
    ]
    for extra, msg in cases:
        r = cli("export", "--registry", str(reg), "--name", NAME, *extra)
        assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    assert not reg.exists()


def _fill_disk(limit: int) -> None:
    """In the child: files may not grow past `limit` bytes; a write past it fails with EFBIG
    instead of killing the process (SIGXFSZ ignored). A full disk, as far as the writer can tell."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(exported: Exported, tmp_path: Path) -> None:
    """`recsys-mtl export` onto a filesystem that refuses the write: exit 1 (not 2, "bad
    arguments"), one line naming the registry path and the errno, no version, no temp dir."""
    root = tmp_path / "reg"
    shutil.copytree(exported.registry, root)
    before = sorted(p.name for p in (root / NAME).iterdir())
    current = (root / NAME / CURRENT_FILE).read_bytes()
    r = subprocess.run(
        [str(BIN), "export", "--run", str(exported.run_dir), "--registry", str(root), "--name", NAME],
        preexec_fn=lambda: _fill_disk(64 * 1024),  # model.pt is larger than this
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"{root / NAME}: cannot write to the registry" in r.stderr and "[EFBIG]" in r.stderr
    assert "nothing was published" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in (root / NAME).iterdir()) == before
    assert (root / NAME / CURRENT_FILE).read_bytes() == current


def _train_warm(exported: Exported, source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return cli(
        *("train", "--recipe", str(exported.run_dir.parent / "small.yaml"), "--data", str(exported.data)),
        *("--out", str(out), "--warm-start", str(source), "--max-steps", "2", "--no-progress"),
    )


def test_warm_start_checks_weights_and_refuses_crafted_pointers(exported: Exported, tmp_path: Path) -> None:
    root = tmp_path / "reg"
    shutil.copytree(exported.registry, root)
    ok = registry_weights(root / NAME)  # the model directory: its current version (1)
    assert ok is not None and ok.version == "1" and ok.verified
    with ok.open() as state:  # weights.pt mapped, the same tensors export wrote
        assert state.keys() == torch.load(root / NAME / "1" / WEIGHTS_FILE, weights_only=True).keys()
    assert registry_weights(tmp_path) is None  # not a registry directory at all
    # one flipped bit in weights.pt: refused before anything loads it, by the real trainer too
    p = root / NAME / "1" / WEIGHTS_FILE
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    p.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        registry_weights(root / NAME / "1")
    r = _train_warm(exported, root / NAME / "1", tmp_path / "warm")
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"{p}: sha256 mismatch" in r.stderr and "Traceback" not in r.stderr
    # current.json pointing out of the registry: refused, not followed
    (root / NAME / CURRENT_FILE).write_text(json.dumps({"version": "../../etc"}))
    with pytest.raises(RegistryError, match="refusing its pointer"):
        registry_weights(root / NAME)
    r = _train_warm(exported, root / NAME, tmp_path / "warm2")
    assert r.returncode == 2 and "refusing its pointer" in r.stderr, r.stderr[-3000:]
    # a run's latest.json pointing outside its checkpoints: refused too (warm start and export)
    run = tmp_path / "run"
    shutil.copytree(exported.run_dir, run)
    assert latest_checkpoint(run) is not None
    (checkpoints_dir(run) / LATEST).write_text(json.dumps({"step": 60, "dir": "../../x"}))
    with pytest.raises(RunError, match=re.escape("invalid checkpoint directory '../../x'")):
        latest_checkpoint(run)
    with pytest.raises(RunError, match="not a usable checkpoint pointer"):
        load_run(run)


# ---------------------------------------------------------------------------------------------
# the other backbones
# ---------------------------------------------------------------------------------------------


def _small(recipe: Recipe, model: dict[str, Any]) -> Recipe:
    d = recipe.to_dict()
    for f in d["features"]:
        if f.get("hash_size"):
            f["hash_size"] = min(f["hash_size"], 97)
    d["model"] = model
    return recipe_from_dict(d)


@pytest.mark.parametrize(
    "model",
    [
        {"type": "home", "expert_hidden": [16, 8], "tower_hidden": [8], "feature_gate_rank": 4},
        {"type": "dtrn", "tower_hidden": [8], "attention_hidden": 8},
    ],
    ids=["home", "dtrn"],
)
def test_home_and_dtrn_export(recipe: Recipe, model: dict[str, Any], tmp_path: Path) -> None:
    r = _small(recipe, model)
    torch.manual_seed(0)
    net = build_model(r)
    transform = FeatureTransform.from_recipe(r)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for step in range(3):  # non-trivial weights and BatchNorm statistics
        table = make_raw_table(r, 256, seed=step)
        b = transform(table)
        loss, _ = total_loss(r, net(b.sparse, b.dense), targets_from_table(r, table))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    reg = Registry(tmp_path / "reg")
    fp = load_model(reg, "m", export_model(net, r, transform, reg, "m").version)
    fp.validate()
    # int8 for DTRN: its unpooled tables become QuantEmbeddingCollections (HoME's pooled tables
    # take the same path as the MMoE run's, tested above)
    q = None
    if model["type"] == "dtrn":
        q = load_model(reg, "m", export_model(net, r, transform, reg, "m", int8=True).version)
        q.validate()
    rows = make_raw_table(r, 512, seed=99)
    for n in (1, 7, 512):
        part = rows.slice(0, n)
        want = eager_outputs(net, transform, part)
        got = fp.score(part)
        got8 = q.score(part) if q is not None else None
        for t in (*BINARY, *HAZARD):
            assert float(np.abs(got[t] - want[t].numpy()).max()) <= 1e-5, (model["type"], n, t)
            if got8 is not None:
                assert float(np.abs(got8[t] - want[t].numpy()).max()) < 0.05, (model["type"], n, t)
