"""``GET /health``: is the service up, and can it reach Prefect and the journal? No token needed."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from provisioning import __version__
from provisioning.api.models import Health, HealthCheck
from provisioning.api.responses import Envelope, respond
from provisioning.api.routes.deps import Gateway, State
from provisioning.journal import Journal

router = APIRouter(tags=["health"])


def _journal_check(journal: Journal) -> HealthCheck:
    try:
        count = journal.count_workflows()
    except SQLAlchemyError as error:
        return HealthCheck(ok=False, detail=f"{journal.url}: {error}")
    return HealthCheck(ok=True, detail=f"{journal.url} ({count} workflows)")


@router.get(
    "/health",
    response_model=Envelope[Health],
    responses={503: {"model": Envelope[Health], "description": "a dependency is down"}},
)
async def health(request: Request, state: State, gateway: Gateway) -> Response:
    """200 when Prefect and the journal answer, 503 (same body, status error) otherwise."""
    prefect = await gateway.health()
    journal = await run_in_threadpool(_journal_check, state.journal)
    ok = prefect.ok and journal.ok
    data = Health(version=__version__, ok=ok, prefect=prefect, journal=journal)
    return respond(
        request, data, status="success" if ok else "error", http_status=200 if ok else 503
    )
