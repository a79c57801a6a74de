"""The FastAPI application: `create_app(config, registry)`.

The service (models, inference thread, watcher) starts in the lifespan and stops with it, so
uvicorn's graceful shutdown finishes queued requests before the process exits. Models load on the
watcher thread: `/healthz` answers at once, `/readyz` turns 200 once every variant has a validated,
warmed-up model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from serving.routes import router
from serving.service import ScoringService

DESCRIPTION = """
Multi-task ranking scores for a batch of candidates: CTR, CVR, CTCVR and the creative's
discontinuation hazard as survival curves, from a model in the recsys-mtl registry, with A/B
variants assigned by a stable hash of `user_id`.

`POST /score` takes JSON (columnar candidates recommended) or an Arrow IPC stream
(`application/vnd.apache.arrow.stream`). Errors are `{"error": {"field": ..., "message": ...}}`.
"""


def create_app(config_path: str | Path, registry: str | Path | None = None) -> FastAPI:
    """The app for a serving config (ConfigError if it is invalid: the server does not start)."""
    service = ScoringService(config_path, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="recsys-mtl scoring", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.include_router(router)
    return app
