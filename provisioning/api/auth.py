"""Bearer-token authentication and the rule about where the API may listen.

The token comes from ``[api] token`` or ``PROVISIONING_API_TOKEN`` and is compared in constant time.
Without one, every request is trusted, which is only acceptable when nobody else can connect: the
server then refuses any address but loopback (:func:`check_bind`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from provisioning.api.errors import AuthenticationError, InsecureBind
from provisioning.api.responses import error_response
from provisioning.config import Config
from provisioning.envelope import ErrorInfo

TOKEN_VARIABLE = "PROVISIONING_API_TOKEN"
#: Paths anyone may call: a load balancer's health probe carries no token.
PUBLIC_PATHS = frozenset({"/health"})


def configured_token(config: Config) -> str | None:
    """``[api] token`` if set, else ``$PROVISIONING_API_TOKEN``; None when neither is."""
    token = str(config.get("api.token") or "") or os.environ.get(TOKEN_VARIABLE, "")
    return token or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise :class:`InsecureBind` for a non-loopback ``host`` without a token."""
    if token is None and not is_loopback(host):
        raise InsecureBind(
            f"refusing to listen on {host} without an API token: set [api] token or"
            f" {TOKEN_VARIABLE}, or listen on 127.0.0.1",
            field="api.host",
        )


def token_matches(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class BearerAuthMiddleware:
    """Answers 401 in the envelope for any path but the public ones without the right token.

    A middleware rather than a route dependency, so that ``/openapi.json`` and unknown paths are
    covered too and nothing about the routes leaks to a caller without the token.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if token_matches(header, self.token):
            await self.app(scope, receive, send)
            return
        error = AuthenticationError(
            "missing bearer token: send 'Authorization: Bearer <token>'"
            if header is None
            else "the bearer token is not valid",
            code="AUTH_REQUIRED" if header is None else "AUTH_INVALID",
        )
        response = error_response(
            None,
            ErrorInfo.from_exception(error),
            error.http_status,
            rid=scope.get("state", {}).get("request_id"),
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
