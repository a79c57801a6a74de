"""Request decoding against hostile and careless input, without HTTP: Arrow streams that lie about
their offsets or their decompressed size, column types the server does not take, integers no id
can hold, id spellings that would split a user across A/B buckets, and the configured limits
(bytes per id, values per list, id bytes per request, JSON values). Each case names the failure it
regresses: before these checks it crashed the process (SIGSEGV), answered 200 from out-of-bounds
memory, inflated a small body into hundreds of MB, or answered 500.

The end-to-end counterparts against a real server are in tests/test_server_hardening.py.
"""

from __future__ import annotations

import resource

import numpy as np
import orjson
import pyarrow as pa
import pytest

from recsys_mtl.ids import IdError, canonical_scalar, int_from_canonical
from serving.arrow_ipc import MAX_BATCHES
from serving.assignment import unit_point
from serving.config import Runtime
from serving.request import RequestError, decode, encode_arrow_request
from serving.response import negotiate
from serving.service import redact_paths
from tests.serving_support import forge_offsets, ipc_stream

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
LIMITS = Runtime(max_candidates=100)


def refused(body: bytes, ctype: str = ARROW, limits: Runtime = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as e:
        decode(body, ctype, limits)
    return e.value


# ---- Arrow: offsets, types, names, compression -----------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [[0, 2, 2_000_000_000, 6], [0, 2, 6, 2_000_000_005], [0, 4, 2, 6], [0, -3, 4, 6]],
    ids=["past-the-buffer", "last-past-the-buffer", "non-monotonic", "negative"],
)
@pytest.mark.parametrize("kind", ["list", "string"])
def test_forged_offsets_are_refused_before_any_compute(kind: str, forged: list[int]) -> None:
    """Was: SIGSEGV in pc.list_slice / pc.dictionary_encode, or a 200 from out-of-bounds memory."""
    if kind == "list":
        col = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int64()))
    else:
        col = pa.array(["ab", "cd", "ef"])
    body = forge_offsets(ipc_stream(pa.table({"c": col})), [0, 2, 4, 6], forged)
    e = refused(body)
    assert (e.status, e.field) == (400, "candidates.c") and "offset" in e.message.lower()


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_small_compressed_stream_is_accepted(codec: str) -> None:
    t = pa.table({"creative_id": pa.array(np.arange(50)), "format": pa.array(["video"] * 50)})
    req = decode(ipc_stream(t, compression=codec), ARROW, LIMITS)
    assert req.candidates["creative_id"].to_pylist() == list(range(50))


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_vector_bomb_is_refused_from_its_declared_size(codec: str) -> None:
    """A vector column's floats (a fixed_size_list's child buffer) count in the decoded size: 20
    rows of 400,000 zeros (32 MB) compress to 1-130 kB and are refused before they inflate."""
    t = pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(8_000_000, np.float32)), 400_000)})
    body = ipc_stream(t, compression=codec)
    e = refused(body)
    assert len(body) < 200_000 and (e.status, e.field) == (413, "body") and "decompressed" in e.message


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compression_bomb_is_refused_before_it_inflates(codec: str) -> None:
    """Was: a 13 kB body took 380 MB of RSS. 64 MB of zeros compress to a few kB (zstd)."""
    t = pa.table({"x": pa.array(np.zeros(8_000_000, np.int64))})
    body = ipc_stream(t, compression=codec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    e = refused(body, limits=Runtime(max_candidates=10**7))
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (e.status, e.field) == (413, "body") and "decompressed" in e.message
    assert grew_mb < 20, f"peak RSS grew by {grew_mb:.0f} MB while refusing a {len(body)} byte body"


def test_rows_over_the_limit_are_refused_from_the_header() -> None:
    e = refused(ipc_stream(pa.table({"x": pa.array(np.zeros(101, np.int64))})))
    assert (e.status, e.field) == (422, "candidates") and "limit of 100" in e.message


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"d": pa.array(["a", "b"]).dictionary_encode()}),
        pa.table({"s": pa.array([{"a": 1}, {"a": 2}])}),
        pa.table({"m": pa.array([[("k", 1)], []], pa.map_(pa.string(), pa.int64()))}),
        pa.table({"b": pa.array([b"x", b"y"])}),
        pa.table({"ts": pa.array([1, 2], pa.timestamp("s"))}),
        pa.table({"nested": pa.array([[[1]], [[2]]])}),
    ],
    ids=["dictionary", "struct", "map", "binary", "timestamp", "list-of-lists"],
)
def test_undocumented_column_types_are_refused(table: pa.Table) -> None:
    e = refused(ipc_stream(table))
    assert e.status == 422 and e.field == f"candidates.{table.column_names[0]}"
    assert "unsupported column type" in e.message


