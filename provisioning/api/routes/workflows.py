"""``/workflows``: submit, list, inspect, follow and cancel workflows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from provisioning.api import runs
from provisioning.api.errors import FlowRunNotFound, NoFlowRun
from provisioning.api.gateway import flow_run_info
from provisioning.api.models import (
    Cancellation,
    RunLogs,
    Submission,
    WorkflowDetail,
    WorkflowPage,
    WorkflowSummary,
)
from provisioning.api.responses import Envelope, respond
from provisioning.api.routes.deps import Gateway, State
from provisioning.api.streaming import RunEventStream
from provisioning.journal import WorkflowStatus
from provisioning.runtime import PrefectUnreachable
from provisioning.status import StatusReport, journal_status

router = APIRouter(prefix="/workflows", tags=["workflows"])

WorkflowId = Annotated[str, Path(min_length=1, max_length=255, description="the workflow id")]
Spec = Annotated[
    dict[str, Any],
    Body(description="the workflow contract, as in a TOML/JSON/YAML file"),
]

_SUBMIT_DOC = """Validate a workflow exactly like a file and start it as a flow run of the
``run-workflow`` deployment: 202 with the workflow and flow run ids. Submitting a workflow id
the journal already knows answers 200 with its existing run and starts nothing."""


async def _submit(request: Request, state: State, gateway: Gateway, spec: Spec) -> Response:
    submission = await runs.submit(state, gateway, spec)
    if submission.created:
        return respond(request, submission, status="pending", http_status=202)
    finished = submission.status in runs.FINISHED
    return respond(request, submission, status="success" if finished else "pending")


for _path in ("", "/submit"):
    router.add_api_route(
        _path,
        _submit,
        methods=["POST"],
        status_code=202,
        response_model=Envelope[Submission],
        responses={200: {"model": Envelope[Submission], "description": "already submitted"}},
        summary="Submit a workflow" + (" (the seed's path)" if _path else ""),
        description=_SUBMIT_DOC,
        operation_id="submit_workflow" + _path.replace("/", "_"),
    )


@router.get("", response_model=Envelope[WorkflowPage])
async def list_workflows(
    request: Request,
    state: State,
    status: WorkflowStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """Workflows in the journal, newest first."""

    def read() -> tuple[list[WorkflowSummary], int]:
        records = state.journal.list_workflows(status, limit=limit, offset=offset)
        return [WorkflowSummary.of(r) for r in records], state.journal.count_workflows(status)

    items, total = await run_in_threadpool(read)
    next_offset = offset + limit if offset + limit < total else None
    page = WorkflowPage(
        items=items, total=total, limit=limit, offset=offset, next_offset=next_offset
    )
    return respond(request, page)


@router.get("/{workflow_id}", response_model=Envelope[WorkflowDetail])
async def get_workflow(
    request: Request, state: State, gateway: Gateway, workflow_id: WorkflowId
) -> Response:
    """The journal's record of the workflow (with its spec) and its latest flow run."""
    record = await runs.require_workflow(state, workflow_id)
    detail = WorkflowDetail.model_validate(record.model_dump())
    if record.flow_run_id:
        try:
            flow_run = await gateway.read_flow_run(record.flow_run_id)
        except PrefectUnreachable as error:
            detail.prefect_error = str(error)
        else:
            detail.flow_run = flow_run_info(flow_run) if flow_run else None
    return respond(request, detail)


@router.get("/{workflow_id}/status", response_model=Envelope[StatusReport])
async def workflow_status(
    request: Request, state: State, gateway: Gateway, workflow_id: WorkflowId
) -> Response:
    """Per-operation states from the journal beside Prefect's task-run states, resources, and
    the rollback stack. Answers are reused for ``[api] status_ttl`` seconds (0.5 by default)."""

    async def load() -> StatusReport:
        report = await run_in_threadpool(journal_status, state.journal, workflow_id)
        flow_run_id = report.flow_run_id
        if flow_run_id:
            try:
                states = await state.task_states.get(
                    flow_run_id,
                    lambda: gateway.task_states(flow_run_id),
                    final=report.status in runs.FINISHED,
                )
            except PrefectUnreachable as error:
                report.prefect_error = str(error)
            else:
                for row in report.operations:
                    row.prefect_state = states.get(row.operation_id)
        return report

    report = await state.reports.get(workflow_id, load, state.status_ttl)
    return respond(request, report)


@router.get("/{workflow_id}/logs", response_model=Envelope[RunLogs])
async def workflow_logs(
    request: Request,
    state: State,
    gateway: Gateway,
    workflow_id: WorkflowId,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """The Prefect logs of the workflow's latest flow run, oldest first."""
    record = await runs.require_workflow(state, workflow_id)
    if not record.flow_run_id:
        raise NoFlowRun(workflow_id)
    lines = await gateway.read_logs(record.flow_run_id, limit, offset)
    page = RunLogs(
        flow_run_id=record.flow_run_id,
        items=lines,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(lines) == limit else None,
    )
    return respond(request, page)


@router.get(
    "/{workflow_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "server-sent events of the workflow's latest flow run",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def workflow_events(
    state: State,
    gateway: Gateway,
    workflow_id: WorkflowId,
    follow: Annotated[bool, Query(description="keep streaming until the run ends")] = True,
    timeout: Annotated[float, Query(gt=0, le=86_400, description="end after this many s")] = 600,
) -> StreamingResponse:
    """The run's events as server-sent events, history first, ending with ``event: end``."""
    record = await runs.require_workflow(state, workflow_id)
    if not record.flow_run_id:
        raise NoFlowRun(workflow_id)
    flow_run = await gateway.read_flow_run(record.flow_run_id)
    if flow_run is None:
        raise FlowRunNotFound(record.flow_run_id, workflow_id)
    since = flow_run.created or record.created_at
    stream = RunEventStream(
        gateway.client, workflow_id, record.flow_run_id, since, follow=follow, timeout=timeout
    )
    return StreamingResponse(
        stream.frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete("/{workflow_id}", status_code=202, response_model=Envelope[Cancellation])
async def cancel_workflow(
    request: Request,
    state: State,
    gateway: Gateway,
    workflow_id: WorkflowId,
    rollback: Annotated[bool, Query(description="also undo what the workflow did")] = False,
) -> Response:
    """Cancel the workflow's running flow run; with ``rollback=true`` then start the
    ``rollback-workflow`` deployment (waiting for the cancelled run to stop first)."""
    result = await runs.cancel(state, gateway, workflow_id, rollback=rollback)
    return respond(request, result, status="pending", http_status=202)
