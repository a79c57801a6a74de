"""The serving building blocks without HTTP: config, A/B assignment, request decoding, the shared
(user-side) transform, batch concatenation and the micro-batching inference thread."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import torch

from recsys_mtl.loader import load_model
from recsys_mtl.recipe import Recipe
from recsys_mtl.transform import FeatureBatch, FeatureTransform
from serving.assignment import assign, unit_point
from serving.config import ConfigError, Runtime, load_config, parse_config
from serving.inference import InferenceWorker, Job
from serving.request import RequestError, check_against_model, decode, encode_arrow_request
from tests.conftest import ROOT, make_raw_table
from tests.serving_support import nulls_for_nonfinite, publish, small_recipe

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"


def _limits(max_candidates: int, **kw: int) -> Runtime:
    return Runtime(max_candidates=max_candidates, **kw)


def _same_batch(a: FeatureBatch, b: FeatureBatch) -> None:
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
    assert torch.equal(a.sparse.values(), b.sparse.values())
    assert torch.equal(a.dense, b.dense)


# ---- config --------------------------------------------------------------------------------------


def test_shipped_serving_config_loads() -> None:
    cfg = load_config(ROOT / "configs" / "serving.yaml")
    names = [v.name for _, v in cfg.variants()]
    assert names == ["control", "int8"]
    assert [r.describe() for r in cfg.model_refs()] == ["ads_ranker@current", "ads_ranker@current int8"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            {
                "experiments": [
                    {"name": "e", "salt": "s", "variants": [{"name": "a", "model": "m", "weight": 0}]}
                ]
            },
            "experiments.0.variants.0.weight",
        ),
        ({"experiments": [{"name": "e", "salt": "s", "varaints": []}]}, "experiments.0.varaints"),
        (
            {"experiments": [{"name": "e", "salt": "s", "variants": [{"name": "a", "model": "m"}] * 2}]},
            "experiments.0.variants",
        ),
        (
            {
                "experiments": [
                    {"name": "e", "salt": "s", "traffic": 0.5, "variants": [{"name": "a", "model": "m"}]}
                ]
            },
            "default",
        ),
        ({"default": {"name": "d", "model": "../etc"}}, "default.model"),
        (
            {"default": {"name": "d", "model": "m", "version": "current"}, "runtime": {"torch_threads": 0}},
            "runtime.torch_threads",
        ),
    ],
    ids=["zero-weight", "typo", "duplicate-variant", "no-default", "bad-model-name", "threads"],
)
def test_bad_configs_name_the_field(edit: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(edit, "cfg.yaml")
    assert field in str(e.value) and "cfg.yaml" in str(e.value)


# ---- assignment ----------------------------------------------------------------------------------


def _two_way(salt: str = "s1", w: tuple[float, float] = (1, 1), traffic: float = 1.0) -> dict:
    return {
        "experiments": [
            {
                "name": "e",
                "salt": salt,
                "traffic": traffic,
                "variants": [
                    {"name": "a", "model": "m", "weight": w[0]},
                    {"name": "b", "model": "m", "weight": w[1]},
                ],
            }
        ],
        "default": {"name": "d", "model": "m"},
    }


def test_assignment_is_stable_weighted_and_salted() -> None:
    # Pinned values: a change to the hash would silently move every user between variants.
    assert unit_point("s1", "variant", "user-1") == 0.9421132658563943
    cfg = parse_config(_two_way())
    users = [f"user-{i}" for i in range(20000)]
    first = [assign(cfg, u).variant.name for u in users]
    assert first == [assign(parse_config(_two_way()), u).variant.name for u in users]  # a new "process"
    share_a = first.count("a") / len(first)
    assert abs(share_a - 0.5) < 0.02
    skewed = [assign(parse_config(_two_way(w=(9, 1))), u).variant.name for u in users]
    assert abs(skewed.count("a") / len(users) - 0.9) < 0.02
    resalted = [assign(parse_config(_two_way(salt="s2")), u).variant.name for u in users]
    assert 0.4 < np.mean([x != y for x, y in zip(first, resalted, strict=True)]) < 0.6
    partial = [assign(parse_config(_two_way(traffic=0.2)), u) for u in users]
    assert abs(np.mean([p.experiment == "e" for p in partial]) - 0.2) < 0.02
    assert {p.variant.name for p in partial if p.experiment == "default"} == {"d"}


# ---- transform: shared features and concatenation ------------------------------------------------


def test_shared_features_equal_broadcast_rows(recipe: Recipe) -> None:
    t = FeatureTransform.from_recipe(recipe)
    table = make_raw_table(recipe, 40, seed=3)
    user_cols = [f.source for f in recipe.features if f.group in ("user", "context")]
    one = table.slice(7, 1)
    shared = {c: one.column(c).combine_chunks() for c in user_cols}
    # every candidate row carries the same user: the broadcast must equal transforming repeated rows
    repeated = table.drop_columns(user_cols)
    for c in user_cols:
        repeated = repeated.append_column(c, pa.concat_arrays([shared[c]] * table.num_rows))
    _same_batch(t(table.drop_columns(user_cols), shared=shared), t(repeated))


def test_concat_equals_transforming_the_concatenated_rows(recipe: Recipe) -> None:
    t = FeatureTransform.from_recipe(recipe)
    parts = [make_raw_table(recipe, n, seed=s) for s, n in ((1, 5), (2, 1), (3, 17))]
    _same_batch(FeatureBatch.concat([t(p) for p in parts]), t(pa.concat_tables(parts)))


# ---- request decoding ----------------------------------------------------------------------------


def test_arrow_and_json_decode_to_the_same_request() -> None:
    vectors = [[0.5, -1.25], None, [2.0, 0.0]]
    cands = {"creative_id": [1, 2, 3], "bid_price": [0.5, None, 2.0], "creative_content": vectors}
    feats = {"hour": 3, "clicked_items": [5, 6], "user_vector": [0.25, 4.0]}
    j = decode(orjson.dumps({"user_id": "u", "features": feats, "candidates": cands}), JSON, _limits(10))
    a = decode(encode_arrow_request(cands, "u", features=feats), ARROW, _limits(10))
    fixed = {**cands, "creative_content": pa.array(vectors, pa.list_(pa.float32(), 2))}
    f = decode(encode_arrow_request(fixed, "u", features=feats), ARROW, _limits(10))
    for r in (j, a, f):
        assert r.user_id == "u" and r.num_candidates == 3
        assert r.candidates["creative_id"].to_pylist() == [1, 2, 3]
        assert r.candidates["creative_content"].to_pylist() == vectors
        assert r.features["clicked_items"].to_pylist() == [[5, 6]]
        assert r.features["user_vector"].to_pylist() == [[0.25, 4.0]]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "field"),
    [
        (b"{", JSON, 400, "body"),
        (b"[]", JSON, 422, "body"),
        (b'{"user_id": "u"}', JSON, 422, "candidates"),
        (b'{"user_id": "u", "candidates": {"a": []}}', JSON, 422, "candidates"),
        (b'{"user_id": "u", "candidates": {"a": [1], "b": [1, 2]}}', JSON, 422, "candidates.b"),
        (b'{"user_id": "u", "candidates": {"a": [1, "x"]}}', JSON, 422, "candidates.a"),
        (b'{"user_id": true, "candidates": {"a": [1]}}', JSON, 422, "user_id"),
        (b'{"user_id": "u", "candidates": {"a": [1]}, "extra": 1}', JSON, 422, "extra"),
        (b'{"user_id": "u", "candidates": {"a": [1]}, "tasks": "ctr"}', JSON, 422, "tasks"),
        (b"x", "text/plain", 415, "content-type"),
        (b"\x00\x01garbage", "application/vnd.apache.arrow.stream", 400, "body"),
    ],
)
def test_decode_errors_name_the_field(body: bytes, ctype: str, status: int, field: str) -> None:
    with pytest.raises(RequestError) as e:
        decode(body, ctype, _limits(2))
    assert (e.value.status, e.value.field) == (status, field)


def test_too_many_candidates() -> None:
    with pytest.raises(RequestError) as e:
        decode(b'{"user_id": "u", "candidates": {"a": [1, 2, 3]}}', JSON, _limits(2))
    assert e.value.field == "candidates" and "limit of 2" in e.value.message


# ---- the inference thread ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory):
    reg = tmp_path_factory.mktemp("reg")
    r = small_recipe(recipe)
    publish(reg, r, seed=1)
    return load_model(reg, "ads_ranker"), r


def _request(model, table: pa.Table):
    table = nulls_for_nonfinite(table)
    cols = {c: table.column(c).combine_chunks() for c in model.input_columns}
    req = decode(encode_arrow_request(cols, "u"), ARROW, _limits(5000))
    check_against_model(req, model)
    return req


def test_check_against_model_names_unknown_missing_and_nan(model) -> None:
    m, r = model
    table = make_raw_table(r, 4, seed=2).select(m.input_columns)
    dense = next(f.source for f in r.features if f.kind == "dense")
    short = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * 31, np.float32)), 31)
    cases = {
        "candidates.nope": table.append_column("nope", pa.array([1, 2, 3, 4])),
        "candidates.creative_id": table.drop_columns(["creative_id"]),
        f"candidates.{dense}": table.set_column(
            table.schema.get_field_index(dense), dense, pa.array([1.0, float("nan"), 1.0, 1.0])
        ),
        "candidates.creative_content": nulls_for_nonfinite(table).set_column(
            table.schema.get_field_index("creative_content"), "creative_content", short
        ),
    }
    for field, t in cases.items():
        req = decode(encode_arrow_request(t, "u"), ARROW, _limits(10))
        with pytest.raises(RequestError) as e:
            check_against_model(req, m)
        assert e.value.field == field and e.value.status == 422


def test_worker_merges_concurrent_requests_and_splits_them_back(model) -> None:
    m, r = model
    tables = [make_raw_table(r, n, seed=10 + i) for i, n in enumerate((3, 50, 1, 20))]
    batches: list[tuple[int, int]] = []
    worker = InferenceWorker(
        max_batch_candidates=4096, torch_threads=1, on_batch=lambda q, c, s: batches.append((q, c))
    )
    gate = threading.Event()
    # Block the worker inside a first job so the others queue up and get merged.
    first = Job(model=m, request=_request(m, tables[0]), tasks=m.wanted(None))
    real = m.transform

    class Blocking:  # the transform, held until the others are queued
        def __call__(self, *a, **k):
            gate.wait(10)
            return real(*a, **k)

        def grouped(self, *a, **k):
            gate.wait(10)
            return real.grouped(*a, **k)

    worker.start()
    try:
        m_block = type(m)(**{**m.__dict__, "transform": Blocking()})
        blocked = Job(model=m_block, request=first.request, tasks=first.tasks)
        worker.submit(blocked)
        futs = [worker.submit(Job(model=m, request=_request(m, t), tasks=m.wanted(None))) for t in tables]
        gate.set()
        results = [f.result(30) for f in futs]
        blocked.future.result(30)
    finally:
        worker.stop()
    assert (len(tables), sum(t.num_rows for t in tables)) in batches  # one forward for all four
    for t, got in zip(tables, results, strict=True):
        want = m.score(t)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-6)


def test_a_request_behind_a_large_one_waits_for_one_chunk_not_all_of_it(model) -> None:
    """A 2000-candidate request runs in chunks of 100; a 5-candidate one queued behind it (not
    merged: the batch cap) is served after the first chunk. Chunked scores equal the offline ones."""
    m, r = model
    big_t, small_t = make_raw_table(r, 2000, seed=21), make_raw_table(r, 5, seed=22)
    big = Job(model=m, request=_request(m, big_t), tasks=m.wanted(None))
    small = Job(model=m, request=_request(m, small_t), tasks=m.wanted(None))
    done: list[str] = []
    big.future.add_done_callback(lambda _: done.append("big"))
    small.future.add_done_callback(lambda _: done.append("small"))
    rounds: list[tuple[int, int]] = []
    worker = InferenceWorker(
        max_batch_candidates=2000,
        max_forward_candidates=100,
        torch_threads=1,
        on_batch=lambda q, c, s: rounds.append((q, c)),
    )
    worker.submit(big)
    worker.submit(small)  # queued before the worker starts: big is taken first, alone
    worker.start()
    try:
        got_big, got_small = big.future.result(60), small.future.result(60)
    finally:
        worker.stop()
    assert done == ["small", "big"] and rounds == [(1, 5), (1, 2000)]
    for t, got in ((big_t, got_big), (small_t, got_small)):
        for k, v in m.score(t).items():
            np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-6)


def test_a_bad_request_in_a_merged_round_fails_alone(model) -> None:
    m, r = model
    good = _request(m, make_raw_table(r, 5, seed=1))
    bad = _request(m, make_raw_table(r, 5, seed=2))
    bad.candidates["format"] = pa.array([{"x": 1}] * 5)  # a struct where a string id belongs
    worker = InferenceWorker(max_batch_candidates=4096, torch_threads=1)
    worker.start()
    try:
        f_bad = worker.submit(Job(model=m, request=bad, tasks=m.wanted(None)))
        f_good = worker.submit(Job(model=m, request=good, tasks=m.wanted(None)))
        assert f_good.result(30)["ctr"].shape == (5,)
        with pytest.raises(RequestError) as e:
            f_bad.result(30)
        assert e.value.field == "candidates.format"
    finally:
        worker.stop()
    assert isinstance(f_bad, cf.Future)


def test_int8_companion_loads_and_validates(recipe: Recipe, tmp_path: Path) -> None:
    r = small_recipe(recipe)
    publish(tmp_path, r, seed=2, int8_companion=True)
    fp = load_model(tmp_path, "ads_ranker")
    q = load_model(tmp_path, "ads_ranker", int8=True)
    q.validate()
    assert (fp.build, q.build, q.int8, fp.int8) == ("primary", "int8", True, False)
    rows = make_raw_table(r, 64, seed=4)
    assert np.abs(q.score(rows)["ctr"] - fp.score(rows)["ctr"]).max() < 0.05
    publish(tmp_path, r, seed=3)  # v2 without a companion: asking for int8 is refused, clearly
    with pytest.raises(Exception, match="no int8 build"):
        load_model(tmp_path, "ads_ranker", "2", int8=True)
