"""Reading a model's weights from a DCP checkpoint, in the model's own key layout.

Checkpoints (recsys_mtl/checkpoint.py) hold the model's state dict under "model". A checkpoint
written before the expert banks (`recsys_mtl.models.expert_bank`: each expert a module of its own,
keys ``...experts.<i>....``) is read in that layout and converted, so the runs and registry
versions trained before still evaluate, export and warm-start.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from recsys_mtl.models.expert_bank import has_legacy_experts, legacy_state_template, upgrade_state_dict


def checkpoint_keys(checkpoint: Path) -> set[str]:
    """The model's keys in a DCP checkpoint (without the "model." prefix), from its metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(checkpoint)).read_metadata()
    return {k.removeprefix("model.") for k in meta.state_dict_metadata if k.startswith("model.")}


def predates_expert_banks(model: nn.Module, checkpoint: Path) -> bool:
    """Whether the checkpoint holds `model`'s experts as separate modules (the older layout)."""
    return has_legacy_experts(model, checkpoint_keys(checkpoint))


def read_model_state(model: nn.Module, checkpoint: Path, no_dist: bool = False) -> dict[str, torch.Tensor]:
    """`model.state_dict()` filled from the checkpoint (sharded tables as this model shards them),
    converted from the older expert layout when the checkpoint has it. Load it with
    `model.load_state_dict`."""
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()
    legacy = predates_expert_banks(model, checkpoint)
    if legacy:
        state = legacy_state_template(model, state)
    with warnings.catch_warnings():  # "torch.distributed is disabled": intended with no_dist
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": state}, checkpoint_id=str(checkpoint), no_dist=no_dist)
    return upgrade_state_dict(model, state) if legacy else state
