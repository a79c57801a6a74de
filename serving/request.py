"""Decoding and checking a score request: raw body -> `ScoreRequest`, or a `RequestError` naming the field.

Two wire formats (README, "Serving"):

- JSON (`application/json`), decoded with orjson from the raw body (FastAPI's default path would
  parse it with the stdlib and validate per item). Candidates are columnar (recommended: one list
  per feature, converted to Arrow arrays in C) or a list of row objects:

      {"user_id": 42,
       "features": {"user_age_bucket": 3, "clicked_items": [17, 4], "hour": 20, ...},
       "candidates": {"creative_id": [101, 102], "advertiser_id": [7, 9],
                      "creative_content": [[0.12, -0.4, ...], null], ...},
       "tasks": ["ctr", "hazard_short"]}

  A vector feature's value is a list of `dim` numbers (null: no vector, which the model reads as
  zeros plus its missing flag, or refuses under `missing: error`).

- Arrow IPC stream (`application/vnd.apache.arrow.stream`), the fast path: the record batches hold
  one row per candidate; the request-level fields travel in the schema metadata: `user_id`
  (required), `features` (a JSON object), `tasks` (a JSON list), `variant`. A vector column is a
  `fixed_size_list<float32>[dim]` (or float64, or a list / large_list of float32 / float64).

`features` are request-level values (the user and the context): one value each, transformed once
and broadcast over the candidates. A feature may come from either place, not both. `user_id` (an
integer within int64 or a string; `recsys_mtl.ids` says which spellings are one id) is the A/B
unit and also fills the model's user-id feature when that is not given explicitly.

Nothing a client sends reaches a compute kernel unchecked: an Arrow stream is bounded and fully
validated first (serving/arrow_ipc.py), a JSON body's value count is bounded before it is parsed,
only the documented column types are accepted, and the serving config's limits (bytes per string
id, values per list, string-id bytes per request, vector floats per request) are enforced before
the transform. Vector columns are checked against the model before they are queued
(`check_vectors`: `dim` values each, no null inside a vector, every value finite as a float32):
each refusal is a 422 naming the column and the candidate. Every check is columnar (Arrow arrays
and numpy), never a loop over candidates; only a request already refused is looked at value by
value, to say which candidate is at fault. Unknown id values are not errors: the transform maps
them to the reserved row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from recsys_mtl.ids import IdError, canonical_scalar, int_from_canonical
from recsys_mtl.loader import LoadedModel
from recsys_mtl.recipe import FeatureSpec
from recsys_mtl.transform import TransformError
from serving.arrow_ipc import ACCEPTED_TYPES, StreamError, read_stream, type_ok
from serving.config import Runtime

log = logging.getLogger("serving.request")

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
_TOP_LEVEL = {"user_id", "features", "candidates", "tasks", "variant", "request_id"}
MAX_TASKS = 64


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP status, `field` names what is wrong."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        # A field named after a client's key is never empty: the empty key is spelt `""`, as in
        # JSON (`""` for an unknown top-level key "", `candidates.""` for a column named "").
        if not field or field.endswith("."):
            field += '""'
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


@dataclass
class ScoreRequest:
    """A decoded request: Arrow arrays, one value per candidate, plus one-value request features.

    `user_id` is the canonical id string (`recsys_mtl.ids`): what the A/B assignment hashes and
    what fills the model's user-id feature."""

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


def decode(body: bytes, content_type: str | None, limits: Runtime) -> ScoreRequest:
    """Decode a raw body by its content type (415 for any other type) and enforce the request
    limits of `limits` (the serving config's runtime section) before anything is transformed.

    Every failure is a RequestError naming the field. Anything else raised while decoding is a
    bug on our side, but it is the request that triggered it: it is logged with its traceback and
    answered 400, never a 5xx that one client could use to inflate the error rate."""
    mt = media_type(content_type)
    if mt == JSON or mt.endswith("+json"):
        decoder = decode_json
    elif mt == ARROW_STREAM:
        decoder = decode_arrow
    else:
        raise RequestError(
            "content-type",
            f"unsupported content type {mt or '(none)'!r}; send {JSON} or {ARROW_STREAM}",
            status=415,
        )
    try:
        req = decoder(body, limits)
        check_limits(req, limits)
        return req
    except RequestError:
        raise
    except StreamError as e:
        raise RequestError(e.field, e.message, e.status) from None
    except Exception as e:
        log.warning("unexpected error decoding a %s request (answered 400)", mt, exc_info=True)
        raise RequestError("body", f"cannot be decoded ({type(e).__name__})", status=400) from None


