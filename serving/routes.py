"""HTTP routes: thin. Each reads the request, calls the service, and maps errors to status codes.

| error                               | status |
|-------------------------------------|--------|
| malformed JSON, broken Arrow stream | 400    |
| forcing a variant without the token | 403    |
| body over runtime.max_body_bytes    | 413    |
| a content type other than JSON/Arrow| 415    |
| wrong types, unknown/missing fields, NaN, empty or too many candidates | 422 |
| no validated model yet              | 503    |
| anything else (a bug)               | 500, counted and logged; the process keeps serving |
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.request import ARROW_STREAM, JSON, RequestError
from serving.response import render, render_arrow
from serving.schemas import SCORE_EXAMPLE, ErrorResponse, ScoreRequestModel, ScoreResponseModel
from serving.service import NotReady, ScoringService

log = logging.getLogger("serving.routes")
# JSON responses for more candidates than this are encoded on a worker thread (measured: ~4-12 ms
# at 2000 candidates with survival curves; below ~200 the hand-off costs more than it saves)
RENDER_INLINE_MAX = 200
router = APIRouter()


def _service(request: Request) -> ScoringService:
    return request.app.state.service


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def _error(status: int, field: str | None, message: str) -> Response:
    return _json({"error": {"field": field, "message": message}}, status)


def _admin_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-admin-token")


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) more than `limit` bytes without reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError("body", f"{declared} bytes is over the limit of {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("body", f"over the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


_ERRORS = {
    400: {"model": ErrorResponse, "description": "Malformed JSON or a broken Arrow stream"},
    403: {"model": ErrorResponse, "description": "Forcing a variant without the admin token"},
    413: {"model": ErrorResponse, "description": "Body too large"},
    415: {"model": ErrorResponse, "description": "Unsupported content type"},
    422: {"model": ErrorResponse, "description": "Invalid request; `field` names what is wrong"},
    503: {"model": ErrorResponse, "description": "No validated model loaded yet"},
}


@router.post(
    "/score",
    summary="Score a batch of candidates for one user: every task, in the candidates' order",
    description="Send `Accept: application/vnd.apache.arrow.stream` to get the scores as an Arrow record "
    "batch (one row per candidate) instead of JSON.",
    response_model=ScoreResponseModel,
    responses=_ERRORS,  # type: ignore[arg-type]
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": ScoreRequestModel.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                    "example": SCORE_EXAMPLE,
                },
                ARROW_STREAM: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "Arrow IPC stream: one row per candidate; schema metadata `user_id`, "
                    "`features` (JSON object), `tasks` (JSON list), `variant`.",
                },
            },
        }
    },
)
async def score(request: Request) -> Response:
    svc = _service(request)
    t0 = time.perf_counter()
    variant = "-"
    try:
        body = await _read_body(request, svc.config.runtime.max_body_bytes)
        result = await svc.score(body, request.headers.get("content-type"), _admin_token(request))
        variant = result.variant
        if ARROW_STREAM in request.headers.get("accept", ""):
            response = Response(render_arrow(result), media_type=ARROW_STREAM, headers=result.headers())
        elif result.num_candidates > RENDER_INLINE_MAX:
            # a large JSON body takes milliseconds to encode: off the event loop, so other requests
            # keep being read meanwhile
            body = await asyncio.to_thread(render, result)
            response = Response(body, media_type=JSON, headers=result.headers())
        else:
            response = Response(render(result), media_type=JSON, headers=result.headers())
    except RequestError as e:
        response = _error(e.status, e.field, e.message)
    except NotReady as e:
        response = _error(503, None, str(e))
    except Exception:
        log.exception("internal error while scoring")
        response = _error(500, None, "internal error; see the server log")
    svc.metrics.requests.labels("/score", variant, str(response.status_code)).inc()
    svc.metrics.latency.labels("/score", variant).observe(time.perf_counter() - t0)
    return response


@router.get("/healthz", summary="The process is up")
async def healthz(request: Request) -> Response:
    return _json({"status": "ok", "uptime_s": round(time.time() - _service(request).started_at, 1)})


@router.get("/readyz", summary="Every variant has a validated, warmed-up model")
async def readyz(request: Request) -> Response:
    svc = _service(request)
    if svc.ready:
        return _json({"ready": True})
    waiting = [m for m in svc.pool.status() if m["version"] is None]
    return _json({"ready": False, "waiting_for": waiting}, status=503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    svc = _service(request)
    svc.metrics.queue_depth.set(svc.worker.queued)
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", summary="What is loaded, from where, since when, and the last reload errors")
async def models(request: Request) -> Response:
    return _json(_service(request).status())


@router.post(
    "/admin/reload",
    summary="Re-read the config and the registry now (admin token required)",
    responses={403: {"model": ErrorResponse}},
)
async def admin_reload(request: Request, force: bool = False) -> Response:
    svc = _service(request)
    if not svc.admin_ok(_admin_token(request)):
        return _error(403, "authorization", "admin token required (Authorization: Bearer <token>)")
    # Loading and warming up a model takes seconds: off the event loop.
    errors = await asyncio.to_thread(svc.check, force)
    return _json({"errors": errors, **svc.status()}, status=200 if not errors else 409)
