"""``provision destroy``: delete every resource the journal says a workflow owns.

Deletes run in parallel (the workflow's ``parallelism``) in reverse dependency order: a resource
goes once the resources of every operation that waits for its operation are gone, so a network
outlives the servers in it. A delete that fails after its retries keeps what it depends on alive
(reported as not attempted) while unrelated branches still go; a second ``destroy`` picks them up.
Resources of operations the stored spec no longer names go last. Other changes (files,
settings) are left alone: that is what ``rollback`` is for.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import parallelism_of
from flows.rollback import RollbackReport, undo_workflow
from flows.unwind import report_undo, undo_parameters, undo_task
from provisioning.envelope import RollbackStep
from provisioning.graph import WorkflowGraph
from provisioning.rollback import DeleteResource
from provisioning.spec import Workflow
from tasks.context import RunContext


def _must_go_first(graph: WorkflowGraph, operation_id: str) -> set[str]:
    """Operations whose resources are deleted before those of ``operation_id``: the ones that
    wait for it or, for an operation the stored spec no longer names, every one it names."""
    if operation_id in graph.upstream:
        return graph.descendants(operation_id)
    return set(graph.upstream)


def _still_there(operations: set[str]) -> str:
    return f"the servers of {', '.join(sorted(operations))} are still there"


def delete_owned(context: RunContext, workflow: Workflow) -> list[RollbackStep]:
    journal = context.journal
    graph = WorkflowGraph(workflow)
    position = {op: index for index, op in enumerate(graph.order)}
    # Dependants first; resources of operations the spec no longer names after all others.
    resources = sorted(
        journal.resources(workflow.workflow_id),
        key=lambda resource: position.get(resource.operation_id, -1),
        reverse=True,
    )
    actions = {
        resource.id: DeleteResource(
            provider=resource.provider, resource_id=resource.resource_id, key=resource.key
        )
        for resource in resources
    }
    futures: dict[int, PrefectFuture[Any]] = {}
    operation_of = {resource.id: resource.operation_id for resource in resources}
    runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(
        max_workers=parallelism_of(workflow, context.config)
    )
    with runner:
        for resource in resources:  # the sort put every blocker before what it blocks
            first = _must_go_first(graph, resource.operation_id)
            futures[resource.id] = runner.submit(
                undo_task(resource.operation_id, "destroy"),
                parameters=undo_parameters(context, resource.operation_id, actions[resource.id]),
                wait_for=[future for id_, future in futures.items() if operation_of[id_] in first],
            )
        for future in futures.values():
            future.wait()
    states = {resource.id: futures[resource.id].state for resource in resources}
    failed = {operation_of[id_] for id_, state in states.items() if not state.is_completed()}
    steps = [
        report_undo(
            context,
            resource.operation_id,
            actions[resource.id],
            states[resource.id],
            blocked_by=_still_there(failed & _must_go_first(graph, resource.operation_id)),
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
