"""Export a trained model to the registry as TorchScript, with a manifest the server can trust.

The model (unsharded, CPU, eval) is FX-traced with `torchrec.fx.symbolic_trace` (TorchRec's tracer
keeps the KeyedJaggedTensor and embedding modules as leaves) and compiled with `torch.jit.script`,
then saved with `torch.jit.save` into `REGISTRY/NAME/VERSION/model.pt` by `Registry.publish`
(atomic: see recsys_mtl.registry). With `int8=True` the embedding tables are first swapped for
TorchRec's quantized inference modules (`torchrec.inference.modules.quantize_inference_model`:
row-wise int8 tables with per-row scale and bias, FBGEMM's IntNBit kernels; outputs stay fp32); the
dense layers stay fp32, as they hold a tiny share of the bytes and most of the precision.

Every file is streamed into the registry's staged version as it is built (`Registry.stage`;
never a second copy of the model in memory: docs/OPERATIONS.md, "Memory"), and before anything is
published the artifact is reloaded from that file and scored against the eager model on synthetic
rows at batch sizes 1, 7 and 64 (tracing can freeze lengths); an fp32 export that differs by more
than `FP32_TOLERANCE` is refused. The int8 difference is recorded.

The artifact's forward is `MultiTaskModel.forward_grouped` (`ExportedForm`): it reads grouped
batches, a request's user and context features once for all its candidates. The parity check runs
it on rows that are each their own user and on a request with one user, against the eager grouped
forward, and checks that forward against the per-candidate `forward` (`_compare`;
docs/METHODS.md, "User-side work once").

manifest.json (kind "recsys-mtl-model", manifest_version 1):

    name, version, created_at (UTC ISO), int8
    artifact      {format: "torchscript", file: "model.pt", sha256, bytes, quantization, signature}
    outputs       model output key -> {shape: ["N"] | ["N", L], dtype, task}
    tasks         [{name, kind, has_head, product_of, category, grid, unit, num_intervals, outputs}]
    grids         hazard task -> {grid, unit, num_intervals}
    inputs        {columns (raw columns a request needs), sparse_keys, dense_features,
                   vector_features (name -> dim)}
    transform     FeatureTransform.spec() (with the dense statistics fitted in training)
    recipe        the full recipe (model, features, tasks, training options)
    model         {type, parameters}
    data          the run's data range: dir, train_days, eval_days, train_range, eval_range
    metrics       the run's metrics.json (held-out evaluation), or null
    source_run    {path, finished_at, steps, samples, world_size}
    versions      torch, torchrec, fbgemm_gpu, python, recsys_mtl of the exporting process
    export        {seconds, parity: {batch_sizes, max_abs_diff (vs the fp32 eager model),
                  user_once_max_abs_diff (its grouped vs its per-candidate forward)}}
    golden        {columns, outputs}: 8 raw rows and the artifact's outputs on them; the server
                  re-scores them before it serves (`LoadedModel.validate`)
    weights       {format: "torch-state-dict", file: "weights.pt", sha256, bytes}: the fp32 weights
                  a warm start reads (`recsys_mtl.checkpoint.registry_weights` checks them first)
    companions    {int8: {file: "model.int8.pt", sha256, bytes, golden_outputs, ...}} (--also-int8)
    calibration   {calibrated: true, method, maps, products, fitted_on: {days, rows, positives,
                  skipped}, report: out-of-fold before/after} (recsys_mtl/calibration.py's
                  calibration.json), or {calibrated: false, reason}

Calibration: with a map (a run's RUN/calibration.json), every build is the scripted model inside
`calibration.CalibratedModel`, which maps each binary head task's logit and recomputes product
tasks from the calibrated factors after the model's own forward; parity and the golden outputs are
measured on that whole artifact, against the eager model under the same wrapper. The server and
`LoadedModel.score` then serve calibrated probabilities with no code of their own.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import gc
import importlib.metadata
import io
import json
import logging
import platform
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recsys_mtl.calibration import (
    CALIBRATION_FILE,
    CalibratedModel,
    Calibration,
    calibrated_tasks,
    describe,
    load_run_calibration,
)
from recsys_mtl.loader import (
    MANIFEST_KIND,
    MANIFEST_VERSION,
    TorchScriptArtifact,
    synthetic_columns,
)
from recsys_mtl.models.model import ExportedForm, MultiTaskModel
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import UNSET, Expect, Registry, StagedVersion, check_name
from recsys_mtl.streamed_write import WrittenFile
from recsys_mtl.transform import FeatureBatch, FeatureTransform

log = logging.getLogger("recsys_mtl.export")

MODEL_FILE = "model.pt"
# An fp32 export may carry an int8 build of the same weights beside it, so a serving config can
# switch int8 on and off per A/B variant without a second registry version (serving/config.py, `int8`).
INT8_COMPANION_FILE = "model.int8.pt"
# fp32 TorchScript runs the same kernels as eager; anything above this is an export bug.
FP32_TOLERANCE = 1e-5
PARITY_BATCH_SIZES = (1, 7, 64)
GOLDEN_ROWS = 8


WEIGHTS_FILE = "weights.pt"  # fp32 unsharded state dict (tensors only): what --warm-start reads


def weights_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The eager model's fp32 weights as a plain tensor dict (loadable with weights_only=True), so
    training can warm-start from a registry version without the run that produced it.

    The tensors share the model's memory (a full clone would double the model for the length of
    the save); only a view into a larger storage is cloned, as `torch.save` writes a tensor's
    whole storage."""
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        t = v.detach()
        whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        out[k] = t if whole else t.clone()
    return out


