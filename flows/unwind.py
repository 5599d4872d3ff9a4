"""Undo actions as retried tasks: a workflow's rollback stack (top first) or a destroy list."""

from __future__ import annotations

from provisioning.envelope import RollbackStep
from provisioning.events import RollbackExecuted, emit
from provisioning.rollback import RollbackAction, describe, parse_action
from tasks.context import RunContext
from tasks.undo import undo_action


def undo(context: RunContext, operation_id: str, action: RollbackAction, verb: str) -> RollbackStep:
    """Run one action as a task named ``{verb} {operation}``; a failure is reported, not raised."""
    state = undo_action.with_options(task_run_name=f"{verb} {operation_id}")(
        context.workflow_id, operation_id, action.model_dump(mode="json"), return_state=True
    )
    error: str | None = None
    if not state.is_completed():
        raised = state.result(raise_on_failure=False)
        error = str(raised) if isinstance(raised, BaseException) else state.message or "failed"
    step = RollbackStep(
        operation_id=operation_id,
        action=describe(action),
        status="done" if error is None else "failed",
        error=error,
    )
    emit(
        RollbackExecuted(
            workflow_id=context.workflow_id,
            flow_run_id=context.flow_run_id,
            operation_id=operation_id,
            action_type=action.type,
            status=step.status,
            error=error,
        )
    )
    return step


def unwind(context: RunContext) -> list[RollbackStep]:
    """Undo every pending action of the stack in reverse completion order, one at a time.

    An action that still fails after its retries is marked failed and reported; the next ones
    still run, so one stuck resource does not keep the others alive.
    """
    journal = context.journal
    steps: list[RollbackStep] = []
    for entry in journal.rollback_stack(context.workflow_id):
        step = undo(context, entry.operation_id, parse_action(entry.action), "undo")
        journal.mark_rollback(entry.id, "done" if step.status == "done" else "failed", step.error)
        operation = journal.get_operation(context.workflow_id, entry.operation_id)
        if step.status == "done" and operation is not None and operation.status == "succeeded":
            journal.record_outcome(context.workflow_id, entry.operation_id, "rolled_back")
        steps.append(step)
    return steps