def json_values_bound(body: bytes) -> int:
    """An upper bound on the number of values in a JSON text, without parsing it: each value but
    the first is preceded by a comma or opens a container. Strings holding commas only make the
    bound larger. C-speed (bytes.count)."""
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1


def decode_json(body: bytes, limits: Runtime) -> ScoreRequest:
    if not body:
        raise RequestError("body", "empty body; expected a JSON object", status=400)
    # Parsing allocates a Python object per value, on the event loop: bound the count first.
    if json_values_bound(body) > limits.max_json_values:
        raise RequestError(
            "body",
            f"more than {limits.max_json_values} JSON values (runtime.max_json_values); send fewer "
            "candidates or an Arrow stream",
            status=413,
        )
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
    # Arrow reads a JSON true inside a list of floats as 1.0: where the text holds a boolean at all,
    # lists of floats (vectors) are searched for one (`_to_array`)
    booleans = _may_hold_booleans(body)
    candidates, n = _json_candidates(data["candidates"], limits.max_candidates, booleans)
    return ScoreRequest(
        user_id=_user_id(data.get("user_id"), limits.max_id_bytes),
        candidates=candidates,
        num_candidates=n,
        features=_request_features(data.get("features"), booleans),
        tasks=_tasks(data.get("tasks")),
        variant=_optional_str("variant", data.get("variant")),
        request_id=_optional_str("request_id", data.get("request_id")),
    )


def decode_arrow(body: bytes, limits: Runtime) -> ScoreRequest:
    if not body:
        raise RequestError("body", "empty body; expected an Arrow IPC stream", status=400)
    try:
        table = read_stream(body, max_decoded_bytes=limits.max_body_bytes, max_rows=limits.max_candidates)
    except StreamError as e:
        raise RequestError(e.field, e.message, e.status) from None
    meta: dict[str, bytes] = {}
    for k, v in (table.schema.metadata or {}).items():
        meta[_utf8("metadata", k)] = v
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

    def meta_str(key: str) -> str | None:
        return _utf8(f"metadata.{key}", meta[key]) if key in meta else None

    n = table.num_rows
    _check_count(n, limits.max_candidates)
    candidates = {name: _combine(table.column(name)) for name in table.column_names}
    return ScoreRequest(
        user_id=_user_id(meta_str("user_id"), limits.max_id_bytes),
        candidates=candidates,
        num_candidates=n,
        features=_request_features(meta_json("features"), _may_hold_booleans(meta.get("features", b""))),
        tasks=_tasks(meta_json("tasks")),
        variant=_optional_str("variant", meta_str("variant")),
        request_id=_optional_str("request_id", meta_str("request_id")),
    )


