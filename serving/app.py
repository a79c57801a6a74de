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

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.routes import error_response, router
from serving.service import ScoringService

DESCRIPTION = """
Multi-task ranking scores for a batch of candidates: CTR, CVR, CTCVR and the creative's
discontinuation hazard as survival curves, from a model in the recsys-mtl registry, with A/B
variants assigned by a stable hash of `user_id`.

`POST /score` takes JSON (columnar candidates recommended) or an Arrow IPC stream
(`application/vnd.apache.arrow.stream`). Errors are `{"error": {"field": ..., "message": ...}}`.
"""


def create_app(config_path: str | Path, registry: str | Path | None = None, workers: int = 1) -> FastAPI:
    """The app for a serving config (ConfigError if it is invalid: the server does not start).
    `workers`: how many processes serve the port, this one included (reported by /healthz)."""
    service = ScoringService(config_path, registry, workers=workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    # /docs and /openapi.json are routes of ours (serving/routes.py): the config may protect them
    app = FastAPI(
        title="recsys-mtl scoring",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """Framework errors (no such route, method not allowed) in the same shape as ours."""
    assert isinstance(exc, StarletteHTTPException)
    field = "method" if exc.status_code == 405 else "path"
    return error_response(exc.status_code, field, str(exc.detail), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """A query parameter FastAPI could not parse (e.g. /admin/reload?force=maybe)."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ("request",)))
    return error_response(422, field, str(first.get("msg", "invalid request")))
