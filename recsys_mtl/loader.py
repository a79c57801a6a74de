"""Load an exported model from the registry and score raw rows with it: what the server runs.

    from recsys_mtl.loader import load_model
    m = load_model("registry", "ads_ranker")          # version="current" (or "latest", or "3")
    m.validate()                                      # golden rows reproduce; outputs finite
    scores = m.score({"user_id": [...], "creative_id": [...], ...})   # or a pyarrow Table/RecordBatch

`score` returns numpy arrays, one row per input row, in input order:

    "<binary task>"            probability [N]            (ctr, cvr, and the product task ctcvr)
    "<hazard task>"            hazard per interval [N, L] (L = len(grid) - 1)
    "<hazard task>_survival"   S(t_k) = prod_{j<=k} (1 - h_j), [N, L]: survival to the end of interval k
    "<hazard task>_risk"       1 - S(t_L), [N]: the probability of the event within the grid's horizon

Safety: the manifest's sha256 of model.pt is checked, streaming, on the open file that is then
loaded (`Registry.verified_path`: the same inode, unchanged from before the check to after the
load); a mismatch is refused. The file is never read whole into memory: a load holds the model,
not the file's bytes beside it (docs/OPERATIONS.md, "Memory"). The artifact
is TorchScript, loaded with `torch.jit.load`: its code is TorchScript IR and its weights are
tensors, so no arbitrary Python object is unpickled (never `torch.load(weights_only=False)` here).

Artifact formats sit behind the small `ModelArtifact` protocol: a loader per manifest
`artifact.format` in `ARTIFACT_LOADERS`. TorchScript is the product's format (one
file, no Python needed to load it, int8 tables through TorchRec); a
torch.export (`.pt2`) loader can be registered beside it without touching the scoring code.

This module imports only the recipe, the feature transform and the registry, never training code,
so the server stays small and cannot drift from the transform used in training.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# The int8 graph calls FBGEMM's quantized embedding operators; importing fbgemm_gpu registers them
# with torch before `torch.jit.load` resolves the graph's ops (torchrec usually imports it too).
import fbgemm_gpu  # noqa: F401
import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys_mtl.registry import Registry, RegistryError
from recsys_mtl.transform import Columns, FeatureBatch, FeatureTransform

log = logging.getLogger("recsys_mtl.loader")

MANIFEST_KIND = "recsys-mtl-model"
MANIFEST_VERSION = 1


class ModelLoadError(RuntimeError):
    """A registry model that must not be served: checksum mismatch, unknown format, failed validation."""


# ---------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class ModelArtifact(Protocol):
    """A loaded model artifact: the exported `MultiTaskModel.forward`, whatever its file format."""

    format: str
    grouped: bool  # reads grouped batches (`FeatureTransform.grouped`); else per-row ones

    def forward(self, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        """Model outputs (see recsys_mtl.models.model) for one batch of transformed rows."""
        ...


class TorchScriptArtifact:
    """A TorchScript module (FX-traced with torchrec, then scripted) saved with `torch.jit.save`."""

    format = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module
        # Exported since user-side work is done once per request: forward(sparse, dense, group),
        # `MultiTaskModel.forward_grouped`; before: forward(sparse, dense). The archive says which.
        self.grouped: bool = len(module.forward.schema.arguments) == 4

    @classmethod
    def from_path(cls, path: str | Path) -> TorchScriptArtifact:
        """Load from a file whose checksum was verified (`Registry.verified_path`). torch reads the
        archive record by record, so a load holds the module, not the file's bytes beside it."""
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream; it is the product's format (module docstring).
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning
            )
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        return cls(module)

    @classmethod
    def from_bytes(cls, data: bytes) -> TorchScriptArtifact:
        """Load from bytes in memory (a small archive; holds the bytes and torch's copy of them
        beside the module, so the registry loads files with `from_path`)."""
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning
            )
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        module.eval()
        return cls(module)

    def forward(self, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        if self.grouped:
            if batch.group is None:
                raise ValueError(
                    "this model reads grouped batches (FeatureTransform.grouped), got a per-row one"
                )
            return self.module(batch.sparse, batch.dense, batch.group)
        if batch.group is not None:
            raise ValueError(
                "this model (exported before grouped batches) reads per-row batches, got a grouped one"
            )
        return self.module(batch.sparse, batch.dense)


# manifest artifact.format -> loader of the verified file (a path, see `load_artifact`)
ARTIFACT_LOADERS: dict[str, Callable[[Path], ModelArtifact]] = {
    TorchScriptArtifact.format: TorchScriptArtifact.from_path,
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# golden / warm-up rows
# ---------------------------------------------------------------------------------------------


def synthetic_columns(transform: FeatureTransform, n: int, seed: int = 0) -> dict[str, list[Any]]:
    """`n` raw rows for every input column of `transform`, as JSON-able lists.

    Used as the golden request stored in the manifest (the server re-scores it before serving) and
    for warm-up. The rows exercise the awkward paths: a missing id (-> row 0), unknown strings,
    empty and over-long lists, a missing vector; dense values are finite (JSON has no NaN; the
    transform's NaN handling is tested on its own).
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, list[Any]] = {}

    def ids(f: Any, k: int) -> list[Any]:
        if f.value_type == "string":
            pool = [*(f.vocabulary or []), "unseen", "a", "b", "c"]
            return [str(pool[i]) for i in rng.integers(0, len(pool), k)]
        return [int(v) for v in rng.integers(0, 10 * f.num_rows, k)]

    for f in transform.features:
        if f.source in cols:
            continue
        if f.kind == "dense":
            cols[f.source] = [float(v) for v in np.round(rng.lognormal(0.0, 1.0, n), 6)]
        elif f.kind == "id":
            vals = ids(f, n)
            if n > 1:
                vals[1] = None  # a missing value
            cols[f.source] = vals
        elif f.kind == "vector":
            assert f.dim is not None
            vecs: list[Any] = np.round(rng.normal(0.0, 1.0, (n, f.dim)), 6).tolist()
            if n > 2 and f.missing == "zeros":
                vecs[2] = None  # a missing vector: zeros plus the indicator
            cols[f.source] = vecs
        else:
            max_len = int(f.max_len or 1)
            lens = rng.integers(0, max_len + 3, n)  # some empty, some truncated
            cols[f.source] = [ids(f, int(k)) for k in lens]
    return cols


def _as_nested(t: torch.Tensor) -> list[Any]:
    return t.detach().to(torch.float64).cpu().numpy().tolist()


# ---------------------------------------------------------------------------------------------
# the loaded model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    """One task as the manifest describes it (binary: `grid` is None)."""

    name: str
    kind: str
    grid: list[float] | None = None
    unit: str | None = None

    @property
    def num_intervals(self) -> int:
        return len(self.grid) - 1 if self.grid else 0


@dataclass
class LoadedModel:
    """A verified registry model plus the feature transform it was trained with."""

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    transform: FeatureTransform
    artifact: ModelArtifact
    tasks: list[TaskInfo] = field(default_factory=list)
    # "primary" (model.pt) or a companion build of the same weights (e.g. "int8": model.int8.pt)
    build: str = "primary"

    @property
    def int8(self) -> bool:
        return self.build == "int8" or bool(self.manifest.get("int8", False))

    @property
    def golden_outputs(self) -> Mapping[str, Any] | None:
        """The outputs the exporter recorded for the golden rows, for this build."""
        if self.build == "primary":
            golden = self.manifest.get("golden")
            return golden.get("outputs") if isinstance(golden, dict) else None
        return self.manifest.get("companions", {}).get(self.build, {}).get("golden_outputs")

    @property
    def input_columns(self) -> list[str]:
        """The raw columns a request must provide."""
        return self.transform.input_columns

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def features(self, columns: Columns, shared: Mapping[str, Any] | None = None) -> FeatureBatch:
        """Raw rows -> the batch this model reads: grouped for models exported since user-side work
        is done once per request (`FeatureTransform.grouped`: a request whose `shared` columns hold
        every user and context feature is one user row for all its candidates), per row for older
        ones. Arguments as `FeatureTransform.__call__`."""
        if self.artifact.grouped:
            return self.transform.grouped(columns, shared)
        return self.transform(columns, shared)

    def predict(self, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        """Raw model outputs (probabilities, logits, hazards) for rows from `features` (or a
        per-row batch from `transform`: a grouped model reads it as one user per row)."""
        if self.artifact.grouped and batch.group is None:
            batch = self.transform.as_grouped(batch)
        with torch.inference_mode():
            return self.artifact.forward(batch)

    def score(
        self, columns: Columns, tasks: Sequence[str] | None = None, shared: Mapping[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """Score raw rows (a pyarrow Table/RecordBatch or a dict column -> values).

        Args:
            columns: one row per candidate, with at least `input_columns` (others are ignored).
            tasks: the tasks wanted (default: all); an unknown name is a ValueError.
            shared: columns of one value for every row (a request's user and context features):
                with all of them here, the user's part is computed once for all the rows.

        Returns:
            float32 arrays in row order; see the module docstring for the keys.

        Raises:
            recsys_mtl.transform.TransformError: a missing column or a value of the wrong type
                (its `field` names the column); ValueError: no rows, or an unknown task.
        """
        wanted = self.wanted(tasks)
        batch = self.features(columns, shared)
        if batch.batch_size == 0:
            raise ValueError("no rows to score")
        return self.postprocess(self.predict(batch), wanted)

    @staticmethod
    def postprocess(out: Mapping[str, torch.Tensor], tasks: Sequence[TaskInfo]) -> dict[str, np.ndarray]:
        """Model outputs -> the scores of `tasks` (see the module docstring for the keys)."""
        result: dict[str, np.ndarray] = {}
        for t in tasks:
            y = out[t.name].float()
            if t.kind == "hazard":
                surv = torch.cumprod(1.0 - y, dim=1)
                result[t.name] = y.numpy()
                result[f"{t.name}_survival"] = surv.numpy()
                result[f"{t.name}_risk"] = (1.0 - surv[:, -1]).numpy()
            else:
                result[t.name] = y.numpy()
        return result

    def wanted(self, tasks: Sequence[str] | None) -> list[TaskInfo]:
        """The TaskInfo of each named task (all tasks for None); ValueError for an unknown name."""
        if tasks is None:
            return list(self.tasks)
        by_name = {t.name: t for t in self.tasks}
        unknown = [t for t in tasks if t not in by_name]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has {self.task_names}")
        return [by_name[t] for t in dict.fromkeys(tasks)]

    def validate(self, atol: float = 1e-4) -> None:
        """Score the manifest's golden rows: every output present, finite, and equal (within `atol`)
        to what the exporter recorded. Raises ModelLoadError otherwise. Run before serving."""
        golden = self.manifest.get("golden")
        outputs = self.golden_outputs
        if not isinstance(golden, dict) or "columns" not in golden or not isinstance(outputs, dict):
            raise ModelLoadError(f"{self.path}: the manifest has no golden request to validate with")
        try:
            got = self.predict(self.features(golden["columns"]))
        except Exception as e:  # any failure here means the model must not be served
            raise ModelLoadError(f"{self.path}: scoring the golden request failed: {e}") from e
        for key, want in outputs.items():
            if key not in got:
                raise ModelLoadError(f"{self.path}: output {key!r} missing from the model's outputs")
            g = got[key].to(torch.float64)
            if not bool(torch.isfinite(g).all()):
                raise ModelLoadError(f"{self.path}: output {key!r} is not finite on the golden request")
            w = torch.tensor(want, dtype=torch.float64)
            if g.shape != w.shape:
                raise ModelLoadError(
                    f"{self.path}: output {key!r} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
                )
            diff = float((g - w).abs().max()) if g.numel() else 0.0
            if diff > atol:
                raise ModelLoadError(
                    f"{self.path}: output {key!r} differs from the exported golden scores by {diff:.3g} "
                    f"(> {atol:g}): this host does not reproduce the model"
                )

    def warm_up(self, batch_sizes: Sequence[int] = (1, 64, 2000), seed: int = 1) -> None:
        """Run a few batches of synthetic rows so first requests do not pay one-time costs."""
        for n in batch_sizes:
            cols = synthetic_columns(self.transform, n, seed=seed)
            self.score(cols)  # one user per row
            per_row, shared = self.transform.request_of(cols)
            self.score(per_row, shared=shared)  # a request: one user for all its candidates


class PerRowForward(torch.nn.Module):
    """A loaded model as a module with the training model's `forward(sparse, dense)` on per-row
    batches, for code that runs either (the nightly's evaluation of the serving version)."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.loaded = model
        self.module = model.artifact.module  # type: ignore[attr-defined]  # its parameters: the device
        self.eval()  # a loaded model is never trained: callers that restore the mode restore this

    def forward(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.loaded.predict(FeatureBatch(sparse=sparse, dense=dense))


def _tasks_from_manifest(manifest: Mapping[str, Any]) -> list[TaskInfo]:
    return [
        TaskInfo(name=t["name"], kind=t["kind"], grid=t.get("grid"), unit=t.get("unit"))
        for t in manifest.get("tasks", [])
    ]


def load_artifact(reg: Registry, name: str, version: str | int, art: Any) -> ModelArtifact:
    """Load an artifact file described by a manifest entry (`artifact`, or a companion), verified
    against its size and sha256 by `Registry.verified_path` (streamed: the file is never whole in
    memory beside the model it holds), from that same open file."""
    where = reg.root / name / str(version)
    if not isinstance(art, dict) or not {"format", "file", "sha256"} <= art.keys():
        raise ModelLoadError(f"{where}: the manifest has no artifact entry (format, file, sha256)")
    loader = ARTIFACT_LOADERS.get(art["format"])
    if loader is None:
        raise ModelLoadError(
            f"{where}: artifact format {art['format']!r} is not supported here "
            f"(supported: {sorted(ARTIFACT_LOADERS)})"
        )
    try:
        with reg.verified_path(name, version, art) as path:
            try:
                artifact = loader(path)
            except Exception as e:  # a checksummed file that still fails to load: never served
                raise ModelLoadError(
                    f"{where / art['file']}: the {art['format']} artifact failed to load: {e}"
                ) from e
    except RegistryError as e:  # unreadable, a size / sha256 mismatch, or changed while loading
        raise ModelLoadError(str(e)) from None
    return artifact


def _check_versions(manifest: Mapping[str, Any], where: Path) -> None:
    want = manifest.get("versions", {}).get("torch")
    if want and want.split("+")[0] != torch.__version__.split("+")[0]:
        log.warning(
            "%s was exported with torch %s; this process runs torch %s", where, want, torch.__version__
        )


def load_model(
    registry: Registry | str | Path,
    name: str,
    version: str | int = "current",
    *,
    int8: bool = False,
    share_weights: bool = False,
) -> LoadedModel:
    """Load a registry model: resolve the version, read the manifest, verify the artifact's sha256
    BEFORE loading it, load it, and rebuild the feature transform from the manifest's spec.

    Args:
        registry: a `Registry` or its root directory.
        name: the model name.
        version: "current" (current.json), "latest", or a version ("3" or 3).
        int8: load the int8 build: the version itself if it was exported with --int8, else its
            int8 companion (export --also-int8); a version with neither is refused.
        share_weights: back an fp32 build's tensors with the version's weights.pt mapped from the
            file (sha256 checked first), so processes that load the same version share one copy
            (recsys_mtl/shared_weights.py; serving with several workers). Without a usable
            weights.pt the model keeps its own copy (logged).

    Raises:
        RegistryError: no such model/version, or an unreadable manifest.
        ModelLoadError: checksum mismatch, unsupported format, or an artifact that fails to load.
    """
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    v = reg.resolve(name, version)
    d = reg.version_dir(name, v)
    manifest = reg.manifest(name, v)
    try:
        model = _load_version(reg, name, v, d, manifest, int8)
    except (ModelLoadError, RegistryError):
        raise
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        # a field of the wrong JSON type (a string where an object belongs, a task without a name):
        # the documented error, naming the version, never a bare TypeError from deep inside
        raise ModelLoadError(f"{d}: malformed manifest ({type(e).__name__}: {e})") from None
    if share_weights and model.build == "primary" and not manifest.get("int8", False):
        _share_weights(reg, model)
    return model


def _share_weights(reg: Registry, model: LoadedModel) -> None:
    """`load_model(share_weights=True)`: map weights.pt under the model's tensors, or leave them."""
    from recsys_mtl.shared_weights import map_weights

    entry = model.manifest.get("weights")
    module = getattr(model.artifact, "module", None)
    if not isinstance(entry, dict) or not isinstance(module, torch.nn.Module):
        log.warning("%s: no weights.pt to share; this process keeps its own copy", model.path)
        return
    try:
        with reg.verified_path(model.name, model.version, entry) as path:
            shared, private = map_weights(module, path)
    except (RegistryError, OSError, RuntimeError, ValueError) as e:
        log.warning("%s: weights.pt not shared (%s); this process keeps its own copy", model.path, e)
        return
    log.info(
        "%s v%s: %.1f MiB of weights mapped from weights.pt (shared between processes), %.1f MiB own",
        model.name,
        model.version,
        shared / 2**20,
        private / 2**20,
    )


def _load_version(
    reg: Registry, name: str, v: str, d: Path, manifest: Mapping[str, Any], int8: bool
) -> LoadedModel:
    if manifest.get("kind") != MANIFEST_KIND or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ModelLoadError(
            f"{d}: not a {MANIFEST_KIND} manifest version {MANIFEST_VERSION} "
            f"(kind={manifest.get('kind')!r}, manifest_version={manifest.get('manifest_version')!r})"
        )
    _check_versions(manifest, d)
    build = "primary"
    art = manifest.get("artifact")
    if int8 and not manifest.get("int8", False):
        art = manifest.get("companions", {}).get("int8")
        if art is None:
            raise ModelLoadError(
                f"{d}: no int8 build in this version (export it with --int8, or with --also-int8 to "
                "carry one beside the fp32 model)"
            )
        build = "int8"
    artifact = load_artifact(reg, name, v, art)
    try:
        transform = FeatureTransform.from_spec(manifest["transform"])
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"{d}: the manifest's feature transform spec is unusable: {e}") from None
    return LoadedModel(
        name=name,
        version=v,
        path=d,
        manifest=dict(manifest),
        transform=transform,
        artifact=artifact,
        tasks=_tasks_from_manifest(manifest),
        build=build,
    )


__all__ = [
    "ARTIFACT_LOADERS",
    "LoadedModel",
    "ModelArtifact",
    "ModelLoadError",
    "RegistryError",
    "TaskInfo",
    "TorchScriptArtifact",
    "load_artifact",
    "load_model",
    "synthetic_columns",
]
