"""The HTTP service: a FastAPI application over a `Service` (`pip install 'rearm[serve]'`).

Endpoints (ids are the data's own ids; every error is JSON `{"error": message}`):

  GET  /health                  liveness, never needs the key
  GET  /info                    model, sizes, protocol, metrics, creation time, bundle SHA-256
  GET  /recommend?user=ID&k=20&exclude=ID,ID     top-k for a known user, seen items left out
  POST /recommend               {"users": [...], "k": 20, "exclude": [...]}: one matrix product
  GET  /similar?item=ID&k=20    nearest items by cosine of the item representations
  POST /recommend/items         {"items": [...], "k": 20, "exclude": [...]}: a user the model
                                has never seen, from the items they interacted with
  GET  /docs, /openapi.json     the OpenAPI description (no key needed)

Status codes: 404 unknown user / item id, 422 bad parameters or body, 413 a batch, k or body
over the configured limits, 401 a missing or wrong API key (when the app has one: header
`X-API-Key: KEY` or `Authorization: Bearer KEY`, compared in constant time).

Endpoints are plain `def` functions: FastAPI runs them in its thread pool, and numpy and torch
release the GIL inside the matrix product and top-k, so requests overlap on several cores.
"""

import hmac
import os
from typing import Annotated, Any

from rearm.errors import ConfigError, RearmError, UnknownItemError, UnknownUserError
from rearm.models.base import Range, check_type
from rearm.serve.service import Service

MaxBatch = Annotated[int, Range(ge=1)]
MaxK = Annotated[int, Range(ge=1)]
# bytes of request body allowed per id of the largest batch, plus room for the rest of the JSON
BODY_BYTES_PER_ID = 256
BODY_BYTES_EXTRA = 65536


def require_fastapi():
    try:
        import fastapi
    except ImportError:
        raise ConfigError(
            "serving needs fastapi and uvicorn, which are not installed: pip install 'rearm[serve]'"
        ) from None
    return fastapi