def test_duplicate_column_names_are_refused() -> None:
    """Was: KeyError -> 500."""
    t = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["creative_id", "creative_id"])
    e = refused(ipc_stream(t))
    assert (e.status, e.field) == (422, "candidates.creative_id") and "duplicate" in e.message


def test_too_many_record_batches_are_refused() -> None:
    e = refused(ipc_stream(pa.table({"x": pa.array(np.arange(MAX_BATCHES + 1))}), batch_rows=1))
    assert (e.status, e.field) == (400, "body") and "record batches" in e.message


@pytest.mark.parametrize(
    "meta",
    [{b"user_id": b"\xff\xfe"}, {b"\xff": b"1"}, {b"user_id": b"1", b"features": b"[1]"}],
    ids=["user_id-not-utf8", "key-not-utf8", "features-not-an-object"],
)
def test_bad_metadata_is_a_4xx(meta: dict[bytes, bytes]) -> None:
    t = pa.table({"x": pa.array([1])}).replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    e = refused(sink.getvalue().to_pybytes())
    assert e.status == 422 and e.field in ("metadata.user_id", "metadata", "features")


def test_random_byte_overwrites_never_escape_as_anything_but_a_request_error() -> None:
    base = ipc_stream(pa.table({"a": pa.array(np.arange(20)), "s": pa.array([str(i) for i in range(20)]),
                            "l": pa.array([[1, 2]] * 20)}))  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(500):
        b = bytearray(base)
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        try:
            decode(bytes(b), ARROW, LIMITS)
        except RequestError as e:
            assert e.status in (400, 413, 422) and e.field


# ---- integers and id spellings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"user_id": 18446744073709551615, "candidates": {"a": [1]}}', "user_id"),
        (b'{"user_id": -9223372036854775809, "candidates": {"a": [1]}}', "user_id"),
        (b'{"user_id": 1.5, "candidates": {"a": [1]}}', "user_id"),
        (b'{"user_id": "", "candidates": {"a": [1]}}', "user_id"),
        (b'{"user_id": 7, "candidates": {"a": [[1, 18446744073709551615, "x"]]}}', "candidates.a"),
        (b'{"user_id": 7, "candidates": {"a": [{"x": 1}]}}', "candidates.a"),
        (b'{"user_id": 7, "candidates": [{"a": 1}, {"b": 2}]}', "candidates[1]"),
    ],
)
def test_integers_and_shapes_no_id_can_take_are_422(body: bytes, field: str) -> None:
    """Was: OverflowError / ArrowInvalid -> 500."""
    e = refused(body, JSON)
    assert (e.status, e.field) == (422, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"user_id": 7, "": [{"a": 1}]}', '""'),
        (b'{"user_id": 7, "candidates": {"": [1], "a": [1, 2]}}', "candidates.a"),
        (b'{"user_id": 7, "candidates": {"a": [1], "": [1, 2]}}', 'candidates.""'),
        (b'{"user_id": 7, "candidates": {"a": [1]}, "features": {"": {"x": 1}}}', 'features.""'),
    ],
)
def test_an_empty_key_is_named_not_left_blank(body: bytes, field: str) -> None:
    """Found by the fuzz suite: an unknown top-level key "" was answered with field ""."""
    assert refused(body, JSON).field == field


def test_integers_beyond_int64_decode_as_floats_for_the_transform_to_judge() -> None:
    """A dense feature takes 2^64-1 as a number; an id feature refuses it by name in the
    transform (tests/test_transform.py, tests/test_server_hardening.py). The same inside lists: a
    vector takes it as a number, a list-of-ids feature refuses it by name."""
    body = b'{"user_id": 7, "candidates": {"a": [1, 18446744073709551615, null]}}'
    col = decode(body, JSON, LIMITS).candidates["a"]
    assert col.type == pa.float64() and col.to_pylist() == [1.0, 2.0**64, None]
    body = b'{"user_id": 7, "candidates": {"a": [[1, 18446744073709551615], null]}}'
    col = decode(body, JSON, LIMITS).candidates["a"]
    assert col.type == pa.list_(pa.float64()) and col.to_pylist() == [[1.0, 2.0**64], None]


def test_user_id_canonical_forms() -> None:
    assert canonical_scalar(42, 256) == canonical_scalar("42", 256) == "42"
    assert int_from_canonical("-9223372036854775808") == -(2**63)
    for bad in (" 12", "012", "+12", "1_2", "１２", "-0", "9223372036854775808"):
        with pytest.raises(IdError):
            int_from_canonical(bad)
    with pytest.raises(IdError):
        canonical_scalar(True, 256)
    with pytest.raises(IdError):
        canonical_scalar("x" * 257, 256)
    with pytest.raises(IdError):
        canonical_scalar("\ud800", 256)


