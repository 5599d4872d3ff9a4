"""``create_app(config)``: the FastAPI application, its middleware and its error handlers.

Every answer is the seed's envelope, errors included: a :class:`ProvisioningError` answers with its
own ``http_status`` and stable ``code``, bad parameters with 422 ``REQUEST_INVALID``, unknown
routes and methods with 404 / 405, and anything unexpected with 500 ``INTERNAL_ERROR`` (details
only in the server log). Two documents are not envelopes: ``/openapi.json`` itself and the
server-sent events of ``/workflows/{id}/events``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prefect import get_client
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from provisioning import __version__
from provisioning.api.auth import BearerAuthMiddleware, configured_token
from provisioning.api.errors import HTTP_CODES
from provisioning.api.gateway import PrefectGateway
from provisioning.api.middleware import RequestIdMiddleware
from provisioning.api.openapi import build_openapi
from provisioning.api.responses import ErrorEnvelope, error_response
from provisioning.api.routes import catalog, health, settings, workflows
from provisioning.api.state import ApiState
from provisioning.config import Config
from provisioning.envelope import ErrorInfo
from provisioning.errors import ProvisioningError
from provisioning.extensions import activate_configured

logger = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        400: "the body cannot be read (not UTF-8 JSON)",
        401: "missing or wrong bearer token",
        404: "no such workflow",
        409: "conflicts with the workflow's state",
        422: "invalid parameters or workflow",
        503: "Prefect or a deployment is unavailable",
    }.items()
}


async def _provisioning_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ProvisioningError)
    return error_response(request, ErrorInfo.from_exception(error), error.http_status)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = [
        {
            "field": ".".join(str(part) for part in item.get("loc", ())),
            "message": str(item.get("msg", "")),
            "type": str(item.get("type", "")),
        }
        for item in error.errors()
    ] or [{"field": "", "message": "invalid request", "type": "invalid"}]
    first = problems[0]
    info = ErrorInfo(
        code="REQUEST_INVALID",
        message=f"{first['field']}: {first['message']}" if first["field"] else first["message"],
        details={"field": first["field"], "errors": problems},
    )
    return error_response(request, info, 422)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = HTTP_CODES.get(error.status_code, f"HTTP_{error.status_code}")
    info = ErrorInfo(code=code, message=str(error.detail))
    return error_response(request, info, error.status_code, headers=dict(error.headers or {}))


async def _unexpected(request: Request, error: Exception) -> Response:
    # The last resort of the framework: the envelope still goes out, the traceback to the log.
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    info = ErrorInfo(code="INTERNAL_ERROR", message="internal error: see the API server's log")
    return error_response(request, info, 500)


def create_app(config: Config) -> FastAPI:
    """The API over ``config``'s journal and the Prefect API this process is configured for.

    The configured extensions are activated first: a submission naming an extension's provider
    is validated like a file, and ``GET /providers`` lists it.
    """
    activate_configured(config)
    token = configured_token(config)
    state = ApiState.from_config(config, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with get_client() as client:
            app.state.gateway = PrefectGateway(client)
            yield
        state.journal.close()

    app = FastAPI(
        title="provisioning",
        version=__version__,
        description="Infrastructure provisioning as Prefect flows: submit, follow, cancel.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.api = state
    app.include_router(health.router)
    app.include_router(workflows.router)
    app.include_router(catalog.router)
    app.include_router(settings.router)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(build_openapi(app, secured=token is not None))

    app.add_exception_handler(ProvisioningError, _provisioning_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(BearerAuthMiddleware, token=token)
    app.add_middleware(RequestIdMiddleware)
    return app
