"""The journal half of ``GET /workflows/{id}/status``, read from the API's one journal.

Same shape as ``provision status --json`` (:class:`provisioning.status.StatusReport`); built here
because ``read_status`` opens a journal per call, which a polled endpoint cannot afford.
"""

from __future__ import annotations

from provisioning.errors import WorkflowNotFound
from provisioning.journal import Journal, OperationRecord
from provisioning.status import OperationStatusRow, StatusReport


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
    """Everything the journal knows of the workflow, read in one worker-thread hop."""
    record = journal.get_workflow(workflow_id)
    if record is None:
        raise WorkflowNotFound(f"no workflow '{workflow_id}' in the journal", workflow=workflow_id)
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
