"""Benchmark: what a hostile or careless client costs everyone else (issue 12, docs/RELIABILITY.md).

One run, one real `recsys-mtl serve` process with the shipped recipe (HoME, full-size tables; a
few Adam steps on random rows, exported to a temporary registry) and the shipped serving config's
limits (the runtime defaults), with shorter timeouts so the run is short:

1. **Baseline**: a normal request (500 candidates, JSON, one user) sent alone, paced, `--reps`
   times: its latency p50 / max.
2. **Stalled bodies**: `--stalled` connections each declare a 1000-byte body and send 5 bytes.
   Meanwhile the same normal request, `--reps` times: p50 / max and the ratio to the baseline
   (goal <= 2x). Then how long until the server closed every stalled connection (goal: about
   `body_timeout_s`), and what each received (a 408).
3. **A request at each limit** (accepted, exactly at or just under the limit), and a few over a
   limit (refused): each sent on its own connection, and 2 ms later the normal request on
   another. "Waited" = the normal request's latency minus the baseline p50, over `--reps` pairs:
   how long another request waits behind the one at the limit (goal <= 50 ms).
4. **Memory**: the server's RSS before and after a 1 MB lz4 Arrow bomb (inflates to 256 MB), a
   zstd one (2 GB), and a JSON body with 10^6 elements, each sent 10 times (goal: < 100 MB above
   the start).

usage: .venv/bin/python bench/serving_limits.py [--reps 20] [--stalled 200] [--out bench/out/limits]
Run it alone on the machine (no other CPU-bound work): the numbers are latencies.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import yaml  # noqa: E402
from serving_load import ROOT, uptime  # noqa: E402
from serving_load_scenarios import Request, make_requests, publish_full_model, rss_mb  # noqa: E402

from recsys_mtl.devtools.fixtures import ipc_stream  # noqa: E402
from recsys_mtl.devtools.server_process import serve  # noqa: E402
from recsys_mtl.recipe import load_recipe  # noqa: E402
from serving.config import Runtime  # noqa: E402
from serving.request import ARROW_STREAM, JSON, json_values_bound  # noqa: E402

LIMITS = Runtime()  # the defaults are the shipped serving config's values
TIMEOUT_S = 3.0  # header and body timeouts for this run (shipped: 10 s)


# ---------------------------------------------------------------------------------------------
# the requests at each limit
# ---------------------------------------------------------------------------------------------


def limit_requests(base: Request, big: Request) -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type): requests exactly at (or just under) each limit, which the
    server accepts, and some over a limit, which it refuses."""
    out: dict[str, tuple[bytes, str]] = {}
    feats, user = dict(big.features), big.user_id
    n = LIMITS.max_candidates
    out["max_candidates (2000, JSON)"] = (big.json_body, JSON)
    out["max_candidates (2000, Arrow)"] = (big.arrow_body, ARROW_STREAM)

    # max_id_bytes: every candidate a distinct 256-byte id in the hashed string feature `device`
    ids = [f"{i:0{LIMITS.max_id_bytes}d}" for i in range(n)]
    cands = {**big.candidates, "device": ids}
    f2 = {k: v for k, v in feats.items() if k != "device"}
    out["max_id_bytes (2000 distinct 256-byte ids)"] = (
        orjson.dumps({"user_id": user, "features": f2, "candidates": cands}),
        JSON,
    )
    # max_request_id_bytes: 2 x 2000 x 256 = 1,024,000 bytes of ids (format has a vocabulary: its
    # strings are looked up, not hashed, but they count)
    fmt = [f"{i:0{LIMITS.max_id_bytes}d}" for i in range(n, 2 * n)]
    total = sum(len(s) for s in ids + fmt)
    assert total <= LIMITS.max_request_id_bytes, total
    out[f"max_request_id_bytes ({total:,} bytes of ids)"] = (
        ipc_stream(
            pa.table({**cands, "format": fmt}), {"user_id": user, "features": orjson.dumps(f2).decode()}
        ),
        ARROW_STREAM,
    )
    # max_list_length and max_body_bytes together: as many candidates as the body limit allows,
    # each with its own clicked-items list at the list limit (Arrow; the model reads the first 20)
    k = min(n, (LIMITS.max_body_bytes - (128 << 10)) // (8 * LIMITS.max_list_length))
    seq = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (k + 1) * LIMITS.max_list_length, LIMITS.max_list_length, dtype=np.int32)),
        pa.array(np.arange(k * LIMITS.max_list_length, dtype=np.int64) % 100_003),
    )
    f3 = {kk: v for kk, v in feats.items() if kk != "clicked_items"}
    c3 = {kk: v[:k] for kk, v in big.candidates.items()}
    body = ipc_stream(
        pa.table({**c3, "clicked_items": seq}), {"user_id": user, "features": orjson.dumps(f3).decode()}
    )
    assert len(body) <= LIMITS.max_body_bytes, len(body)
    out[
        f"max_list_length + max_body_bytes ({k} x {LIMITS.max_list_length} ids, {len(body) / 2**20:.1f} MiB)"
    ] = (
        body,
        ARROW_STREAM,
    )
    # max_json_values: 2000 candidates, each with its own list of clicked items, up to the bound
    per = 1
    while True:
        body = orjson.dumps(
            {
                "user_id": user,
                "features": f3,
                "candidates": {**big.candidates, "clicked_items": [list(range(per + 1))] * n},
            }
        )
        if json_values_bound(body) > LIMITS.max_json_values:
            break
        per += 1
        last = body
    out[f"max_json_values ({json_values_bound(last):,} values, {len(last) / 2**20:.2f} MiB JSON)"] = (
        last,
        JSON,
    )

    # over a limit: refused before the work
    one_long = {**base.candidates, "device": ["x" * 1_000_000] + ["ios"] * (base.n - 1)}
    out["over: a 1 MB id (422)"] = (
        orjson.dumps({**orjson.loads(base.json_body), "candidates": one_long}),
        JSON,
    )
    million = orjson.dumps({"user_id": user, "features": {"clicked_items": [7] * 10**6}, "candidates": {}})
    out["over: 10^6-element JSON (413)"] = (million, JSON)
    out["over: 1 MB lz4 bomb (413)"] = (bomb("lz4", 32 << 20, user), ARROW_STREAM)
    return out


