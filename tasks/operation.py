"""The one Prefect task every operation runs as, with its retries, caching and state hooks.

* Retries: exponential backoff with jitter, only when the error is transient (``retry_condition_fn``
  reads the error class); an error may bound its own tries with ``context["max_attempts"]``.
* Caching: the result is persisted under ``{workflow}.{operation}.g{generation}.{params hash}``, so
  ``provision resume`` re-runs the flow and completed operations return their stored result.
* Hooks: on completion the operation's rollback action goes onto the journal's rollback stack;
  hooks must not fail silently (Prefect swallows their exceptions), so the flow re-checks the
  stack against the results it collected (:func:`flows.run` ``_reconcile``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import TypeAdapter
from sqlalchemy.exc import SQLAlchemyError

from provisioning.errors import ProvisioningError, is_transient
from provisioning.events import (
    OperationCompleted,
    OperationFailed,
    OperationRetried,
    OperationStarted,
    emit,
)
from provisioning.spec import Operation
from tasks import commands, files, servers, settings_file
from tasks.context import RunContext, current
from tasks.outcome import OperationOutput

logger = logging.getLogger(__name__)

_OPERATION: TypeAdapter[Operation] = TypeAdapter(Operation)

Handler = Callable[[RunContext, Any], OperationOutput]
HANDLERS: dict[str, Handler] = {
    "server.create": servers.create_server,
    "server.delete": servers.delete_server,
    "file.write": files.write_file,
    "config.set": settings_file.set_value,
    "command.run": commands.run_command,
}
VERBS = {
    "server.create": "create",
    "server.delete": "delete",
    "file.write": "write",
    "config.set": "set",
    "command.run": "run",
}


def params_hash(operation: dict[str, Any]) -> str:
    canonical = json.dumps(operation, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cache_key(workflow_id: str, operation: dict[str, Any], generation: int) -> str:
    """Filename-safe key: same workflow, operation, generation and parameters -> same result."""
    return f"{workflow_id}.{operation['id']}.g{generation}.{params_hash(operation)}"


def _cache_key_fn(_: TaskRunContext, parameters: dict[str, Any]) -> str:
    return cache_key(parameters["workflow_id"], parameters["operation"], parameters["generation"])


@task(persist_result=True, cache_key_fn=_cache_key_fn, result_serializer="json")
def execute_operation(
    workflow_id: str, generation: int, operation: dict[str, Any]
) -> dict[str, Any]:
    """Run one operation of a bound workflow; the return value is its persisted result."""
    context = current(workflow_id)
    parsed = _OPERATION.validate_python(operation)
    started = datetime.now(UTC)
    context.timings[parsed.id] = [started]
    context.journal.record_intent(
        workflow_id,
        parsed.id,
        kind=parsed.kind,
        provider=parsed.provider,
        key=servers.idempotency_key(workflow_id, parsed.id),
    )
    emit(
        OperationStarted(
            workflow_id=workflow_id,
            flow_run_id=context.flow_run_id,
            operation_id=parsed.id,
            operation_kind=parsed.kind,
        )
    )
    output = HANDLERS[parsed.kind](context, parsed)
    output.started_at = started
    output.finished_at = datetime.now(UTC)
    return output.model_dump(mode="json")


def error_of(state: State[Any]) -> BaseException | None:
    """The exception a failed task run raised, if it raised one."""
    if isinstance(state.data, BaseException):
        return state.data
    result = state.result(raise_on_failure=False)
    return result if isinstance(result, BaseException) else None


def retry_if_transient(_: Task[..., Any], __: TaskRun, state: State[Any]) -> bool:
    """For tasks that retry on throttling and outages only: a refused call stays refused."""
    error = error_of(state)
    return error is not None and is_transient(error)


def _retry_condition(
    workflow_id: str, operation_id: str, delays: list[float]
) -> Callable[[Task[..., Any], TaskRun, State[Any]], bool]:
    def should_retry(_: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
        error = error_of(state)
        if error is None or not is_transient(error):
            return False
        attempts = task_run.run_count
        if isinstance(error, ProvisioningError):
            limit = error.context.get("max_attempts")
            if isinstance(limit, int) and attempts >= limit:
                return False
        delay = delays[min(attempts - 1, len(delays) - 1)] if delays else 0.0
        emit(
            OperationRetried(
                workflow_id=workflow_id,
                operation_id=operation_id,
                attempt=attempts,
                delay_s=delay,
                error=str(error),
            )
        )
        return True

    should_retry.__name__ = f"retry_if_transient[{operation_id}]"
    return should_retry


def _on_completion(
    workflow_id: str, operation_id: str, kind: str
) -> Callable[[Task[..., Any], TaskRun, State[Any]], None]:
    def record_completion(_: Task[..., Any], __: TaskRun, state: State[Any]) -> None:
        context = current(workflow_id)
        try:
            output = OperationOutput.model_validate(state.result())
            record_success(context, operation_id, output)
        except (ProvisioningError, SQLAlchemyError, OSError) as error:
            logger.error("journal update after %s failed: %s", operation_id, error)
        emit(
            OperationCompleted(
                workflow_id=workflow_id,
                flow_run_id=context.flow_run_id,
                operation_id=operation_id,
                operation_kind=kind,
                status="completed" if operation_id in context.timings else "cached",
            )
        )

    record_completion.__name__ = f"push_rollback[{operation_id}]"
    return record_completion


def _on_failure(
    workflow_id: str, operation_id: str, kind: str
) -> Callable[[Task[..., Any], TaskRun, State[Any]], None]:
    def record_failure(_: Task[..., Any], __: TaskRun, state: State[Any]) -> None:
        context = current(workflow_id)
        error = error_of(state)
        message = str(error) if error is not None else state.message or "failed"
        code = error.code if isinstance(error, ProvisioningError) else "INTERNAL_ERROR"
        timing = context.timings.setdefault(operation_id, [datetime.now(UTC)])
        timing.append(datetime.now(UTC))
        try:
            context.journal.record_outcome(
                workflow_id, operation_id, "failed", error={"code": code, "message": message}
            )
        except (ProvisioningError, SQLAlchemyError) as journal_error:
            logger.error("journal update after %s failed: %s", operation_id, journal_error)
        emit(
            OperationFailed(
                workflow_id=workflow_id,
                flow_run_id=context.flow_run_id,
                operation_id=operation_id,
                operation_kind=kind,
                error=message,
            )
        )

    record_failure.__name__ = f"record_failure[{operation_id}]"
    return record_failure


def record_success(context: RunContext, operation_id: str, output: OperationOutput) -> None:
    """Journal the outcome and push the rollback action in one transaction (idempotent: the
    completion hook and the flow's reconcile may both call it)."""
    context.journal.record_outcome(
        context.workflow_id,
        operation_id,
        "succeeded",
        result=output.output,
        rollback=output.rollback.model_dump(mode="json") if output.rollback else None,
    )


def operation_task(
    workflow_id: str,
    operation: Operation,
    *,
    retries: int,
    backoff: float,
    jitter: float,
    result_storage: Path,
) -> Task[..., dict[str, Any]]:
    """``execute_operation`` named and configured for one operation (``create db``)."""
    tries = operation.retries if operation.retries is not None else retries
    delays = exponential_backoff(backoff_factor=backoff)(tries) if tries and backoff else []
    return execute_operation.with_options(
        name=f"{VERBS[operation.kind]}-{operation.kind.split('.')[0]}",
        task_run_name=f"{VERBS[operation.kind]} {operation.id}",
        retries=tries,
        retry_delay_seconds=delays or 0,
        retry_jitter_factor=jitter,
        retry_condition_fn=_retry_condition(workflow_id, operation.id, delays),
        on_completion=[_on_completion(workflow_id, operation.id, operation.kind)],
        on_failure=[_on_failure(workflow_id, operation.id, operation.kind)],
        result_storage=result_storage,
    )
