"""``provision rollback``: undo a failed, killed or finished workflow in reverse order."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from pydantic import BaseModel

from flows.common import reopen
from flows.recovery import adopt_in_flight
from flows.unwind import unwind
from provisioning.envelope import RollbackStep
from provisioning.events import WorkflowCompleted, emit
from provisioning.journal import WorkflowStatus
from provisioning.spec import Workflow
from tasks.context import RunContext, bind


class RollbackReport(BaseModel):
    workflow_id: str
    adopted: list[str]
    steps: list[RollbackStep]

    @property
    def ok(self) -> bool:
        return all(step.status == "done" for step in self.steps)


Undo = Callable[[RunContext, Workflow], list[RollbackStep]]


def undo_workflow(
    workflow_id: str, overrides: list[str], done: WorkflowStatus, body: Undo
) -> RollbackReport:
    """The frame rollback and destroy share: reopen the workflow, take its lock, adopt what a
    killed run left in flight, undo, then record the outcome and start a new generation (so a
    later run creates things again instead of reusing results of undone operations)."""
    workflow, config, journal = reopen(workflow_id, overrides)
    flow_run_id = current_flow_run.id
    with journal.lock(workflow_id):
        context = RunContext(
            workflow=workflow, config=config, journal=journal, flow_run_id=flow_run_id
        )
        with bind(context):
            adopted = adopt_in_flight(context, workflow)
            steps = body(context, workflow)
        report = RollbackReport(workflow_id=workflow_id, adopted=adopted, steps=steps)
        status: WorkflowStatus = done if report.ok else "failed"
        journal.set_workflow_status(workflow_id, status, flow_run_id=flow_run_id)
        journal.new_generation(workflow_id)
    emit(
        WorkflowCompleted(
            workflow_id=workflow_id, flow_run_id=flow_run_id, status=status, duration_s=0
        )
    )
    return report


@flow(name="rollback-workflow", flow_run_name="rollback {workflow_id}", persist_result=False)
def rollback_workflow_flow(workflow_id: str, overrides: list[str] | None = None) -> RollbackReport:
    return undo_workflow(
        workflow_id, overrides or [], "rolled_back", lambda context, _: unwind(context)
    )
