"""Benchmark: end-to-end latency of the scoring server under load (issue #5).

What it does, in one run:
  1. Builds the SHIPPED recipe (configs/ads_ranker.yaml, HoME) at full size, trains it for a few Adam
     steps on random rows (non-trivial weights and dense statistics), exports it into a temporary
     registry and starts a real `recsys-mtl serve` subprocess on a free loopback port (one variant,
     fp32, survival curves on: the same work as `LoadedModel.score`).
  2. For each candidates-per-request size N and wire format (JSON; Arrow IPC, which also asks for
     the scores back in Arrow with `Accept: application/vnd.apache.arrow.stream`):
     - a saturation probe: a closed loop of a few concurrent clients for a few seconds, which gives
       the server's maximum requests/s at that size (concurrent requests are micro-batched);
     - a fixed-rate run at a fraction of that (default 50%) for `--duration` seconds: p50/p95/p99
       latency, achieved requests/s and candidates/s, errors;
     - the in-process baseline on the same N rows: `load_model(...).score(rows)` (transform +
       forward + survival curves), median of `--baseline-calls` calls before and as many after the
       load runs, on one worker thread with the server's torch thread count, paced like a server
       (see `model_thread`, `GAP_S`); and a breakdown of the server's own stages, in-process.
  3. At N=500: where the time goes, in ONE open-loop run whose requests go round-robin to several
     variants (same background load for all): JSON and Arrow with each client, Arrow request with a
     JSON response, no survival curves (a ~20x smaller response), GET /healthz (the HTTP floor),
     the service without HTTP (`ScoringService.score` + render in-process), and the baseline.
  4. A soak at `--soak-rate` (default 70%) of the 500-candidate JSON saturation rate for
     `--soak-seconds`: p50, p99, p99/p50, errors, and the server's resident memory (VmRSS) after
     warm-up and at the end.

Method (why the numbers are not flattered):
  - OPEN LOOP. Request i is due at its INTENDED send time t0 + i / rate, whether or not earlier
    requests have returned; each is sent by its own task, and its latency is measured from that
    intended time to the end of the response body. If the server (or this client) falls behind,
    the delay shows up in the latency instead of silently lowering the offered rate: no coordinated
    omission. Arrivals are evenly spaced (not Poisson), so at 50% load there is no queueing from
    bunched arrivals; what is left is the server's own time.
  - The generator stays out of the way: request bodies are precomputed bytes (a few different users
    and candidate sets, cycled), the client runs on uvloop in its own process (the server is a
    subprocess), connections are kept alive in an httpx pool, and JSON responses are read but not
    parsed (Arrow ones are opened to count their rows). The client's CPU time and its send lag
    (actual - intended send time) are reported so one can check it was not the bottleneck.
    `--client raw` swaps httpx for a minimal HTTP/1.1 client on asyncio streams (~0.5 ms vs ~2-4 ms
    of client time per request on a busy 2-core box).
  - Server-side numbers come from its own /metrics (request latency inside the app, transform +
    forward time per merged batch, requests merged per forward) and its CPU time from /proc.
  - The run is bounded: after the schedule ends, outstanding requests get `--grace` seconds, then
    are cancelled and counted as errors.

usage: .venv/bin/python bench/serving_load.py [--quick] [--sizes 100,500,2000] [--formats json,arrow]
           [--duration 15] [--soak-seconds 60] [--threads 2] [--client httpx|raw] [--out bench/out/serving]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import importlib.util  # noqa: E402

# httpcore asks `import sniffio` on every request (twice) to learn which async library runs it. Where
# sniffio is not installed (it is not in this venv: anyio no longer needs it), each failed import
# walks sys.path and the import hooks: ~1 ms of client CPU per request in this process, which would
# count as server latency. A None entry makes the import fail at once; httpcore then assumes asyncio,
# which is what runs here.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from recsys_mtl.devtools.fixtures import NAME, make_raw_table, write_config  # noqa: E402
from recsys_mtl.devtools.server_process import ServerProcess, serve  # noqa: E402
from recsys_mtl.export import export_model  # noqa: E402
from recsys_mtl.loader import LoadedModel, load_model  # noqa: E402
from recsys_mtl.models import build_model, total_loss  # noqa: E402
from recsys_mtl.recipe import FeatureSpec, Recipe, load_recipe  # noqa: E402
from recsys_mtl.registry import Registry  # noqa: E402
from recsys_mtl.targets import targets_from_table  # noqa: E402
from recsys_mtl.transform import FeatureTransform  # noqa: E402
from serving.config import Runtime  # noqa: E402
from serving.request import ARROW_STREAM, JSON, check_against_model, decode  # noqa: E402
from serving.response import ScoreResult, render, render_arrow  # noqa: E402

CONTENT_TYPES = {"json": JSON, "arrow": ARROW_STREAM}
SOAK_SIZE = 500  # the soak runs at this size, JSON (issue #5)


# ---------------------------------------------------------------------------------------------
# the model and the requests
# ---------------------------------------------------------------------------------------------


def publish_full_model(registry: Path, recipe: Recipe, seed: int = 0, steps: int = 5) -> None:
    """The shipped recipe at full size, a few Adam steps on random rows (so weights and dense
    statistics are not the initial ones), exported and promoted to current."""
    torch.manual_seed(seed)
    net = build_model(recipe)
    transform = FeatureTransform.from_recipe(recipe)
    transform = transform.with_dense_stats(transform.fit_dense_stats(make_raw_table(recipe, 2048, seed=seed)))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for step in range(steps):
        table = make_raw_table(recipe, 512, seed=seed * 100 + step)
        b = transform(table)
        loss, _ = total_loss(recipe, net(b.sparse, b.dense), targets_from_table(recipe, table))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    export_model(net, recipe, transform, Registry(registry), NAME, promote=True)


def _values(f: FeatureSpec, n: int, rng: np.random.Generator) -> list[Any]:
    """`n` plausible raw values of one feature, as a client would send them (finite, JSON-able)."""
    if f.kind == "dense":
        # a few significant digits, like real clients send (also keeps the JSON body realistic)
        return [round(float(v), 3) for v in rng.lognormal(0.0, 1.0, n)]
    if f.value_type == "string":
        pool = list(f.vocabulary or ["ios", "android", "web"])
        return [str(pool[i]) for i in rng.integers(0, len(pool), n)]
    hi = 10 * (f.hash_size or len(f.vocabulary or [1]))
    if f.kind == "id":
        return [int(v) for v in rng.integers(0, hi, n)]
    # sequences / multi-ids: an active user's full history
    assert f.max_len is not None
    return [[int(v) for v in rng.integers(0, hi, f.max_len)] for _ in range(n)]


@dataclass
class Request:
    """One precomputed request: the wire bodies and the same rows for the in-process baseline."""

    n: int
    user_id: str
    features: dict[str, Any]  # request-level (user + context, the user id included), one value each
    candidates: dict[str, list[Any]]  # item features, one value per candidate
    json_body: bytes
    arrow_body: bytes

    def rows(self) -> pa.Table:
        """All N rows with every feature per row: what `LoadedModel.score` takes."""
        cols: dict[str, Any] = dict(self.candidates)
        for k, v in self.features.items():
            cols[k] = [v] * self.n
        return pa.table(cols)

    def shared(self) -> dict[str, pa.Array]:
        """The request-level features as the server passes them to the transform (`shared=`)."""
        return {k: pa.array([v]) for k, v in self.features.items()}

    def body(self, fmt: str) -> bytes:
        return self.json_body if fmt == "json" else self.arrow_body

    def json_with_tasks(self, tasks: list[str]) -> bytes:
        body = {"user_id": self.user_id, "features": self.features, "candidates": self.candidates}
        return orjson.dumps({**body, "tasks": tasks})


def make_requests(recipe: Recipe, n: int, count: int, seed: int) -> list[Request]:
    """`count` requests of `n` candidates: different users and candidate sets, cycled by the client
    so no cache (ours or the CPU's) sees the same body back to back."""
    from serving.request import encode_arrow_request

    user_col = recipe.data.user_column
    out = []
    for k in range(count):
        rng = np.random.default_rng(seed * 1000 + k)
        features = {
            f.source: _values(f, 1, rng)[0] for f in recipe.features if f.group in ("user", "context")
        }
        # The user id goes in `features` too, as the integer the recipe's id feature takes, so the
        # same values reach the model here and in the in-process baseline (the server can also fill
        # it from the top-level `user_id`).
        user_id = str(features[user_col])
        candidates = {f.source: _values(f, n, rng) for f in recipe.features if f.group == "item"}
        body = {"user_id": user_id, "features": features, "candidates": candidates}
        out.append(
            Request(
                n=n,
                user_id=user_id,
                features=features,
                candidates=candidates,
                json_body=orjson.dumps(body),
                arrow_body=encode_arrow_request(pa.table(candidates), user_id, features=features),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# in-process baseline and the server's stages, measured one by one
# ---------------------------------------------------------------------------------------------


# Pause between timed in-process calls. Back to back, 2 torch threads on a 2-core box that anything
# else is using thrash (one OpenMP thread waits at a barrier for the other, which is descheduled):
# 3-10x slower than the same calls paced. The server is paced by its request rate, so the baseline
# is paced too.
GAP_S = 0.03


@functools.cache
def model_thread(threads: int) -> cf.ThreadPoolExecutor:
    """One long-lived thread that runs every in-process model call, with `threads` torch threads set
    on it: the server's inference thread, mirrored. (On this busy 2-core box, a 2-thread forward on
    the MAIN thread ran 10-20x slower than the same forward on a worker thread; the server never
    runs a forward on its main thread.)"""
    return cf.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="in-process", initializer=torch.set_num_threads, initargs=(threads,)
    )


def _times_ms(fn: Callable[[int], object], calls: int, warm: int = 3, gap: float = GAP_S) -> list[float]:
    for i in range(warm):
        fn(i)
    times = []
    for i in range(calls):
        time.sleep(gap)
        t0 = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t0))
    return times


