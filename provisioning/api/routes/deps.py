"""Dependencies the routes declare: the shared state and the Prefect gateway."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from provisioning.api.gateway import PrefectGateway
from provisioning.api.state import ApiState, get_state


def get_gateway(request: Request) -> PrefectGateway:
    gateway: PrefectGateway = request.app.state.gateway
    return gateway


State = Annotated[ApiState, Depends(get_state)]
Gateway = Annotated[PrefectGateway, Depends(get_gateway)]