def weights_bytes(model: torch.nn.Module) -> bytes:
    """weights.pt's bytes in memory (for a small model; `export_model` streams it to disk)."""
    buf = io.BytesIO()
    torch.save(weights_state(model), buf)
    return buf.getvalue()


class ExportError(RuntimeError):
    """The exported artifact does not reproduce the model; nothing was published."""


@dataclass
class ExportResult:
    """What `export_model` published."""

    name: str
    version: str
    path: Path
    sha256: str
    bytes: int
    int8: bool
    seconds: float
    promoted: bool
    max_abs_diff: float


def script_model(
    model: MultiTaskModel, int8: bool = False, calibration: Calibration | None = None
) -> torch.jit.ScriptModule:
    """FX-trace (torchrec) and script a copy of `model`; with `int8`, quantize its tables first;
    with `calibration`, script the result inside `CalibratedModel` (its maps applied after it).

    The model's modules are copied first: quantization swaps modules in place, and tracing a
    quantized model stores traced placeholders in it, so the caller's eager model stays untouched.
    Its parameters and buffers are not copied (`_module_copy`): nothing here writes them, and a
    second copy of the embedding tables is the whole model again (docs/OPERATIONS.md, "Memory").
    """
    import torchrec.fx

    m = _module_copy(model).eval()
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream; it is the product's format (recsys_mtl/loader.py). TorchRec's
        # quantization still goes through torch.ao.quantization, which warns about its own future.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.ao\.quantization")
        warnings.filterwarnings("ignore", message=r".*is_fx_tracing.*")
        warnings.filterwarnings("ignore", message=r"(The TorchScript type system|TorchScript will treat)")
        if int8:
            from torchrec.inference.modules import quantize_inference_model

            m = quantize_inference_model(m)
        m.__class__ = ExportedForm  # the copy's forward is the grouped one; modules and names unchanged
        scripted = torch.jit.script(torchrec.fx.symbolic_trace(m))
        if calibration is None or not calibration.maps:
            return scripted
        return torch.jit.script(CalibratedModel(scripted, calibration))


