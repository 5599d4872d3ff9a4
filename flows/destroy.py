"""``provision destroy``: delete every resource the journal says a workflow owns.

Servers go in reverse dependency order (what was built last goes first), each a retried task.
Other changes (files, settings) are left alone: that is what ``rollback`` is for.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run as current_flow_run

from flows.common import reopen
from flows.recovery import adopt_in_flight
from flows.rollback import RollbackReport
from provisioning.envelope import RollbackStep
from provisioning.events import WorkflowCompleted, emit
from provisioning.graph import WorkflowGraph
from provisioning.journal import WorkflowStatus
from provisioning.rollback import DeleteResource
from tasks.context import RunContext, bind
from tasks.undo import undo_action


@flow(name="destroy-workflow", flow_run_name="destroy {workflow_id}", persist_result=False)
def destroy_workflow_flow(workflow_id: str, overrides: list[str] | None = None) -> RollbackReport:
    workflow, config, journal = reopen(workflow_id, overrides or [])
    with journal.lock(workflow_id):
        context = RunContext(
            workflow_id=workflow_id, config=config, journal=journal, flow_run_id=current_flow_run.id
        )
        position = {op: index for index, op in enumerate(WorkflowGraph(workflow).order)}
        steps: list[RollbackStep] = []
        with bind(context):
            adopted = adopt_in_flight(context, workflow)
            resources = sorted(
                journal.resources(workflow_id),
                key=lambda resource: position.get(resource.operation_id, -1),
                reverse=True,
            )
            for resource in resources:
                action = DeleteResource(
                    provider=resource.provider, resource_id=resource.resource_id, key=resource.key
                )
                state = undo_action.with_options(task_run_name=f"destroy {resource.operation_id}")(
                    workflow_id, resource.operation_id, action.model_dump(), return_state=True
                )
                error = None if state.is_completed() else str(state.result(raise_on_failure=False))
                steps.append(
                    RollbackStep(
                        operation_id=resource.operation_id,
                        action=f"delete {resource.provider} server {resource.resource_id}",
                        status="done" if error is None else "failed",
                        error=error,
                    )
                )
        for entry in journal.rollback_stack(workflow_id):
            if entry.action.get("type") == "delete_resource" and not any(
                step.status == "failed" and step.operation_id == entry.operation_id
                for step in steps
            ):
                journal.mark_rollback(entry.id, "done")
        report = RollbackReport(workflow_id=workflow_id, adopted=adopted, steps=steps)
        status: WorkflowStatus = "destroyed" if report.ok else "failed"
        journal.set_workflow_status(workflow_id, status, flow_run_id=current_flow_run.id)
        journal.new_generation(workflow_id)
    emit(
        WorkflowCompleted(
            workflow_id=workflow_id, flow_run_id=current_flow_run.id, status=status, duration_s=0
        )
    )
    return report