def _median_ms(fn: Callable[[int], object], calls: int, warm: int = 3) -> float:
    return statistics.median(_times_ms(fn, calls, warm))


def in_process(model: LoadedModel, reqs: list[Request], calls: int) -> dict[str, Any]:
    """Median ms of: the baseline (`score` on N full rows) and each stage the server runs."""
    rows = [r.rows() for r in reqs]
    cands = [pa.table(r.candidates) for r in reqs]
    shared = [r.shared() for r in reqs]
    k = len(reqs)
    out: dict[str, Any] = {}
    out["score_rows_times_ms"] = _times_ms(lambda i: model.score(rows[i % k]), calls)
    out["score_rows_ms"] = statistics.median(out["score_rows_times_ms"])
    # The server's own path: decode -> check -> transform with shared user features -> forward ->
    # survival curves -> JSON render. Each stage alone, same requests.
    # (decode includes the request limits' checks, as in the server)
    limits = Runtime(max_candidates=10**6)
    out["decode_json_ms"] = _median_ms(lambda i: decode(reqs[i % k].json_body, JSON, limits), calls)
    out["decode_arrow_ms"] = _median_ms(lambda i: decode(reqs[i % k].arrow_body, ARROW_STREAM, limits), calls)
    decoded = [decode(r.json_body, JSON, limits) for r in reqs]
    out["check_ms"] = _median_ms(lambda i: check_against_model(decoded[i % k], model), calls)
    batches = [model.transform(cands[i], shared=shared[i]) for i in range(k)]
    out["transform_shared_ms"] = _median_ms(
        lambda i: model.transform(cands[i % k], shared=shared[i % k]), calls
    )
    out["forward_ms"] = _median_ms(lambda i: model.predict(batches[i % k]), calls)
    raw = [model.predict(b) for b in batches]
    tasks = model.wanted(None)
    out["postprocess_ms"] = _median_ms(lambda i: model.postprocess(raw[i % k], tasks), calls)
    results = [
        ScoreResult(
            model=model,
            experiment="default",
            variant="control",
            tasks=tasks,
            scores=model.postprocess(raw[i], tasks),
            num_candidates=reqs[i].n,
        )
        for i in range(k)
    ]
    out["render_json_ms"] = _median_ms(lambda i: render(results[i % k]), calls)
    out["render_arrow_ms"] = _median_ms(lambda i: render_arrow(results[i % k]), calls)
    # What the server itself computes for one request (no HTTP), per wire format (the Arrow path
    # answers in Arrow too).
    for fmt in CONTENT_TYPES:
        out[f"server_path_{fmt}_ms"] = (
            sum(
                out[s]
                for s in (
                    f"decode_{fmt}_ms",
                    "check_ms",
                    "transform_shared_ms",
                    "forward_ms",
                    "postprocess_ms",
                )
            )
            + out[f"render_{fmt}_ms"]
        )
    out["json_response_kb"] = len(render(results[0])) / 1024
    out["arrow_response_kb"] = len(render_arrow(results[0])) / 1024
    out["json_request_kb"] = statistics.mean(len(r.json_body) for r in reqs) / 1024
    out["arrow_request_kb"] = statistics.mean(len(r.arrow_body) for r in reqs) / 1024
    return out