def encode_arrow_request(
    candidates: pa.Table | Mapping[str, Any],
    user_id: str | int,
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


def _utf8(where: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(where, "not valid UTF-8") from None


def _user_id(v: Any, max_bytes: int) -> str:
    """The canonical `user_id` (`recsys_mtl.ids.canonical_scalar`): the A/B unit."""
    if v is None:
        raise RequestError("user_id", "required: a string or an integer")
    try:
        return canonical_scalar(v, max_bytes)
    except IdError as e:
        raise RequestError("user_id", str(e)) from None


def _optional_str(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > 128:
        raise RequestError(name, "expected a non-empty string of at most 128 characters")
    return v


def _tasks(v: Any) -> list[str] | None:
    if v is None:
        return None
    if (
        not isinstance(v, list)
        or not 0 < len(v) <= MAX_TASKS
        or not all(isinstance(t, str) and 0 < len(t) <= 128 for t in v)
    ):
        raise RequestError("tasks", f"expected a list of 1 to {MAX_TASKS} task names")
    return v


def _check_count(n: int, max_candidates: int) -> None:
    if n == 0:
        raise RequestError("candidates", "empty: send 1 or more candidates")
    if n > max_candidates:
        raise RequestError(
            "candidates", f"{n} candidates is over this server's limit of {max_candidates} per request"
        )


def _to_array(where: str, values: Any, per_candidate: bool = True, booleans: bool = True) -> pa.Array:
    """`values` (parsed JSON) as an Arrow array of an accepted type, else a RequestError naming the
    column and, where one value is at fault, the candidate. `booleans`: whether the JSON text may
    hold a boolean (False skips the search for one inside lists of floats)."""
    try:
        arr = pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError, RecursionError) as e:
        arr = _as_floats(values)
        if arr is None:
            odd = _odd_value(values, per_candidate)
            raise RequestError(where, f"{odd}values of mixed or unsupported types ({e})") from None
    if not type_ok(arr.type):
        odd = _odd_value(values, per_candidate)
        raise RequestError(where, f"{odd}unsupported value type {arr.type} (accepted: {ACCEPTED_TYPES})")
    # Arrow's float conversion takes true as 1.0: a boolean in a vector is a client's bug
    if (
        booleans
        and _is_list(arr.type)
        and pa.types.is_floating(arr.type.value_type)
        and any(x is True or x is False for v in values if isinstance(v, list) for x in v)
    ):
        raise RequestError(where, f"{_odd_value(values, per_candidate)}a vector holds numbers only")
    return arr


def _may_hold_booleans(text: bytes) -> bool:
    """Whether a JSON text may hold a boolean (C-speed; a string spelling one only costs a search)."""
    return b"true" in text or b"false" in text


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_floats(values: list[Any]) -> pa.Array | None:
    """Numbers Arrow cannot hold as int64 (JSON integers in [2^63, 2^64), which orjson keeps as
    Python ints) as float64: a dense feature takes them as they are, an id feature then refuses
    them by name as out of the int64 range; the same inside lists (a vector's values are floats
    anyway). None when the values are not all numbers, or all lists of numbers. Runs only after
    the fast conversion failed."""
    if all(v is None or _is_number(v) for v in values):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(v is None or (isinstance(v, list) and all(x is None or _is_number(x) for x in v)) for v in values):
        rows = [None if v is None else [None if x is None else float(x) for x in v] for v in values]
        return pa.array(rows, pa.list_(pa.float64()))
    return None


_PLURAL = {"a number": "numbers", "a string": "strings"}


def _odd_value(values: list[Any], per_candidate: bool) -> str:
    """Which value a refused column is refused for, as a message prefix ("candidate 3: a string
    inside its list, where candidate 0's holds numbers; "), or "" when no one value is at fault.
    The cold path: it runs only for a column already refused, and stops at the first odd value."""

    def who(i: int) -> str:
        return f"candidate {i}" if per_candidate else "request-level value"

    def kind_of(v: Any) -> str:
        return "a list" if isinstance(v, list) else _json_type(v)

    first: tuple[int, str] | None = None
    for i, v in enumerate(values):
        if v is None:
            continue
        kind = kind_of(v)
        if first is None:
            first = (i, kind)
        elif kind != first[1]:
            return f"{who(i)}: {kind}, where candidate {first[0]} has {first[1]}; "
    if first is None:
        return ""
    if first[1] != "a list":
        return f"{who(first[0])}: {first[1]}; "
    inner: tuple[int, str] | None = None
    for i, v in enumerate(values):
        for x in v or ():
            if x is None:
                continue
            kind = kind_of(x)
            if kind not in _PLURAL:  # a list, an object or a boolean inside a list
                return f"{who(i)}: {kind} inside its list; "
            if inner is None:
                inner = (i, kind)
            elif kind != inner[1]:
                return (
                    f"{who(i)}: {kind} inside its list, where {who(inner[0])}'s holds {_PLURAL[inner[1]]}; "
                )
    return ""


def _combine(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _json_candidates(v: Any, max_candidates: int, booleans: bool = True) -> tuple[dict[str, pa.Array], int]:
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
            cols[name] = _to_array(where, values, booleans=booleans)
        assert n is not None
        return cols, n
    if isinstance(v, list):  # rows: [{feature: value}, ...]
        _check_count(len(v), max_candidates)
        if not all(isinstance(r, dict) for r in v):
            bad = next(i for i, r in enumerate(v) if not isinstance(r, dict))
            raise RequestError(f"candidates[{bad}]", f"expected an object, got {_json_type(v[bad])}")
        keys = v[0].keys()
        if not keys:
            raise RequestError("candidates[0]", "empty object: send the candidate's features")
        odd = next((i for i, r in enumerate(v) if r.keys() != keys), None)
        if odd is not None:  # Arrow would silently take the first row's keys only: lose nothing
            raise RequestError(f"candidates[{odd}]", "has other features than candidates[0]; send the same")
        return {k: _to_array(f"candidates.{k}", [r[k] for r in v], booleans=booleans) for k in keys}, len(v)
    raise RequestError(
        "candidates", f"expected an object of columns or a list of objects, got {_json_type(v)}"
    )


def _request_features(v: Any, booleans: bool = True) -> dict[str, pa.Array]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise RequestError("features", f"expected an object of feature values, got {_json_type(v)}")
    return {
        name: _to_array(f"features.{name}", [value], per_candidate=False, booleans=booleans)
        for name, value in v.items()
    }


# ---------------------------------------------------------------------------------------------
# limits: what a request may cost, enforced before the transform
# ---------------------------------------------------------------------------------------------


def check_limits(req: ScoreRequest, limits: Runtime) -> None:
    """Bytes per string id, values per list, and string-id bytes per request (serving config,
    `runtime`). Columnar: a few Arrow kernels per column, no loop over candidates. The transform's
    cost (hashing is one pass per byte position of the longest id) is bounded by these."""
    total = 0
    for where, cols in (("features", req.features), ("candidates", req.candidates)):
        for name, col in cols.items():
            if _is_list(col.type) and not pa.types.is_floating(col.type.value_type):
                # (lists of floats are vectors: bounded per request by runtime.max_vector_values and
                # each to its feature's dim in `check_vectors`; ids sent as floats: `check_against_model`)
                _list_length_at_most(f"{where}.{name}", col, limits)
                col = pc.list_flatten(col)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                sizes = pc.binary_length(col)
                _at_most(f"{where}.{name}", sizes, limits.max_id_bytes,
                         "a string of {} bytes", "bytes per id (runtime.max_id_bytes)")  # fmt: skip
                total += pc.sum(sizes).as_py() or 0
    if total > limits.max_request_id_bytes:
        raise RequestError(
            "body",
            f"{total} bytes of string ids; at most {limits.max_request_id_bytes} per request "
            "(runtime.max_request_id_bytes)",
            status=413,
        )


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _list_length_at_most(field: str, col: pa.Array, limits: Runtime) -> None:
    _at_most(field, pc.list_value_length(col), limits.max_list_length,
             "a list of {} values", "per list (runtime.max_list_length)")  # fmt: skip


def _at_most(field: str, sizes: pa.Array, limit: int, what: str, unit: str) -> None:
    """RequestError naming `field` and the first index when a size is over `limit`."""
    largest = pc.max(sizes).as_py() or 0  # nulls are skipped
    if largest > limit:
        i = int(np.argmax(sizes.fill_null(0).to_numpy(zero_copy_only=False)))
        raise RequestError(field, f"{what.format(largest)} at index {i}; at most {limit} {unit}")


# ---------------------------------------------------------------------------------------------
# against the model that will score it
# ---------------------------------------------------------------------------------------------


def check_against_model(req: ScoreRequest, model: LoadedModel, limits: Runtime | None = None) -> None:
    """Unknown, duplicated or missing features, unknown tasks, NaN/inf dense values, vectors that
    do not fit the model's vector features (`check_vectors`), vector floats over
    `runtime.max_vector_values`: RequestError. `limits`: the serving config's runtime section
    (default: its defaults).

    Fills the model's user-id feature from `user_id` when the request does not give it.
    Other types are checked by the feature transform itself (its TransformError names the column).
    """
    limits = limits if limits is not None else Runtime()
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
        per_request = {f.source for f in model.transform.features if f.request_level}
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
    for f in model.transform.features:
        if f.kind == "vector":
            continue
        for where, col in _sent(req, f):
            if pa.types.is_fixed_size_list(col.type):
                article = "an" if f.kind[0] in "aeiou" else "a"
                raise RequestError(
                    f"{where}.{f.source}", f"a vector column ({col.type}) for {article} {f.kind} feature"
                )
            if _is_list(col.type) and pa.types.is_floating(col.type.value_type):  # ids sent as floats
                _list_length_at_most(f"{where}.{f.source}", col, limits)
    check_vectors(req, model, limits)


def _sent(req: ScoreRequest, f: FeatureSpec) -> list[tuple[str, pa.Array]]:
    """(where, column) of the feature's column in the request: "features" or "candidates"."""
    return [(w, cols[f.source]) for w, cols in (("features", req.features), ("candidates", req.candidates))
            if f.source in cols]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# vectors
# ---------------------------------------------------------------------------------------------


def check_vectors(req: ScoreRequest, model: LoadedModel, limits: Runtime) -> None:
    """Every vector feature's column against the model, on the event loop before the request is
    queued: the floats of all vectors within `runtime.max_vector_values` (413), then each column by
    the transform's own rules (`FeatureTransform.check_vector`: a list of `dim` numbers, no null
    inside, every value finite as a float32, no null vector under `missing: error`), so a bad vector
    is refused before it waits for the inference thread. Each refusal is a 422 naming the column and
    the first candidate at fault ("candidate 17: has 31 values, expected 32 (dim)"); a vector sent
    in `features` is the "request-level value". Columnar: no loop over candidates."""
    held: list[tuple[str, int]] = []
    for f in model.transform.vector_features:
        for where, col in _sent(req, f):
            sent = _vector_values(col)
            # the transform holds a request-level vector once per candidate (broadcast)
            held.append((f"{where}.{f.source}", sent * req.num_candidates if where == "features" else sent))
    total = sum(n for _, n in held)
    if total > limits.max_vector_values:
        parts = ", ".join(f"{name}: {n}" for name, n in held)
        raise RequestError(
            "body",
            f"{total} vector values ({parts}); at most {limits.max_vector_values} per request "
            "(runtime.max_vector_values): send fewer candidates",
            status=413,
        )
    for f in model.transform.vector_features:
        for where, col in _sent(req, f):
            try:
                model.transform.check_vector(f, col)
            except TransformError as e:
                raise transform_refusal(e, where) from None


def transform_refusal(e: TransformError, where: str) -> RequestError:
    """A transform error as the request's 422: the field as the client sent it (`features.<col>` or
    `candidates.<col>`) and, where rows are at fault, the first candidate and how many there are."""
    message = e.message
    if e.row is not None:
        if where == "features":
            message = f"request-level value: {message}"
        else:
            more = f" ({e.rows} candidates at fault)" if e.rows > 1 else ""
            message = f"candidate {e.row}: {message}{more}"
    return RequestError(f"{where}.{e.field}", message)


def _vector_values(col: pa.Array) -> int:
    """The values a vector column holds (null vectors hold none; a non-vector type: 0, refused later)."""
    t = col.type
    if pa.types.is_fixed_size_list(t):
        return (len(col) - col.null_count) * t.list_size
    if _is_list(t):
        return int(pc.sum(pc.list_value_length(col)).as_py() or 0)
    return 0


def _user_feature(user_id: str, model: LoadedModel, column: str) -> pa.Array:
    """`user_id` as the model's user-id feature column, in the type that feature takes (by the
    same id rules as every other id: `recsys_mtl.ids`)."""
    spec = next(f for f in model.transform.features if f.source == column)
    if spec.value_type == "string":
        return pa.array([user_id])
    try:
        return pa.array([int_from_canonical(user_id)], pa.int64())
    except IdError as e:
        raise RequestError(
            "user_id", f"model {model.name} takes integer user ids (its feature {column!r}): {e}"
        ) from None
