"""``POST /config/reload``: read the configuration files again and report what changed.

Each changed setting is emitted as a ``ConfigurationChanged`` event (secrets masked), so whoever
watches Prefect's event feed learns of it. Provider settings and workflow defaults take effect
for the next submission; the ``[api]`` settings this process was started with need a restart.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from provisioning.api.responses import Envelope, respond
from provisioning.api.routes.deps import State
from provisioning.config import changes, reload
from provisioning.events import ConfigurationChanged, emit

router = APIRouter(tags=["config"])

#: ``ConfigurationChanged`` needs a workflow id; a reload belongs to none, so it names this one.
CONFIG_SUBJECT = "configuration"


class ConfigChange(BaseModel):
    key: str
    old_value: object = None
    new_value: object = None


@router.post("/config/reload", response_model=Envelope[list[ConfigChange]])
async def reload_config(request: Request, state: State) -> Response:
    fresh = await run_in_threadpool(reload, state.config)
    changed: list[ConfigChange] = []
    for key, old, new in changes(state.config, fresh):
        event = ConfigurationChanged(
            workflow_id=CONFIG_SUBJECT, source="config", key=key, old_value=old, new_value=new
        )
        emit(event)
        changed.append(ConfigChange(key=key, old_value=event.old_value, new_value=event.new_value))
    state.config = fresh
    return respond(request, [change.model_dump() for change in changed])
