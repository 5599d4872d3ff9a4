"""Everything the API asks of Prefect, with Prefect's failures turned into the project's errors.

One async client lives as long as the app (opened in the lifespan). Unreachable or failing
Prefect APIs become :class:`PrefectUnreachable` (503), a deployment no runner has registered
becomes :class:`DeploymentMissing` (503): never a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL
from prefect.states import Cancelled, Cancelling

from provisioning.api.errors import DeploymentMissing
from provisioning.api.models import FlowRunInfo, HealthCheck, LogLine
from provisioning.runtime import PrefectUnreachable

#: States a run has not started executing in: cancelling them needs no runner to act.
_NOT_STARTED = {StateType.SCHEDULED, StateType.PENDING}


@asynccontextmanager
async def prefect_errors(action: str) -> AsyncIterator[None]:
    try:
        yield
    except (httpx.TransportError, httpx.HTTPStatusError) as error:
        raise PrefectUnreachable(f"Prefect API failed while {action}: {error}") from error


def _uuid(flow_run_id: str) -> UUID | None:
    try:
        return UUID(flow_run_id)
    except ValueError:
        return None


def flow_run_info(flow_run: FlowRun) -> FlowRunInfo:
    state = flow_run.state
    ui = PREFECT_UI_URL.value()
    return FlowRunInfo(
        id=str(flow_run.id),
        name=flow_run.name,
        state=state.name if state else None,
        state_type=state.type.value if state else None,
        final=bool(state and state.is_final()),
        ui_url=f"{ui}/runs/flow-run/{flow_run.id}" if ui else None,
    )


class PrefectGateway:
    def __init__(self, client: PrefectClient) -> None:
        self.client = client

    async def health(self) -> HealthCheck:
        error = await self.client.api_healthcheck()
        if error is None:
            return HealthCheck(ok=True, detail=str(self.client.api_url))
        return HealthCheck(ok=False, detail=f"{self.client.api_url}: {error}")

    async def start_run(
        self, deployment: str, parameters: dict[str, Any], idempotency_key: str
    ) -> FlowRun:
        """A new flow run of ``deployment`` (or, for a used key, the one made with it before)."""
        async with prefect_errors(f"starting a run of {deployment}"):
            try:
                flow_run: FlowRun = await run_deployment(  # type: ignore[misc]
                    name=deployment,
                    parameters=parameters,
                    timeout=0,
                    idempotency_key=idempotency_key,
                    as_subflow=False,
                )
            except ObjectNotFound as error:
                raise DeploymentMissing(
                    f"Prefect has no deployment '{deployment}': start a runner with"
                    " `python -m deployments.serve` (or `provision up`)",
                    deployment=deployment,
                ) from error
        return flow_run

    async def read_flow_run(self, flow_run_id: str) -> FlowRun | None:
        uuid = _uuid(flow_run_id)
        if uuid is None:
            return None
        async with prefect_errors("reading a flow run"):
            try:
                return await self.client.read_flow_run(uuid)
            except ObjectNotFound:
                return None

    async def cancel(self, flow_run: FlowRun) -> str:
        """Ask the run to stop; a run not started yet is cancelled at once. Returns the state."""
        state = flow_run.state
        if state is not None and state.is_final():
            return str(state.name)
        not_started = state is not None and state.type in _NOT_STARTED
        target: State[Any] = Cancelled() if not_started else Cancelling()
        async with prefect_errors("cancelling a flow run"):
            await self.client.set_flow_run_state(flow_run.id, target, force=True)
        return str(target.name)

    async def wait_final(self, flow_run_id: str, timeout: float) -> FlowRun | None:
        """The run once it reached a final state; None if it had not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            flow_run = await self.read_flow_run(flow_run_id)
            if flow_run is None or (flow_run.state is not None and flow_run.state.is_final()):
                return flow_run
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 1.5, 2.0)

    async def task_states(self, flow_run_id: str) -> dict[str, str]:
        """Latest task-run state name by operation id (task runs are named ``verb operation``,
        as :func:`provisioning.status.prefect_task_states` reads them for the CLI)."""
        uuid = _uuid(flow_run_id)
        if uuid is None:
            return {}
        async with prefect_errors("reading task runs"):
            task_runs = await self.client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid]))
            )
        latest: dict[str, tuple[datetime, str]] = {}
        for task_run in task_runs:
            _, _, operation_id = task_run.name.partition(" ")
            if task_run.state is None or not operation_id:
                continue
            stamp = task_run.state.timestamp
            if operation_id not in latest or stamp > latest[operation_id][0]:
                latest[operation_id] = (stamp, str(task_run.state.name))
        return {operation_id: name for operation_id, (_, name) in latest.items()}

    async def read_logs(self, flow_run_id: str, limit: int, offset: int) -> list[LogLine]:
        uuid = _uuid(flow_run_id)
        if uuid is None:
            return []
        async with prefect_errors("reading logs"):
            logs = await self.client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid])),
                limit=limit,
                offset=offset,
                sort=LogSort.TIMESTAMP_ASC,
            )
        return [
            LogLine(
                timestamp=log.timestamp,
                level=log.level,
                level_name=logging.getLevelName(log.level),
                logger=log.name,
                message=log.message,
                task_run_id=str(log.task_run_id) if log.task_run_id else None,
            )
            for log in logs
        ]