# ---------------------------------------------------------------------------------------------
# server-side observations: /metrics, /proc
# ---------------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape(server: ServerProcess) -> dict[str, float]:
    """The server's cumulative sums and counts we difference around a run."""
    text = server.client.get("/metrics").text
    want = {
        "recsys_request_latency_seconds": "latency",
        "recsys_forward_seconds": "forward",
        "recsys_batch_requests": "batch_requests",
        "recsys_batch_candidates": "batch_candidates",
    }
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        key = want.get(fam.name)
        if key is None:
            continue
        for s in fam.samples:
            if s.name.endswith("_sum") or s.name.endswith("_count"):
                suffix = s.name.rsplit("_", 1)[1]
                out[f"{key}_{suffix}"] = out.get(f"{key}_{suffix}", 0.0) + s.value
    return out


def server_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def mean(key: str) -> float:
        c = after.get(f"{key}_count", 0.0) - before.get(f"{key}_count", 0.0)
        return (after.get(f"{key}_sum", 0.0) - before.get(f"{key}_sum", 0.0)) / c if c else float("nan")

    return {
        "server_latency_mean_ms": 1000 * mean("latency"),
        "server_forward_mean_ms": 1000 * mean("forward"),
        "requests_per_forward": mean("batch_requests"),
        "candidates_per_forward": mean("batch_candidates"),
    }


# ---------------------------------------------------------------------------------------------
# the load generator
# ---------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    mode: str  # "closed" (saturation probe), "open" (fixed rate), "soak"
    fmt: str
    size: int
    seconds: float
    offered_rps: float | None = None
    concurrency: int | None = None
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    rps: float = 0.0
    cands_per_s: float = 0.0
    send_lag_p50_ms: float | None = None  # actual - intended send time (timer and loop delay)
    send_lag_p99_ms: float | None = None
    client_cpu_pct: float = 0.0
    server_cpu_pct: float = 0.0
    server: dict[str, float] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)


class Recorder:
    """Latencies and errors of one run, plus the context that explains them."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.lag: list[float] = []
        self.errors: list[str] = []
        self.last_done = 0.0

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def finish(self, st: RunStats, wall: float) -> RunStats:
        st.ok = len(self.lat)
        st.errors = len(self.errors)
        st.error_samples = sorted(set(self.errors))[:5]
        if self.lat:
            ms = 1000 * np.asarray(self.lat)
            st.p50_ms, st.p95_ms, st.p99_ms = (float(np.percentile(ms, q)) for q in (50, 95, 99))
            st.max_ms = float(ms.max())
        st.rps = st.ok / wall if wall > 0 else 0.0
        st.cands_per_s = st.rps * st.size
        if self.lag:
            lag = 1000 * np.asarray(self.lag)
            st.send_lag_p50_ms, st.send_lag_p99_ms = float(np.median(lag)), float(np.percentile(lag, 99))
        return st


@dataclass(frozen=True)
class Target:
    """What a run sends: one endpoint, precomputed bodies (cycled), and what a good answer holds."""

    label: str  # "json", "arrow", or an attribution variant
    size: int  # candidates per request (0: not a scoring request)
    bodies: tuple[bytes, ...] = ()
    ctype: str | None = None
    accept: str | None = None  # ARROW_STREAM: the scores come back as an Arrow record batch
    method: str = "POST"
    path: str = "/score"

    @property
    def headers(self) -> dict[str, str]:
        h = {"content-type": self.ctype} if self.ctype else {}
        if self.accept:
            h["accept"] = self.accept
        return h

    def body(self, i: int) -> bytes | None:
        return self.bodies[i % len(self.bodies)] if self.bodies else None

    def check(self, status: int, content: bytes) -> str | None:
        """None for a good answer with one score per candidate, else what is wrong. A JSON body is
        not parsed (that costs client CPU): its `num_candidates` is found in the first bytes. An
        Arrow body is opened (zero-copy, tens of microseconds) and its rows counted."""
        if status != 200:
            return f"HTTP {status}: {content[:160]!r}"
        if not self.size:
            return None
        if self.accept == ARROW_STREAM:
            try:
                rows = pa.ipc.open_stream(pa.py_buffer(content)).read_all().num_rows
            except (pa.ArrowInvalid, OSError) as e:
                return f"unreadable Arrow response: {e}"[:200]
            return None if rows == self.size else f"Arrow response with {rows} rows, expected {self.size}"
        if f'"num_candidates":{self.size}'.encode() not in content[:400]:
            return "unexpected response body"
        return None


def score_target(
    label: str, size: int, bodies: Sequence[bytes], fmt: str, response: str | None = None
) -> Target:
    """A /score target: `fmt` is the request's wire format; the response is in the same format
    unless `response` says otherwise (an Arrow client asks for Arrow back with Accept)."""
    accept = ARROW_STREAM if (response or fmt) == "arrow" else None
    return Target(label=label, size=size, bodies=tuple(bodies), ctype=CONTENT_TYPES[fmt], accept=accept)


class HttpxSender:
    """httpx.AsyncClient with a keep-alive pool: what a Python service calling us would use."""

    def __init__(self, url: str, connections: int, timeout: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def send(self, t: Target, i: int) -> str | None:
        try:
            r = await self._client.request(t.method, t.path, content=t.body(i), headers=t.headers)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"[:200]
        return t.check(r.status_code, r.content)

    async def close(self) -> None:
        await self._client.aclose()


class RawSender:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one write per request, headers read
    up to the blank line, then exactly Content-Length bytes. It costs the client a small fraction of
    httpx's CPU per request, which on a 2-core box is CPU the server gets back; comparing the two
    shows how much of the end-to-end overhead is the client's."""

    # uvicorn closes a keep-alive connection after 5 s idle: older idle connections are not reused
    IDLE_S = 4.0

    def __init__(self, url: str, connections: int, timeout: float) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(connections)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t: Target, i: int
    ) -> str | None:
        body = t.body(i)
        head = f"{t.method} {t.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in t.headers.items())
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        writer.writelines([(head + "\r\n").encode(), body or b""])
        await writer.drain()
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            (int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:")), None
        )
        if length is None:
            raise ValueError("response without Content-Length")
        return t.check(status, await reader.readexactly(length))

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if not reader.at_eof() and now - since < self.IDLE_S:
                return reader, writer
            writer.close()
        return None

    async def send(self, t: Target, i: int) -> str | None:
        async with self._slots:
            for attempt in range(2):
                conn = self._take_idle()
                fresh = conn is None
                if conn is None:
                    conn = await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                try:
                    err = await asyncio.wait_for(self._exchange(reader, writer, t, i), self.timeout)
                except asyncio.IncompleteReadError as e:
                    writer.close()
                    # A reused connection the server closed as we sent (keep-alive race): retry once
                    # on a new one, as HTTP clients do. Anything else is an error.
                    if not fresh and not e.partial and attempt == 0:
                        continue
                    return f"IncompleteReadError: {e}"[:200]
                except (OSError, ValueError, IndexError, TimeoutError) as e:
                    writer.close()
                    return f"{type(e).__name__}: {e}"[:200]
                self._idle.append((reader, writer, time.monotonic()))
                return err
            raise AssertionError("unreachable")

    async def close(self) -> None:
        for _, w, _ in self._idle:
            w.close()
        self._idle.clear()


