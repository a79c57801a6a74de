"""`recsys-mtl serve --workers 2` end to end: two real worker processes on one loopback port, a real
registry on disk. What a client or operator sees must not depend on which worker takes the
connection: a user's A/B variant, the /metrics counters (summed over the workers), the version
served after a promotion; and SIGTERM stops every worker.

A connection stays on the worker that accepted it, so each probe opens its own connection, asks
/healthz which worker it reached (`pid`), and sends its other requests on that connection.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import orjson
import pytest

from recsys_mtl.loader import load_model
from recsys_mtl.recipe import Recipe
from recsys_mtl.threads import CPUs, serving_workers
from tests.conftest import make_raw_table
from tests.serving_support import (
    NAME,
    Server,
    nulls_for_nonfinite,
    publish,
    request_from_table,
    small_recipe,
    write_config,
)

pytestmark = pytest.mark.slow
TOKEN = "test-token"
T = TypeVar("T")


@pytest.fixture(scope="module")
def setup(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Recipe, Path]]:
    root = tmp_path_factory.mktemp("workers")
    r = small_recipe(recipe)
    publish(root / "registry", r, seed=1)
    # write_config's runtime, with a short request-head timeout
    runtime = {"torch_threads": 1, "reload_interval_s": 0.3, "warm_up_batch_sizes": [1, 64]}
    runtime["header_timeout_s"] = 1
    config = write_config(root / "serving.yaml", runtime=runtime)
    server = Server(
        root / "registry", config, root / "server.log", env={"RECSYS_MTL_ADMIN_TOKEN": TOKEN}, workers=2
    )
    try:
        server.wait_ready()  # one worker is ready: wait for the other too
        deadline = time.time() + 120
        while set(_on_each_worker(server, lambda c: c.get("/readyz").status_code).values()) != {200}:
            assert time.time() < deadline, server.log()[-4000:]
        yield server, r, root
    finally:
        server.stop()


def _on_each_worker(
    server: Server, probe: Callable[[httpx.Client], T], timeout: float = 60, resets: bool = False
) -> dict[int, T]:
    """`probe` run on fresh connections until both workers have answered: {pid: its last result}.
    `resets`: a connection reset is retried (right after a worker is killed, the connections the
    kernel had queued on its socket are reset; the next ones go to the live workers)."""
    seen: dict[int, T] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            try:
                info = c.get("/healthz").json()
                assert info["workers"] == 2
                seen[info["pid"]] = probe(c)
            except httpx.TransportError:
                if not resets:
                    raise
                time.sleep(0.1)
        if len(seen) == 2:
            return seen
    raise TimeoutError(f"only workers {sorted(seen)} answered:\n{server.log()[-4000:]}")


def _sample(metrics: str, series: str) -> float:
    """The value of one series (a regex of its name and labels) in a scrape."""
    m = re.search(rf"^{series} (\S+)$", metrics, re.M)
    assert m is not None, series
    return float(m.group(1))


def _score_requests(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(r'^recsys_requests_total\{[^}]*route="/score"[^}]*\} (\S+)$', metrics, re.M)
    )


def test_connections_opened_together_spread_over_the_workers(setup: tuple[Server, Recipe, Path]) -> None:
    """A client pool opens its keep-alive connections at once. On one shared listening socket the
    first worker to wake accepted every queued connection and the other idled (0 CPU s in the
    benchmark); with a socket per worker (SO_REUSEPORT) the kernel spreads them. 16 connections
    land on one worker of two by chance with probability 2 / 2^16."""
    server = setup[0]
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    conns = [socket.create_connection((host, port), timeout=30) for _ in range(16)]  # all queued
    pids = []
    try:
        for c in conns:
            c.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        for c in conns:
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = c.recv(65536)
                assert chunk, data
                data += chunk
            pids.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])
    finally:
        for c in conns:
            c.close()
    assert len(set(pids)) == 2, pids
    # the mechanism: one listening socket per worker (one shared socket before), so the kernel
    # keeps an accept queue per worker and balances connections over them
    assert _listening_sockets(port) == 2


def _listening_sockets(port: int) -> int:
    """Distinct listening TCP sockets (inodes) on `port`, from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    return len(inodes)