def test_one_id_one_bucket_however_it_is_spelt() -> None:
    """The A/B unit is the canonical string: 42 and "42" share a bucket; the spellings int() would
    also read as 42 are refused for integer-id models (tests/test_server_hardening.py)."""
    a = decode(b'{"user_id": 42, "candidates": {"a": [1]}}', JSON, LIMITS)
    b = decode(b'{"user_id": "42", "candidates": {"a": [1]}}', JSON, LIMITS)
    assert a.user_id == b.user_id == "42"
    assert unit_point("s", "variant", a.user_id) == unit_point("s", "variant", b.user_id)


# ---- limits ----------------------------------------------------------------------------------


def test_a_json_body_with_too_many_values_is_refused_before_parsing() -> None:
    """A 10^6-element list would allocate a Python object per element on the event loop."""
    body = b'{"user_id": 7, "features": {"clicked_items": [' + b",".join([b"1"] * 10**6) + b"]}}"
    e = refused(body, JSON, Runtime(max_candidates=100, max_body_bytes=4 << 20))
    assert (e.status, e.field) == (413, "body") and "runtime.max_json_values" in e.message


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_an_id_over_max_id_bytes_is_refused(fmt: str) -> None:
    """Was: a 1 M character id cost 6 s of the inference thread."""
    ids = ["ok", "x" * 300]
    body = (
        orjson.dumps({"user_id": 7, "candidates": {"format": ids}})
        if fmt == "json"
        else encode_arrow_request({"format": ids}, 7)
    )
    e = refused(body, JSON if fmt == "json" else ARROW)
    assert (e.status, e.field) == (422, "candidates.format")
    assert "300 bytes at index 1" in e.message and "runtime.max_id_bytes" in e.message


def test_an_id_inside_a_list_is_bounded_too() -> None:
    body = orjson.dumps({"user_id": 7, "features": {"tags": ["a", "y" * 1000]}, "candidates": {"a": [1]}})
    assert refused(body, JSON).field == "features.tags"


def test_a_list_over_max_list_length_is_refused() -> None:
    body = orjson.dumps(
        {"user_id": 7, "features": {"clicked_items": list(range(1001))}, "candidates": {"a": [1]}}
    )
    e = refused(body, JSON)
    assert (e.status, e.field) == (422, "features.clicked_items") and "runtime.max_list_length" in e.message


def test_a_vector_is_not_a_list_of_ids() -> None:
    """Lists of floats are vectors: bounded to their feature's dim and by runtime.max_vector_values
    against the model (tests/test_vector_serving.py), not by max_list_length (a 1,024-float
    embedding is normal)."""
    body = orjson.dumps({"user_id": 7, "candidates": {"v": [[0.5] * 1024, None]}})
    assert decode(body, JSON, LIMITS).candidates["v"].type == pa.list_(pa.float64())


def test_total_id_bytes_are_bounded() -> None:
    ids = [f"{i:0200d}" for i in range(100)]  # 20,000 bytes
    e = refused(orjson.dumps({"user_id": 7, "candidates": {"format": ids}}), JSON,
                Runtime(max_candidates=100, max_request_id_bytes=10_000))  # fmt: skip
    assert (e.status, e.field) == (413, "body") and "runtime.max_request_id_bytes" in e.message


def test_requests_at_the_limits_are_accepted() -> None:
    body = orjson.dumps(
        {
            "user_id": "u" * 256,
            "features": {"clicked_items": list(range(1000))},
            "candidates": {"format": ["f" * 256] * 100},
        }
    )
    req = decode(body, JSON, LIMITS)
    assert req.num_candidates == 100


# ---- content negotiation and what /models shows ---------------------------------------------


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("*/*", JSON),
        (ARROW, ARROW),
        (f"{ARROW};q=0, application/json", JSON),  # was: Arrow (a substring match)
        (f"{ARROW}, application/json;q=0.5", ARROW),
        ("application/*;q=0.2, application/vnd.apache.arrow.stream;q=0.9", ARROW),
        ("text/html", None),
        ("application/json;q=0", None),
        (f"*/*;q=0, {ARROW}", ARROW),
    ],
)
def test_negotiation_honours_q_values(accept: str | None, chosen: str | None) -> None:
    assert negotiate(accept) == chosen


def test_status_without_paths() -> None:
    status = {
        "registry": "/srv/reg",
        "config": {"path": "configs/serving.yaml", "last_error": "configs/serving.yaml: bad field"},
        "models": [{"path": "/srv/reg/m/3", "last_error": "/srv/reg/m/3/model.pt: sha256 mismatch; /tmp/x"}],
    }
    out = redact_paths(status, {"/srv/reg": "<registry>", "configs/serving.yaml": "<config>"})
    assert out == {
        "config": {"last_error": "<config>: bad field"},
        "models": [{"last_error": "<registry>/m/3/model.pt: sha256 mismatch; <path>"}],
    }
