"""The scoring edge against hostile and careless clients, end to end: a real `recsys-mtl serve`
process on a loopback port with a small real model (fp32 + int8 build) in a real registry.

Each test regresses one finding of the hardening issue (the docstring says what happened before):
forged Arrow offsets that killed the process, compression bombs, integers no id can hold, id
spellings that split a user's A/B bucket from its embedding row, content negotiation, the OpenAPI
example, client disconnects counted as 5xx, stalled bodies and heads, the connection and queue
bounds, and filesystem paths on unauthenticated pages. After every test the process must still be
alive and ready.

Timings here are functional bounds (a normal request is served while 200 connections stall, not
after their timeout); the latency figures themselves are measured by bench/serving_limits.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import socket
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
import yaml

from recsys_mtl.loader import LoadedModel, load_model
from recsys_mtl.recipe import Recipe
from serving.request import ARROW_STREAM
from serving.schemas import SCORE_EXAMPLE
from tests.conftest import make_raw_table
from tests.serving_support import (
    NAME,
    Server,
    forge_offsets,
    ipc_stream,
    nulls_for_nonfinite,
    publish,
    serve,
    small_recipe,
    write_config,
)

pytestmark = pytest.mark.slow
TOKEN = "hardening-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
JSON_CT = {"content-type": "application/json"}
ARROW_CT = {"content-type": ARROW_STREAM}
RUNTIME: dict[str, Any] = {
    "torch_threads": 1,
    "reload_interval_s": 0.3,
    "warm_up_batch_sizes": [1, 64],
    "header_timeout_s": 1.5,
    "body_timeout_s": 1.5,
    "max_connections": 400,
}


@dataclass
class Env:
    root: Path
    registry: Path
    config: Path
    recipe: Recipe
    server: Server
    model: LoadedModel

    def body(self, n: int = 3, seed: int = 5, user: Any = 7) -> dict[str, Any]:
        rows = nulls_for_nonfinite(make_raw_table(self.recipe, n, seed=seed))

        def values(c: str) -> list[Any]:
            return [
                None if isinstance(v, float) and not np.isfinite(v) else v for v in rows.column(c).to_pylist()
            ]

        # no user_id column: the server fills the model's user feature from `user_id`
        cols = [c for c in self.model.input_columns if c != "user_id"]
        return {"user_id": user, "candidates": {c: values(c) for c in cols}}

    def arrow(self, n: int = 3, seed: int = 5) -> pa.Table:
        rows = nulls_for_nonfinite(make_raw_table(self.recipe, n, seed=seed))
        return rows.select(self.model.input_columns)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.server.client.post("/score", content=body, headers={**JSON_CT, **(headers or {})})

    def reconfigure(self, **runtime: Any) -> None:
        """Rewrite the serving config's runtime section and wait until the server applied it."""
        before = self.server.client.get("/models", headers=ADMIN).json()["config"]["loaded_at"]
        data = yaml.safe_load(self.config.read_text())
        data["runtime"] = {**RUNTIME, **runtime}
        time.sleep(1.1)  # loaded_at has a resolution of one second
        self.config.write_text(yaml.safe_dump(data))
        self.server.wait_for(
            lambda: self.server.client.get("/models", headers=ADMIN).json()["config"]["loaded_at"] != before,
            what="the config reload",
        )

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.server.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