Sender = HttpxSender | RawSender
SENDERS: dict[str, type[HttpxSender] | type[RawSender]] = {"httpx": HttpxSender, "raw": RawSender}


async def _warm_connections(sender: Sender, t: Target, k: int) -> None:
    """Open k keep-alive connections (k concurrent requests) so no measured request pays a connect."""
    errors = await asyncio.gather(*(sender.send(t, i) for i in range(k)))
    if any(errors):
        raise RuntimeError(f"warm-up requests failed: {sorted({e for e in errors if e})}")


async def closed_loop(
    url: str, client: str, t: Target, concurrency: int, seconds: float, warm_s: float
) -> RunStats:
    """Saturation probe: `concurrency` clients, each sending its next request as soon as the last
    returns. Only requests that start and finish inside the measured window count."""
    rec = Recorder()
    st = RunStats("closed", t.label, t.size, seconds, concurrency=concurrency, load_before=os.getloadavg())
    sender = SENDERS[client](url, concurrency, 60.0)
    try:
        await _warm_connections(sender, t, concurrency)
        t_start = time.perf_counter() + warm_s
        t_end = t_start + seconds

        async def worker(w: int) -> None:
            i = w
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                err = await sender.send(t, i)
                t1 = time.perf_counter()
                i += concurrency
                if t0 >= t_start and t1 <= t_end:
                    if err is None:
                        rec.lat.append(t1 - t0)
                    else:
                        rec.error(err)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        await sender.close()
    return rec.finish(st, seconds)


# A variant's call: request i -> (error or None, its own duration in seconds or None). None as the
# duration means "measure from the intended send time" (HTTP and service requests); the in-process
# baseline reports the duration of the call itself (it is the reference, not a request).
Call = Callable[[int], Awaitable[tuple[str | None, float | None]]]


async def _schedule(
    calls: Sequence[Call],
    recs: Sequence[Recorder],
    rate: float,
    seconds: float,
    grace: float,
    on_tick: Callable[[float], None] | None = None,
) -> float:
    """The open loop: request i is due at t0 + i / rate and goes to variant i % len(calls), each on
    its own task, whether or not earlier requests have returned. Returns the run's span (s)."""
    total = max(1, round(rate * seconds))
    tasks: dict[asyncio.Task[None], int] = {}

    async def one(i: int, intended: float) -> None:
        rec = recs[i % len(calls)]
        rec.lag.append(time.perf_counter() - intended)
        err, own = await calls[i % len(calls)](i // len(calls))
        done = time.perf_counter()
        if err is None:
            rec.lat.append(own if own is not None else done - intended)
            rec.last_done = max(rec.last_done, done)
        else:
            rec.error(err)

    t0 = time.perf_counter() + 0.05
    next_tick = t0 + 5.0
    for i in range(total):
        intended = t0 + i / rate
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # If the loop was late, the request still goes now and its latency counts from `intended`.
        tasks[asyncio.create_task(one(i, intended))] = i
        if on_tick is not None and intended >= next_tick:
            on_tick(intended - t0)
            next_tick += 5.0
    schedule_end = t0 + total / rate
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, schedule_end - time.perf_counter()) + grace)
    for task in pending:
        task.cancel()
        recs[tasks[task] % len(calls)].error(f"no response within {grace:.0f}s after the run (cancelled)")
    if pending:
        await asyncio.wait(pending)
    # Achieved rate over the run's span: the schedule, or longer if responses trailed it.
    return max(schedule_end, *(r.last_done for r in recs)) - t0


def _http_call(sender: Sender, t: Target) -> Call:
    async def call(i: int) -> tuple[str | None, float | None]:
        return await sender.send(t, i), None

    return call


async def open_loop(
    url: str,
    client: str,
    t: Target,
    rate: float,
    seconds: float,
    grace: float,
    mode: str = "open",
    on_tick: Callable[[float], None] | None = None,
) -> RunStats:
    """Fixed request rate, latency from each request's INTENDED send time (see the module doc)."""
    rec = Recorder()
    st = RunStats(mode, t.label, t.size, seconds, offered_rps=rate, load_before=os.getloadavg())
    # Enough connections that the pool never gates an on-time send even when the server is slow
    # (a request that waits for a connection still counts from its intended time).
    sender = SENDERS[client](url, 256, 30.0)
    try:
        await _warm_connections(sender, t, 4)
        wall = await _schedule([_http_call(sender, t)], [rec], rate, seconds, grace, on_tick)
    finally:
        await sender.close()
    return rec.finish(st, wall)


@contextlib.contextmanager
def observed(server: ServerProcess, st_box: list[RunStats]) -> Iterator[None]:
    """Server metrics, server CPU and client CPU around a run; filled into the RunStats appended
    to `st_box` inside the block."""
    pid = server.proc.pid
    m0, s0, c0, w0 = scrape(server), proc_cpu_s(pid), time.process_time(), time.perf_counter()
    yield
    wall = time.perf_counter() - w0
    st = st_box[-1]
    st.server = server_delta(m0, scrape(server))
    st.server_cpu_pct = 100 * (proc_cpu_s(pid) - s0) / wall
    st.client_cpu_pct = 100 * (time.process_time() - c0) / wall


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        la = os.getloadavg()
        return f"load average: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def _fmt(x: float | None, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:,.{nd}f}"