def create_app(
    source: str | os.PathLike | Service,
    *,
    api_key: str | None = None,
    max_batch: MaxBatch = 1024,
    max_k: MaxK = 1000,
    index: str = "exact",
    nprobe: int = 32,
):
    """The FastAPI application serving `source` (a run directory, loaded and verified here, or
    a Service). With `api_key`, every endpoint but /health, /docs and /openapi.json needs it."""
    fastapi = require_fastapi()
    from fastapi import Body, Depends, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field, StrictInt, StrictStr
    from starlette.exceptions import HTTPException

    check_type(max_batch, MaxBatch, "--max-batch")
    check_type(max_k, MaxK, "--max-k")
    if api_key is not None and not api_key:
        raise ConfigError("the API key is empty")
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        # HTTP headers carry bytes that servers read as Latin-1: a key with other characters
        # could never be matched, so every client would be refused
        raise ConfigError("the API key must be printable ASCII characters")
    service = source if isinstance(source, Service) else Service(source, index=index, nprobe=nprobe)
    max_body = max_batch * BODY_BYTES_PER_ID + BODY_BYTES_EXTRA

    # JSON ids may be numbers when the data's ids are integers; strict: true, 3.0 or "3" for k
    # are refused, not read as 1 or 3
    Id = StrictStr | StrictInt

    class UsersRequest(BaseModel):
        users: list[Id] = Field(min_length=1, description="the data's own user ids")
        k: StrictInt = Field(20, ge=1, description="items per user")
        exclude: list[Id] = Field(default_factory=list, description="item ids never returned")

    class ItemsRequest(BaseModel):
        items: list[Id] = Field(min_length=1, description="item ids the new user interacted with")
        k: StrictInt = Field(20, ge=1, description="items to return")
        exclude: list[Id] = Field(default_factory=list, description="item ids never returned")

    class Ranked(BaseModel):
        items: list[Id]
        scores: list[float]

    class UserRanked(Ranked):
        user: str

    class ItemRanked(Ranked):
        item: str

    class Batch(BaseModel):
        k: int
        recommendations: list[UserRanked]

    class Error(BaseModel):
        error: str

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    def require_key(
        header: Annotated[str | None, Depends(key_header)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if api_key is None:
            return
        given = header if header is not None else credentials and credentials.credentials
        if not given:
            raise HTTPException(
                401,
                "missing API key: send the header X-API-Key: KEY or Authorization: Bearer KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "Bearer"})

    errors = {
        401: {"model": Error, "description": "missing or wrong API key"},
        404: {"model": Error, "description": "unknown user or item id"},
        413: {"model": Error, "description": "batch, k or body over the server's limits"},
        422: {"model": Error, "description": "bad parameters or body"},
    }
    app = fastapi.FastAPI(
        title="rearm recommendations",
        version=service.info()["rearm_version"],
        # not the run's path: /openapi.json is open without the API key
        description=f"top-k recommendations of a {service.bundle.meta['model']} model",
    )
    app.state.service = service
    protected = [Depends(require_key)]
    # the query parameters GET /recommend and GET /similar share
    KQuery = Annotated[int, Query(ge=1, description="items to return")]
    ExcludeQuery = Annotated[
        list[str] | None,
        Query(description="item ids never returned (repeat or comma-separate)"),
    ]

    def check_k(k: int) -> None:
        if k > max_k:
            raise HTTPException(413, f"k: {k} is over this server's limit of {max_k}")

    def split_ids(values: list[str]) -> list[str]:
        return [part.strip() for value in values for part in value.split(",") if part.strip()]

    app.add_middleware(_BodyLimit, limit=max_body)

    @app.get("/health", summary="liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", summary="the model served", dependencies=protected, responses=errors)
    def info() -> dict[str, Any]:
        return {**service.info(), "limits": {"max_batch": max_batch, "max_k": max_k}}

    @app.get(
        "/recommend",
        summary="top-k items for one known user, seen train items left out",
        dependencies=protected,
        responses=errors,
        response_model=UserRanked,
    )
    def recommend(
        user: Annotated[str, Query(description="the data's own user id")],
        k: KQuery = 20,
        exclude: ExcludeQuery = None,
    ):
        check_k(k)
        (entry,) = service.recommend([user], k, exclude=split_ids(exclude or []))
        return JSONResponse(entry)

    @app.post(
        "/recommend",
        summary="top-k items for a batch of known users (one matrix product)",
        dependencies=protected,
        responses=errors,
        response_model=Batch,
    )
    def recommend_batch(request: Annotated[UsersRequest, Body()]):
        check_k(request.k)
        if len(request.users) > max_batch:
            raise HTTPException(
                413, f"users: {len(request.users)} is over this server's limit of {max_batch}"
            )
        users = [str(user) for user in request.users]
        exclude = [str(item) for item in request.exclude]
        return JSONResponse(
            {"k": request.k, "recommendations": service.recommend(users, request.k, exclude)}
        )

    @app.get(
        "/similar",
        summary="nearest items by cosine of the item representations",
        dependencies=protected,
        responses=errors,
        response_model=ItemRanked,
    )
    def similar(
        item: Annotated[str, Query(description="the data's own item id")],
        k: KQuery = 20,
        exclude: ExcludeQuery = None,
    ):
        check_k(k)
        return JSONResponse(service.similar(item, k, exclude=split_ids(exclude or [])))

    @app.post(
        "/recommend/items",
        summary="top-k items for a user the model has never seen, from their items",
        description="The user's vector is folded in from the saved item table "
        "(Bundle.recommend_from_items, as `rearm recommend --items`); the given items and "
        "`exclude` are left out of the result.",
        dependencies=protected,
        responses=errors,
        response_model=Ranked,
    )
    def recommend_items(request: Annotated[ItemsRequest, Body()]):
        check_k(request.k)
        if len(request.items) > max_batch:
            raise HTTPException(
                413, f"items: {len(request.items)} is over this server's limit of {max_batch}"
            )
        items = [str(item) for item in request.items]
        exclude = [str(item) for item in request.exclude]
        return JSONResponse(service.recommend_items(items, request.k, exclude))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 400:
            # the framework's answer to a body it cannot decode (bad UTF-8, nesting too deep):
            # invalid JSON like any other, so 422 as for a syntax error
            return JSONResponse({"error": f"body: invalid JSON ({error.detail})"}, status_code=422)
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return JSONResponse({"error": _validation_message(error.errors())}, status_code=422)

    @app.exception_handler(UnknownUserError)
    @app.exception_handler(UnknownItemError)
    async def unknown_id(request: Request, error: RearmError):
        return JSONResponse({"error": str(error)}, status_code=404)

    @app.exception_handler(RearmError)
    async def bad_request(request: Request, error: RearmError):
        return JSONResponse({"error": str(error)}, status_code=422)

    return app


class _BodyLimit:
    """413 for a request body over `limit` bytes: at once from its Content-Length header, or as
    soon as a streamed (chunked) body has delivered more (a pure ASGI middleware: no per-request
    task or copy)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        message = f"request body over this server's limit of {self.limit} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
                return
        received = 0

        async def counted():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, message)  # answered by the app's error handler
            return event

        await self.app(scope, counted, send)


def _validation_message(problems: list[dict]) -> str:
    """One line from pydantic's list of problems: where (query parameter k, body field users,
    ...) and what, for the first one, with a count of the others."""
    if not problems:
        return "invalid request"
    first = problems[0]
    # a union's branch names ("users.0.str") say nothing to the person who sent the request
    location = [str(part) for part in first.get("loc", ()) if part not in ("str", "int")]
    if first.get("type") == "json_invalid":
        where = "body"
        what = f"invalid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
    else:
        kind = {"query": "query parameter", "body": "body field", "header": "header"}.get(
            location[0] if location else "", "field"
        )
        name = ".".join(location[1:]) if len(location) > 1 else ""
        where = f"{kind} {name}".strip() if name else ("body" if kind == "body field" else kind)
        what = first.get("msg", "invalid")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {what}{more}"