@pytest.fixture(scope="module")
def env(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("hardening")
    r = small_recipe(recipe)
    publish(root / "registry", r, seed=1, int8_companion=True)
    config = write_config(root / "serving.yaml")
    data = yaml.safe_load(config.read_text())
    data["runtime"] = RUNTIME
    data["experiments"][0]["variants"][1]["int8"] = True
    config.write_text(yaml.safe_dump(data))
    with serve(root / "registry", config, root / "server.log", token=TOKEN) as server:
        yield Env(root, root / "registry", config, r, server, load_model(root / "registry", NAME))


@pytest.fixture(autouse=True)
def _still_alive(env: Env) -> Iterator[None]:
    yield
    assert env.server.proc.poll() is None, f"the server died:\n{env.server.log()[-3000:]}"
    assert env.server.client.get("/readyz").status_code == 200


def _error(resp: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert err["field"] == field, err
    return err


# ---- crashes and wrong answers from one small request ------------------------------------------


@pytest.mark.parametrize(
    "forged", [[0, 2_000_000_000, 2_000_000_005, 9], [0, 6, 2, 9]], ids=["past", "non-monotonic"]
)
@pytest.mark.parametrize("column", ["clicked_items", "format"])
def test_forged_arrow_offsets_are_a_400_not_a_crash(env: Env, column: str, forged: list[int]) -> None:
    """Was: SIGSEGV in pc.list_slice (sequence) / pc.dictionary_encode (string), or a 200 computed
    from out-of-bounds memory for non-monotonic offsets."""
    t = env.arrow(3)
    if column == "clicked_items":
        col = pa.array([[1, 2], [3, 4, 5, 6], [7, 8, 9]], pa.list_(pa.int64()))
    else:
        col = pa.array(["ab", "cdef", "ghi"])
    t = t.set_column(t.schema.get_field_index(column), column, col)
    body = forge_offsets(ipc_stream(t), [0, 2, 6, 9], forged)
    _error(env.post(body, ARROW_CT), 400, f"candidates.{column}")


def test_duplicate_arrow_columns_are_a_422(env: Env) -> None:
    """Was: KeyError -> 500."""
    t = env.arrow(2)
    t = pa.Table.from_arrays([*t.columns, t.column("hour")], names=[*t.column_names, "hour"])
    _error(env.post(ipc_stream(t), ARROW_CT), 422, "candidates.hour")


# ---- resource exhaustion -----------------------------------------------------------------------


def test_compression_bombs_leave_memory_alone(env: Env) -> None:
    """Was: a 13 kB zstd body took 380 MB of RSS. Here a 1 MB lz4 body that inflates to 256 MB and a
    zstd body that inflates to 2 GB (both lazily zero-filled on the client)."""
    start = env.rss_mb()
    for codec, rows in (("lz4", 32 << 20), ("zstd", 256 << 20)):
        # two candidates, each with half of the zeros in its sequence: only the size is wrong
        zeros = pa.array(np.zeros(rows, np.int64))
        seq = pa.ListArray.from_arrays(pa.array([0, rows // 2, rows], pa.int32()), zeros)
        body = ipc_stream(pa.table({"clicked_items": seq}), compression=codec)
        err = _error(env.post(body, ARROW_CT), 413, "body")
        assert "decompressed" in err["message"]
    assert env.rss_mb() - start < 100


def test_a_million_element_body_leaves_memory_alone(env: Env) -> None:
    start = env.rss_mb()
    body = orjson.dumps({**env.body(1), "features": {"clicked_items": [7] * 10**6}})
    assert len(body) < 4 << 20  # under the body limit: the JSON value bound refuses it
    _error(env.post(body), 413, "body")
    assert env.rss_mb() - start < 100


def test_a_megabyte_id_is_refused_and_costs_nothing(env: Env) -> None:
    """Was: a 1 M character id took ~6 s of the inference thread while every request waited."""
    body = env.body(2)
    body["candidates"]["format"] = ["x" * 1_000_000, "video"]
    t0 = time.perf_counter()
    err = _error(env.post(orjson.dumps(body)), 422, "candidates.format")
    assert "runtime.max_id_bytes" in err["message"] and time.perf_counter() - t0 < 1.0


def _send_head(port: int, content_length: int, first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {content_length}\r\n\r\n".encode()
        + first
    )
    return s


def _read_all(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        return out + b"<still open>"
    return out


def test_stalled_bodies_neither_delay_others_nor_stay_open(env: Env) -> None:
    """Was: no body-read timeout; 200 connections that declare 1000 bytes and send 5 stayed open."""
    usual = min(_timed(env) for _ in range(5))
    stalled = [_send_head(env.server.port, 1000, b'{"use') for _ in range(200)]
    try:
        during = _timed(env)
        # served while they stall, long before their timeout
        assert during < RUNTIME["body_timeout_s"] / 2, (during, usual)
        answers = [_read_all(s, timeout=10) for s in stalled]
    finally:
        for s in stalled:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 408") and a.endswith(b"}") for a in answers), answers[0][:300]
    assert all(b"connection: close" in a.lower() for a in answers)


def _timed(env: Env) -> float:
    t0 = time.perf_counter()
    assert env.post(orjson.dumps(env.body(50))).status_code == 200
    return time.perf_counter() - t0


def test_a_stalled_or_silent_head_is_closed(env: Env) -> None:
    silent = socket.create_connection(("127.0.0.1", env.server.port))
    partial = socket.create_connection(("127.0.0.1", env.server.port))
    partial.sendall(b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-le")
    try:
        assert _read_all(silent, timeout=10) == b""
        assert _read_all(partial, timeout=10) == b""
    finally:
        silent.close()
        partial.close()
    assert 'recsys_connections_refused_total{reason="head_timeout"}' in env.server.client.get("/metrics").text


def test_connections_over_the_limit_get_503_with_retry_after(env: Env) -> None:
    env.reconfigure(max_connections=20)
    try:
        held = [socket.create_connection(("127.0.0.1", env.server.port)) for _ in range(30)]
        try:
            answers = [_read_all(s, timeout=0.5) for s in held]
        finally:
            for s in held:
                s.close()
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 10 and all(b"retry-after: 1" in a for a in refused)
        assert b'"field":"connections"' in refused[0]
    finally:
        env.reconfigure()


def test_a_full_queue_answers_503_with_retry_after(env: Env) -> None:
    env.reconfigure(max_queued_candidates=1)
    try:
        body = orjson.dumps(env.body(500, seed=9))
        with cf.ThreadPoolExecutor(16) as pool, httpx.Client(base_url=env.server.url, timeout=60) as c:
            resps = list(pool.map(lambda _: c.post("/score", content=body, headers=JSON_CT), range(32)))
        codes = sorted({r.status_code for r in resps})
        assert codes == [200, 503], codes
        busy = next(r for r in resps if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["field"] == "queue"
    finally:
        env.reconfigure()


def test_a_client_that_disconnects_mid_body_is_499_not_500(env: Env) -> None:
    """Was: counted as status="500" and logged at ERROR with a traceback."""
    mark = len(env.server.log())
    for _ in range(3):
        s = _send_head(env.server.port, 5000, b'{"user_id": 1')
        time.sleep(0.1)
        s.close()

    def counted() -> str | None:
        text = env.server.client.get("/metrics").text
        return text if 'status="499"' in text else None

    metrics = env.server.wait_for(counted, what="the 499 count")
    assert 'route="/score",status="500"' not in metrics
    new_log = env.server.log()[mark:]
    assert "went away" in new_log and "Traceback" not in new_log and "ERROR" not in new_log


# ---- integers and parsing ----------------------------------------------------------------------


def test_integers_no_id_can_hold_are_422(env: Env) -> None:
    """Was: OverflowError / ArrowInvalid -> 500."""
    good = env.body(2)
    c = good["candidates"]
    cases = [
        ({**good, "user_id": 2**64 - 1}, "user_id"),
        ({**good, "user_id": "999999999999999999999999999999"}, "user_id"),
        ({**good, "candidates": {**c, "creative_id": [1, 2**63]}}, "candidates.creative_id"),
        ({**good, "candidates": {**c, "hour": [2**63, 1]}}, "candidates.hour"),
    ]
    for body, field in cases:
        _error(env.post(orjson.dumps(body)), 422, field)
    # a dense value of 2^64-1 is just a big number: clipped and scored
    big = {**good, "candidates": {**c, "bid_price": [2**64 - 1, 1.0]}}
    assert env.post(orjson.dumps(big)).status_code == 200
    t = env.arrow(2)
    t = t.set_column(
        t.schema.get_field_index("creative_id"), "creative_id", pa.array([1, 2**64 - 1], pa.uint64())
    )
    err = _error(env.post(ipc_stream(t), ARROW_CT), 422, "candidates.creative_id")
    assert "int64" in err["message"]


def test_vector_values_no_float32_holds_are_422_never_a_nan_score(env: Env) -> None:
    """A vector value beyond float32 (1e39 parses as a float64 and would be inf in the model), a
    boolean in a vector (Arrow reads true as 1.0), a float16 vector column, and a finite vector
    near the float32 limit (the forward overflows: a NaN score) are each a 422 naming the field."""
    good = env.body(3)
    c = good["candidates"]
    ok = [0.5] * 32
    for vectors, field, start in (
        (
            [ok, [*ok[:31], 1e39], None],
            "candidates.creative_content",
            "candidate 1: value 31 of its vector is 1e+39",
        ),
        (
            [ok, None, [*ok[:31], False]],
            "candidates.creative_content",
            "candidate 2: a boolean inside its list",
        ),
        ([ok, [3.4e38] * 32, ok], "candidates", "candidate 1: the model's scores are not finite"),
    ):
        err = _error(
            env.post(orjson.dumps({**good, "candidates": {**c, "creative_content": vectors}})), 422, field
        )
        assert err["message"].startswith(start), err
    t = env.arrow(3)
    half = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(96, np.float16)), 32)
    t = t.set_column(t.schema.get_field_index("creative_content"), "creative_content", half)
    err = _error(env.post(ipc_stream(t), ARROW_CT), 422, "candidates.creative_content")
    assert "unsupported column type" in err["message"]


def test_an_integer_user_id_has_one_spelling(env: Env) -> None:
    """Was: int() accepted "１２３", "1_000", " 12 ": one embedding row, several A/B buckets."""
    body = env.body(2)
    ok = [env.post(orjson.dumps({**body, "user_id": u})) for u in (12, "12")]
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].json()["scores"] == ok[1].json()["scores"]
    assert ok[0].headers["x-variant"] == ok[1].headers["x-variant"]
    for spelling in ("１２", "1_2", " 12 ", "012", "+12"):
        err = _error(env.post(orjson.dumps({**body, "user_id": spelling})), 422, "user_id")
        assert "canonical" in err["message"]


def test_accept_honours_q_values(env: Env) -> None:
    """Was: `Accept: <arrow>;q=0, application/json` returned Arrow (a substring match)."""
    body = orjson.dumps(env.body(2))
    resp = env.post(body, {"accept": f"{ARROW_STREAM};q=0, application/json"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    resp = env.post(body, {"accept": f"application/json;q=0.1, {ARROW_STREAM}"})
    assert resp.headers["content-type"] == ARROW_STREAM
    _error(env.post(body, {"accept": "text/html"}), 406, "accept")


def test_the_openapi_example_scores_on_the_shipped_recipe(env: Env) -> None:
    """Was: the page's own example (user_id "u42") got a 422 from the shipped model."""
    spec = env.server.client.get("/openapi.json").json()
    example = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example == SCORE_EXAMPLE
    resp = env.post(orjson.dumps(example))
    assert resp.status_code == 200, resp.text
    assert resp.json()["num_candidates"] == len(example["candidates"]["creative_id"])


def test_every_documented_media_type_is_the_one_returned(env: Env) -> None:
    """Was: GET /metrics was documented as JSON and answered text/plain."""
    spec = env.server.client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        if "get" not in ops:
            continue
        documented = set(ops["get"]["responses"]["200"].get("content", {}))
        resp = env.server.client.get(path)
        got = resp.headers["content-type"].split(";")[0]
        assert got in documented, (path, got, documented)
    score = spec["paths"]["/score"]["post"]["responses"]
    assert set(score["200"]["content"]) == {"application/json", ARROW_STREAM}
    for status in ("400", "406", "408", "413", "415", "422", "503"):
        assert set(score[status]["content"]) == {"application/json"}


def test_framework_errors_have_the_error_shape(env: Env) -> None:
    _error(env.server.client.get("/nope"), 404, "path")
    _error(env.server.client.get("/score"), 405, "method")
    _error(env.server.client.post("/admin/reload?force=maybe", headers=ADMIN), 422, "query.force")


# ---- what unauthenticated pages show -----------------------------------------------------------


def test_models_shows_paths_only_to_the_admin(env: Env) -> None:
    """Was: /models showed the registry's and each model's filesystem path to anyone."""
    public = env.server.client.get("/models").text
    for p in (str(env.registry), str(env.config), str(env.root)):
        assert p not in public
    assert '"path"' not in public and '"registry"' not in public
    admin = env.server.client.get("/models", headers=ADMIN).json()
    assert admin["registry"] == str(env.registry) and admin["models"][0]["path"]


def test_protected_introspection_needs_the_token(env: Env) -> None:
    data = yaml.safe_load(env.config.read_text())
    data["admin"] = {"protect_introspection": True}
    env.config.write_text(yaml.safe_dump(data))
    try:
        env.server.wait_for(lambda: env.server.client.get("/models").status_code == 403, what="protection")
        for path in ("/models", "/metrics", "/docs", "/openapi.json"):
            _error(env.server.client.get(path), 403, "authorization")
            assert env.server.client.get(path, headers=ADMIN).status_code == 200
        assert env.server.client.get("/healthz").status_code == 200
    finally:
        data["admin"] = {}
        env.config.write_text(yaml.safe_dump(data))
        env.server.wait_for(lambda: env.server.client.get("/models").status_code == 200, what="unprotected")


def test_the_heap_is_frozen_once_the_models_are_loaded(env: Env) -> None:
    """A full garbage collection of a server holding torch and its models walks ~0.4 M objects
    (~0.2 s with the GIL held, a pause for every request in flight); they are frozen at start."""
    frozen = re.search(r"garbage collector: (\d+) objects frozen", env.server.log())
    assert frozen and int(frozen.group(1)) > 10_000


def test_the_server_never_answered_5xx(env: Env) -> None:
    metrics = env.server.client.get("/metrics").text
    assert 'status="500"' not in metrics
    assert "Traceback" not in env.server.log()
