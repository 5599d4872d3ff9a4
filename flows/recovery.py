"""Finding what a killed run left in flight, so rollback and destroy miss nothing.

A process can die after the provider created a server but before the journal heard of it, or
after the journal recorded the server but before the completion hook pushed its undo action.
The idempotency key closes both gaps: every ``server.create`` that did not finish is looked up at
its provider by key, adopted into the journal, and given its undo action.
"""

from __future__ import annotations

from providers.base import ProviderError
from provisioning.rollback import DeleteResource
from provisioning.spec import Workflow
from tasks.context import RunContext
from tasks.servers import idempotency_key


def adopt_in_flight(context: RunContext, workflow: Workflow) -> list[str]:
    """Journal and stack every server the workflow owns; returns the adopted server ids."""
    journal = context.journal
    adopted: list[str] = []
    statuses = {
        record.operation_id: record.status for record in journal.operations(workflow.workflow_id)
    }
    for operation in workflow.operations:
        if operation.kind != "server.create" or operation.provider is None:
            continue
        if statuses.get(operation.id) in (None, "succeeded", "rolled_back", "not_run"):
            continue
        key = idempotency_key(workflow.workflow_id, operation.id)
        if journal.resource_by_key(key) is not None:
            continue
        try:
            server = context.provider(operation.provider).find(key)
        except ProviderError:
            continue  # unreachable now: the sweep will still find it by its labels later
        if server is not None:
            journal.record_resource(
                workflow.workflow_id,
                operation.id,
                provider=operation.provider,
                resource_id=server.id,
                key=key,
                state="present",
            )
            adopted.append(server.id)
    stacked = {
        entry.operation_id
        for status in ("pending", "done")
        for entry in journal.rollback_stack(workflow.workflow_id, status=status)
    }
    for resource in journal.resources(workflow.workflow_id):
        if resource.operation_id not in stacked:
            action = DeleteResource(
                provider=resource.provider, resource_id=resource.resource_id, key=resource.key
            )
            journal.push_rollback(
                workflow.workflow_id, resource.operation_id, action.model_dump(mode="json")
            )
    return adopted
