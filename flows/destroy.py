"""``provision destroy``: delete every resource the journal says a workflow owns.

Servers go in reverse dependency order (what was built last goes first), each a retried task.
Other changes (files, settings) are left alone: that is what ``rollback`` is for.
"""

from __future__ import annotations

from prefect import flow

from flows.rollback import RollbackReport, undo_workflow
from flows.unwind import undo
from provisioning.envelope import RollbackStep
from provisioning.graph import WorkflowGraph
from provisioning.rollback import DeleteResource
from provisioning.spec import Workflow
from tasks.context import RunContext


def delete_owned(context: RunContext, workflow: Workflow) -> list[RollbackStep]:
    journal = context.journal
    position = {op: index for index, op in enumerate(WorkflowGraph(workflow).order)}
    resources = sorted(
        journal.resources(workflow.workflow_id),
        key=lambda resource: position.get(resource.operation_id, -1),
        reverse=True,
    )
    steps = [
        undo(
            context,
            resource.operation_id,
            DeleteResource(
                provider=resource.provider, resource_id=resource.resource_id, key=resource.key
            ),
            "destroy",
        )
        for resource in resources
    ]
    deleted = {step.operation_id for step in steps if step.status == "done"}
    for entry in journal.rollback_stack(workflow.workflow_id):
        if entry.action.get("type") == "delete_resource" and entry.operation_id in deleted:
            journal.mark_rollback(entry.id, "done")
    return steps


@flow(name="destroy-workflow", flow_run_name="destroy {workflow_id}", persist_result=False)
def destroy_workflow_flow(workflow_id: str, overrides: list[str] | None = None) -> RollbackReport:
    return undo_workflow(workflow_id, overrides or [], "destroyed", delete_owned)
