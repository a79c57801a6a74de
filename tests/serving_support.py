"""Helpers for the serving tests: small real models published into a real registry, a real
`recsys-mtl serve` process on a free loopback port (both from `recsys_mtl.devtools`, which the
benchmarks share), and request builders."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_mtl.devtools.fixtures import NAME, ipc_stream, publish, small_recipe, write_config
from recsys_mtl.devtools.server_process import ServerProcess, serve

__all__ = [
    "NAME",
    "Server",
    "ServerProcess",
    "forge_offsets",
    "ipc_stream",
    "nulls_for_nonfinite",
    "publish",
    "request_from_table",
    "serve",
    "small_recipe",
    "write_config",
]

Server = ServerProcess


def nulls_for_nonfinite(table: pa.Table) -> pa.Table:
    """NaN and inf in float columns -> null: the server refuses NaN (422) and the transform treats
    null, NaN and inf alike as missing, so offline scores of the original rows stay comparable."""
    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type):
            col = table.column(i)
            table = table.set_column(i, f.name, pc.if_else(pc.is_finite(col), col, None))
    return table


def request_from_table(table: pa.Table, user_id: str, columns: list[str]) -> dict[str, Any]:
    """A columnar JSON request whose candidates are the table's rows (every feature per candidate).
    NaN and inf become null: JSON has no NaN, and the transform treats all three as missing."""

    def values(c: str) -> list[Any]:
        return [
            None if isinstance(v, float) and not math.isfinite(v) else v for v in table.column(c).to_pylist()
        ]

    return {"user_id": user_id, "candidates": {c: values(c) for c in columns}}


def forge_offsets(body: bytes, valid: list[int], forged: list[int]) -> bytes:
    """The stream with one int32 offsets buffer (`valid`) rewritten to `forged`: what a hostile
    client sends (Arrow's writers never produce it)."""
    old = np.array(valid, np.int32).tobytes()
    assert body.count(old) == 1, "the offsets to forge must occur once in the stream"
    return body.replace(old, np.array(forged, np.int32).tobytes())
