"""Running a workflow's rollback stack, top first, each action a retried task."""

from __future__ import annotations

from prefect.futures import PrefectFuture

from provisioning.envelope import RollbackStep
from provisioning.events import RollbackExecuted, emit
from provisioning.rollback import describe, parse_action
from tasks.context import RunContext
from tasks.undo import undo_action


def unwind(context: RunContext) -> list[RollbackStep]:
    """Undo every pending action of the stack in reverse completion order, one at a time.

    An action that still fails after its retries is marked failed and reported; the next ones
    still run, so one stuck resource does not keep the others alive.
    """
    steps: list[RollbackStep] = []
    for entry in context.journal.rollback_stack(context.workflow_id):
        action = parse_action(entry.action)
        future: PrefectFuture[str] = undo_action.with_options(
            task_run_name=f"undo {entry.operation_id}"
        ).submit(context.workflow_id, entry.operation_id, entry.action)
        future.wait()
        state = future.state
        if state.is_completed():
            context.journal.mark_rollback(entry.id, "done")
            context.journal.record_outcome(context.workflow_id, entry.operation_id, "rolled_back")
            step = RollbackStep(
                operation_id=entry.operation_id, action=describe(action), status="done"
            )
        else:
            error = state.result(raise_on_failure=False)
            message = str(error) if isinstance(error, BaseException) else state.message or ""
            context.journal.mark_rollback(entry.id, "failed", error=message)
            step = RollbackStep(
                operation_id=entry.operation_id,
                action=describe(action),
                status="failed",
                error=message,
            )
        emit(
            RollbackExecuted(
                workflow_id=context.workflow_id,
                flow_run_id=context.flow_run_id,
                operation_id=entry.operation_id,
                action_type=action.type,
                status=step.status,
                error=step.error,
            )
        )
        steps.append(step)
    return steps
