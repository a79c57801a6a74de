"""A training run's directory, and loading a trained model from it.

```
RUN/run.json        recipe, feature transform spec (with the dense statistics fitted on training
                    data), data range, steps, throughput, loss curve, sharding plan
RUN/checkpoints/    torch.distributed.checkpoint (DCP) checkpoints (recsys_mtl.checkpoint): written
                    by every rank of a sharded run, each its own shards; loadable into an unsharded
                    model anywhere; latest.json points at the newest (`latest_checkpoint`, here)
RUN/metrics.json    evaluation on the held-out days
```

`load_run` rebuilds everything from the directory alone (no recipe file, no training code paths):
it loads the DCP checkpoint into a plain, unsharded model on CPU, which is what evaluation and
export need.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# write_json_atomic lives in recsys_mtl.atomic_files; re-exported for the trainer, which imports it from here.
from recsys_mtl.atomic_files import write_json_atomic as write_json_atomic
from recsys_mtl.recipe import Recipe, recipe_from_dict
from recsys_mtl.registry import check_name

if TYPE_CHECKING:  # torch and the models are imported where a model is loaded: reading run.json stays cheap
    from torch import nn

    from recsys_mtl.models import MultiTaskModel
    from recsys_mtl.transform import FeatureTransform

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"  # in CHECKPOINTS: {"step", "dir"}, written by recsys_mtl.checkpoint

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run directory that cannot be used (missing, incomplete, or from another format)."""


@dataclass
class LoadedRun:
    path: Path
    recipe: Recipe
    transform: FeatureTransform
    model: MultiTaskModel
    info: dict[str, Any]


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's run.json (RunError if there is none or it is not JSON). Every reader of run.json
    goes through here; this module imports no torch until a model is loaded."""
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        raise RunError(f"{run_dir}: not a training run (no {RUN_FILE})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{p}: unreadable ({e})") from None


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint directory, its progress) of the newest complete checkpoint, or None.

    Raises:
        RunError: latest.json is unreadable or its `dir` is not a plain directory name of this
            run's checkpoints (a crafted pointer is refused, never followed).
    """
    p = checkpoints_dir(run_dir) / LATEST
    if not p.is_file():
        return None
    try:
        pointer = json.loads(p.read_text())
        name = check_name("checkpoint directory", pointer["dir"])
        ck = checkpoints_dir(run_dir) / name
        progress = json.loads((ck / "progress.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:  # RegistryError, JSONDecodeError
        raise RunError(f"{p}: not a usable checkpoint pointer ({e})") from None
    return ck, progress


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run's recipe, transform, and trained model (unsharded, CPU, eval mode)."""
    from recsys_mtl.model_state import read_model_state
    from recsys_mtl.models import build_model
    from recsys_mtl.transform import FeatureTransform

    path = Path(run_dir)
    info = read_run_info(path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise RunError(f"{path}: the run has no checkpoint yet")
    if info.get("status") != "finished":
        log.warning("%s: training did not finish; loading its latest checkpoint (%s)", path, latest[0].name)
    recipe = recipe_from_dict(info["recipe"], str(path / RUN_FILE))
    transform = FeatureTransform.from_spec(info["transform"])
    model = build_model(recipe)
    model.load_state_dict(read_model_state(model, latest[0], no_dist=True))
    model.eval()
    return LoadedRun(path=path, recipe=recipe, transform=transform, model=model, info=info)


def count_parameters(model: nn.Module) -> int:
    import torch

    return sum(int(torch.numel(p)) for p in model.parameters())
