"""``provision rollback``: undo a failed, killed or finished workflow in reverse order."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from pydantic import BaseModel

from flows.common import reopen
from flows.recovery import adopt_in_flight
from flows.unwind import unwind
from provisioning.envelope import RollbackStep
from provisioning.events import WorkflowCompleted, emit
from provisioning.journal import WorkflowStatus
from tasks.context import RunContext, bind


class RollbackReport(BaseModel):
    workflow_id: str
    adopted: list[str]
    steps: list[RollbackStep]

    @property
    def ok(self) -> bool:
        return all(step.status == "done" for step in self.steps)


@flow(name="rollback-workflow", flow_run_name="rollback {workflow_id}", persist_result=False)
def rollback_workflow_flow(workflow_id: str, overrides: list[str] | None = None) -> RollbackReport:
    workflow, config, journal = reopen(workflow_id, overrides or [])
    with journal.lock(workflow_id):
        context = RunContext(
            workflow_id=workflow_id, config=config, journal=journal, flow_run_id=current_flow_run.id
        )
        with bind(context):
            adopted = adopt_in_flight(context, workflow)
            steps = unwind(context)
        report = RollbackReport(workflow_id=workflow_id, adopted=adopted, steps=steps)
        status: WorkflowStatus = "rolled_back" if report.ok else "failed"
        journal.set_workflow_status(workflow_id, status, flow_run_id=current_flow_run.id)
        journal.new_generation(workflow_id)
    emit(
        WorkflowCompleted(
            workflow_id=workflow_id, flow_run_id=current_flow_run.id, status=status, duration_s=0
        )
    )
    return report
