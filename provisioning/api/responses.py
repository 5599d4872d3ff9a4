"""Every answer in the seed's envelope: building it, and its typed form for the OpenAPI document.

Routes return :func:`respond` (a ready ``JSONResponse``) rather than a model for FastAPI to validate
again: the envelope is built once, and the ``response_model`` of each route only documents it.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from provisioning import __version__
from provisioning.envelope import ApiEnvelope, ErrorInfo, Metadata

T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")

EnvelopeStatus = Literal["success", "error", "pending"]


class Envelope(ApiEnvelope, Generic[T]):
    """:class:`ApiEnvelope` with its ``data`` typed, for the OpenAPI document."""

    data: T | None = None


class ErrorEnvelope(ApiEnvelope):
    status: Literal["success", "error", "pending"] = "error"
    data: None = None
    error: ErrorInfo | None = None


def request_id_for(header: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    if header and _CLIENT_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


def request_id(request: Request) -> str:
    value = getattr(request.state, "request_id", None)
    return str(value) if value else request_id_for(request.headers.get(REQUEST_ID_HEADER))


def render(
    rid: str,
    status: EnvelopeStatus,
    data: Any = None,
    *,
    http_status: int = 200,
    error: ErrorInfo | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    envelope = ApiEnvelope(
        status=status,
        data=data,
        metadata=Metadata(request_id=rid, version=__version__),
        error=error,
    )
    # ``fallback=str``: error details may carry context objects pydantic cannot serialise.
    body = json.dumps(envelope.model_dump(mode="json", fallback=str), separators=(",", ":"))
    return Response(
        body,
        status_code=http_status,
        media_type="application/json",
        headers={**(headers or {}), REQUEST_ID_HEADER: rid},
    )


def respond(
    request: Request,
    data: BaseModel | list[Any] | dict[str, Any] | None,
    *,
    status: EnvelopeStatus = "success",
    http_status: int = 200,
) -> Response:
    return render(request_id(request), status, data, http_status=http_status)


def error_response(
    request: Request | None,
    error: ErrorInfo,
    http_status: int,
    *,
    rid: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    chosen = rid or (request_id(request) if request is not None else uuid.uuid4().hex)
    return render(chosen, "error", None, http_status=http_status, error=error, headers=headers)
