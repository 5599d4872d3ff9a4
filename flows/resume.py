"""``provision resume``: finish a workflow after a crash without creating anything twice.

The same flow body runs again under the same workflow id and generation: completed operations
hit their persisted results (cache key) and are not executed; an operation that recorded an intent
but no outcome runs again and its driver first looks its idempotency key up, adopting what a killed
process already created.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run as current_flow_run

from flows.common import reopen
from flows.run import as_state, execute
from provisioning.envelope import WorkflowResult


@flow(name="resume-workflow", flow_run_name="resume {workflow_id}", persist_result=False)
def resume_workflow_flow(workflow_id: str, overrides: list[str] | None = None) -> WorkflowResult:
    workflow, config, journal = reopen(workflow_id, overrides or [])
    with journal.lock(workflow_id):
        result = execute(workflow, config, journal, current_flow_run.id)
    return as_state(result)  # type: ignore[return-value]
