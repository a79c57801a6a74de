"""The parent of `recsys-mtl serve --workers N` (N > 1): N worker processes, each with its own
listening socket on the one port (SO_REUSEPORT), restarted when they die, drained on SIGTERM.

Why not uvicorn's own `workers=N`: it binds one socket in the parent and every worker accepts on
it, and an event loop that wakes for a pending connection accepts every connection queued at that
moment. Clients that open their keep-alive connections together (a pool, a load balancer, wrk)
then all land on one worker, and the others idle: measured, 8 connections, 2 workers, one worker
busy for the whole run and the other at 0 CPU s (docs/BENCHMARKS.md, "Serving with several
workers"). With SO_REUSEPORT each worker has its own accept queue, and the kernel spreads new
connections over the queues by a hash of their addresses.

Each worker is a whole server (serving/workers.py: the app factory and the guarded http protocol).
This process never imports torch or loads a model; it spawns the workers (fresh interpreters, not
forks of a process with threads), restarts one that exits while the server runs (logged), and on
SIGTERM or SIGINT sends SIGTERM to every worker, which drains its requests for up to 30 s like a
single server does, then exits.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.process
import os
import signal
import socket
import threading
import time
from typing import Any

log = logging.getLogger("serving.supervisor")

DRAIN_S = 35.0  # uvicorn's graceful shutdown (30 s) and a margin, before a worker is killed
# more deaths than this within CRASH_WINDOW_S is not a worker that crashed but one that cannot
# start (a port taken by another program, a registry it cannot read): stop instead of looping
MAX_DEATHS = 5
CRASH_WINDOW_S = 60.0


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, so that every worker can bind its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(host: str, port: int, uvicorn_kwargs: dict[str, Any]) -> None:
    """One worker process: its own SO_REUSEPORT socket and a uvicorn server on it."""
    import uvicorn

    sock = reuse_port_socket(host, port)
    config = uvicorn.Config(
        "serving.workers:app_factory",
        factory=True,
        http="serving.workers:http_protocol",
        **uvicorn_kwargs,
    )
    uvicorn.Server(config).run(sockets=[sock])


def supervise(host: str, port: int, workers: int, uvicorn_kwargs: dict[str, Any]) -> int:
    """Run `workers` worker processes until SIGTERM / SIGINT (exit status 0), or until they die
    more than MAX_DEATHS times within CRASH_WINDOW_S (1: they cannot start)."""
    probe = reuse_port_socket(host, port)  # the port is free to us (else OSError here, at once)
    probe.close()
    ctx = mp.get_context("spawn")
    stopping = threading.Event()

    def start() -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=_worker, args=(host, port, uvicorn_kwargs), name="recsys-mtl-worker")
        p.start()
        log.info("worker %d started", p.pid)
        return p

    def stop(signum: int, _frame: Any) -> None:
        log.info("%s: stopping %d workers (each drains its requests)", signal.Signals(signum).name, workers)
        stopping.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    procs = [start() for _ in range(workers)]
    deaths: list[float] = []
    status = 0
    while not stopping.wait(0.5):
        for i, p in enumerate(procs):
            if p.is_alive() or stopping.is_set():
                continue
            _forget(p.pid)
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < CRASH_WINDOW_S] + [now]
            if len(deaths) > MAX_DEATHS:
                log.error(
                    "worker %d died (exit code %s), the %dth death within %.0f s: the workers cannot "
                    "start (see their log lines above); stopping",
                    p.pid,
                    p.exitcode,
                    len(deaths),
                    CRASH_WINDOW_S,
                )
                stopping.set()
                status = 1
                break
            log.warning("worker %d died (exit code %s); starting another", p.pid, p.exitcode)
            procs[i] = start()
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.warning("worker %d did not stop within %.0f s; killing it", p.pid, DRAIN_S)
            p.kill()
            p.join()
    log.info("all workers stopped")
    return status


def _forget(pid: int | None) -> None:
    """A dead worker's live Prometheus gauges leave the scrape (its counts stay: they happened)."""
    from serving.metrics import MULTIPROC_ENV

    if pid is not None and os.environ.get(MULTIPROC_ENV):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)
