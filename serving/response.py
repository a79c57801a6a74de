"""The score response: per task one score per candidate, in the candidates' order.

```json
{"model": "ads_ranker", "version": "3", "build": "primary", "experiment": "int8_embeddings",
 "variant": "control", "num_candidates": 2,
 "scores": {"ctr": [0.031, 0.012], "cvr": [...], "ctcvr": [...]},
 "survival": {"hazard_short": {"unit": "days", "grid": [0, 1, ..., 14],
                               "risk": [0.41, 0.22],          # P(event within the grid's horizon)
                               "hazard": [[...14 values...], [...]],    # per interval
                               "survival": [[...], [...]]}}}            # S(end of interval k)
```

`hazard` and `survival` are left out when the variant's `survival_curves` flag is off. Arrays are
serialised straight from numpy by orjson (no per-candidate Python objects).

A client that sends `Accept: application/vnd.apache.arrow.stream` gets the same content as one
Arrow record batch instead (`render_arrow`): one row per candidate, a float32 column per binary
task, `<hazard>_risk`, and fixed-size-list columns `<hazard>_hazard` / `<hazard>_survival`; model,
version, build, experiment, variant and each grid in the schema metadata. The columns wrap the
output buffers without copying, and a 500-candidate response with curves is about 4x smaller than
its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa

from recsys_mtl.loader import LoadedModel, TaskInfo
from serving.request import ARROW_STREAM, JSON


@dataclass
class ScoreResult:
    model: LoadedModel
    experiment: str
    variant: str
    tasks: list[TaskInfo]
    scores: dict[str, np.ndarray]
    num_candidates: int
    survival_curves: bool = True

    def headers(self) -> dict[str, str]:
        return {
            "X-Model-Name": self.model.name,
            "X-Model-Version": self.model.version,
            "X-Model-Build": self.model.build,
            "X-Experiment": self.experiment,
            "X-Variant": self.variant,
        }


def render(result: ScoreResult) -> bytes:
    # orjson serialises only C-contiguous arrays; row slices of a batch's outputs already are.
    def arr(key: str) -> np.ndarray:
        return np.ascontiguousarray(result.scores[key])

    scores: dict[str, np.ndarray] = {}
    survival: dict[str, dict[str, object]] = {}
    for t in result.tasks:
        if t.kind == "hazard":
            entry: dict[str, object] = {
                "unit": t.unit,
                "grid": t.grid,
                "risk": arr(f"{t.name}_risk"),
            }
            if result.survival_curves:
                entry["hazard"] = arr(t.name)
                entry["survival"] = arr(f"{t.name}_survival")
            survival[t.name] = entry
        else:
            scores[t.name] = arr(t.name)
    m = result.model
    body = {
        "model": m.name,
        "version": m.version,
        "build": m.build,
        "experiment": result.experiment,
        "variant": result.variant,
        "num_candidates": result.num_candidates,
        "scores": scores,
        "survival": survival,
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def render_arrow(result: ScoreResult) -> bytes:
    cols: dict[str, pa.Array] = {}
    meta = {
        "model": result.model.name,
        "version": result.model.version,
        "build": result.model.build,
        "experiment": result.experiment,
        "variant": result.variant,
    }
    for t in result.tasks:
        if t.kind == "hazard":
            cols[f"{t.name}_risk"] = pa.array(np.ascontiguousarray(result.scores[f"{t.name}_risk"]))
            if result.survival_curves:
                for key, suffix in ((t.name, "hazard"), (f"{t.name}_survival", "survival")):
                    m = np.ascontiguousarray(result.scores[key], dtype=np.float32)
                    cols[f"{t.name}_{suffix}"] = pa.FixedSizeListArray.from_arrays(
                        pa.array(m.ravel()), m.shape[1]
                    )
            meta[f"grid.{t.name}"] = orjson.dumps({"unit": t.unit, "grid": t.grid}).decode()
        else:
            cols[t.name] = pa.array(np.ascontiguousarray(result.scores[t.name]))
    batch = pa.RecordBatch.from_pydict(cols).replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------------------------------------
# content negotiation
# ---------------------------------------------------------------------------------------------

OFFERED = (JSON, ARROW_STREAM)  # in order of preference: JSON wins ties and wildcards


def _q(params: list[str]) -> float | None:
    for p in params:
        key, _, value = p.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0.0 <= q <= 1.0 else None
    return 1.0


def negotiate(accept: str | None) -> str | None:
    """The response media type for an `Accept` header (RFC 9110 12.5.1): each offered type takes
    the q-value of the most specific range that matches it (exact, then type/*, then */*); the
    highest q > 0 wins, JSON on ties. No header (or an empty one) means JSON; None means nothing
    offered is acceptable (HTTP 406). A range with a malformed q-value is ignored."""
    if accept is None or not accept.strip():
        return JSON
    ranges: list[tuple[str, str, float]] = []
    for part in accept.split(",")[:64]:  # a header is bounded by the HTTP parser; so is the work
        media, *params = part.split(";")
        typ, _, sub = media.strip().lower().partition("/")
        q = _q(params)
        if typ and sub and q is not None:
            ranges.append((typ, sub, q))
    best, best_q = None, 0.0
    for offer in OFFERED:
        otyp, osub = offer.split("/")
        q, specificity = None, -1
        for typ, sub, rq in ranges:
            s = 2 if (typ, sub) == (otyp, osub) else 1 if (typ == otyp and sub == "*") else 0
            if ((typ, sub) == ("*", "*") or s > 0) and s > specificity:
                q, specificity = rq, s
        if q is not None and q > best_q:
            best, best_q = offer, q
    return best
