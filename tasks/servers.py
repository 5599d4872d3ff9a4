"""``server.create`` / ``server.delete`` on any provider, crash-safe by idempotency key.

Create records its intent in the journal before calling the provider, and the server id and its
undo action right after the provider answers, before waiting for it to run. Whatever instant a
process dies at, the next attempt (a retry, or ``provision resume``) finds the server by its key
instead of making a second one: the driver's ``create_server`` looks the key up first, and the
journal keeps the id. Only a first attempt, which the journal proves no provider has seen, skips
that lookup (``create_new_server``). Whatever attempt fails last, the rollback stack already holds
the delete.

A delete by name of a server the workflow itself made takes the id from the journal; any other
name is looked up at the provider and must match exactly one server.
"""

from __future__ import annotations

from contextlib import suppress

from providers.base import PermanentProviderError, ResourceNotFound, ServerState
from provisioning.envelope import ResourceInfo
from provisioning.events import ResourceCreated, ResourceDeleted, emit
from provisioning.rollback import DeleteResource
from provisioning.spec import ServerCreateOperation, ServerDeleteOperation
from tasks.context import RunContext
from tasks.outcome import OperationOutput


def idempotency_key(workflow_id: str, operation_id: str) -> str:
    return f"{workflow_id}/{operation_id}"


def create_server(context: RunContext, operation: ServerCreateOperation) -> OperationOutput:
    assert operation.provider is not None  # guaranteed by spec validation
    provider = context.provider(operation.provider)
    key = idempotency_key(context.workflow_id, operation.id)
    if context.journal.key_may_exist(context.workflow_id, operation.id, key):
        server = provider.create_server(operation.params, key)
    else:
        server = provider.create_new_server(operation.params, key)
    undo = DeleteResource(provider=operation.provider, resource_id=server.id, key=key)
    # Stacked as soon as the server exists, not only by the completion hook: should the wait
    # below fail for good, the failed operation's server is still undone by the run's rollback.
    # The hook pushes the same action again, which the journal ignores while this one is pending.
    context.journal.record_resource(
        context.workflow_id,
        operation.id,
        provider=operation.provider,
        resource_id=server.id,
        key=key,
        state="creating",
        rollback=undo.model_dump(mode="json"),
    )
    server = provider.wait_for(server.id, ServerState.running)
    context.journal.set_resource_state(operation.provider, server.id, "present")
    emit(
        ResourceCreated(
            workflow_id=context.workflow_id,
            flow_run_id=context.flow_run_id,
            provider=operation.provider,
            resource_id=server.id,
            operation_id=operation.id,
            name=server.name,
        )
    )
    resource = ResourceInfo(
        provider=operation.provider,
        resource_id=server.id,
        operation_id=operation.id,
        name=server.name,
        key=key,
    )
    return OperationOutput(
        output={"server": server.model_dump(mode="json", exclude={"raw"})},
        resources=[resource],
        rollback=undo,
    )


def _made_here(context: RunContext, provider: str, name: str) -> str | None:
    """The live server that this workflow's one ``server.create`` of ``name`` on ``provider``
    made, by the journal: deleting a server the workflow itself made needs no provider lookup."""
    creates = [
        operation.id
        for operation in context.workflow.operations
        if isinstance(operation, ServerCreateOperation)
        and operation.provider == provider
        and operation.params.name == name
    ]
    if len(creates) != 1:
        return None
    made = context.journal.resource_by_key(idempotency_key(context.workflow_id, creates[0]))
    return made.resource_id if made is not None and made.provider == provider else None


def _select(context: RunContext, operation: ServerDeleteOperation) -> str | None:
    assert operation.provider is not None
    params = operation.params
    if params.server_id is not None:
        return params.server_id
    assert params.name is not None  # the spec requires exactly one of the two
    made = _made_here(context, operation.provider, params.name)
    if made is not None:
        return made
    provider = context.provider(operation.provider)
    matches = provider.find_by_name(params.name)
    if len(matches) > 1:
        ids = ", ".join(server.id for server in matches)
        raise PermanentProviderError(
            f"{len(matches)} servers are named '{params.name}' ({ids}): delete by server_id",
            provider=provider.name,
            operation=operation.id,
        )
    return matches[0].id if matches else None


def delete_server(context: RunContext, operation: ServerDeleteOperation) -> OperationOutput:
    """Delete a server; one that is already gone counts as deleted (the goal state holds)."""
    assert operation.provider is not None
    server_id = _select(context, operation)
    if server_id is None:
        return OperationOutput(output={"deleted": None, "already_absent": True})
    remove_server(context, operation.provider, server_id, operation.id)
    return OperationOutput(output={"deleted": server_id})


def remove_server(
    context: RunContext, provider_name: str, server_id: str, operation_id: str
) -> None:
    """Delete and wait until gone; shared by ``server.delete``, rollback and destroy."""
    provider = context.provider(provider_name)
    provider.delete_server(server_id)
    provider.wait_for(server_id, ServerState.deleted)
    with suppress(ResourceNotFound):  # a server this journal never owned (a foreign delete)
        context.journal.set_resource_state(provider_name, server_id, "deleted")
    emit(
        ResourceDeleted(
            workflow_id=context.workflow_id,
            flow_run_id=context.flow_run_id,
            provider=provider_name,
            resource_id=server_id,
            operation_id=operation_id,
        )
    )
