"""``run_workflow``: one workflow as one Prefect flow, one task per operation.

The flow validates the spec, takes the workflow's journal lock, and submits every operation to a
thread pool of ``parallelism`` workers with ``wait_for`` its upstream futures: Prefect orders the
DAG, a failed operation leaves its dependants ``NotReady`` (reported as not-run) while independent
branches finish. Completed operations are cached by workflow, operation, generation and parameters,
which is what makes ``provision resume`` (the same flow, same workflow id) crash-safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import base_config, parallelism_of, without_heartbeat, workflow_config
from flows.recovery import adopt_in_flight
from flows.unwind import unwind
from providers.registry import load_workflow, warm_up
from provisioning.config import Config
from provisioning.envelope import (
    ErrorInfo,
    OperationResult,
    ResultContext,
    RollbackStep,
    WorkflowOutcome,
    WorkflowResult,
)
from provisioning.errors import ProvisioningError
from provisioning.events import WorkflowCompleted, WorkflowFailed, WorkflowStarted, emit
from provisioning.graph import WorkflowGraph
from provisioning.journal import Journal, OperationRecord, WorkflowStatus
from provisioning.spec import Workflow
from tasks.context import RunContext, bind
from tasks.operation import operation_task, record_success
from tasks.outcome import OperationOutput


def _flow_run_name() -> str:
    spec = current_flow_run.parameters.get("spec", {})
    return str(spec.get("workflow_id") or spec.get("name") or "workflow")


def _operation_result(
    context: RunContext,
    workflow: Workflow,
    operation_id: str,
    state: State[Any],
    record: OperationRecord | None,
    output: OperationOutput | None,
) -> OperationResult:
    operation = workflow.operation(operation_id)
    base: dict[str, Any] = {
        "id": operation_id,
        "kind": operation.kind,
        "provider": operation.provider,
    }
    attempts = record.attempt if record is not None else 0
    if output is not None:
        return OperationResult(
            **base,
            status="succeeded",
            attempts=attempts,
            started_at=output.started_at,
            finished_at=output.finished_at,
            output=output.output,
            resources=output.resources,
            reused=operation_id not in context.timings,
        )
    if state.is_failed() or state.is_crashed():
        error = state.result(raise_on_failure=False)
        timing = context.timings.get(operation_id, [])
        return OperationResult(
            **base,
            status="failed",
            attempts=attempts,
            started_at=timing[0] if timing else None,
            finished_at=timing[-1] if len(timing) > 1 else None,
            error=ErrorInfo.from_exception(error)
            if isinstance(error, BaseException)
            else ErrorInfo(code="OPERATION_FAILED", message=state.message or "failed"),
        )
    skipped = ErrorInfo(code="UPSTREAM_FAILED", message="not run: an operation it waits for failed")
    context.journal.record_outcome(
        context.workflow_id,
        operation_id,
        "not_run",
        error=skipped.model_dump(),
        kind=operation.kind,
        provider=operation.provider,
    )
    return OperationResult(**base, status="not_run", error=skipped)


def _reconcile(
    context: RunContext,
    outputs: dict[str, OperationOutput],
    records: dict[str, OperationRecord],
) -> None:
    """Journal every completed operation and its undo action, whatever happened to its hook."""
    for operation_id, output in outputs.items():
        stored = records.get(operation_id)
        if stored is None or stored.status != "succeeded":
            record_success(context, operation_id, output)


def execute(
    workflow: Workflow, config: Config, journal: Journal, flow_run_id: str | None
) -> WorkflowResult:
    """The body of the run flow, outside any Prefect decorator so resume can reuse it."""
    began = time.monotonic()
    graph = WorkflowGraph(workflow)
    engine = config.section("engine")
    on_failure = str(engine.get("on_failure", "rollback"))
    record = journal.upsert_workflow(
        workflow.workflow_id, workflow.name, workflow.model_dump(mode="json")
    )
    journal.set_workflow_status(workflow.workflow_id, "running", flow_run_id=flow_run_id)
    context = RunContext(workflow=workflow, config=config, journal=journal, flow_run_id=flow_run_id)
    emit(
        WorkflowStarted(
            workflow_id=workflow.workflow_id,
            flow_run_id=flow_run_id,
            name=workflow.name,
            operation_count=len(workflow.operations),
        )
    )
    result_storage = config.state_dir / "results"
    result_storage.mkdir(parents=True, exist_ok=True)
    futures: dict[str, PrefectFuture[dict[str, Any]]] = {}
    runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(
        max_workers=parallelism_of(workflow, config)
    )
    with bind(context), runner:
        for operation_id in graph.order:
            operation = workflow.operation(operation_id)
            task = operation_task(
                workflow.workflow_id,
                operation,
                retries=int(engine.get("retries", 3)),
                backoff=float(engine.get("retry_backoff", 1.0)),
                jitter=float(engine.get("retry_jitter", 0.5)),
                result_storage=result_storage,
            )
            futures[operation_id] = runner.submit(
                task,
                parameters={
                    "workflow_id": workflow.workflow_id,
                    "generation": record.generation,
                    "operation": operation.model_dump(mode="json"),
                },
                wait_for=[futures[upstream] for upstream in graph.upstream[operation_id]],
            )
        for future in futures.values():
            future.wait()
        states = {operation_id: future.state for operation_id, future in futures.items()}
        outputs = {
            operation_id: OperationOutput.model_validate(state.result())
            for operation_id, state in states.items()
            if state.is_completed()
        }
        records = {
            record.operation_id: record for record in journal.operations(workflow.workflow_id)
        }
        results = [
            _operation_result(
                context,
                workflow,
                operation_id,
                states[operation_id],
                records.get(operation_id),
                outputs.get(operation_id),
            )
            for operation_id in graph.order
        ]
        _reconcile(context, outputs, records)
        failed = [result for result in results if result.status == "failed"]
        rollback: list[RollbackStep] | None = None
        if failed and on_failure == "rollback":
            adopt_in_flight(context, workflow)  # servers whose create answer was lost
            rollback = unwind(context)
    return _finish(workflow, journal, flow_run_id, results, failed, rollback, began)


def _finish(
    workflow: Workflow,
    journal: Journal,
    flow_run_id: str | None,
    results: list[OperationResult],
    failed: list[OperationResult],
    rollback: list[RollbackStep] | None,
    began: float,
) -> WorkflowResult:
    duration = time.monotonic() - began
    if rollback is not None:
        reverted = {step.operation_id for step in rollback if step.status == "done"}
        for result in results:
            if result.status == "succeeded" and result.id in reverted:
                result.status = "rolled_back"
    resources = [
        resource
        for result in results
        if result.status == "succeeded"
        for resource in result.resources
    ]
    error: ErrorInfo | None = None
    status: Literal["success", "error", "partial"] = "success"
    journal_status: WorkflowStatus = "succeeded"
    step = "completed"
    if failed:
        first = failed[0].error or ErrorInfo(code="OPERATION_FAILED", message="failed")
        named = f"operation '{failed[0].id}'" in first.message
        summary = f"{len(failed)} operation(s) failed; first: " + (
            first.message if named else f"{failed[0].id}: {first.message}"
        )
        stuck = [step for step in rollback or [] if step.status == "failed"]
        if rollback is not None:
            undone = len(rollback) - len(stuck)
            summary += f"; rolled back {undone}"
            summary += f", {len(stuck)} could not be undone" if stuck else ""
            journal.new_generation(workflow.workflow_id)
        error = ErrorInfo(
            code="WORKFLOW_FAILED", message=summary, details={"first": first.model_dump()}
        )
        kept = any(result.status == "succeeded" for result in results)
        status = "partial" if kept and rollback is None else "error"
        if rollback is not None and not stuck:
            journal_status = "rolled_back"
        else:
            journal_status = "partial" if status == "partial" else "failed"
        step = f"failed at {failed[0].id}"
    journal.set_workflow_status(
        workflow.workflow_id,
        journal_status,
        error=error.model_dump() if error else None,
        flow_run_id=flow_run_id,
    )
    outcome = WorkflowOutcome(
        workflow_id=workflow.workflow_id,
        name=workflow.name,
        flow_run_id=flow_run_id,
        operations=results,
        resources=resources,
        rollback=rollback,
        duration_s=round(duration, 3),
    )
    if error is None:
        emit(
            WorkflowCompleted(
                workflow_id=workflow.workflow_id,
                flow_run_id=flow_run_id,
                status=status,
                duration_s=duration,
            )
        )
    else:
        emit(
            WorkflowFailed(
                workflow_id=workflow.workflow_id,
                flow_run_id=flow_run_id,
                error_code=error.code,
                message=error.message,
            )
        )
    return WorkflowResult(
        status=status,
        result=outcome,
        error=error,
        context=ResultContext(workflow_id=workflow.workflow_id, step=step, flow_run_id=flow_run_id),
    )


def as_state(result: WorkflowResult) -> State[WorkflowResult]:
    """The flow run ends Failed when the workflow failed, carrying the result either way."""
    if result.status == "success":
        return Completed(data=result, message="workflow succeeded")
    message = result.error.message if result.error else "workflow failed"
    return Failed(data=result, message=message)


@flow(name="run-workflow", flow_run_name=_flow_run_name, persist_result=False, log_prints=False)
def run_workflow_flow(spec: dict[str, Any], overrides: list[str] | None = None) -> WorkflowResult:
    """Run (or, for a known workflow id, resume) a workflow spec."""
    base_config(overrides or [])
    workflow = load_workflow(spec)
    config = workflow_config(workflow, overrides or [])
    journal = Journal.from_config(config)
    with journal.lock(workflow.workflow_id):
        result = execute(workflow, config, journal, current_flow_run.id)
    return as_state(result)  # type: ignore[return-value]


def state_result(state: State[Any]) -> WorkflowResult:
    """The :class:`WorkflowResult` a run flow ended with, or the error that stopped it early."""
    # _sync: in a notebook the kernel's event loop is running, and Prefect would otherwise hand
    # back a coroutine instead of the result.
    value = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    if isinstance(value, WorkflowResult):
        return value
    if isinstance(value, ProvisioningError):
        raise value
    raise RuntimeError(f"workflow flow ended without a result: {state.message}")


def run_workflow(
    spec: str | Path | Mapping[str, Any] | Workflow,
    *,
    overrides: Iterable[str] = (),
    parallelism: int | None = None,
) -> WorkflowResult:
    """Run a workflow from a notebook or script and return its typed result.

    A bad spec raises :class:`provisioning.errors.WorkflowError` before any flow run starts.
    """
    config = base_config(overrides)
    workflow = load_workflow(spec if not isinstance(spec, Mapping) else dict(spec))
    if parallelism is not None:
        workflow.configuration.parallelism = parallelism
    warm_up(workflow.providers, config)
    with without_heartbeat():
        state = run_workflow_flow(
            workflow.model_dump(mode="json", exclude_defaults=False),
            list(overrides),
            return_state=True,
        )
    return state_result(state)
