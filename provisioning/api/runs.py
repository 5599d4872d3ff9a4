"""Submitting and cancelling workflows: the journal and Prefect kept in step.

Submission is idempotent per workflow id. A workflow the journal already knows with a flow run is
answered with that run, never a second one. Otherwise the run is created with the Prefect
idempotency key ``provisioning:<workflow id>:g<generation>``, so two API processes racing on the
same new workflow still get one flow run from the Prefect server. Within a process, submissions
of one id take turns on a lock, so the journal sees them one after the other.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from starlette.concurrency import run_in_threadpool

from provisioning.api.errors import CancelPending, WorkflowNotRunning
from provisioning.api.gateway import PrefectGateway
from provisioning.api.models import Cancellation, Submission
from provisioning.api.state import ApiState
from provisioning.errors import WorkflowNotFound
from provisioning.graph import WorkflowGraph
from provisioning.journal import WorkflowRecord
from provisioning.spec import Workflow

#: Journal statuses after which a workflow's run is over.
FINISHED = frozenset({"succeeded", "failed", "rolled_back", "destroyed", "partial", "cancelled"})

_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(workflow_id: str) -> asyncio.Lock:
    lock = _locks.get(workflow_id)
    if lock is None:
        lock = _locks[workflow_id] = asyncio.Lock()
    return lock


def validate(spec: dict[str, Any]) -> Workflow:
    """Exactly what a file goes through (schema, references, providers), plus the graph check
    that a file meets when its run starts: a cycle is a 422 here, not a failed run later."""
    from providers.registry import load_workflow

    workflow = load_workflow(spec)
    WorkflowGraph(workflow)
    return workflow


async def require_workflow(state: ApiState, workflow_id: str) -> WorkflowRecord:
    record = await run_in_threadpool(state.journal.get_workflow, workflow_id)
    if record is None:
        raise WorkflowNotFound(f"no workflow '{workflow_id}' in the journal", workflow=workflow_id)
    return record


async def submit(state: ApiState, gateway: PrefectGateway, spec: dict[str, Any]) -> Submission:
    workflow = await run_in_threadpool(validate, spec)
    workflow_id = workflow.workflow_id
    async with _lock(workflow_id):
        record = await run_in_threadpool(state.journal.get_workflow, workflow_id)
        if record is not None and record.flow_run_id:
            flow_run = await gateway.read_flow_run(record.flow_run_id)
            return Submission(
                workflow_id=workflow_id,
                flow_run_id=record.flow_run_id,
                created=False,
                status=record.status,
                state=flow_run.state.name if flow_run and flow_run.state else None,
                deployment=state.run_deployment,
            )
        stored = workflow.model_dump(mode="json")
        record = await run_in_threadpool(
            state.journal.upsert_workflow, workflow_id, workflow.name, stored
        )
        flow_run = await gateway.start_run(
            state.run_deployment,
            {"spec": stored, "overrides": []},
            idempotency_key=f"provisioning:{workflow_id}:g{record.generation}",
        )
        # The runner needs seconds to pick the run up and mark the journal "running": writing
        # "pending" with the run id right after creating it cannot overwrite that.
        record = await run_in_threadpool(
            lambda: state.journal.set_workflow_status(
                workflow_id, "pending", flow_run_id=str(flow_run.id)
            )
        )
    return Submission(
        workflow_id=workflow_id,
        flow_run_id=str(flow_run.id),
        created=True,
        status=record.status,
        state=flow_run.state.name if flow_run.state else None,
        deployment=state.run_deployment,
    )


async def cancel(
    state: ApiState, gateway: PrefectGateway, workflow_id: str, *, rollback: bool
) -> Cancellation:
    """Stop the workflow's run; with ``rollback``, wait for it to stop, then start the undo."""
    record = await require_workflow(state, workflow_id)
    flow_run = await gateway.read_flow_run(record.flow_run_id) if record.flow_run_id else None
    running = flow_run is not None and flow_run.state is not None and not flow_run.state.is_final()
    if not running and not rollback:
        raise WorkflowNotRunning(
            f"workflow '{workflow_id}' has no running flow run (status {record.status});"
            " add ?rollback=true to undo what it did",
            workflow=workflow_id,
        )
    state_name = flow_run.state.name if flow_run and flow_run.state else None
    if running and flow_run is not None:
        state_name = await gateway.cancel(flow_run)
        await run_in_threadpool(lambda: state.journal.set_workflow_status(workflow_id, "cancelled"))
    result = Cancellation(workflow_id=workflow_id, flow_run_id=record.flow_run_id, state=state_name)
    if not rollback:
        return result
    if running and record.flow_run_id is not None:
        # The undo takes the workflow's journal lock, which the cancelled run holds until its
        # process is gone: start it only once Prefect reports that run final.
        stopped = await gateway.wait_final(record.flow_run_id, state.cancel_timeout)
        if stopped is None:
            raise CancelPending(
                f"the run of '{workflow_id}' is still stopping after {state.cancel_timeout:g}s;"
                " repeat the request to roll back once it has",
                workflow=workflow_id,
            )
        result.state = stopped.state.name if stopped.state else result.state
    undo = await gateway.start_run(
        state.rollback_deployment,
        {"workflow_id": workflow_id, "overrides": []},
        idempotency_key=f"provisioning:{workflow_id}:g{record.generation}:rollback",
    )
    result.rollback_flow_run_id = str(undo.id)
    return result
