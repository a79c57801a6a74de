"""Vector features at the scoring edge (issue 18, item 3): what the wire formats accept for a
vector column, the 422 that names the column and the candidate for every broken vector, the
request limit on vector floats, and training/serving parity on requests with vectors.

The first part decodes and checks requests in process (against a small published model with a
32-float `creative_content`, the shipped recipe's). The second starts a real `recsys-mtl serve`
with an fp32 and an int8 variant and compares its scores, JSON and Arrow, with `LoadedModel.score`
and with the eager model the export was made from.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
import torch

from recsys_mtl.devtools.fixtures import train_small_model
from recsys_mtl.export import export_model
from recsys_mtl.loader import LoadedModel, load_model
from recsys_mtl.recipe import FeatureSpec, Recipe
from recsys_mtl.registry import Registry
from recsys_mtl.transform import FeatureTransform
from serving.arrow_ipc import type_ok
from serving.config import Runtime
from serving.inference import Job, score_jobs, transform_request
from serving.request import (
    ARROW_STREAM,
    JSON,
    RequestError,
    ScoreRequest,
    check_against_model,
    check_vectors,
    decode,
)
from tests.conftest import make_raw_table
from tests.serving_support import (
    NAME,
    Server,
    ipc_stream,
    nulls_for_nonfinite,
    request_from_table,
    serve,
    small_recipe,
    write_config,
)

DIM = 32  # the shipped recipe's creative_content
COL = "creative_content"
LIMITS = Runtime(max_candidates=100)
TOKEN = "vector-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def refused(body: bytes, ctype: str = JSON, limits: Runtime = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as e:
        decode(body, ctype, limits)
    return e.value


def vec(seed: int, dim: int = DIM) -> list[float]:
    return np.random.default_rng(seed).normal(0.0, 1.0, dim).astype(np.float32).tolist()


# ---- the wire formats, without a model ----------------------------------------------------------


def test_json_vectors_decode_columnar_as_rows_and_once_per_request() -> None:
    a, b = vec(1), vec(2)
    cols = decode(orjson.dumps({"user_id": 1, "candidates": {"v": [a, None, b]}}), JSON, LIMITS)
    rows = decode(orjson.dumps({"user_id": 1, "candidates": [{"v": a}, {"v": None}, {"v": b}]}), JSON, LIMITS)
    for req in (cols, rows):
        assert req.candidates["v"].type == pa.list_(pa.float64())
        assert req.candidates["v"].to_pylist() == [a, None, b]
    once = decode(orjson.dumps({"user_id": 1, "features": {"v": a}, "candidates": {"x": [1]}}), JSON, LIMITS)
    assert once.features["v"].to_pylist() == [a]
    # integer literals (a client that writes 1.0 as 1) and integers beyond int64 are numbers too
    ints = decode(
        b'{"user_id": 1, "candidates": {"v": [[1, 0, 2], [1, 18446744073709551615, 0.5]]}}', JSON, LIMITS
    )
    assert ints.candidates["v"].to_pylist() == [[1.0, 0.0, 2.0], [1.0, 2.0**64, 0.5]]


@pytest.mark.parametrize(
    "t",
    [
        pa.list_(pa.float32(), DIM),
        pa.list_(pa.float64(), DIM),
        pa.list_(pa.float32()),
        pa.list_(pa.float64()),
        pa.large_list(pa.float32()),
        pa.large_list(pa.float64()),
    ],
    ids=str,
)
def test_arrow_vector_types_are_accepted(t: pa.DataType) -> None:
    rows = [vec(1), None, vec(2)]
    req = decode(ipc_stream(pa.table({"v": pa.array(rows, t)})), ARROW_STREAM, LIMITS)
    assert req.candidates["v"].type == t and req.candidates["v"].to_pylist() == rows


@pytest.mark.parametrize(
    "col",
    [
        pa.array([[1.0] * DIM], pa.list_(pa.float16(), DIM)),
        pa.array([[1] * DIM], pa.list_(pa.int32(), DIM)),
        pa.array([[1.0, 2.0]], pa.list_(pa.float16())),
        pa.array([[[1.0], [2.0]]], pa.list_(pa.list_(pa.float32()), 2)),
        pa.array([[True, False]], pa.list_(pa.bool_())),
    ],
    ids=lambda c: str(c.type),
)
def test_other_list_types_are_refused_naming_the_column(col: pa.Array) -> None:
    assert not type_ok(col.type)
    e = refused(ipc_stream(pa.table({"v": col})), ARROW_STREAM)
    assert (e.status, e.field) == (422, "candidates.v") and "unsupported column type" in e.message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([[0.5, 1.5], [0.5, True]], "candidate 1: a boolean inside its list"),
        ([[0.5, 1.5], [True, 0.5]], "candidate 1: a boolean inside its list"),
        ([[True, False]], "candidate 0: a boolean inside its list"),
        (
            [[0.5, 1.5], [0.5, "x"]],
            "candidate 1: a string inside its list, where candidate 0's holds numbers",
        ),
        ([[0.5, 1.5], [[0.5], 1.5]], "candidate 1: a list inside its list"),
        ([[0.5, 1.5], None, 0.5], "candidate 2: a number, where candidate 0 has a list"),
        ([[0.5, 1.5], {"x": 1}], "candidate 1: an object, where candidate 0 has a list"),
    ],
)
def test_json_vector_values_of_the_wrong_type_name_the_candidate(values: list[Any], message: str) -> None:
    e = refused(orjson.dumps({"user_id": 1, "candidates": {"v": values}}))
    assert (e.status, e.field) == (422, "candidates.v") and e.message.startswith(message), e.message


def test_a_boolean_in_a_request_level_vector_is_named_as_the_value() -> None:
    e = refused(orjson.dumps({"user_id": 1, "features": {"v": [0.5, False]}, "candidates": {"x": [1]}}))
    assert (e.status, e.field) == (422, "features.v") and e.message.startswith(
        "request-level value: a boolean"
    )


# ---- against the model: every vector problem names the column and the candidate ---------------


@dataclass
class Published:
    registry: Path
    recipe: Recipe
    net: torch.nn.Module  # the eager model the registry's version was exported from
    fp32: LoadedModel
    int8: LoadedModel


def _publish_keeping_the_eager_model(registry: Path, recipe: Recipe, seed: int) -> torch.nn.Module:
    """`recsys_mtl.devtools.fixtures.publish` (a few Adam steps on random rows, fp32 + int8
    builds), keeping the eager model for the parity checks."""
    net, transform = train_small_model(recipe, seed)
    export_model(net, recipe, transform, Registry(registry), NAME, promote=True, int8_companion=True)
    return net


@pytest.fixture(scope="module")
def published(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Published:
    reg = tmp_path_factory.mktemp("vectors") / "registry"
    r = small_recipe(recipe)
    net = _publish_keeping_the_eager_model(reg, r, seed=1)
    return Published(reg, r, net, load_model(reg, NAME), load_model(reg, NAME, int8=True))


def _rows(p: Published, n: int, seed: int, missing: tuple[int, ...] = ()) -> pa.Table:
    """`n` raw rows with every input column; the vectors of rows `missing` null; dense values finite."""
    t = nulls_for_nonfinite(make_raw_table(p.recipe, n, seed=seed).select(p.fp32.input_columns))
    vectors = t.column(COL).to_pylist()
    vectors = [
        None if i in missing else (v if v is not None else vec(1000 + i)) for i, v in enumerate(vectors)
    ]
    return t.set_column(t.schema.get_field_index(COL), COL, pa.array(vectors, pa.list_(pa.float32(), DIM)))


def _checked(p: Published, body: bytes, ctype: str = JSON, limits: Runtime = LIMITS) -> ScoreRequest:
    req = decode(body, ctype, limits)
    check_against_model(req, p.fp32, limits)
    return req


def _json_body(rows: pa.Table, **edits: Any) -> bytes:
    body = request_from_table(rows, "7", rows.column_names)
    for i, v in edits.items():
        body["candidates"][COL][int(i.lstrip("c"))] = v
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (vec(5, DIM - 1), "candidate 3: has 31 values, expected 32 (dim)"),
        ([], "candidate 3: has 0 values, expected 32 (dim)"),
        (vec(5, DIM + 4), "candidate 3: has 36 values, expected 32 (dim)"),
        ([*vec(5, 10), None, *vec(6, 21)], "candidate 3: value 10 of its vector is null"),
        (
            [*vec(5, 4), 1e39, *vec(6, 27)],
            "candidate 3: value 4 of its vector is 1e+39: NaN, infinite or beyond",
        ),
        ([*vec(5, 4), -3.5e38, *vec(6, 27)], "candidate 3: value 4 of its vector is -3.5e+38"),
        ([*vec(5, 4), "0.5", *vec(6, 27)], "candidate 3: a string inside its list"),
        ([*vec(5, 4), True, *vec(6, 27)], "candidate 3: a boolean inside its list"),
        (0.5, "candidate 3: a number, where candidate 0 has a list"),
    ],
    ids=["short", "empty", "long", "null-inside", "1e39", "-3.5e38", "string", "boolean", "scalar"],
)
def test_json_vector_errors_name_the_column_and_the_candidate(
    published: Published, edit: Any, message: str
) -> None:
    with pytest.raises(RequestError) as e:
        _checked(published, _json_body(_rows(published, 6, seed=1), c3=edit))
    assert (e.value.status, e.value.field) == (422, f"candidates.{COL}")
    assert e.value.message.startswith(message), e.value.message


def _arrow_with(rows: pa.Table, col: pa.Array) -> bytes:
    return ipc_stream(rows.set_column(rows.schema.get_field_index(COL), COL, col))


def test_arrow_vector_errors_name_the_column_and_the_candidate(published: Published) -> None:
    rows = _rows(published, 6, seed=2, missing=(1,))
    x = np.stack([np.asarray(v or [0.0] * DIM, np.float32) for v in rows.column(COL).to_pylist()])
    missing = pa.array([i == 1 for i in range(6)])

    def fixed(values: np.ndarray, nulls: np.ndarray | None = None, size: int = DIM) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), mask=nulls), size, mask=missing)

    nan = x.copy()
    nan[4, 7] = np.nan
    inf = x.astype(np.float64)
    inf[5, 0] = 1e39
    nulls = np.zeros(x.size, bool)
    nulls[2 * DIM + 3] = True
    short = [v if i != 3 else v[:-1] for i, v in enumerate(rows.column(COL).to_pylist())]
    cases = {
        "candidate 4: value 7 of its vector is nan": fixed(nan),
        "candidate 5: value 0 of its vector is 1e+39": fixed(inf),
        "candidate 2: value 3 of its vector is null": fixed(x, nulls),
        "candidate 3: has 31 values, expected 32 (dim)": pa.array(short, pa.list_(pa.float32())),
        "candidate 0: has 16 values, expected 32 (dim); the column is fixed_size_list": fixed(
            x[:, :16].copy(), size=16
        ),
        "candidate 0: expected a vector of 32 numbers, got a list of strings": pa.array(
            [[str(a) for a in v] if v else None for v in rows.column(COL).to_pylist()]
        ),
        "candidate 0: expected a vector of 32 numbers (a JSON list; in Arrow or Parquet a "
        "fixed_size_list": pa.array(x[:, 0].astype(np.float64)),
    }
    for message, col in cases.items():
        with pytest.raises(RequestError) as e:
            _checked(published, _arrow_with(rows, col), ARROW_STREAM)
        assert (e.value.status, e.value.field) == (422, f"candidates.{COL}"), message
        assert e.value.message.startswith(message), (message, e.value.message)


def test_a_request_level_vector_is_named_as_such(published: Published) -> None:
    rows = _rows(published, 4, seed=3)
    body = request_from_table(rows.drop_columns([COL]), "7", [c for c in rows.column_names if c != COL])
    body["features"] = {COL: vec(9, DIM - 2)}
    with pytest.raises(RequestError) as e:
        _checked(published, orjson.dumps(body))
    assert (e.value.field, e.value.message) == (
        f"features.{COL}",
        "request-level value: has 30 values, expected 32 (dim)",
    )
    body["features"] = {COL: vec(9)}  # one vector for every candidate: accepted
    assert _checked(published, orjson.dumps(body)).features[COL].to_pylist() == [vec(9)]


def test_missing_error_refuses_a_null_vector_naming_the_candidate() -> None:
    spec = FeatureSpec(name="v", kind="vector", dim=3, embedding_dim=2, missing="error")
    model = types.SimpleNamespace(transform=FeatureTransform([spec]))
    req = ScoreRequest("u", {"v": pa.array([[1.0, 2.0, 3.0], None])}, 2)
    with pytest.raises(RequestError) as e:
        check_vectors(req, model, LIMITS)  # type: ignore[arg-type]
    assert e.value.message == "candidate 1: no vector (null), and feature v has `missing: error`"


def test_vector_values_per_request_are_bounded(published: Published) -> None:
    """runtime.max_vector_values: the floats the transform will hold, a request-level vector once
    per candidate (it is broadcast). 413 before any value is read."""
    rows = _rows(published, 40, seed=4, missing=(0, 1))  # 38 vectors: 1216 floats
    limits = Runtime(max_candidates=100, max_vector_values=1200)
    with pytest.raises(RequestError) as e:
        _checked(published, _json_body(rows), limits=limits)
    assert (e.value.status, e.value.field) == (413, "body")
    assert "1216 vector values" in e.value.message and "runtime.max_vector_values" in e.value.message
    _checked(published, _json_body(rows), limits=Runtime(max_candidates=100, max_vector_values=1216))
    body = request_from_table(rows.drop_columns([COL]), "7", [c for c in rows.column_names if c != COL])
    body["features"] = {COL: vec(1)}  # 32 floats sent, 40 x 32 = 1280 held
    with pytest.raises(RequestError) as e:
        _checked(published, orjson.dumps(body), limits=limits)
    assert e.value.status == 413 and f"features.{COL}: 1280" in e.value.message


def test_ids_sent_as_floats_are_bounded_by_max_list_length(published: Published) -> None:
    """Lists of floats skip the decode-time list length check (they are vectors); a list feature
    sent as floats gets it against the model."""
    rows = _rows(published, 2, seed=5)
    body = request_from_table(rows, "7", rows.column_names)
    body["candidates"]["clicked_items"] = [[1.0] * 1001, [2.0]]
    with pytest.raises(RequestError) as e:
        _checked(published, orjson.dumps(body))
    assert e.value.field == "candidates.clicked_items" and "runtime.max_list_length" in e.value.message


def test_a_transform_error_naming_a_row_names_the_candidate(published: Published) -> None:
    """The fallback when a vector reaches the transform unchecked: TransformError.row -> candidate."""
    rows = _rows(published, 3, seed=6)
    req = decode(_json_body(rows, c2=vec(1, DIM - 1)), JSON, LIMITS)
    with pytest.raises(RequestError) as e:
        transform_request(published.fp32, req)  # check_against_model skipped
    assert e.value.field == f"candidates.{COL}" and e.value.message.startswith(
        "candidate 2: has 31 values, expected 32 (dim)"
    )


def test_scores_that_overflow_are_a_422_for_that_request_only(published: Published) -> None:
    """A vector of values near the float32 limit is finite, but the model has no standardisation or
    clipping for it: its forward overflows to NaN. That request gets a 422 naming the candidate;
    the request merged with it in the same forward is scored as usual."""
    m = published.fp32
    rows = _rows(published, 4, seed=7)
    # values at the float32 limit, signed like the projection's weights into its first unit: that
    # unit's sum is then far beyond float32 whatever the trained weights are
    w = published.net.dense_input.projections[0].weight[0, :DIM].detach()
    huge = _checked(published, _json_body(rows, c2=[3.4e38 if float(v) >= 0 else -3.4e38 for v in w]))
    good = _checked(published, _json_body(rows))
    jobs = [Job(model=m, request=r, tasks=m.wanted(None)) for r in (huge, good)]
    assert score_jobs(jobs) == (2, 8)
    with pytest.raises(RequestError) as e:
        jobs[0].future.result(0)
    assert (e.value.status, e.value.field) == (422, "candidates")
    assert e.value.message.startswith("candidate 2: the model's scores are not finite")
    np.testing.assert_allclose(jobs[1].future.result(0)["ctr"], m.score(rows)["ctr"], rtol=0, atol=1e-6)


# ---- end to end: a real server, fp32 and int8 -----------------------------------------------------


@pytest.fixture(scope="module")
def server(published: Published, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("vector-server")
    variants = [
        {"name": "fp32", "weight": 1, "model": NAME},
        {"name": "int8", "weight": 1, "model": NAME, "int8": True},
    ]
    config = write_config(
        root / "serving.yaml",
        runtime={"torch_threads": 1, "reload_interval_s": 5.0, "warm_up_batch_sizes": [1, 64]},
        experiments=[{"name": "exp", "salt": "s", "variants": variants}],
    )
    with serve(published.registry, config, root / "server.log", token=TOKEN) as s:
        yield s


def _post(server: Server, body: bytes, ctype: str = JSON) -> dict[str, Any]:
    resp = server.client.post("/score", content=body, headers={"content-type": ctype, **ADMIN})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _json_request(rows: pa.Table, variant: str, **extra: Any) -> bytes:
    return orjson.dumps({**request_from_table(rows, "7", rows.column_names), "variant": variant, **extra})


def _arrow_request(rows: pa.Table, variant: str) -> bytes:
    return ipc_stream(rows, {"user_id": "7", "variant": variant})


def _assert_scores(
    out: dict[str, Any], want: dict[str, np.ndarray], model: LoadedModel, atol: float = 1e-6
) -> None:
    for t in model.tasks:
        if t.kind == "binary":
            np.testing.assert_allclose(out["scores"][t.name], want[t.name], rtol=0, atol=atol, err_msg=t.name)
        else:
            s = out["survival"][t.name]
            np.testing.assert_allclose(s["hazard"], want[t.name], rtol=0, atol=atol, err_msg=t.name)
            np.testing.assert_allclose(s["risk"], want[f"{t.name}_risk"], rtol=0, atol=atol, err_msg=t.name)


def _eager(p: Published, rows: pa.Table) -> dict[str, np.ndarray]:
    b = p.fp32.transform(rows)
    with torch.inference_mode():
        out = p.net(b.sparse, b.dense)
    return p.fp32.postprocess(out, p.fp32.tasks)


@pytest.mark.slow
@pytest.mark.parametrize("build", ["fp32", "int8"])
def test_scores_with_vectors_equal_the_loader_and_the_eager_model(
    published: Published, server: Server, build: str
) -> None:
    """JSON (columns and rows) and Arrow, some candidates without a vector: the server's scores equal
    `LoadedModel.score` on the same rows for the build; the fp32 build equals the eager model, the
    int8 build is near it (int8 embedding tables)."""
    model = published.fp32 if build == "fp32" else published.int8
    rows = _rows(published, 60, seed=11, missing=(0, 7, 31))
    want = model.score(rows)
    eager = _eager(published, rows)
    for k in ("ctr", "cvr", "hazard_short_risk"):
        tol = 1e-5 if build == "fp32" else 0.05
        np.testing.assert_allclose(want[k], eager[k], rtol=0, atol=tol, err_msg=k)
    as_rows = request_from_table(rows, "7", rows.column_names)
    cands = as_rows["candidates"]
    as_rows["candidates"] = [{c: cands[c][i] for c in cands} for i in range(rows.num_rows)]
    as_float64_lists = rows.set_column(
        rows.schema.get_field_index(COL), COL, rows.column(COL).cast(pa.list_(pa.float64()))
    )
    for body, ctype in (
        (_json_request(rows, build), JSON),
        (orjson.dumps({**as_rows, "variant": build}), JSON),
        (_arrow_request(rows, build), ARROW_STREAM),
        (_arrow_request(as_float64_lists, build), ARROW_STREAM),
    ):
        out = _post(server, body, ctype)
        assert (out["build"], out["num_candidates"]) == ("primary" if build == "fp32" else "int8", 60)
        _assert_scores(out, want, model)
    # one vector for every candidate, sent once in `features`: as if repeated on every row
    shared = vec(77)
    same = rows.set_column(
        rows.schema.get_field_index(COL), COL, pa.array([shared] * 60, pa.list_(pa.float32(), DIM))
    )
    body = request_from_table(rows.drop_columns([COL]), "7", [c for c in rows.column_names if c != COL])
    out = _post(server, orjson.dumps({**body, "features": {COL: shared}, "variant": build}))
    _assert_scores(out, model.score(same), model)


@pytest.mark.slow
@pytest.mark.parametrize("build", ["fp32", "int8"])
def test_the_golden_rows_carry_vectors_and_the_server_reproduces_them(
    published: Published, server: Server, build: str
) -> None:
    model = published.fp32 if build == "fp32" else published.int8
    golden = model.manifest["golden"]["columns"]
    assert model.manifest["inputs"]["vector_features"] == {COL: DIM}
    vectors = golden[COL]
    assert None in vectors and all(v is None or len(v) == DIM for v in vectors)  # a missing one too
    out = _post(server, orjson.dumps({"user_id": "7", "candidates": golden, "variant": build}))
    outputs = model.golden_outputs
    assert outputs is not None
    for t in model.tasks:
        got = out["scores"][t.name] if t.kind == "binary" else out["survival"][t.name]["hazard"]
        np.testing.assert_allclose(got, outputs[t.name], rtol=0, atol=1e-5, err_msg=t.name)


@pytest.mark.slow
@pytest.mark.parametrize("build", ["fp32", "int8"])
def test_a_candidate_without_a_vector_scores_as_zeros_plus_the_missing_flag(
    published: Published, server: Server, build: str
) -> None:
    model = published.fp32 if build == "fp32" else published.int8
    rows = _rows(published, 8, seed=12, missing=(3,))
    out = _post(server, _json_request(rows, build))
    zeros = rows.set_column(
        rows.schema.get_field_index(COL),
        COL,
        pa.array(
            [[0.0] * DIM if v is None else v for v in rows.column(COL).to_pylist()],
            pa.list_(pa.float32(), DIM),
        ),
    )
    batch = model.features(zeros)
    start, width = model.transform.dense_layout[COL]
    row = batch.user_rows + 3  # candidate 3's item features (grouped: after the user rows)
    assert width == DIM + 1 and float(batch.dense[row, start + DIM]) == 0.0
    batch.dense[row, start + DIM] = 1.0  # the missing indicator
    want = model.postprocess(model.predict(batch), model.tasks)
    _assert_scores(out, want, model)
    # ... which is not what an actual zero vector scores
    plain = model.score(zeros)
    assert any(abs(plain[t][3] - want[t][3]) > 1e-6 for t in ("ctr", "cvr", "hazard_short_risk"))


@pytest.mark.slow
def test_broken_vectors_are_422s_naming_the_column_and_the_candidate(
    published: Published, server: Server
) -> None:
    rows = _rows(published, 20, seed=13)
    short = server.client.post(
        "/score", content=_json_body(rows, c17=vec(3, DIM - 1)), headers={"content-type": JSON}
    )
    assert short.status_code == 422
    assert short.json() == {
        "error": {"field": f"candidates.{COL}", "message": "candidate 17: has 31 values, expected 32 (dim)"}
    }
    x = np.asarray(rows.column(COL).to_pylist(), np.float32)
    x[5, 9] = np.nan
    nan = server.client.post(
        "/score",
        content=_arrow_with(rows, pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)),
        headers={"content-type": ARROW_STREAM},
    )
    assert nan.status_code == 422
    assert nan.json()["error"] == {
        "field": f"candidates.{COL}",
        "message": "candidate 5: value 9 of its vector is nan: NaN, infinite or beyond the float32 range "
        "(+-3.4e38)",
    }
    huge = server.client.post(
        "/score",
        content=_json_body(rows, c8=[3.4e38] * DIM),
        headers={"content-type": JSON},
    )
    assert huge.status_code == 422 and huge.json()["error"]["message"].startswith(
        "candidate 8: the model's scores"
    )
    metrics = server.client.get("/metrics").text
    assert 'status="5' not in metrics  # never a 5xx