def run_loop(coro: Any) -> Any:
    """Run the client on uvloop when available (as the server does): less loop overhead per request."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro)
    except ImportError:
        return asyncio.run(coro)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes", default=None, help="candidates per request (default 100,500,2000; quick 100,500)"
    )
    ap.add_argument("--formats", default="json,arrow", help="wire formats: json,arrow")
    ap.add_argument(
        "--duration", type=float, default=None, help="fixed-rate seconds per scenario (15; quick 3)"
    )
    ap.add_argument("--probe-seconds", type=float, default=None, help="saturation probe seconds (4; quick 2)")
    ap.add_argument("--probe-clients", type=int, default=4, help="concurrent clients of the saturation probe")
    ap.add_argument("--load", type=float, default=0.5, help="fixed rate as a share of saturation (0.5)")
    ap.add_argument("--soak-seconds", type=float, default=None, help="soak duration (60; quick 8; 0 = skip)")
    ap.add_argument("--soak-rate", type=float, default=0.7, help="soak rate as a share of saturation (0.7)")
    ap.add_argument("--threads", type=int, default=2, help="server torch threads (runtime.torch_threads)")
    ap.add_argument(
        "--baseline-calls", type=int, default=None, help="in-process calls per size (30; quick 8)"
    )
    ap.add_argument("--requests-per-size", type=int, default=8, help="distinct precomputed requests")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds to wait for stragglers after a run")
    ap.add_argument(
        "--client",
        choices=sorted(SENDERS),
        default="httpx",
        help="load-generator HTTP client: httpx (default) or raw (minimal HTTP/1.1 on asyncio streams)",
    )
    ap.add_argument(
        "--no-attribution",
        dest="attribution",
        action="store_false",
        help="skip the N=500 attribution runs (/healthz floor, no survival curves, the other client)",
    )
    ap.add_argument(
        "--attribution-seconds", type=float, default=None, help="the N=500 attribution run (45; quick 9)"
    )
    ap.add_argument("--quick", action="store_true", help="a fast smoke run (short runs, sizes 100,500)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "serving"))
    args = ap.parse_args(argv)
    q = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("100,500" if q else "100,500,2000")).split(",")]
    args.formats = [f.strip() for f in args.formats.split(",")]
    bad = [f for f in args.formats if f not in CONTENT_TYPES]
    if bad:
        ap.error(f"unknown format(s) {bad}; choose from {sorted(CONTENT_TYPES)}")
    args.duration = args.duration if args.duration is not None else (3.0 if q else 15.0)
    args.probe_seconds = args.probe_seconds if args.probe_seconds is not None else (2.0 if q else 4.0)
    args.soak_seconds = args.soak_seconds if args.soak_seconds is not None else (8.0 if q else 60.0)
    if args.attribution_seconds is None:
        args.attribution_seconds = 9.0 if q else 45.0
    args.baseline_calls = args.baseline_calls if args.baseline_calls is not None else (8 if q else 30)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)  # the baseline runs with the server's torch thread count
    recipe = load_recipe(ROOT / "configs" / "ads_ranker.yaml")
    report: dict[str, Any] = {
        "command": " ".join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "uptime_start": uptime(),
    }
    print(f"# {report['uptime_start']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        reg = Path(tmp) / "registry"
        t0 = time.perf_counter()
        publish_full_model(reg, recipe)
        print(f"published {recipe.name} (home, full size) in {time.perf_counter() - t0:.1f}s", flush=True)
        requests = {n: make_requests(recipe, n, args.requests_per_size, seed=n) for n in args.sizes}
        if SOAK_SIZE not in requests and args.soak_seconds > 0:
            requests[SOAK_SIZE] = make_requests(recipe, SOAK_SIZE, args.requests_per_size, seed=SOAK_SIZE)
        cfg = write_config(
            Path(tmp) / "serving.yaml",
            runtime={
                "torch_threads": args.threads,
                "interop_threads": 1,
                "max_candidates": 2000,
                "max_batch_candidates": 4096,
                "reload_interval_s": 2.0,
                "warm_up_batch_sizes": [1, 100, 500, 2000],
            },
            # one variant, fp32, survival curves on: the same work as `LoadedModel.score`
            experiments=[],
            default={"name": "control", "model": NAME, "survival_curves": True},
        )

        # The in-process model lives in this (client) process; it runs only while the server is idle.
        model = load_model(reg, NAME)
        gc.collect()
        gc.freeze()  # the setup's objects are long-lived: keep the collector off them during runs

        runs: list[RunStats] = []
        baseline: dict[int, dict[str, Any]] = {}
        soak: dict[str, Any] = {}
        sat: dict[tuple[int, str], float] = {}
        with serve(reg, cfg, out_dir / "server.log") as server:
            pid = server.proc.pid
            report["server_cmdline"] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
            for n in args.sizes:
                baseline[n] = run_size(server, model, n, requests[n], args, runs, sat, cfg, reg)
            if args.soak_seconds > 0:
                soak = run_soak(server, args, requests[SOAK_SIZE], sat)
                runs.append(soak.pop("stats"))
        report["uptime_end"] = uptime()

    report["baseline"] = {str(n): b for n, b in baseline.items()}
    report["runs"] = [asdict(r) for r in runs]
    report["soak"] = soak
    report["ratios"] = ratios(runs, baseline)
    table = markdown(report, runs, baseline, soak, args)
    report["markdown"] = table
    (out_dir / "serving_load.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "table.md").write_text(table)
    print()
    print(table)
    print(f"# {report['uptime_end']}")
    return 0


def run_size(
    server: ServerProcess,
    model: LoadedModel,
    n: int,
    reqs: list[Request],
    args: argparse.Namespace,
    runs: list[RunStats],
    sat: dict[tuple[int, str], float],
    config: Path,
    registry: Path,
) -> dict[str, Any]:
    """One size: the in-process baseline, then per format the saturation probe and the fixed-rate
    run, then the baseline again. The machine is shared, so the baseline is taken on both sides of
    the load runs (server idle both times) and the median is over both sets of calls: a change of
    background load during the runs shows up as a gap between the two, reported with the results."""
    b = model_thread(args.threads).submit(in_process, model, reqs, args.baseline_calls).result()
    print(
        f"in-process N={n}: score(rows) {b['score_rows_ms']:.2f} ms; server path json "
        f"{b['server_path_json_ms']:.2f} ms (decode json {b['decode_json_ms']:.2f} / arrow "
        f"{b['decode_arrow_ms']:.2f}, transform {b['transform_shared_ms']:.2f}, forward "
        f"{b['forward_ms']:.2f}, post {b['postprocess_ms']:.2f}, render json {b['render_json_ms']:.2f} / "
        f"arrow {b['render_arrow_ms']:.2f})",
        flush=True,
    )
    rates: dict[str, float] = {}
    for fmt in args.formats:
        t = score_target(fmt, n, [r.body(fmt) for r in reqs], fmt)
        box: list[RunStats] = []
        with observed(server, box):
            box.append(
                run_loop(closed_loop(server.url, args.client, t, args.probe_clients, args.probe_seconds, 1.0))
            )
        probe = box[-1]
        runs.append(probe)
        sat[(n, fmt)] = probe.rps
        rates[fmt] = rate = max(1.0, args.load * probe.rps)
        with observed(server, box):
            box.append(run_loop(open_loop(server.url, args.client, t, rate, args.duration, args.grace)))
        st = box[-1]
        runs.append(st)
        print(
            f"N={n:5d} {fmt:5s} saturation {probe.rps:7.1f} req/s (p50 {probe.p50_ms:.1f} ms at "
            f"{args.probe_clients} clients, {probe.server.get('requests_per_forward', float('nan')):.2f} "
            f"req/forward); at {rate:.1f} req/s: p50 {st.p50_ms:.1f} p95 {st.p95_ms:.1f} "
            f"p99 {st.p99_ms:.1f} ms, {st.rps:.1f} req/s, errors {st.errors}, server CPU "
            f"{st.server_cpu_pct:.0f}%, client CPU {st.client_cpu_pct:.0f}%, load {st.load_before[0]:.2f}",
            flush=True,
        )
    if n == SOAK_SIZE and "json" in rates and args.attribution:
        b["attribution"] = run_attribution(server, model, reqs, rates["json"], args, runs, config, registry)
    rows = [r.rows() for r in reqs]
    after = (
        model_thread(args.threads)
        .submit(_times_ms, lambda i: model.score(rows[i % len(rows)]), args.baseline_calls)
        .result()
    )
    b["score_rows_before_ms"] = b["score_rows_ms"]
    b["score_rows_after_ms"] = statistics.median(after)
    b["score_rows_times_ms"] = b["score_rows_times_ms"] + after
    b["score_rows_ms"] = statistics.median(b["score_rows_times_ms"])
    print(
        f"in-process N={n}: score(rows) before {b['score_rows_before_ms']:.2f} ms, after "
        f"{b['score_rows_after_ms']:.2f} ms, median of both {b['score_rows_ms']:.2f} ms",
        flush=True,
    )
    return b


BINARY_TASKS = ["ctr", "cvr", "ctcvr"]
BASELINE_LABEL = "in-process LoadedModel.score(rows) (the baseline)"


async def attribution_run(
    url: str,
    args: argparse.Namespace,
    config: Path,
    registry: Path,
    model: LoadedModel,
    reqs: list[Request],
    rate: float,
) -> list[RunStats]:
    """Where the end-to-end time goes at N=500. ONE open-loop schedule at `rate` whose requests go
    round-robin to several variants, so every variant sees the same background load on this shared
    machine (separate runs a minute apart differ by tens of % here):
      - JSON and Arrow over HTTP with each client (httpx, raw): the client's share;
      - JSON asking only ctr/cvr/ctcvr: a response ~20x smaller (no survival curves);
      - GET /healthz with each client: the HTTP floor (no body, no model);
      - `ScoringService.score` + `render` in this process, no HTTP (decode, route, check, hand-off to
        the inference thread, transform, forward, curves, JSON): the server minus HTTP;
      - the baseline, `LoadedModel.score(rows)`, timed inside the call (on the model thread, so it
        does not block the schedule).
    HTTP and service variants count from the intended send time, as everywhere else."""
    from serving.service import ScoringService

    other = "raw" if args.client == "httpx" else "httpx"
    n = reqs[0].n
    svc = ScoringService(config, registry)  # the same config: same threads, same variant
    svc.start()
    senders: dict[str, Sender] = {c: SENDERS[c](url, 64, 30.0) for c in (args.client, other)}
    try:
        deadline = time.perf_counter() + 180
        while not svc.ready:
            if time.perf_counter() > deadline:
                raise TimeoutError("the in-process ScoringService was not ready in 180 s")
            await asyncio.sleep(0.2)
        json_t = score_target("json", n, [r.json_body for r in reqs], "json")
        arrow_t = score_target("arrow", n, [r.arrow_body for r in reqs], "arrow")
        arrow_json_t = score_target("arrow-json", n, [r.arrow_body for r in reqs], "arrow", response="json")
        binary_t = score_target("json-binary", n, [r.json_with_tasks(BINARY_TASKS) for r in reqs], "json")
        healthz = Target(label="healthz", size=0, method="GET", path="/healthz")
        rows = [r.rows() for r in reqs]

        def service(t: Target) -> Call:
            async def call(i: int) -> tuple[str | None, float | None]:
                try:
                    res = await svc.score(t.bodies[i % len(t.bodies)], t.ctype)
                    if t.accept == ARROW_STREAM:
                        render_arrow(res)
                    else:
                        render(res)
                except Exception as e:  # counted as this variant's error
                    return f"{type(e).__name__}: {e}"[:200], None
                return None, None

            return call

        def timed_score(i: int) -> float:
            t0 = time.perf_counter()
            model.score(rows[i % len(rows)])
            return time.perf_counter() - t0

        async def baseline(i: int) -> tuple[str | None, float | None]:
            pool = model_thread(args.threads)
            return None, await asyncio.get_running_loop().run_in_executor(pool, timed_score, i)

        c, o = args.client, other
        variants: list[tuple[str, int, Call]] = [
            (f"json over HTTP ({c})", n, _http_call(senders[c], json_t)),
            (f"arrow over HTTP ({c})", n, _http_call(senders[c], arrow_t)),
            (f"json over HTTP ({o})", n, _http_call(senders[o], json_t)),
            (f"arrow over HTTP ({o})", n, _http_call(senders[o], arrow_t)),
            (f"arrow request, JSON response, over HTTP ({c})", n, _http_call(senders[c], arrow_json_t)),
            (f"json, ctr/cvr/ctcvr only, over HTTP ({c})", n, _http_call(senders[c], binary_t)),
            (f"GET /healthz ({c})", 0, _http_call(senders[c], healthz)),
            (f"GET /healthz ({o})", 0, _http_call(senders[o], healthz)),
            ("json: ScoringService.score + render, no HTTP", n, service(json_t)),
            ("arrow: ScoringService.score + render, no HTTP", n, service(arrow_t)),
            (BASELINE_LABEL, n, baseline),
        ]
        for _, _, call in variants:  # warm: connections open, threads started, caches hot
            for i in range(3):
                err, _ = await call(i)
                if err is not None:
                    raise RuntimeError(f"attribution warm-up failed: {err}")
        recs = [Recorder() for _ in variants]
        load = os.getloadavg()
        wall = await _schedule([v[2] for v in variants], recs, rate, args.attribution_seconds, args.grace)
        out = []
        for (label, size, _), rec in zip(variants, recs, strict=True):
            st = RunStats(
                "attr", label, size, args.attribution_seconds, rate / len(variants), load_before=load
            )
            out.append(rec.finish(st, wall))
        return out
    finally:
        for s in senders.values():
            await s.close()
        svc.stop()


def run_attribution(
    server: ServerProcess,
    model: LoadedModel,
    reqs: list[Request],
    rate: float,
    args: argparse.Namespace,
    runs: list[RunStats],
    config: Path,
    registry: Path,
) -> dict[str, Any]:
    res = run_loop(attribution_run(server.url, args, config, registry, model, reqs, rate))
    runs.extend(res)
    base = next(r for r in res if r.fmt == BASELINE_LABEL)
    for r in res:
        print(
            f"attribution: {r.fmt}: p50 {r.p50_ms:.2f} p95 {r.p95_ms:.2f} p99 {r.p99_ms:.2f} ms "
            f"({r.ok} ok, {r.errors} errors); p50 / baseline p50 {r.p50_ms / base.p50_ms:.2f}",
            flush=True,
        )
    return {"rate_rps": rate, "variants": len(res), "baseline_p50_ms": base.p50_ms}


def run_soak(
    server: ServerProcess, args: argparse.Namespace, reqs: list[Request], sat: dict[tuple[int, str], float]
) -> dict[str, Any]:
    """70% of the 500-candidate JSON saturation rate for `--soak-seconds`; RSS after warm-up and at
    the end, sampled every 5 s in between."""
    pid = server.proc.pid
    t = score_target("json", SOAK_SIZE, [r.json_body for r in reqs], "json")
    base = sat.get((SOAK_SIZE, "json"))
    if base is None:  # not probed in this run (other sizes/formats asked for): probe it now
        base = run_loop(closed_loop(server.url, args.client, t, args.probe_clients, 4.0, 1.0)).rps
    rate = max(1.0, args.soak_rate * base)
    # warm-up at the soak rate: allocator pools and caches reach their steady size before we read RSS
    run_loop(open_loop(server.url, args.client, t, rate, min(10.0, args.soak_seconds / 4), 10.0))
    rss0 = rss_mb(pid)
    samples: list[tuple[float, float]] = [(0.0, rss0)]
    box: list[RunStats] = []
    with observed(server, box):
        box.append(
            run_loop(
                open_loop(
                    server.url,
                    args.client,
                    t,
                    rate,
                    args.soak_seconds,
                    args.grace,
                    mode="soak",
                    on_tick=lambda at: samples.append((round(at, 1), rss_mb(pid))),
                )
            )
        )
    rss1 = rss_mb(pid)
    samples.append((args.soak_seconds, rss1))
    st = box[-1]
    print(
        f"soak N={SOAK_SIZE} json at {rate:.1f} req/s for {args.soak_seconds:.0f}s: p50 {st.p50_ms:.1f} "
        f"p99 {st.p99_ms:.1f} ms, errors {st.errors}, RSS {rss0:.0f} -> {rss1:.0f} MB",
        flush=True,
    )
    return {
        "stats": st,
        "rate_rps": rate,
        "saturation_rps": base,
        "p99_over_p50": st.p99_ms / st.p50_ms if st.p50_ms else float("nan"),
        "rss_start_mb": rss0,
        "rss_end_mb": rss1,
        "rss_growth_pct": 100 * (rss1 - rss0) / rss0,
        "rss_samples_mb": samples,
    }


def ratios(runs: list[RunStats], baseline: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    goals = {"json": 1.3, "arrow": 1.1}
    out = []
    for r in runs:
        if r.mode != "open":
            continue
        b = baseline[r.size]
        out.append(
            {
                "size": r.size,
                "format": r.fmt,
                "e2e_p50_ms": r.p50_ms,
                "score_rows_ms": b["score_rows_ms"],
                "ratio": r.p50_ms / b["score_rows_ms"],
                "server_path_ms": b[f"server_path_{r.fmt}_ms"],
                "ratio_vs_server_path": r.p50_ms / b[f"server_path_{r.fmt}_ms"],
                "goal": goals[r.fmt] if r.size == SOAK_SIZE else None,
            }
        )
    return out


def markdown(
    report: dict[str, Any],
    runs: list[RunStats],
    baseline: dict[int, dict[str, float]],
    soak: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"Machine load at start: `{report['uptime_start']}`; at end: `{report.get('uptime_end', '-')}`",
        "",
        f"Server: `recsys-mtl serve`, torch_threads {args.threads}, one fp32 HoME variant with survival "
        f"curves; client: {args.client} on uvloop, open loop at {args.load:.0%} of the saturation probe "
        f"({args.probe_clients} closed-loop clients, {args.probe_seconds:g} s), {args.duration:g} s per "
        "scenario, latency from the intended send time.",
        "",
        "| N | format | saturation req/s | rate req/s | p50 ms | p95 ms | p99 ms | achieved req/s "
        "| candidates/s | errors | in-process score ms | p50 / in-process | server mean ms | srv CPU % "
        "| client CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    probes = {(r.size, r.fmt): r for r in runs if r.mode == "closed"}
    for r in runs:
        if r.mode != "open":
            continue
        b = baseline[r.size]
        p = probes[(r.size, r.fmt)]
        lines.append(
            f"| {r.size} | {r.fmt} | {_fmt(p.rps)} | {_fmt(r.offered_rps)} | {_fmt(r.p50_ms)} | "
            f"{_fmt(r.p95_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.rps)} | {_fmt(r.cands_per_s, 0)} | {r.errors} | "
            f"{_fmt(b['score_rows_ms'])} | {_fmt(r.p50_ms / b['score_rows_ms'], 2)} | "
            f"{_fmt(r.server.get('server_latency_mean_ms'))} | {_fmt(r.server_cpu_pct, 0)} | "
            f"{_fmt(r.client_cpu_pct, 0)} |"
        )
    lines += [
        "",
        "Saturation probes (closed loop):",
        "",
        "| N | format | clients | req/s | candidates/s | p50 ms | p99 ms | requests / forward "
        "| forward mean ms | srv CPU % | client CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if r.mode == "closed":
            lines.append(
                f"| {r.size} | {r.fmt} | {r.concurrency} | {_fmt(r.rps)} | {_fmt(r.cands_per_s, 0)} | "
                f"{_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.server.get('requests_per_forward'), 2)} | "
                f"{_fmt(r.server.get('server_forward_mean_ms'))} | {_fmt(r.server_cpu_pct, 0)} | "
                f"{_fmt(r.client_cpu_pct, 0)} |"
            )
    lines += [
        "",
        "In-process, same rows, medians (ms): the baseline `score(rows)` and the server's stages one by one:",
        "",
        "| N | score(rows) | before / after the load runs | decode JSON | decode Arrow | check "
        "| transform (shared user) | forward | survival post | render JSON / Arrow | request KB JSON / Arrow "
        "| response KB JSON / Arrow |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, b in sorted(baseline.items()):
        lines.append(
            f"| {n} | {b['score_rows_ms']:.2f} | {b['score_rows_before_ms']:.2f} / "
            f"{b['score_rows_after_ms']:.2f} | {b['decode_json_ms']:.2f} | {b['decode_arrow_ms']:.2f} | "
            f"{b['check_ms']:.2f} | {b['transform_shared_ms']:.2f} | {b['forward_ms']:.2f} | "
            f"{b['postprocess_ms']:.2f} | {b['render_json_ms']:.2f} / {b['render_arrow_ms']:.2f} | "
            f"{b['json_request_kb']:.0f} / {b['arrow_request_kb']:.0f} | {b['json_response_kb']:.0f} / "
            f"{b['arrow_response_kb']:.0f} |"
        )
    attr = baseline.get(SOAK_SIZE, {}).get("attribution")
    if attr:
        base = attr["baseline_p50_ms"]
        lines += [
            "",
            f"Where the time goes at N={SOAK_SIZE}: one open-loop run at {attr['rate_rps']:.1f} req/s for "
            f"{args.attribution_seconds:g} s, requests round-robin over {attr['variants']} variants (same "
            "background load for all):",
            "",
            "| variant | p50 ms | p95 ms | p99 ms | p50 - baseline p50 ms | p50 / baseline p50 | samples "
            "| errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            if r.mode == "attr":
                lines.append(
                    f"| {r.fmt} | {_fmt(r.p50_ms, 2)} | {_fmt(r.p95_ms, 2)} | {_fmt(r.p99_ms, 2)} | "
                    f"{_fmt(r.p50_ms - base, 2)} | {_fmt(r.p50_ms / base, 2)} | {r.ok} | {r.errors} |"
                )
    if soak:
        st: RunStats = next(r for r in runs if r.mode == "soak")
        lines += [
            "",
            f"Soak: N={SOAK_SIZE}, JSON, {soak['rate_rps']:.1f} req/s ({args.soak_rate:.0%} of "
            f"{soak['saturation_rps']:.1f}) for {args.soak_seconds:g} s:",
            "",
            "| p50 ms | p99 ms | p99 / p50 (goal <= 3) | errors (goal 0) | RSS start MB | RSS end MB "
            "| RSS growth (goal < 5%) | achieved req/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {_fmt(st.p50_ms)} | {_fmt(st.p99_ms)} | {_fmt(soak['p99_over_p50'], 2)} | {st.errors} | "
            f"{soak['rss_start_mb']:.0f} | {soak['rss_end_mb']:.0f} | {soak['rss_growth_pct']:+.2f}% | "
            f"{_fmt(st.rps)} |",
        ]
    lines += ["", "Goals (issue #5):", ""]
    for r in report["ratios"]:
        if r["goal"] is not None:
            verdict = "met" if r["ratio"] <= r["goal"] else "MISSED"
            b = baseline[r["size"]]
            lo, hi = sorted((b["score_rows_before_ms"], b["score_rows_after_ms"]))
            shaky = (
                f" (baseline UNSTABLE: {b['score_rows_before_ms']:.1f} ms before / "
                f"{b['score_rows_after_ms']:.1f} ms after the load runs: the background load changed)"
                if hi > 1.25 * lo
                else ""
            )
            lines.append(
                f"- N={r['size']} {r['format']}: end-to-end p50 / in-process score = {r['e2e_p50_ms']:.1f} / "
                f"{r['score_rows_ms']:.1f} ms = **{r['ratio']:.2f}** (goal <= {r['goal']}): "
                f"{verdict}{shaky}; "
                f"vs the server's own compute path in-process ({r['server_path_ms']:.1f} ms): "
                f"{r['ratio_vs_server_path']:.2f}"
            )
    attr_runs = {r.fmt: r for r in runs if r.mode == "attr"}
    base_run = attr_runs.get(BASELINE_LABEL)
    if base_run is not None:
        for fmt, goal in (("json", 1.3), ("arrow", 1.1)):
            for label, r in attr_runs.items():
                if label.startswith(f"{fmt} over HTTP"):
                    ratio = r.p50_ms / base_run.p50_ms
                    lines.append(
                        f"- interleaved in one run (N={SOAK_SIZE}): {label} p50 / baseline p50 = "
                        f"{r.p50_ms:.1f} / {base_run.p50_ms:.1f} ms = **{ratio:.2f}** (goal <= {goal}): "
                        f"{'met' if ratio <= goal else 'MISSED'}"
                    )
    if soak:
        st = next(r for r in runs if r.mode == "soak")
        checks = [
            ("p99/p50", f"{soak['p99_over_p50']:.2f}", "<= 3", soak["p99_over_p50"] <= 3),
            ("errors", str(st.errors), "0", st.errors == 0),
            ("RSS growth", f"{soak['rss_growth_pct']:+.2f}%", "< 5%", soak["rss_growth_pct"] < 5),
        ]
        for name, got, goal, ok in checks:
            lines.append(f"- soak {name}: {got} (goal {goal}): {'met' if ok else 'MISSED'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
