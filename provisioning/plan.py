"""What a workflow would do, wave by wave, without touching anything."""

from __future__ import annotations

from pydantic import BaseModel

from provisioning.graph import WorkflowGraph
from provisioning.rollback import ROLLBACK_BY_KIND
from provisioning.secrets import mask_secrets
from provisioning.spec import (
    CommandRunOperation,
    ConfigSetOperation,
    FileWriteOperation,
    Operation,
    ServerCreateOperation,
    ServerDeleteOperation,
    Workflow,
)


class PlannedOperation(BaseModel):
    id: str
    kind: str
    provider: str | None
    action: str
    waits_for: list[str]
    #: How it will be undone on failure; ``None`` = irreversible.
    rollback: str | None


class Plan(BaseModel):
    workflow_id: str
    name: str
    parallelism: int | None
    on_failure: str | None
    waves: list[list[PlannedOperation]]

    @property
    def operation_count(self) -> int:
        return sum(len(wave) for wave in self.waves)


def describe_operation(operation: Operation) -> str:
    """What the operation will do, in one line."""
    if isinstance(operation, ServerCreateOperation):
        spec = operation.params
        details = ", ".join(
            f"{name} {value}"
            for name, value in (("image", spec.image), ("size", spec.size), ("zone", spec.zone))
            if value
        )
        return f"create server '{spec.name}' on {operation.provider}" + (
            f" ({details})" if details else ""
        )
    if isinstance(operation, ServerDeleteOperation):
        target = operation.params.server_id or f"named '{operation.params.name}'"
        return f"delete server {target} on {operation.provider}"
    if isinstance(operation, FileWriteOperation):
        size = len(operation.params.content.encode())
        mode = f", mode {operation.params.mode}" if operation.params.mode else ""
        return f"write {operation.params.path} ({size} bytes{mode})"
    if isinstance(operation, ConfigSetOperation):
        params = operation.params
        return f"set {params.key} = {mask_secrets(params.key, params.value)!r} in {params.file}"
    assert isinstance(operation, CommandRunOperation)
    return "run " + " ".join(operation.params.argv)


def make_plan(workflow: Workflow, graph: WorkflowGraph | None = None) -> Plan:
    graph = graph or WorkflowGraph(workflow)
    waves = [
        [
            PlannedOperation(
                id=operation_id,
                kind=(operation := workflow.operation(operation_id)).kind,
                provider=operation.provider,
                action=describe_operation(operation),
                waits_for=graph.upstream[operation_id],
                rollback=_rollback_of(operation),
            )
            for operation_id in wave
        ]
        for wave in graph.waves
    ]
    return Plan(
        workflow_id=workflow.workflow_id,
        name=workflow.name,
        parallelism=workflow.configuration.parallelism,
        on_failure=workflow.configuration.on_failure,
        waves=waves,
    )


def _rollback_of(operation: Operation) -> str | None:
    if isinstance(operation, CommandRunOperation):
        undo = operation.params.undo
        return "run " + " ".join(undo) if undo else None
    return ROLLBACK_BY_KIND[operation.kind]