def _module_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model`'s modules that shares its parameters and buffers (same tensors):
    the structure can be changed (modules swapped, attributes set) without touching `model`, at
    the cost of the module objects only."""
    shared: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo=shared)


def tensor_bytes(module: torch.nn.Module) -> int:
    """The bytes of the distinct storages in `module`'s state: about the size of its archive
    (what the registry checks will fit before torch writes it)."""
    seen: dict[tuple[int, int], int] = {}
    for t in module.state_dict().values():
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
    return sum(seen.values())


def save_artifact(scripted: torch.jit.ScriptModule, path: str) -> None:
    """`torch.jit.save` to a path (what `StagedVersion.write_path` gives it), warnings quiet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        torch.jit.save(scripted, path)


def artifact_bytes(scripted: torch.jit.ScriptModule) -> bytes:
    """The TorchScript archive as bytes in memory (a small model; `export_model` streams it)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        torch.jit.save(scripted, buf)
    return buf.getvalue()


def _slice(columns: Mapping[str, list[Any]], n: int) -> dict[str, list[Any]]:
    return {k: v[:n] for k, v in columns.items()}


@dataclass
class Parity:
    """How a build compares with the eager model (`_compare`)."""

    max_abs_diff: float  # the artifact vs the eager grouped forward, same batches, same calibration
    user_once_max_abs_diff: float  # eager: grouped forward vs per-candidate forward, raw outputs
    outputs: dict[str, torch.Tensor]  # the largest batch's artifact outputs (shapes describe them)


def _parity(
    model: MultiTaskModel,
    calibration: Calibration | None,
    artifact: TorchScriptArtifact,
    transform: FeatureTransform,
) -> Parity:
    """`_compare` on synthetic rows at several batch sizes."""
    cols = synthetic_columns(transform, max(PARITY_BATCH_SIZES), seed=1)
    was_training = model.training
    model.eval()
    try:
        return _compare(model, calibration, artifact, transform, cols)
    finally:
        model.train(was_training)


def _compare(
    model: MultiTaskModel,
    calibration: Calibration | None,
    artifact: TorchScriptArtifact,
    transform: FeatureTransform,
    cols: Mapping[str, list[Any]],
) -> Parity:
    """Two checks, on rows that are each their own user and on a request whose user and context
    features come once (the path the server runs), at every batch size:

    - the artifact reproduces the eager model's grouped forward under the same calibration (the
      same arithmetic: anything above FP32_TOLERANCE is an export bug);
    - the eager grouped forward equals the per-candidate `forward` on the raw outputs (the user's
      part summed in another order: float rounding only). Compared before the calibration, whose
      steep segments would magnify that rounding in a calibrated logit.
    """
    wrapper = None if calibration is None or not calibration.maps else CalibratedModel(model, calibration)
    worst = user_once = 0.0
    got: dict[str, torch.Tensor] = {}
    for n in PARITY_BATCH_SIZES:
        rows = _slice(cols, n)
        per_row, shared = transform.request_of(rows)
        for label, grouped, flat in (
            ("one user per row", transform.grouped(rows), transform(rows)),
            ("one user for all rows", transform.grouped(per_row, shared), transform(per_row, shared)),
        ):
            where = f"at batch size {n}, {label}"
            with torch.inference_mode():
                raw = model.forward_grouped(grouped.sparse, grouped.dense, grouped.group)
                user_once = max(user_once, _difference(raw, model(flat.sparse, flat.dense), where))
                want = raw if wrapper is None else wrapper.calibrate(raw)
                got = artifact.forward(grouped)
            worst = max(worst, _difference(got, want, where))
    return Parity(worst, user_once, got)


def _difference(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], where: str) -> float:
    if set(got) != set(want):
        raise ExportError(f"exported outputs {sorted(got)} differ from the model's {sorted(want)}")
    worst = 0.0
    for k in want:
        if got[k].shape != want[k].shape:
            raise ExportError(
                f"output {k!r} {where}: shape {tuple(got[k].shape)}, expected "
                f"{tuple(want[k].shape)} (did tracing freeze a length?)"
            )
        if not bool(torch.isfinite(got[k]).all()):
            raise ExportError(f"output {k!r} {where} is not finite")
        worst = max(worst, float((got[k] - want[k]).abs().max()))
    return worst


def _package_versions() -> dict[str, str | None]:
    def ver(*dists: str) -> str | None:
        for d in dists:
            try:
                return importlib.metadata.version(d)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    from recsys_mtl import __version__

    return {
        "torch": torch.__version__,
        "torchrec": ver("torchrec"),
        "fbgemm_gpu": ver("fbgemm-gpu-cpu", "fbgemm-gpu"),
        "python": platform.python_version(),
        "recsys_mtl": __version__,
    }


def _tasks(
    recipe: Recipe, outputs: Mapping[str, torch.Tensor]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    grids: dict[str, Any] = {}
    for t in recipe.tasks:
        entry: dict[str, Any] = {
            "name": t.name,
            "kind": t.kind,
            "has_head": not t.product_of,
            "product_of": t.product_of,
            "category": t.category,
            "outputs": [k for k in (t.name, f"{t.name}_logit") if k in outputs],
        }
        if t.kind == "hazard":
            assert t.grid is not None
            entry.update(grid=list(t.grid), unit=t.unit, num_intervals=t.num_intervals)
            grids[t.name] = {"grid": list(t.grid), "unit": t.unit, "num_intervals": t.num_intervals}
        tasks.append(entry)
    return tasks, grids


def _output_specs(recipe: Recipe, outputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    names = {t.name for t in recipe.tasks}
    return {
        k: {
            "shape": ["N", *(int(s) for s in v.shape[1:])],
            "dtype": str(v.dtype).removeprefix("torch."),
            "task": k if k in names else k.removesuffix("_logit"),
        }
        for k, v in outputs.items()
    }


def _data_range(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    out = dict(data)
    for key in ("train", "eval"):
        days = list(data.get(f"{key}_days") or [])
        out[f"{key}_range"] = [days[0], days[-1]] if days else None
    return out


@dataclass
class _Build:
    """One scripted build of the model, written to the staged version, loaded back from that file
    and compared with the eager model (`_scripted_build`)."""

    file: WrittenFile  # the TorchScript archive as staged: its sha256 and size
    artifact: TorchScriptArtifact  # the file loaded back, as the server will load it
    parity: Parity  # vs the fp32 eager model over PARITY_BATCH_SIZES, and the outputs' shapes

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    @property
    def sha256(self) -> str:
        return self.file.sha256

    @property
    def bytes(self) -> int:
        return self.file.bytes


def _scripted_build(
    model: MultiTaskModel,
    transform: FeatureTransform,
    int8: bool,
    staged: StagedVersion,
    file: str,
    calibration: Calibration | None = None,
) -> _Build:
    """Script `model` (`script_model`, with the calibration when given), stream it into the staged
    version as `file`, load that file back and measure its parity against the eager model (under
    the same calibration wrapper).

    Memory: the scripted module shares the eager tables, and is dropped before the file is loaded
    back, so the peak is the eager model plus one loaded artifact (docs/OPERATIONS.md, "Memory")."""
    scripted = script_model(model, int8=int8, calibration=calibration)
    written = staged.write_path(file, functools.partial(save_artifact, scripted), tensor_bytes(scripted))
    del scripted  # int8: its quantized tables; fp32: only module objects
    gc.collect()  # scripted modules hold reference cycles: free them before the load below
    artifact = TorchScriptArtifact.from_path(staged.path / file)  # as the server will load it
    return _Build(file=written, artifact=artifact, parity=_parity(model, calibration, artifact, transform))


def _check_fp32_parity(build: _Build) -> None:
    """An fp32 build must reproduce the eager model (within FP32_TOLERANCE), else nothing is published."""
    if build.max_abs_diff > FP32_TOLERANCE:
        raise ExportError(
            f"the TorchScript export differs from the eager model by {build.max_abs_diff:.3g} "
            f"(> {FP32_TOLERANCE:g})"
        )
    if build.parity.user_once_max_abs_diff > FP32_TOLERANCE:
        raise ExportError(
            f"the grouped forward (user-side work once) differs from the per-candidate forward by "
            f"{build.parity.user_once_max_abs_diff:.3g} (> {FP32_TOLERANCE:g})"
        )


def _golden_outputs(artifact: TorchScriptArtifact, batch: FeatureBatch) -> dict[str, torch.Tensor]:
    """The artifact's outputs on the golden rows (a transformed batch)."""
    with torch.inference_mode():
        return artifact.forward(batch)


def _manifest(
    model: MultiTaskModel,
    recipe: Recipe,
    transform: FeatureTransform,
    name: str,
    build: _Build,
    *,
    int8: bool,
    golden_cols: dict[str, list[Any]],
    golden_out: Mapping[str, torch.Tensor],
    seconds: float,
    data: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    source_run: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """manifest.json of a build (fields: the module docstring), before the caller's extra entries,
    `weights` and `companions` are added."""
    tasks, grids = _tasks(recipe, build.parity.outputs)
    return {
        "kind": MANIFEST_KIND,
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "version": None,  # filled in by Registry.publish
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "int8": int8,
        "artifact": {
            "format": TorchScriptArtifact.format,
            "file": MODEL_FILE,
            "sha256": build.sha256,
            "bytes": build.bytes,
            "quantization": (
                "embedding tables int8 row-wise (torchrec quantize_inference_model); dense layers fp32"
                if int8
                else None
            ),
            "signature": "forward(sparse: KeyedJaggedTensor, dense: Tensor[U + N, D], group: Tensor[N]) "
            "-> Dict[str, Tensor]",
        },
        "outputs": _output_specs(recipe, build.parity.outputs),
        "tasks": tasks,
        "grids": grids,
        "inputs": {
            "columns": transform.input_columns,
            "sparse_keys": transform.sparse_keys,
            "dense_features": transform.dense_names,
            "vector_features": {f.name: f.dim for f in transform.vector_features},
        },
        "transform": transform.spec(),
        "recipe": recipe.to_dict(),
        "model": {"type": recipe.model.type, "parameters": sum(p.numel() for p in model.parameters())},
        "data": _data_range(data),
        "metrics": dict(metrics) if metrics is not None else None,
        "source_run": dict(source_run) if source_run is not None else None,
        "versions": _package_versions(),
        "export": {
            "seconds": round(seconds, 3),
            "parity": {
                "batch_sizes": list(PARITY_BATCH_SIZES),
                "max_abs_diff": build.max_abs_diff,
                "user_once_max_abs_diff": build.parity.user_once_max_abs_diff,
            },
        },
        "golden": {
            "columns": golden_cols,
            "outputs": {k: v.tolist() for k, v in golden_out.items()},
        },
    }


def _weights_entry(weights: WrittenFile) -> dict[str, Any]:
    """The manifest's `weights` entry for weights.pt."""
    return {
        "format": "torch-state-dict",
        "file": WEIGHTS_FILE,
        "sha256": weights.sha256,
        "bytes": weights.bytes,
    }


def _stage_weights(model: torch.nn.Module, staged: StagedVersion) -> WrittenFile:
    """Stream weights.pt (`weights_state`: the model's own tensors) into the staged version,
    through a file object (torch.save streams to one record by record)."""
    state = weights_state(model)
    return staged.write_stream(WEIGHTS_FILE, lambda f: torch.save(state, f))


def _int8_companion(
    model: MultiTaskModel,
    transform: FeatureTransform,
    golden: FeatureBatch,
    staged: StagedVersion,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """An int8 build of the same weights (and the same calibration) for beside an fp32 export,
    staged as INT8_COMPANION_FILE: the manifest's `companions.int8` entry. Non-finite outputs on
    the golden rows refuse it (ExportError)."""
    q = _scripted_build(model, transform, True, staged, INT8_COMPANION_FILE, calibration)
    q_golden = _golden_outputs(q.artifact, golden)
    bad = [k for k, t in q_golden.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ExportError(f"the int8 build gives non-finite outputs {bad} on the golden rows")
    return {
        "format": TorchScriptArtifact.format,
        "file": INT8_COMPANION_FILE,
        "sha256": q.sha256,
        "bytes": q.bytes,
        "quantization": "embedding tables int8 row-wise (torchrec quantize_inference_model)",
        "max_abs_diff_vs_fp32": q.max_abs_diff,
        "golden_outputs": {k: v.tolist() for k, v in q_golden.items()},
    }


def export_model(
    model: MultiTaskModel,
    recipe: Recipe,
    transform: FeatureTransform,
    registry: Registry | str | Path,
    name: str,
    *,
    int8: bool = False,
    int8_companion: bool = False,
    promote: bool = False,
    version: str | int | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    source_run: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    expect: Expect = UNSET,
    calibration: Calibration | None = None,
    uncalibrated_reason: str = "no calibration map was given to the export",
) -> ExportResult:
    """Script `model` (optionally with int8 tables), check it against the eager model, and publish
    it as a new registry version with its manifest; promote it to current if asked.

    Args:
        model: the trained, unsharded CPU model (left unchanged).
        recipe, transform: what it was trained with (`transform` carries the dense statistics).
        registry: a `Registry` or its root directory.
        name: the registry model name.
        int8: quantize the embedding tables to int8 (TorchRec inference quantization).
        int8_companion: with an fp32 export, also write an int8 build of the same weights
            (`model.int8.pt`, its own sha256 and golden outputs under the manifest's
            `companions.int8`); servers load it for variants whose `int8` flag is on.
        promote: switch current.json to the new version as it is published (one locked step).
        version: an explicit version; default the next integer.
        data, metrics, source_run: provenance recorded in the manifest (see the module docstring).
        extra_files: more files for the version directory (e.g. a nightly report).
        extra_manifest: more top-level manifest entries (e.g. "nightly": date, gate decision).
        expect: with `promote`, publish and promote only if this version (None: none) is still
            current (`Registry.publish`): the version the caller compared the model against.
        calibration: the maps every build applies after the model (module docstring); recorded
            in the manifest's `calibration`. None: uncalibrated, `uncalibrated_reason` says why.

    Raises:
        ExportError: the artifact does not reproduce the model (fp32) or gives non-finite outputs.
        RegistryError: a bad name, or an explicit version that exists; PromoteConflict (a
            subclass) when `expect` is no longer current: nothing was published.
        RegistryWriteError: the registry's filesystem refused a write (e.g. full): nothing was
            published.
    """
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    explicit = None if version is None else check_name("version", str(version))  # before any work
    t0 = time.perf_counter()
    # Every file is streamed into the staged version as it is built (never whole in memory) and
    # checked from there; the version becomes visible only by the commit at the end.
    with reg.stage(name) as staged:
        build = _scripted_build(model, transform, int8, staged, MODEL_FILE, calibration)
        if not int8:
            _check_fp32_parity(build)
        golden_cols = synthetic_columns(transform, GOLDEN_ROWS, seed=0)
        golden = transform.grouped(golden_cols)
        golden_out = _golden_outputs(build.artifact, golden)
        seconds = time.perf_counter() - t0
        manifest = _manifest(
            model,
            recipe,
            transform,
            name,
            build,
            int8=int8,
            golden_cols=golden_cols,
            golden_out=golden_out,
            seconds=seconds,
            data=data,
            metrics=metrics,
            source_run=source_run,
        )
        del build.artifact  # the loaded copy is checked: free it before the next build
        gc.collect()
        manifest["calibration"] = describe(calibration, uncalibrated_reason)
        calibration_ok = bool(manifest["calibration"]["calibrated"])
        manifest.update(extra_manifest or {})
        manifest["weights"] = _weights_entry(_stage_weights(model, staged))
        for fname, blob in (extra_files or {}).items():
            staged.write(fname, blob)
        if int8_companion and not int8:
            manifest["companions"] = {"int8": _int8_companion(model, transform, golden, staged, calibration)}
            gc.collect()
        v = staged.commit(manifest, explicit, promote=promote, expect=expect)
    cal_note = f", calibrated ({manifest['calibration']['method']})" if calibration_ok else ", uncalibrated"
    log.info(
        "exported %s/%s (%s%s, %.1f MB, max |diff| %.2g) in %.1fs%s",
        name,
        v,
        "int8" if int8 else "fp32",
        cal_note,
        build.bytes / 1e6,
        build.max_abs_diff,
        seconds,
        "; promoted" if promote else "",
    )
    return ExportResult(
        name=name,
        version=v,
        path=reg.version_dir(name, v),
        sha256=build.sha256,
        bytes=build.bytes,
        int8=int8,
        seconds=time.perf_counter() - t0,
        promoted=promote,
        max_abs_diff=build.max_abs_diff,
    )


def export_run(
    run_dir: str | Path,
    registry: Registry | str | Path,
    name: str,
    *,
    int8: bool = False,
    int8_companion: bool = False,
    promote: bool = False,
    version: str | int | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    expect: Expect = UNSET,
) -> ExportResult:
    """Export a finished training run: its consolidated model, recipe, transform, data range,
    held-out metrics and calibration map (RUN/calibration.json; none: uncalibrated) (see
    `export_model`)."""
    from recsys_mtl.run import METRICS_FILE, load_run

    run = load_run(run_dir)
    metrics_path = run.path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    source = {
        "path": str(run.path.resolve()),
        **{k: run.info.get(k) for k in ("finished_at", "steps", "samples", "world_size")},
    }
    calibration = load_run_calibration(run.path)
    has_binary = bool(calibrated_tasks(run.recipe)[0])
    if calibration is None and has_binary:
        log.warning("%s has no %s: exporting an uncalibrated model", run.path, CALIBRATION_FILE)
    return export_model(
        run.model,
        run.recipe,
        run.transform,
        registry,
        name,
        int8=int8,
        int8_companion=int8_companion,
        promote=promote,
        version=version,
        data=run.info.get("data"),
        metrics=metrics,
        source_run=source,
        extra_files=extra_files,
        extra_manifest=extra_manifest,
        expect=expect,
        calibration=calibration,
        uncalibrated_reason=f"the run has no {CALIBRATION_FILE} (no held-out days to fit it on, or "
        "recipe calibration.method none)"
        if has_binary
        else "the recipe has no binary task to calibrate",
    )
