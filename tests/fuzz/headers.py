"""Headers and sizes: valid requests under content-type, Accept and Content-Encoding variants,
and bodies around the size limit, sent with a Content-Length or chunked (`chunks`).
"""

from __future__ import annotations

import gzip
import string
from collections.abc import Iterator

import orjson
import pyarrow as pa
from hypothesis import strategies as st

from serving.request import ARROW_STREAM, JSON
from tests.fuzz.shape import OK, TOO_LARGE, Case, ModelShape, _arrow_headers, _json_headers, one_in
from tests.fuzz.valid import request_metadata, valid_arrow_requests, valid_requests, write_stream

JSON_TYPES = [
    JSON, "application/json; charset=utf-8", "Application/JSON", "application/json;charset=latin-1",
    "application/problem+json", "application/vnd.api+json", "text/json", "text/plain", "",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/json, text/plain", "application/jsonx", "application/json  ;  charset=utf-8", ARROW_STREAM,
    "*/*", "application/octet-stream", ";",
    "application/json; charset=utf-16", "application/json;;;", "json",
]  # fmt: skip
ARROW_TYPES = [
    ARROW_STREAM, f"{ARROW_STREAM}; charset=binary", ARROW_STREAM.upper(),
    "application/vnd.apache.arrow.file", "application/octet-stream", JSON, f"{ARROW_STREAM}, {JSON}",
    "application/vnd.apache.arrow.streamx",
]  # fmt: skip
REFUSING = [  # Accept headers that refuse (q=0) one of the two types the server speaks
    f"{ARROW_STREAM};q=0, {JSON}", f"{ARROW_STREAM};q=0", f"{JSON};q=0", f"{ARROW_STREAM}; q=0.0, */*",
    f"{JSON};q=0.001, {ARROW_STREAM};q=0.000", "*/*;q=0", f"{JSON};q=0, {ARROW_STREAM}",
]  # fmt: skip
ACCEPTS = [
    "*/*", JSON, ARROW_STREAM, f"{ARROW_STREAM};q=0, {JSON}", f"{JSON};q=0, {ARROW_STREAM}",
    f"{ARROW_STREAM};q=0", f"{JSON};q=0", f"{ARROW_STREAM}; q=0.0, */*", "text/html", "application/*",
    "application/*;q=0.1, application/json", "*/*;q=0", "garbage,,;;q=abc",
    f"{ARROW_STREAM};q=0.5, {JSON};q=0.9",
    f"{ARROW_STREAM};q=1.5", f"not-{ARROW_STREAM}", ARROW_STREAM.upper(), f"{ARROW_STREAM}-extra",
    f"{JSON};q=0.001, {ARROW_STREAM};q=0.000", "", ",", "q=0",
]  # fmt: skip
# header values as HTTP allows them (h11 refuses leading or trailing whitespace before sending)
HEADER_TEXT = st.text(
    alphabet=string.ascii_letters + string.digits + string.punctuation + " \t", max_size=60
).map(str.strip)


@st.composite
def header_variants(draw: st.DrawFn, shape: ModelShape) -> Case:
    """A valid JSON or Arrow request under content-type variants (parameters, case, other and
    missing types, garbage) and Accept headers (q-values incl. q=0, wildcards, garbage), sometimes
    gzip-encoded with Content-Encoding: gzip."""
    arrow = draw(st.booleans())
    if arrow:
        a = draw(valid_arrow_requests(shape))
        body, n, types = a.body, a.request.n, ARROW_TYPES
    else:
        r = draw(valid_requests(shape))
        body, n, types = orjson.dumps(r.as_dict()), r.n, JSON_TYPES
    headers: dict[str, str] = {}
    # the body's own type half the time, so the Accept variants reach a scored answer
    ct = draw(st.one_of(st.just(types[0]), st.just(types[0]), st.sampled_from(types), HEADER_TEXT, st.none()))
    if ct is not None:
        headers["content-type"] = ct
    accept = draw(st.one_of(st.sampled_from(ACCEPTS), st.sampled_from(REFUSING), HEADER_TEXT, st.none()))
    if accept is not None:
        headers["accept"] = accept
    if draw(one_in(8)):
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    return Case("headers", body, headers, frozenset({n}), note=f"{'arrow' if arrow else 'json'} body")


@st.composite
def body_sizes(draw: st.DrawFn, shape: ModelShape) -> Case:
    """Bodies around the size limit: a valid request padded with whitespace (JSON) or an unknown
    column (Arrow) to just under the limit (must score) or over it (413), sent with a
    Content-Length or chunked."""
    limit = shape.max_body_bytes
    over = draw(st.booleans())
    chunked = draw(st.booleans())
    size = draw(st.integers(limit + 1, limit + 4096) if over else st.integers(limit - 4096, limit))
    if draw(st.booleans()):
        r = draw(valid_requests(shape))
        text = orjson.dumps(r.as_dict())
        body = text[:-1] + b" " * max(0, size - len(text)) + b"}"
        expect = TOO_LARGE if over else OK
        return Case("size", body, _json_headers(), frozenset({r.n}), expect, chunked, f"json {size}")
    a = draw(valid_arrow_requests(shape))
    if not over:  # an unknown padding column would be a 422: only the over-limit Arrow case
        size = draw(st.integers(limit + 1, limit + 4096))
    table = a.table.append_column("padding", pa.array([b"x" * (size // max(1, a.request.n))] * a.request.n))
    meta = request_metadata(a.request)
    body = write_stream(table, meta)
    return Case("size", body, _arrow_headers(), None, TOO_LARGE, chunked, f"arrow {len(body)} bytes")


def chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]
