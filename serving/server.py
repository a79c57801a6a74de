"""Run the scoring app under uvicorn (uvloop + httptools), as `recsys-mtl serve` does."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from serving.app import create_app
from serving.protocol import guarded_protocol

log = logging.getLogger("serving.server")


def run(
    config: str | Path,
    registry: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = False,
    log_level: str = "info",
) -> None:
    app = create_app(config, registry)  # ConfigError propagates: refuse to start on a bad config
    log.info("serving on http://%s:%d (docs at /docs)", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with a connection cap and a request-head timeout (serving/protocol.py)
        http=guarded_protocol(app.state.service),
        access_log=access_log,
        log_level=log_level,
        # one process: the models and the inference thread live here; scale out with replicas
        workers=1,
        timeout_graceful_shutdown=30,
        # clients keep pooled connections open between bursts; uvicorn's 5 s default resets them
        timeout_keep_alive=30,
    )