def test_workers_agree_on_variants_metrics_and_reloads(setup: tuple[Server, Recipe, Path]) -> None:
    server, recipe, root = setup
    table = nulls_for_nonfinite(make_raw_table(recipe, 4, seed=3))
    columns = load_model(root / "registry", NAME).input_columns
    users = [f"user-{i}" for i in range(6)]
    sent = 0

    def variants(c: httpx.Client) -> dict[str, str]:
        nonlocal sent
        got = {}
        for u in users:
            body = orjson.dumps(request_from_table(table, u, columns))
            r = c.post("/score", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            sent += 1
            got[u] = r.headers["x-variant"]
        return got

    # a user's variant is a hash of its id: the same whichever worker scores it
    by_worker = _on_each_worker(server, variants)
    first, second = by_worker.values()
    assert first == second and len(set(first.values())) == 2, by_worker

    # every worker's scrape counts every worker's requests
    scrapes = _on_each_worker(server, lambda c: _score_requests(c.get("/metrics").text))
    assert set(scrapes.values()) == {float(sent)}, (scrapes, sent)

    # a promoted version reaches every worker (each polls the registry)
    publish(root / "registry", recipe, seed=2)

    def versions(c: httpx.Client) -> set[str | None]:
        return {v["version"] for v in c.get("/models").json()["variants"]}

    deadline = time.time() + 60
    while (seen := _on_each_worker(server, versions)) != {pid: {"2"} for pid in seen}:
        assert time.time() < deadline, seen

    # the connection guard (serving/protocol.py) runs in the workers: idle connections are closed
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    for sock in idle:
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed by the server after runtime.header_timeout_s
        sock.close()
    metrics = _on_each_worker(server, lambda c: c.get("/metrics").text)
    for text in metrics.values():
        assert _sample(text, r'recsys_connections_refused_total\{reason="head_timeout"\}') == 4.0

    # a worker that dies is replaced (the supervisor logs it); its counts stay, its live series go
    dead = next(iter(seen))
    os.kill(dead, signal.SIGKILL)
    deadline = time.time() + 120
    while True:
        seen = _on_each_worker(server, lambda c: c.get("/readyz").status_code, timeout=120, resets=True)
        if dead not in seen and set(seen.values()) == {200}:
            break
        assert time.time() < deadline, server.log()[-4000:]
    assert f"worker {dead} died" in server.log()
    for text in _on_each_worker(server, lambda c: c.get("/metrics").text).values():
        assert _score_requests(text) == sent
        info_pids = set(re.findall(r'^recsys_model_info\{[^}]*pid="(\d+)"', text, re.M))
        assert info_pids == {str(p) for p in seen}, text

    # SIGTERM: the supervisor drains and stops every worker, then exits
    pids = list(seen)
    assert server.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "worker" in server.log()


def _cpus(n: int, quota: float | None = None) -> CPUs:
    return CPUs(affinity=n, quota=quota)


@pytest.mark.parametrize(
    ("cpus", "threads", "workers"),
    [
        (_cpus(16), 1, 8),  # each worker: 1 forward thread + its event loop
        (_cpus(16), 3, 4),
        (_cpus(2), 1, 1),
        (_cpus(1), 1, 1),  # never fewer than one
        (_cpus(64, quota=6.0), 2, 2),  # the cgroup quota, not the host's cores
        (_cpus(8), 16, 1),
    ],
)
def test_the_default_worker_count(cpus: CPUs, threads: int, workers: int) -> None:
    assert serving_workers(threads, cpus) == workers


def test_a_bad_worker_count_is_refused(tmp_path: Path) -> None:
    from tests.conftest import cli

    (tmp_path / "registry").mkdir()
    config = write_config(tmp_path / "serving.yaml")
    r = cli("serve", "--registry", str(tmp_path / "registry"), "--config", str(config), "--workers", "0")
    assert r.returncode != 0 and "--workers 0" in r.stderr


def test_workers_that_cannot_start_stop_the_server(tmp_path: Path) -> None:
    """A worker that dies at start (here: its config is gone) is not restarted forever: after
    MAX_DEATHS deaths within CRASH_WINDOW_S the supervisor stops, exit status 1, saying why."""
    from recsys_mtl.distributed import free_port
    from serving.server import CONFIG_ENV, REGISTRY_ENV, WORKERS_ENV

    code = (
        "import sys; from serving.supervisor import supervise; "
        f"sys.exit(supervise('127.0.0.1', {free_port()}, 2, {{'log_level': 'warning'}}))"
    )
    env = {**os.environ, CONFIG_ENV: str(tmp_path / "gone.yaml"), REGISTRY_ENV: "", WORKERS_ENV: "2"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "the workers cannot start" in r.stderr
