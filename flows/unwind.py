"""Undo actions as retried tasks: a workflow's rollback stack (top first) or a destroy list."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State

from provisioning.envelope import RollbackStep
from provisioning.events import RollbackExecuted, emit
from provisioning.rollback import RollbackAction, describe, parse_action
from tasks.context import RunContext
from tasks.undo import undo_action


def undo_task(operation_id: str, verb: str) -> Task[..., str]:
    """The undo task for one operation, named ``{verb} {operation}`` in the UI."""
    return undo_action.with_options(task_run_name=f"{verb} {operation_id}")


def undo_parameters(
    context: RunContext, operation_id: str, action: RollbackAction
) -> dict[str, Any]:
    return {
        "workflow_id": context.workflow_id,
        "operation_id": operation_id,
        "action": action.model_dump(mode="json"),
    }


def report_undo(
    context: RunContext,
    operation_id: str,
    action: RollbackAction,
    state: State[Any],
    blocked_by: str = "an undo it waits for failed",
) -> RollbackStep:
    """The step an undo task's final state amounts to, announced as a ``RollbackExecuted``;
    ``blocked_by`` says why, should the task never have started."""
    error: str | None = None
    if state.is_pending():
        error = f"not attempted: {blocked_by}"
    elif not state.is_completed():
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


def undo(context: RunContext, operation_id: str, action: RollbackAction, verb: str) -> RollbackStep:
    """Run one action as a task now; a failure is reported, not raised."""
    state = undo_task(operation_id, verb)(
        **undo_parameters(context, operation_id, action), return_state=True
    )
    return report_undo(context, operation_id, action, state)


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
