"""The load generator of bench/serving_load.py: precomputed request bodies sent over keep-alive
connections (httpx, or a minimal HTTP/1.1 client on asyncio streams), closed-loop saturation probes
and open-loop fixed-rate runs timed from each request's intended send time, their statistics."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# httpcore asks `import sniffio` on every request (twice) to learn which async library runs it. Where
# sniffio is not installed (it is not in this venv: anyio no longer needs it), each failed import
# walks sys.path and the import hooks: ~1 ms of client CPU per request in this process, which would
# count as server latency. A None entry makes the import fail at once; httpcore then assumes asyncio,
# which is what runs here.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import httpx
import numpy as np
import pyarrow as pa

from serving.request import ARROW_STREAM, JSON

CONTENT_TYPES = {"json": JSON, "arrow": ARROW_STREAM}


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


def run_loop(coro: Any) -> Any:
    """Run the client on uvloop when available (as the server does): less loop overhead per request."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro)
    except ImportError:
        return asyncio.run(coro)