def bomb(codec: str, values: int, user: str) -> bytes:
    """Two candidates whose sequences hold `values` zeros: highly compressible, lazily allocated."""
    zeros = pa.array(np.zeros(values, np.int64))
    seq = pa.ListArray.from_arrays(pa.array([0, values // 2, values], pa.int32()), zeros)
    return ipc_stream(pa.table({"clicked_items": seq}), {"user_id": user}, compression=codec)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def timed_post(client: httpx.Client, body: bytes, ctype: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = client.post("/score", content=body, headers={"content-type": ctype})
    return time.perf_counter() - t0, r.status_code


def baseline(url: str, normal: bytes, reps: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(3):
            timed_post(c, normal, JSON)
        out = []
        for _ in range(reps):
            dt, status = timed_post(c, normal, JSON)
            assert status == 200, status
            out.append(dt)
            time.sleep(0.05)
    return out


def stalled_run(url: str, port: int, normal: bytes, reps: int, count: int) -> dict[str, Any]:
    socks = []
    opened = time.perf_counter()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"use'
        )
        socks.append(s)
    lat = baseline(url, normal, reps)
    closed_at: list[float] = []
    answers: list[bytes] = []

    def drain(s: socket.socket) -> None:
        s.settimeout(60)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        closed_at.append(time.perf_counter() - opened)
        answers.append(data)
        s.close()

    with cf.ThreadPoolExecutor(32) as pool:
        list(pool.map(drain, socks))
    return {
        "latency_s": lat,
        "closed_after_s": [min(closed_at), max(closed_at)],
        "answers_408": sum(a.startswith(b"HTTP/1.1 408") for a in answers),
        "count": count,
    }


def _sender(url: str, body: bytes, ctype: str, conn: Connection) -> None:
    """A child process that posts `body` each time it is told to and reports (seconds, status).
    The request at the limit is sent from its own process so that its upload does not hold this
    process's GIL while the normal request is timed."""
    with httpx.Client(base_url=url, timeout=120) as c:
        while conn.recv():
            conn.send(timed_post(c, body, ctype))


def behind(url: str, first: tuple[bytes, str], normal: bytes, reps: int) -> dict[str, Any]:
    """Send `first` (from a child process), and 2 ms later the normal request on another
    connection, `reps` times."""
    own, waited, statuses = [], [], set()
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_sender, args=(url, *first, child), daemon=True)
    proc.start()
    try:
        with httpx.Client(base_url=url, timeout=120) as b:
            parent.send(True)  # warm both connections
            parent.recv()
            timed_post(b, normal, JSON)
            for _ in range(reps):
                parent.send(True)
                time.sleep(0.002)
                dt, status = timed_post(b, normal, JSON)
                assert status == 200, status
                first_s, first_status = parent.recv()
                own.append(first_s)
                statuses.add(first_status)
                waited.append(dt)
                time.sleep(0.05)
    finally:
        parent.send(False)
        proc.join(30)
    return {"own_s": own, "normal_s": waited, "status": sorted(statuses), "bytes": len(first[0])}


def memory(url: str, pid: int, user: str) -> dict[str, Any]:
    bodies: dict[str, tuple[bytes, str]] = {
        "1 MB lz4 bomb (256 MB inflated)": (bomb("lz4", 32 << 20, user), ARROW_STREAM),
        "zstd bomb (2 GB inflated)": (bomb("zstd", 256 << 20, user), ARROW_STREAM),
        "10^6-element JSON": (
            orjson.dumps({"user_id": user, "features": {"clicked_items": [7] * 10**6}, "candidates": {}}),
            JSON,
        ),
    }
    out: dict[str, Any] = {"start_mb": rss_mb(pid)}
    with httpx.Client(base_url=url, timeout=120) as c:
        for name, (body, ctype) in bodies.items():
            statuses = {timed_post(c, body, ctype)[1] for _ in range(10)}
            out[name] = {"bytes": len(body), "status": sorted(statuses), "rss_after_mb": rss_mb(pid)}
    out["end_mb"] = rss_mb(pid)
    return out


def ms(xs: list[float], f: Callable[[list[float]], float] = statistics.median) -> float:
    return 1000 * f(xs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20, help="repetitions of each timed pair (default 20)")
    p.add_argument("--stalled", type=int, default=200, help="stalled connections (default 200)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "limits")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("uptime before:", uptime(), flush=True)
    recipe = load_recipe(ROOT / "configs" / "ads_ranker.yaml")
    result: dict[str, Any] = {"uptime_before": uptime()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        publish_full_model(root / "registry", recipe)
        cfg = yaml.safe_load((ROOT / "configs" / "serving.yaml").read_text())
        cfg["registry"] = None
        cfg["runtime"].update(
            header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, warm_up_batch_sizes=[1, 500, 2000]
        )
        cfg["experiments"] = []
        cfg["default"] = {"name": "default", "model": "ads_ranker"}
        (root / "serving.yaml").write_text(yaml.safe_dump(cfg))
        base = make_requests(recipe, 500, 1, seed=1)[0]
        big = make_requests(recipe, LIMITS.max_candidates, 1, seed=2)[0]
        with serve(root / "registry", root / "serving.yaml", root / "server.log") as server:
            pid = server.proc.pid
            lat = baseline(server.url, base.json_body, args.reps)
            result["baseline_s"] = lat
            p50 = statistics.median(lat)
            print(
                f"baseline: 500 candidates JSON p50 {ms(lat):.1f} ms, max {ms(lat, max):.1f} ms", flush=True
            )
            st = stalled_run(server.url, server.port, base.json_body, args.reps, args.stalled)
            result["stalled"] = st
            print(
                f"{args.stalled} stalled bodies: p50 {ms(st['latency_s']):.1f} ms "
                f"({statistics.median(st['latency_s']) / p50:.2f}x), max {ms(st['latency_s'], max):.1f} ms; "
                f"closed after {st['closed_after_s'][0]:.2f}-{st['closed_after_s'][1]:.2f} s, "
                f"{st['answers_408']} got a 408",
                flush=True,
            )
            result["limits"] = {}
            for name, first in limit_requests(base, big).items():
                r = behind(server.url, first, base.json_body, args.reps)
                r["waited_ms"] = [1000 * (x - p50) for x in r["normal_s"]]
                result["limits"][name] = r
                print(
                    f"{name}: {r['bytes'] / 2**20:.2f} MiB, status {r['status']}, "
                    f"own p50 {ms(r['own_s']):.1f} ms; "
                    f"the normal request behind it waited p50 {statistics.median(r['waited_ms']):.1f} ms, "
                    f"p95 {np.percentile(r['waited_ms'], 95):.1f} ms, max {max(r['waited_ms']):.1f} ms",
                    flush=True,
                )
            result["memory"] = memory(server.url, pid, base.user_id)
            print("memory:", json.dumps(result["memory"], indent=1), flush=True)
    result["uptime_after"] = uptime()
    print("uptime after:", result["uptime_after"], flush=True)
    (args.out / "limits.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'limits.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
