"""Run the scoring app under uvicorn (uvloop + httptools), as `recsys-mtl serve` does.

One worker (`workers=1`): the app lives in this process, as it always has. Several: this process
spawns that many worker processes (serving/supervisor.py), each a whole server (serving/workers.py)
on its own SO_REUSEPORT socket of the one port; it only supervises (restarts a worker that dies,
forwards SIGTERM) and never imports torch or loads a model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from serving.supervisor import supervise

log = logging.getLogger("serving.server")

# how the parent tells each spawned worker what to serve (serving/workers.py reads them)
CONFIG_ENV = "RECSYS_MTL_SERVE_CONFIG"
REGISTRY_ENV = "RECSYS_MTL_SERVE_REGISTRY"
WORKERS_ENV = "RECSYS_MTL_SERVE_WORKERS"

# both modes: a drain of 30 s on SIGTERM; clients keep pooled connections open between bursts, and
# uvicorn's 5 s keep-alive default resets them
_COMMON: dict[str, Any] = {"loop": "uvloop", "timeout_graceful_shutdown": 30, "timeout_keep_alive": 30}


def run(
    config: str | Path,
    registry: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = False,
    log_level: str = "info",
    workers: int = 1,
) -> int:
    """Serve until stopped; the exit status (non-zero: workers that could not start)."""
    if workers > 1:
        return _run_workers(config, registry, host, port, access_log, log_level, workers)
    from serving.app import create_app
    from serving.protocol import guarded_protocol

    app = create_app(config, registry)  # ConfigError propagates: refuse to start on a bad config
    log.info("serving on http://%s:%d (docs at /docs), one process", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        # httptools, with a connection cap and a request-head timeout (serving/protocol.py)
        http=guarded_protocol(app.state.service),
        access_log=access_log,
        log_level=log_level,
        workers=1,
        **_COMMON,
    )
    return 0


def _run_workers(
    config: str | Path,
    registry: str | Path | None,
    host: str,
    port: int,
    access_log: bool,
    log_level: str,
    workers: int,
) -> int:
    """`workers` processes on one port (serving/workers.py), their metrics in one directory."""
    from serving.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="recsys-mtl-metrics-"))
    # a fresh start: files left by an earlier run's workers would add their counts to ours
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    # read by the workers, which start after this (spawned: they inherit the environment)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    os.environ[CONFIG_ENV] = str(config)
    os.environ[REGISTRY_ENV] = str(registry) if registry is not None else ""
    os.environ[WORKERS_ENV] = str(workers)
    log.info(
        "serving on http://%s:%d (docs at /docs), %d worker processes; metrics files in %s",
        host,
        port,
        workers,
        metrics_dir,
    )
    try:
        # each worker binds its own socket (SO_REUSEPORT): serving/supervisor.py says why
        return supervise(host, port, workers, {"access_log": access_log, "log_level": log_level, **_COMMON})
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)
