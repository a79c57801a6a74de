"""The scenarios of bench/serving_load.py: the full-size model and its requests, the in-process
baseline and the server's stages one by one, the server's own observations (/metrics, /proc), and
the runs: per size (saturation probe, fixed rate, baseline before and after), the N=500
attribution run and the soak."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import torch
from prometheus_client.parser import text_string_to_metric_families
from serving_load_client import (
    CONTENT_TYPES,
    SENDERS,
    Call,
    Recorder,
    RunStats,
    Sender,
    Target,
    _http_call,
    _schedule,
    closed_loop,
    open_loop,
    run_loop,
    score_target,
)

from recsys_mtl.devtools.fixtures import NAME, make_raw_table
from recsys_mtl.devtools.server_process import ServerProcess
from recsys_mtl.export import export_model
from recsys_mtl.loader import LoadedModel
from recsys_mtl.models import build_model, total_loss
from recsys_mtl.recipe import FeatureSpec, Recipe
from recsys_mtl.registry import Registry
from recsys_mtl.targets import targets_from_table
from recsys_mtl.transform import FeatureTransform
from serving.config import Runtime
from serving.request import ARROW_STREAM, JSON, check_against_model, decode
from serving.response import ScoreResult, render, render_arrow

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
    if f.kind == "vector":  # an encoder's output: dim floats at float32 precision
        assert f.dim is not None
        return rng.normal(0.0, 1.0, (n, f.dim)).astype(np.float32).tolist()
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
    batches = [model.features(cands[i], shared=shared[i]) for i in range(k)]
    out["transform_shared_ms"] = _median_ms(
        lambda i: model.features(cands[i % k], shared=shared[i % k]), calls
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
# the runs
# ---------------------------------------------------------------------------------------------


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
