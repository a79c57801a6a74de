"""HTTP routes: thin. Each reads the request, calls the service, and maps errors to status codes.

Every error body is `{"error": {"field": ..., "message": ...}}` with a field that names what is
wrong (a request field, `body`, `accept`, `content-type`, ...):

| error                                                          | status            |
|----------------------------------------------------------------|-------------------|
| malformed JSON, a broken or invalid Arrow stream               | 400               |
| a missing or wrong admin token                                 | 403               |
| an Accept header that allows neither JSON nor Arrow            | 406               |
| a body not received within runtime.body_timeout_s              | 408               |
| body, decoded Arrow, JSON values, id bytes or vector floats    | 413               |
| over their limit                                               |                   |
| a content type other than JSON/Arrow                           | 415               |
| wrong types, unknown/missing fields, NaN, a bad id, too many   | 422               |
| candidates, unknown tasks, an id or a list over its limit, a   |                   |
| broken vector (the column and candidate named), a candidate    |                   |
| whose scores are not finite (its values overflowed the model)  |                   |
| the client went away before its answer (counted, never sent)   | 499               |
| queue full (runtime.max_queued_candidates), no model yet       | 503 + Retry-After |
| anything else (a bug): counted, logged, the process goes on    | 500               |

A response sent before the request body was read to its end closes the connection, so a client
that stalls mid-body cannot keep it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from serving.inference import Overloaded
from serving.metrics import exposition
from serving.request import ARROW_STREAM, JSON, RequestError
from serving.response import negotiate, render, render_arrow
from serving.schemas import SCORE_EXAMPLE, ErrorResponse, ScoreRequestModel, ScoreResponseModel
from serving.service import NotReady, ScoringService

log = logging.getLogger("serving.routes")
# JSON responses for more candidates than this are encoded on a worker thread (measured: ~4-12 ms
# at 2000 candidates with survival curves; below ~200 the hand-off costs more than it saves)
RENDER_INLINE_MAX = 200
# nginx's code for "the client closed the connection before the answer": never sent, only counted
CLIENT_CLOSED = 499
router = APIRouter()


def _service(request: Request) -> ScoringService:
    return request.app.state.service


def _json(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=dict(headers or {}))


def error_response(
    status: int, field: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The error shape of every 4xx/5xx this server sends: {"error": {"field", "message"}}."""
    return _json({"error": {"field": field, "message": message}}, status, headers)


def _admin_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-admin-token")


def _is_admin(request: Request) -> bool:
    return _service(request).admin_ok(_admin_token(request))


def _introspection_refused(request: Request) -> Response | None:
    """A 403 when the config protects the introspection pages and the request has no admin token."""
    if _service(request).config.admin.protect_introspection and not _is_admin(request):
        return error_response(
            403, "authorization", "this page needs the admin token (admin.protect_introspection)"
        )
    return None


class _Body:
    """Reads a request body within the limits: at most `limit` bytes (413, refused from the
    declared Content-Length when it says so), all of it within `timeout_s` (408). `complete` says
    whether the body was read to its end (if not, the answer must close the connection)."""

    def __init__(self, request: Request, limit: int, timeout_s: float) -> None:
        self.request, self.limit, self.timeout_s = request, limit, timeout_s
        self.complete = False

    async def read(self) -> bytes:
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise RequestError(
                "body", f"{declared} bytes is over the limit of {self.limit} bytes", status=413
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                async for chunk in self.request.stream():
                    size += len(chunk)
                    if size > self.limit:
                        raise RequestError("body", f"over the limit of {self.limit} bytes", status=413)
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(
                "body", f"not received within {self.timeout_s:g} s (runtime.body_timeout_s)", status=408
            ) from None
        self.complete = True
        return b"".join(chunks)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON or a broken Arrow stream"},
    403: {"model": ErrorResponse, "description": "Forcing a variant without the admin token"},
    406: {"model": ErrorResponse, "description": "The Accept header allows neither JSON nor Arrow"},
    408: {"model": ErrorResponse, "description": "The body did not arrive within runtime.body_timeout_s"},
    413: {
        "model": ErrorResponse,
        "description": "Body, decoded Arrow, JSON values, id bytes or vector floats over a limit",
    },
    415: {"model": ErrorResponse, "description": "Unsupported content type"},
    422: {"model": ErrorResponse, "description": "Invalid request; `field` names what is wrong"},
    503: {
        "model": ErrorResponse,
        "description": "No validated model loaded yet, or the inference queue is full; retry after "
        "`Retry-After` seconds",
    },
}


