"""``provision status``: the journal's view of a workflow next to Prefect's task-run states.

The journal answers instantly and survives any crash; Prefect's view is what the UI shows. The
Prefect part is read only when asked, since without a standing server it costs a temporary API
server start.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from provisioning.config import Config
from provisioning.console import styled
from provisioning.errors import WorkflowNotFound
from provisioning.journal import Journal, OperationRecord, ResourceRecord, RollbackEntry
from provisioning.rollback import describe, parse_action


class OperationStatusRow(BaseModel):
    operation_id: str
    kind: str
    status: str
    attempts: int
    prefect_state: str | None = None
    error: str | None = None


class StatusReport(BaseModel):
    workflow_id: str
    name: str
    status: str
    generation: int
    flow_run_id: str | None
    updated_at: datetime
    operations: list[OperationStatusRow]
    resources: list[ResourceRecord]
    rollback_stack: list[RollbackEntry]
    prefect_error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def prefect_task_states(flow_run_id: str) -> dict[str, str]:
    """Latest task-run state name by operation id (task runs are named ``verb operation``)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    states: dict[str, tuple[datetime, str]] = {}
    for task_run in task_runs:
        _, _, operation_id = task_run.name.partition(" ")
        if task_run.state is None or task_run.state.name is None or not operation_id:
            continue
        stamp = task_run.state.timestamp
        if operation_id not in states or stamp > states[operation_id][0]:
            states[operation_id] = (stamp, task_run.state.name)
    return {operation_id: name for operation_id, (_, name) in states.items()}


def _row(record: OperationRecord) -> OperationStatusRow:
    message = record.error.get("message") if record.error else None
    return OperationStatusRow(
        operation_id=record.operation_id,
        kind=record.kind,
        status=record.status,
        attempts=record.attempt,
        error=str(message) if message else None,
    )


def journal_status(journal: Journal, workflow_id: str) -> StatusReport:
    """Everything the journal knows of the workflow (no Prefect states)."""
    record = journal.get_workflow(workflow_id)
    if record is None:
        raise WorkflowNotFound(
            f"no workflow '{workflow_id}' in the journal {journal.url}", workflow=workflow_id
        )
    return StatusReport(
        workflow_id=workflow_id,
        name=record.name,
        status=record.status,
        generation=record.generation,
        flow_run_id=record.flow_run_id,
        updated_at=record.updated_at,
        operations=[_row(operation) for operation in journal.operations(workflow_id)],
        resources=journal.resources(workflow_id, include_deleted=True),
        rollback_stack=journal.rollback_stack(workflow_id),
    )


def read_status(config: Config, workflow_id: str, *, with_prefect: bool) -> StatusReport:
    """The journal's report, with each operation's Prefect task-run state when asked."""
    report = journal_status(Journal.from_config(config), workflow_id)
    if with_prefect and report.flow_run_id:
        try:
            states = prefect_task_states(report.flow_run_id)
        except (OSError, RuntimeError, ValueError) as error:
            report.prefect_error = f"Prefect states unavailable: {error}"
        else:
            for row in report.operations:
                row.prefect_state = states.get(row.operation_id)
    return report


def print_status(console: Console, report: StatusReport) -> None:
    console.print(
        f"[bold]{report.name}[/bold] ({report.workflow_id}): {report.status}, "
        f"generation {report.generation}, flow run {report.flow_run_id or '-'}"
    )
    operations = Table(title="operations")
    for column in ("operation", "kind", "journal", "prefect", "tries", "error"):
        operations.add_column(column)
    for row in report.operations:
        operations.add_row(
            row.operation_id,
            row.kind,
            styled(row.status),
            row.prefect_state or "-",
            str(row.attempts),
            row.error or "",
        )
    console.print(operations)
    resources = Table(title="resources")
    for column in ("operation", "provider", "id", "state"):
        resources.add_column(column)
    for resource in report.resources:
        resources.add_row(
            resource.operation_id, resource.provider, resource.resource_id, resource.state
        )
    console.print(resources)
    stack = Table(title="rollback stack (top first)")
    for column in ("operation", "action"):
        stack.add_column(column)
    for entry in report.rollback_stack:
        stack.add_row(entry.operation_id, describe(parse_action(entry.action)))
    console.print(stack)
    if report.prefect_error:
        console.print(f"[yellow]{report.prefect_error}[/yellow]")
