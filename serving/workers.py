"""One worker process of `recsys-mtl serve --workers N` (N > 1): what uvicorn runs in each child.

serving/supervisor.py spawns N children, each accepting on its own SO_REUSEPORT socket of the port
(so the kernel spreads connections over them); it restarts a child that dies (and logs it), and
on SIGTERM it sends SIGTERM to each, which
drains its requests (30 s) like a single server does. A spawned child imports the app by name, so
the config and registry paths and the worker count reach it through the environment (the `*_ENV`
names of serving/server.py, set by the parent), and the http protocol is a function of this module
too: uvicorn calls it for each connection, and it builds our guarded protocol (serving/protocol.py:
connection cap, head timeout) around this process's service.

Each worker is a whole server: its own ScoringService (models, inference thread, registry and
config watcher), so hot reload happens in every worker within `runtime.reload_interval_s`.
`POST /admin/reload` reaches the one worker that takes the connection; the others follow on their
next check. Prometheus values of all workers meet in PROMETHEUS_MULTIPROC_DIR (serving/metrics.py).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead

from serving.app import create_app
from serving.metrics import MULTIPROC_ENV
from serving.protocol import GuardedHttpToolsProtocol, guarded_protocol
from serving.server import CONFIG_ENV, REGISTRY_ENV, WORKERS_ENV

log = logging.getLogger("serving.workers")
# this process's protocol class, bound to its service by `app_factory`
_protocol: type[GuardedHttpToolsProtocol] | None = None
_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def app_factory() -> FastAPI:
    """The app of this worker (uvicorn's `factory=True`), from the paths in the environment."""
    global _protocol
    _configure_logging()
    workers = int(os.environ.get(WORKERS_ENV, "1"))
    app = create_app(os.environ[CONFIG_ENV], os.environ.get(REGISTRY_ENV) or None, workers=workers)
    _protocol = guarded_protocol(app.state.service)
    _forget_dead_workers()
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            yield state
        # this worker's live gauges (queue, model info) leave the scrape with it
        if os.environ.get(MULTIPROC_ENV):
            mark_process_dead(os.getpid())

    app.router.lifespan_context = lifespan
    log.info("worker %d of %d serving", os.getpid(), workers)
    return app


def http_protocol(**kwargs: Any) -> GuardedHttpToolsProtocol:
    """uvicorn's `http=` in a worker: a guarded protocol instance for one connection."""
    if _protocol is None:  # uvicorn loads the app before it accepts a connection
        raise RuntimeError("serving.workers.app_factory has not run in this process")
    return _protocol(**kwargs)


def _forget_dead_workers() -> None:
    """Drop the live-gauge files of workers that are gone (one killed, not stopped, cannot do it
    itself): their queue and model info would otherwise stay in every scrape."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    for f in Path(directory).iterdir():
        m = _LIVE_FILE.match(f.name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)
        except PermissionError:  # alive, someone else's
            pass


def _configure_logging() -> None:
    """As the command line sets it up (recsys_mtl/cli), which a spawned worker does not run, with
    the worker's pid in each line."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        force=True,  # the root logger may already have a handler from an import
    )
    for ours in ("recsys_mtl", "serving", "pipelines"):
        logging.getLogger(ours).setLevel(logging.INFO)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