@router.post(
    "/score",
    summary="Score a batch of candidates for one user: every task, in the candidates' order",
    description="Send `Accept: application/vnd.apache.arrow.stream` to get the scores as an Arrow record "
    "batch (one row per candidate) instead of JSON. Limits (body bytes, JSON values, bytes per string "
    "id, values per list, id bytes per request, vector floats per request, candidates) are in the serving "
    "config's `runtime`. A vector feature takes a list of `dim` numbers per candidate (Arrow: a "
    "fixed_size_list<float32>[dim] column).",
    response_model=ScoreResponseModel,
    responses={
        200: {
            "content": {
                ARROW_STREAM: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "One record batch, one row per candidate (with Accept: "
                    + ARROW_STREAM
                    + ")",
                }
            }
        },
        **_ERRORS,
    },
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
    rt = svc.config.runtime
    t0 = time.perf_counter()
    variant = "-"
    body = _Body(request, rt.max_body_bytes, rt.body_timeout_s)
    try:
        media = negotiate(request.headers.get("accept"))
        if media is None:
            raise RequestError(
                "accept", f"nothing acceptable: this server answers {JSON} or {ARROW_STREAM}", 406
            )
        data = await body.read()
        result = await svc.score(data, request.headers.get("content-type"), _admin_token(request))
        variant = result.variant
        if media == ARROW_STREAM:
            response = Response(render_arrow(result), media_type=ARROW_STREAM, headers=result.headers())
        elif result.num_candidates > RENDER_INLINE_MAX:
            # a large JSON body takes milliseconds to encode: off the event loop, so other requests
            # keep being read meanwhile
            rendered = await asyncio.to_thread(render, result)
            response = Response(rendered, media_type=JSON, headers=result.headers())
        else:
            response = Response(render(result), media_type=JSON, headers=result.headers())
    except RequestError as e:
        response = error_response(e.status, e.field, e.message)
    except ClientDisconnect:
        # not an error of ours, and nobody is left to answer: counted under its own status
        log.info("client %s went away before its request was answered", _client(request))
        response = Response(status_code=CLIENT_CLOSED)
    except (Overloaded, NotReady) as e:
        field = "model" if isinstance(e, NotReady) else "queue"
        response = error_response(503, field, str(e), headers={"Retry-After": str(rt.retry_after_s)})
    except Exception:
        log.exception("internal error while scoring")
        response = error_response(500, "server", "internal error; see the server log")
    if not body.complete:
        response.headers["Connection"] = "close"
    svc.metrics.requests.labels("/score", variant, str(response.status_code)).inc()
    svc.metrics.latency.labels("/score", variant).observe(time.perf_counter() - t0)
    return response


def _client(request: Request) -> str:
    c = request.client
    return f"{c.host}:{c.port}" if c else "-"


@router.get("/healthz", summary="The process is up (which worker answered: `pid` of `workers`)")
async def healthz(request: Request) -> Response:
    svc = _service(request)
    return _json({"status": "ok", "uptime_s": round(time.time() - svc.started_at, 1), **svc.worker_info()})


@router.get("/readyz", summary="Every variant has a validated, warmed-up model")
async def readyz(request: Request) -> Response:
    svc = _service(request)
    if svc.ready:
        return _json({"ready": True})
    waiting = [m for m in svc.status(with_paths=False)["models"] if m["version"] is None]
    return _json({"ready": False, "waiting_for": waiting}, status=503)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    refused = _introspection_refused(request)
    if refused is not None:
        return refused
    svc = _service(request)
    svc.metrics.queue_depth.set(svc.worker.queued)
    return Response(exposition(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/models",
    summary="What is loaded, since when, and the last reload errors (filesystem paths with the admin token)",
)
async def models(request: Request) -> Response:
    refused = _introspection_refused(request)
    if refused is not None:
        return refused
    return _json(_service(request).status(with_paths=_is_admin(request)))


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> Response:
    refused = _introspection_refused(request)
    return refused if refused is not None else _json(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    refused = _introspection_refused(request)
    if refused is not None:
        return refused
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - docs")


@router.post(
    "/admin/reload",
    summary="Re-read the config and the registry now (admin token required)",
    responses={403: {"model": ErrorResponse}, 409: {"description": "Some model or the config was refused"}},
)
async def admin_reload(request: Request, force: bool = False) -> Response:
    svc = _service(request)
    if not svc.admin_ok(_admin_token(request)):
        return error_response(403, "authorization", "admin token required (Authorization: Bearer <token>)")
    # Loading and warming up a model takes seconds: off the event loop.
    errors = await asyncio.to_thread(svc.check, force)
    return _json({"errors": errors, **svc.status()}, status=200 if not errors else 409)
