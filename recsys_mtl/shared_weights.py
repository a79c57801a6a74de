"""Back a loaded fp32 TorchScript model's tensors with its version's weights.pt, mapped from the file.

Why: `recsys-mtl serve --workers N` runs N processes that each load the same model. Loaded with
`torch.jit.load`, every worker holds a private copy of the embedding tables (the bulk of a model):
N x the model. weights.pt (the fp32 state dict the exporter writes beside model.pt, tensors only)
can instead be mapped with `torch.load(mmap=True, weights_only=True)`; its pages live in the page
cache once, shared by every process that maps the file. Pointing each of the module's parameters
and buffers at the mapped tensor of the same name (`Tensor.set_`) frees the private copy: the
workers then share one copy of the weights.

Each tensor is swapped only if the mapped one has the same shape and dtype and is equal to it
(`torch.equal`), so a weights.pt that does not match model.pt changes no score: that tensor keeps
its private copy. The file is checked against the manifest's sha256 before it is mapped
(`Registry.verified_path`, by the caller); registry versions are immutable, and the mapping keeps
the file's inode alive even if the version is deleted. int8 builds have other tensors: not shared.

The cost: the weights are file-backed pages, which the kernel may drop under memory pressure and
read back on the next access (a slow request), where a private copy would be swapped or kill the
process instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("recsys_mtl.shared_weights")


def map_weights(module: torch.nn.Module, weights_path: str | Path) -> tuple[int, int]:
    """Point `module`'s tensors at weights.pt mapped from `weights_path` (a verified file).
    Returns (bytes now backed by the file, bytes left private)."""
    state = torch.load(str(weights_path), map_location="cpu", mmap=True, weights_only=True)
    shared = private = 0
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            src = state.get(name)
            size = t.numel() * t.element_size()
            if (
                isinstance(src, torch.Tensor)
                and src.shape == t.shape
                and src.dtype == t.dtype
                and src.is_contiguous()
                and t.is_contiguous()
                and torch.equal(src, t)
            ):
                t.set_(src)
                shared += size
            else:
                private += size
    if private:
        log.info("%s: %d bytes of tensors have no equal tensor in it, kept private", weights_path, private)
    return shared, private
