"""``GET /providers`` and ``GET /resources``: what the API can provision with, and what it did."""

from __future__ import annotations

import asyncio
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from provisioning.api.models import ProviderInfo, ResourcePage
from provisioning.api.responses import Envelope, respond
from provisioning.api.routes.deps import State
from provisioning.config import Config
from provisioning.errors import ProvisioningError
from provisioning.secrets import mask_secrets

router = APIRouter(tags=["catalog"])

Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")]


def _check(config: Config, name: str) -> ProviderInfo:
    from providers.registry import get_provider

    settings = config.provider(name)
    masked = mask_secrets(f"providers.{name}", settings)
    try:
        status = get_provider(name, settings).check()
    except ProvisioningError as error:
        return ProviderInfo(name=name, reachable=False, message=str(error), config=masked)
    return ProviderInfo(
        name=name, reachable=status.reachable, message=status.message, config=masked
    )


async def _checked(config: Config, name: str, timeout: float) -> ProviderInfo:
    # A worker thread per check: drivers are blocking, and one slow endpoint must not hold up
    # the others. A check that overruns is reported, its thread left to finish on its own.
    try:
        return await asyncio.wait_for(
            anyio.to_thread.run_sync(_check, config, name, abandon_on_cancel=True), timeout
        )
    except TimeoutError:
        masked = mask_secrets(f"providers.{name}", config.provider(name))
        return ProviderInfo(
            name=name, reachable=False, message=f"no answer within {timeout:g}s", config=masked
        )


@router.get("/providers", response_model=Envelope[list[ProviderInfo]])
async def providers(
    request: Request,
    state: State,
    check: Annotated[bool, Query(description="call each provider's check()")] = True,
) -> Response:
    """Every provider the registry knows, its configuration (secrets masked), and reachability."""
    from providers.registry import provider_names

    names = provider_names()
    if check:
        infos = list(
            await asyncio.gather(*(_checked(state.config, n, state.check_timeout) for n in names))
        )
    else:
        infos = [
            ProviderInfo(
                name=n,
                reachable=None,
                config=mask_secrets(f"providers.{n}", state.config.provider(n)),
            )
            for n in names
        ]
    return respond(request, infos)


@router.get("/resources", response_model=Envelope[ResourcePage])
async def resources(
    request: Request,
    state: State,
    provider: Annotated[str | None, Query(max_length=255)] = None,
    workflow_id: Annotated[str | None, Query(max_length=255)] = None,
    include_deleted: bool = False,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Response:
    """Resources the journal holds, oldest first, filtered by provider and workflow."""
    found = await run_in_threadpool(
        lambda: state.journal.resources(
            workflow_id, provider=provider, include_deleted=include_deleted
        )
    )
    items = found[offset : offset + limit]
    next_offset = offset + limit if offset + limit < len(found) else None
    page = ResourcePage(
        items=items, total=len(found), limit=limit, offset=offset, next_offset=next_offset
    )
    return respond(request, page)
