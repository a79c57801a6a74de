"""End to end against a real `recsys-mtl serve` process (uvicorn on a free loopback port) reading a
real registry on disk: training/serving parity (JSON and Arrow), A/B assignment and its
stickiness across a restart, bad input, hot swap under concurrent load, a corrupted version, config
reload, shadow scoring, metrics and the OpenAPI page.

The tests share one registry and one server and run in file order: the hot-swap test moves the
server from version 1 to 2, later ones build on that.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from recsys_mtl.loader import LoadedModel, load_model
from recsys_mtl.recipe import Recipe
from recsys_mtl.registry import Registry
from serving.request import ARROW_STREAM, encode_arrow_request
from tests.conftest import make_raw_table
from tests.serving_support import (
    NAME,
    Server,
    nulls_for_nonfinite,
    publish,
    request_from_table,
    serve,
    small_recipe,
    write_config,
)

pytestmark = pytest.mark.slow
TOKEN = "test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Env:
    root: Path
    registry: Path
    config: Path
    recipe: Recipe
    server: Server
    v1: LoadedModel

    def rows(self, n: int, seed: int) -> pa.Table:
        return nulls_for_nonfinite(make_raw_table(self.recipe, n, seed=seed))

    def body(self, n: int, seed: int, user: str = "u1") -> dict[str, Any]:
        return request_from_table(self.rows(n, seed), user, self.v1.input_columns)


@pytest.fixture(scope="module")
def env(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("serving")
    r = small_recipe(recipe)
    publish(root / "registry", r, seed=1, int8_companion=True)
    config = write_config(root / "serving.yaml")
    with serve(root / "registry", config, root / "server.log", token=TOKEN) as server:
        yield Env(root, root / "registry", config, r, server, load_model(root / "registry", NAME))


def _score(env: Env, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return env.server.client.post(
        "/score",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **kw.get("headers", {})},
    )


def _assert_same_scores(out: dict[str, Any], want: dict[str, np.ndarray], model: LoadedModel) -> None:
    for t in model.tasks:
        if t.kind == "binary":
            np.testing.assert_allclose(out["scores"][t.name], want[t.name], rtol=0, atol=1e-6)
        else:
            s = out["survival"][t.name]
            assert s["grid"] == t.grid and s["unit"] == t.unit
            np.testing.assert_allclose(s["hazard"], want[t.name], rtol=0, atol=1e-6)
            np.testing.assert_allclose(s["survival"], want[f"{t.name}_survival"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(s["risk"], want[f"{t.name}_risk"], rtol=0, atol=1e-6)


def test_scores_equal_the_offline_loader_json_and_arrow(env: Env) -> None:
    rows = env.rows(300, seed=7)
    want = env.v1.score(rows)
    resp = _score(env, request_from_table(rows, "u1", env.v1.input_columns))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["model"], out["version"], out["num_candidates"]) == (NAME, "1", 300)
    assert resp.headers["x-model-version"] == "1" and resp.headers["x-variant"] == out["variant"]
    _assert_same_scores(out, want, env.v1)
    # Arrow, with the user and context features sent once per request rather than per candidate
    user_cols = [f.source for f in env.recipe.features if f.group in ("user", "context")]
    one = rows.slice(0, 1)
    same_user = rows.drop_columns(user_cols)
    for c in user_cols:
        same_user = same_user.append_column(
            c, pa.concat_arrays([one.column(c).combine_chunks()] * rows.num_rows)
        )
    features = {c: one.column(c).to_pylist()[0] for c in user_cols}
    body = encode_arrow_request(
        rows.select([c for c in env.v1.input_columns if c not in user_cols]), "u1", features
    )
    resp = env.server.client.post("/score", content=body, headers={"content-type": ARROW_STREAM})
    assert resp.status_code == 200, resp.text
    _assert_same_scores(resp.json(), env.v1.score(same_user), env.v1)


def test_arrow_response(env: Env) -> None:
    rows = env.rows(40, seed=8)
    want = env.v1.score(rows)
    body = encode_arrow_request(rows.select(env.v1.input_columns), "u1")
    resp = env.server.client.post(
        "/score", content=body, headers={"content-type": ARROW_STREAM, "accept": ARROW_STREAM}
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == ARROW_STREAM
    table = pa.ipc.open_stream(resp.content).read_all()
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert (meta["model"], meta["version"]) == (NAME, "1") and meta["variant"] == resp.headers["x-variant"]
    assert orjson.loads(meta["grid.hazard_short"])["grid"] == env.v1.tasks[3].grid
    for t in env.v1.tasks:
        if t.kind == "binary":
            np.testing.assert_allclose(table.column(t.name).to_numpy(), want[t.name], rtol=0, atol=1e-6)
        else:
            np.testing.assert_allclose(
                table.column(f"{t.name}_risk").to_numpy(), want[f"{t.name}_risk"], atol=1e-6
            )
            got = np.stack(table.column(f"{t.name}_survival").to_pylist())
            np.testing.assert_allclose(got, want[f"{t.name}_survival"], rtol=0, atol=1e-6)


def test_requested_tasks_only(env: Env) -> None:
    resp = _score(env, {**env.body(5, 1), "tasks": ["ctr", "hazard_short"]})
    out = resp.json()
    assert list(out["scores"]) == ["ctr"] and list(out["survival"]) == ["hazard_short"]


def _variants(env: Env, users: list[str]) -> dict[str, str]:
    out = {}
    for u in users:
        resp = _score(env, env.body(2, 3, user=u))
        assert resp.status_code == 200, resp.text
        out[u] = resp.json()["variant"]
    return out


def test_assignment_is_sticky_and_forcing_needs_the_token(env: Env) -> None:
    users = [f"user-{i}" for i in range(40)]
    first = _variants(env, users)
    assert set(first.values()) == {"control", "treatment"}
    assert _variants(env, users) == first
    forced = {**env.body(2, 3, user="user-0"), "variant": "treatment"}
    assert _score(env, forced).status_code == 403
    resp = _score(env, forced, headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["variant"] == "treatment"
    (env.root / "assignments.json").write_bytes(orjson.dumps(first))  # for the restart test


def _bad_inputs(env: Env) -> list[tuple[str, dict[str, str], bytes, int, str]]:
    good = env.body(3, 5)
    cands = good["candidates"]
    dense = next(f.source for f in env.recipe.features if f.kind == "dense")
    arrow_nan = encode_arrow_request(
        {**{c: pa.array(v) for c, v in cands.items()}, dense: pa.array([1.0, float("nan"), 2.0])}, "u1"
    )
    nan_vector = np.zeros((3, 32), np.float32)
    nan_vector[2, 5] = np.nan
    arrow_nan_vector = encode_arrow_request(
        {
            **{c: pa.array(v) for c, v in cands.items()},
            "creative_content": pa.FixedSizeListArray.from_arrays(pa.array(nan_vector.ravel()), 32),
        },
        "u1",
    )
    js = {"content-type": "application/json"}

    def j(obj: Any) -> bytes:
        return orjson.dumps(obj)

    return [
        ("malformed JSON", js, b'{"user_id": "u1", "candidates": {', 400, "body"),
        ("not an object", js, b"[1, 2]", 422, "body"),
        ("no user_id", js, j({"candidates": cands}), 422, "user_id"),
        ("wrong type user_id", js, j({**good, "user_id": [1]}), 422, "user_id"),
        ("wrong type candidates", js, j({**good, "candidates": "abc"}), 422, "candidates"),
        (
            "string for an int id",
            js,
            j({**good, "candidates": {**cands, "creative_id": ["a", "b", "c"]}}),
            422,
            "candidates.creative_id",
        ),
        (
            "list for a scalar id",
            js,
            j({**good, "candidates": {**cands, "advertiser_id": [[1], [2], [3]]}}),
            422,
            "candidates.advertiser_id",
        ),
        (
            "text for a number",
            js,
            j({**good, "candidates": {**cands, dense: ["x", "y", "z"]}}),
            422,
            f"candidates.{dense}",
        ),
        (
            "missing feature",
            js,
            j({**good, "candidates": {k: v for k, v in cands.items() if k != "creative_id"}}),
            422,
            "candidates.creative_id",
        ),
        (
            "unknown feature",
            js,
            j({**good, "candidates": {**cands, "colour": [1, 2, 3]}}),
            422,
            "candidates.colour",
        ),
        ("unknown request feature", js, j({**good, "features": {"mood": 1}}), 422, "features.mood"),
        (
            "ragged columns",
            js,
            j({**good, "candidates": {**cands, "creative_id": [1]}}),
            422,
            "candidates.creative_id",
        ),
        ("NaN (Arrow)", {"content-type": ARROW_STREAM}, arrow_nan, 422, f"candidates.{dense}"),
        (
            "vector of the wrong length",
            js,
            j({**good, "candidates": {**cands, "creative_content": [[0.5] * 32, [0.5] * 31, None]}}),
            422,
            "candidates.creative_content",
        ),
        (
            "boolean in a vector",
            js,
            j({**good, "candidates": {**cands, "creative_content": [[0.5] * 32, None, [0.5] * 31 + [True]]}}),
            422,
            "candidates.creative_content",
        ),
        (
            "NaN in a vector (Arrow)",
            {"content-type": ARROW_STREAM},
            arrow_nan_vector,
            422,
            "candidates.creative_content",
        ),
        ("empty candidates", js, j({**good, "candidates": {c: [] for c in cands}}), 422, "candidates"),
        (
            "too many candidates",
            js,
            # (without the vectors: 2,100 of them are ~67k JSON values, a 413 for max_json_values first)
            j({**good, "candidates": {c: v * 700 for c, v in cands.items() if c != "creative_content"}}),
            422,
            "candidates",
        ),
        ("unknown task", js, j({**good, "tasks": ["ltv"]}), 422, "tasks"),
        ("unknown top-level field", js, j({**good, "userid": 1}), 422, "userid"),
        ("oversized body", js, b" " * (5 * 1024 * 1024), 413, "body"),
        ("wrong content type", {"content-type": "text/csv"}, b"a,b\n1,2", 415, "content-type"),
        ("no content type", {}, j(good), 415, "content-type"),
        ("broken Arrow stream", {"content-type": ARROW_STREAM}, b"ARROW1\x00\x00garbage", 400, "body"),
        (
            "truncated Arrow stream",
            {"content-type": ARROW_STREAM},
            arrow_nan[: len(arrow_nan) // 2],
            400,
            "body",
        ),
        ("empty body", js, b"", 400, "body"),
    ]


def test_bad_input_gets_a_4xx_naming_the_field_and_changes_nothing(env: Env) -> None:
    before = env.server.client.get("/models").json()
    for name, headers, body, status, field in _bad_inputs(env):
        resp = env.server.client.post("/score", content=body, headers=headers)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text[:300]}"
        err = resp.json()["error"]
        assert err["field"] == field, f"{name}: {err}"
        assert err["message"], name
    assert env.server.client.get("/healthz").status_code == 200
    assert env.server.client.get("/models").json()["variants"] == before["variants"]
    assert _score(env, env.body(3, 5)).status_code == 200
    metrics = env.server.client.get("/metrics").text
    assert 'status="5' not in metrics  # no 5xx was ever answered


def test_hot_swap_under_concurrent_load_has_zero_failures(env: Env) -> None:
    bodies = [orjson.dumps(env.body(50, s, user=f"load-{s}")) for s in range(4)]
    seen: list[list[str]] = [[] for _ in bodies]
    failures: list[str] = []
    stop = threading.Event()

    def load(i: int) -> None:
        with httpx.Client(base_url=env.server.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/score", content=bodies[i], headers={"content-type": "application/json"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen[i].append(r.json()["version"])

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        publish(env.registry, env.recipe, seed=2, int8_companion=True)  # v2, promoted
        env.server.wait_for(lambda: all(s and s[-1] == "2" for s in seen), timeout=120, what="version 2")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    for s in seen:  # 1 ... 1 2 ... 2: never back to the old model once switched
        assert s[0] == "1" and s[-1] == "2" and s == sorted(s), s
    assert "replacing v1" in env.server.log()


def test_a_corrupted_version_is_refused_and_the_old_one_keeps_serving(env: Env) -> None:
    reg = Registry(env.registry)
    res = publish(env.registry, env.recipe, seed=3, promote=False)  # v3
    model_pt = res.path / "model.pt"
    data = bytearray(model_pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_pt.chmod(0o644)
    model_pt.write_bytes(bytes(data))
    reg.promote(NAME, res.version)

    def refused() -> bool:
        models = env.server.client.get("/models").json()["models"]
        return any(m["last_error"] and "sha256 mismatch" in m["last_error"] for m in models)

    env.server.wait_for(refused, timeout=60, what="the refusal of v3")
    resp = _score(env, env.body(5, 1))
    assert resp.status_code == 200 and resp.json()["version"] == "2"
    assert "refused" in env.server.log() and "still serving v2" in env.server.log()
    assert "recsys_model_reload_failures_total" in env.server.client.get("/metrics").text
    reg.promote(NAME, "2")  # put things back for the next tests


def test_config_reload_rejects_a_bad_edit_and_applies_a_good_one(env: Env) -> None:
    good = env.config.read_text()
    env.config.write_text(good.replace("weight: 1", "weight: -1", 1))
    env.server.wait_for(
        lambda: env.server.client.get("/models").json()["config"]["last_error"], timeout=30, what="rejection"
    )
    assert _score(env, env.body(2, 1)).status_code == 200
    # int8 for the treatment, plus a shadow model on the control
    cfg = {
        "experiments": [
            {
                "name": "exp",
                "salt": "test-salt",
                "variants": [
                    {
                        "name": "control",
                        "weight": 1,
                        "model": NAME,
                        "shadow": {"model": NAME, "version": "1"},
                    },
                    {"name": "treatment", "weight": 1, "model": NAME, "int8": True, "survival_curves": False},
                ],
            }
        ],
    }
    write_config(env.config, **cfg)

    def applied() -> bool:
        variants = env.server.client.get("/models").json()["variants"]
        return any(v["build"] == "int8" for v in variants)

    env.server.wait_for(applied, timeout=60, what="the new config")
    assert env.server.client.get("/models").json()["config"]["last_error"] is None
    by_variant: dict[str, dict[str, Any]] = {}
    for i in range(30):
        out = _score(env, env.body(4, 2, user=f"user-{i}")).json()
        by_variant.setdefault(out["variant"], out)
    assert by_variant["treatment"]["build"] == "int8"
    assert set(by_variant["treatment"]["survival"]["hazard_short"]) == {"unit", "grid", "risk"}
    assert "hazard" in by_variant["control"]["survival"]["hazard_short"]
    env.server.wait_for(
        lambda: (
            'recsys_shadow_requests_total{result="ok",variant="control"}'
            in env.server.client.get("/metrics").text
        ),
        timeout=30,
        what="a shadow scoring",
    )
    write_config(env.config)  # back to the plain two-variant config
    env.server.wait_for(lambda: not applied(), timeout=60, what="the plain config")


def test_admin_reload_needs_the_token(env: Env) -> None:
    assert env.server.client.post("/admin/reload").status_code == 403
    resp = env.server.client.post("/admin/reload", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["ready"] is True


def test_metrics_docs_and_health(env: Env) -> None:
    text = env.server.client.get("/metrics").text
    for name in (
        "recsys_requests_total",
        "recsys_request_latency_seconds_bucket",
        "recsys_batch_candidates_bucket",
        "recsys_model_info",
        "recsys_model_reloads_total",
    ):
        assert name in text, name
    info = (
        'recsys_model_info{build="primary",experiment="exp",model="ads_ranker",variant="control",version="2"}'
    )
    assert f"{info} 1.0" in text
    spec = env.server.client.get("/openapi.json").json()
    assert "/score" in spec["paths"] and "example" in str(spec["paths"]["/score"])
    assert env.server.client.get("/docs").status_code == 200
    assert env.server.client.get("/readyz").json() == {"ready": True}


def test_a_restart_keeps_assignments(env: Env) -> None:
    before = orjson.loads((env.root / "assignments.json").read_bytes())
    # SIGTERM: uvicorn drains, runs the lifespan shutdown, then re-raises the signal (-15)
    assert env.server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in env.server.log()
    with serve(env.registry, env.config, env.root / "server2.log", token=TOKEN) as server:
        env.server = server
        assert _variants(env, list(before)) == before
