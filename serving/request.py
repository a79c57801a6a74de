"""Decoding and checking a score request: raw body -> `ScoreRequest`, or a `RequestError` naming the field.

Two wire formats (DESIGN.md, serving contract):

- JSON (`application/json`), decoded with orjson from the raw body (FastAPI's default path would
  parse it with the stdlib and validate per item). Candidates are columnar (recommended: one list
  per feature, converted to Arrow arrays in C) or a list of row objects:

      {"user_id": "u42",
       "features": {"user_age_bucket": 3, "clicked_items": [17, 4], "hour": 20, ...},
       "candidates": {"creative_id": [101, 102], "advertiser_id": [7, 9], ...},
       "tasks": ["ctr", "hazard_short"]}

- Arrow IPC stream (`application/vnd.apache.arrow.stream`), the fast path: the record batches hold
  one row per candidate; the request-level fields travel in the schema metadata: `user_id`
  (required), `features` (a JSON object), `tasks` (a JSON list), `variant`.

`features` are request-level values (the user and the context): one value each, transformed once
and broadcast over the candidates. A feature may come from either place, not both. `user_id` also
fills the model's user-id feature when that is not given explicitly.

Every check is columnar (Arrow arrays and numpy), never a loop over candidates. Unknown id values
are not errors: the transform maps them to the reserved row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from recsys_mtl.scorer import LoadedModel

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
_TOP_LEVEL = {"user_id", "features", "candidates", "tasks", "variant", "request_id"}


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP status, `field` names what is wrong."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


@dataclass
class ScoreRequest:
    """A decoded request: Arrow arrays, one value per candidate, plus one-value request features."""

    user_id: str
    candidates: dict[str, pa.Array]
    num_candidates: int
    features: dict[str, pa.Array] = field(default_factory=dict)  # each of length 1
    tasks: list[str] | None = None
    variant: str | None = None
    request_id: str | None = None


# ---------------------------------------------------------------------------------------------
# wire formats
# ---------------------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(body: bytes, content_type: str | None, max_candidates: int) -> ScoreRequest:
    """Decode a raw body by its content type (415 for any other type)."""
    mt = media_type(content_type)
    if mt == JSON or mt.endswith("+json"):
        return decode_json(body, max_candidates)
    if mt == ARROW_STREAM:
        return decode_arrow(body, max_candidates)
    raise RequestError(
        "content-type",
        f"unsupported content type {mt or '(none)'!r}; send {JSON} or {ARROW_STREAM}",
        status=415,
    )


def decode_json(body: bytes, max_candidates: int) -> ScoreRequest:
    if not body:
        raise RequestError("body", "empty body; expected a JSON object", status=400)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError("body", f"malformed JSON: {e}", status=400) from None
    if not isinstance(data, dict):
        raise RequestError("body", f"expected a JSON object, got {_json_type(data)}")
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise RequestError(unknown[0], f"unknown field (allowed: {sorted(_TOP_LEVEL)})")
    if "candidates" not in data:
        raise RequestError("candidates", "required")
    candidates, n = _json_candidates(data["candidates"], max_candidates)
    return ScoreRequest(
        user_id=_user_id(data.get("user_id")),
        candidates=candidates,
        num_candidates=n,
        features=_request_features(data.get("features")),
        tasks=_tasks(data.get("tasks")),
        variant=_optional_str("variant", data.get("variant")),
        request_id=_optional_str("request_id", data.get("request_id")),
    )


def decode_arrow(body: bytes, max_candidates: int) -> ScoreRequest:
    if not body:
        raise RequestError("body", "empty body; expected an Arrow IPC stream", status=400)
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as e:
        raise RequestError("body", f"broken Arrow IPC stream: {e}", status=400) from None
    meta = {k.decode(errors="replace"): v for k, v in (table.schema.metadata or {}).items()}
    unknown = sorted(set(meta) - _TOP_LEVEL - {"candidates"})
    if unknown:
        raise RequestError(f"metadata.{unknown[0]}", f"unknown metadata key (allowed: {sorted(_TOP_LEVEL)})")

    def meta_json(key: str) -> Any:
        if key not in meta:
            return None
        try:
            return orjson.loads(meta[key])
        except orjson.JSONDecodeError as e:
            raise RequestError(f"metadata.{key}", f"malformed JSON: {e}", status=400) from None

    n = table.num_rows
    _check_count(n, max_candidates)
    candidates = {name: _combine(table.column(name)) for name in table.column_names}
    user = meta.get("user_id")
    return ScoreRequest(
        user_id=_user_id(user.decode(errors="replace") if user is not None else None),
        candidates=candidates,
        num_candidates=n,
        features=_request_features(meta_json("features")),
        tasks=_tasks(meta_json("tasks")),
        variant=_optional_str(
            "variant", meta["variant"].decode(errors="replace") if "variant" in meta else None
        ),
        request_id=_optional_str(
            "request_id", meta["request_id"].decode(errors="replace") if "request_id" in meta else None
        ),
    )


def encode_arrow_request(
    candidates: pa.Table | Mapping[str, Any],
    user_id: str,
    features: Mapping[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
) -> bytes:
    """An Arrow IPC request body (for clients, the benchmark and tests)."""
    table = candidates if isinstance(candidates, pa.Table) else pa.table(dict(candidates))
    meta = {"user_id": str(user_id)}
    if features:
        meta["features"] = orjson.dumps(dict(features)).decode()
    if tasks:
        meta["tasks"] = orjson.dumps(list(tasks)).decode()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------------------------


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


def _user_id(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise RequestError("user_id", f"required: a string or an integer, got {_json_type(v)}")
    s = str(v)
    if not s or len(s) > 256:
        raise RequestError("user_id", "must be 1 to 256 characters")
    return s


def _optional_str(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > 128:
        raise RequestError(name, "expected a non-empty string of at most 128 characters")
    return v


def _tasks(v: Any) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(t, str) for t in v):
        raise RequestError("tasks", "expected a non-empty list of task names")
    return v


def _check_count(n: int, max_candidates: int) -> None:
    if n == 0:
        raise RequestError("candidates", "empty: send 1 or more candidates")
    if n > max_candidates:
        raise RequestError(
            "candidates", f"{n} candidates is over this server's limit of {max_candidates} per request"
        )


def _to_array(where: str, values: Any) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
        raise RequestError(where, f"values of mixed or unsupported types ({e})") from None


def _combine(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _json_candidates(v: Any, max_candidates: int) -> tuple[dict[str, pa.Array], int]:
    if isinstance(v, dict):  # columnar: feature -> list of values
        if not v:
            raise RequestError("candidates", "empty: send at least one feature column")
        cols: dict[str, pa.Array] = {}
        n: int | None = None
        for name, values in v.items():
            where = f"candidates.{name}"
            if not isinstance(values, list):
                raise RequestError(
                    where, f"expected a list with one value per candidate, got {_json_type(values)}"
                )
            if n is None:
                n = len(values)
                _check_count(n, max_candidates)
            elif len(values) != n:
                raise RequestError(where, f"has {len(values)} values, expected {n} (one per candidate)")
            cols[name] = _to_array(where, values)
        assert n is not None
        return cols, n
    if isinstance(v, list):  # rows: [{feature: value}, ...]
        _check_count(len(v), max_candidates)
        if not all(isinstance(r, dict) for r in v):
            bad = next(i for i, r in enumerate(v) if not isinstance(r, dict))
            raise RequestError(f"candidates[{bad}]", f"expected an object, got {_json_type(v[bad])}")
        try:
            batch = pa.RecordBatch.from_pylist(v)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise RequestError("candidates", f"values of mixed or unsupported types ({e})") from None
        return {name: batch.column(name) for name in batch.schema.names}, len(v)
    raise RequestError(
        "candidates", f"expected an object of columns or a list of objects, got {_json_type(v)}"
    )


def _request_features(v: Any) -> dict[str, pa.Array]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise RequestError("features", f"expected an object of feature values, got {_json_type(v)}")
    return {name: _to_array(f"features.{name}", [value]) for name, value in v.items()}


# ---------------------------------------------------------------------------------------------
# against the model that will score it
# ---------------------------------------------------------------------------------------------


def check_against_model(req: ScoreRequest, model: LoadedModel) -> None:
    """Unknown, duplicated or missing features, unknown tasks, NaN/inf dense values: RequestError.

    Fills the model's user-id feature from `user_id` when the request does not give it.
    Types are checked by the feature transform itself (its TransformError names the column).
    """
    needed = model.input_columns
    known = set(needed)
    for where, cols in (("features", req.features), ("candidates", req.candidates)):
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise RequestError(
                f"{where}.{unknown[0]}",
                f"unknown feature for model {model.name} v{model.version} (it takes: {', '.join(needed)})",
            )
    both = [c for c in req.features if c in req.candidates]
    if both:
        raise RequestError(f"features.{both[0]}", "given both per request and per candidate; send it once")
    user_col = model.manifest.get("recipe", {}).get("data", {}).get("user_column", "user_id")
    if user_col in known and user_col not in req.features and user_col not in req.candidates:
        req.features[user_col] = _user_feature(req.user_id, model, user_col)
    missing = [c for c in needed if c not in req.features and c not in req.candidates]
    if missing:
        # name the place a client would normally send it: user/context once, item per candidate
        per_request = {f.source for f in model.transform.features if f.group in ("user", "context")}
        where = "features" if missing[0] in per_request else "candidates"
        raise RequestError(
            f"{where}.{missing[0]}",
            f"missing required feature (send it per candidate in `candidates` or once in `features`); "
            f"all missing: {', '.join(missing)}",
        )
    if req.tasks is not None:
        unknown_tasks = [t for t in req.tasks if t not in model.task_names]
        if unknown_tasks:
            raise RequestError(
                "tasks", f"unknown task {unknown_tasks[0]!r}; this model has {model.task_names}"
            )
    for f in model.transform.dense_features:
        for where, cols in (("features", req.features), ("candidates", req.candidates)):
            col = cols.get(f.source)
            if col is not None and pa.types.is_floating(col.type):
                finite = pc.is_finite(col).fill_null(True).to_numpy(zero_copy_only=False)
                if not finite.all():
                    i = int(np.flatnonzero(~finite)[0])
                    raise RequestError(
                        f"{where}.{f.source}",
                        f"NaN or infinite value at index {i}; send null for a missing value",
                    )


def _user_feature(user_id: str, model: LoadedModel, column: str) -> pa.Array:
    """`user_id` as the model's user-id feature column, in the type that feature takes."""
    spec = next(f for f in model.transform.features if f.source == column)
    if spec.value_type == "string":
        return pa.array([user_id])
    try:
        return pa.array([int(user_id)])
    except ValueError:
        raise RequestError(
            "user_id",
            f"model {model.name} takes integer user ids (its feature {column!r}); got {user_id!r}",
        ) from None
