"""``drift-check``: does every resource the journal holds still exist at its provider?

Someone may delete or break a server behind our back (a console click, a provider incident).
The check lists each provider once, compares the journal's live resources with what the provider
reports, emits a ``provisioning.resource.drifted`` event per difference (automations in Prefect can
page someone on it) and returns a report. It only reports: repairing is ``resume`` or ``destroy``.
"""

from __future__ import annotations

from collections import defaultdict

from prefect import flow, task
from prefect.runtime import flow_run as current_flow_run
from pydantic import BaseModel, Field

from flows.common import base_config
from providers.base import ServerState
from providers.registry import get_provider
from provisioning.errors import ProviderError
from provisioning.events import DriftKind, ResourceDrifted, emit
from provisioning.journal import Journal, ResourceRecord
from tasks.operation import retry_if_transient


class DriftedResource(BaseModel):
    workflow_id: str
    operation_id: str
    provider: str
    resource_id: str
    drift: DriftKind
    expected: str
    #: What the provider reports: a state, or ``absent``.
    actual: str


class DriftReport(BaseModel):
    checked: int = 0
    drifted: list[DriftedResource] = Field(default_factory=list)
    #: Providers that could not be listed, and why: their resources were not checked.
    unreachable: dict[str, str] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.drifted and not self.unreachable


@task(name="list servers", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_if_transient)
def provider_states(provider: str, overrides: list[str]) -> dict[str, str]:
    """Server id -> normalised state at ``provider`` (deleted servers left out)."""
    config = base_config(overrides)
    driver = get_provider(provider, config.provider(provider))
    return {
        server.id: server.state.value
        for server in driver.list_servers()
        if server.state != ServerState.deleted
    }


def _compare(resource: ResourceRecord, states: dict[str, str]) -> DriftedResource | None:
    actual = states.get(resource.resource_id)
    if actual is None:
        drift: DriftKind = "missing"
        actual = "absent"
    elif actual == ServerState.error.value:
        drift = "state"
    else:
        return None
    return DriftedResource(
        workflow_id=resource.workflow_id,
        operation_id=resource.operation_id,
        provider=resource.provider,
        resource_id=resource.resource_id,
        drift=drift,
        expected=resource.state,
        actual=actual,
    )


@flow(name="drift-check", persist_result=False)
def drift_check_flow(
    workflow_id: str | None = None, overrides: list[str] | None = None
) -> DriftReport:
    """Check every live resource of the journal (or of one workflow) against its provider."""
    overrides = list(overrides or [])
    journal = Journal.from_config(base_config(overrides))
    by_provider: dict[str, list[ResourceRecord]] = defaultdict(list)
    for resource in journal.resources(workflow_id):
        if resource.state == "present":
            by_provider[resource.provider].append(resource)
    report = DriftReport()
    for provider, resources in sorted(by_provider.items()):
        state = provider_states.with_options(task_run_name=f"list {provider}")(
            provider, overrides, return_state=True
        )
        listed = state.result(raise_on_failure=False)
        if not isinstance(listed, dict):
            error = listed if isinstance(listed, ProviderError) else state.message
            report.unreachable[provider] = str(error)
            continue
        report.checked += len(resources)
        for resource in resources:
            drifted = _compare(resource, listed)
            if drifted is None:
                continue
            report.drifted.append(drifted)
            emit(
                ResourceDrifted(
                    workflow_id=drifted.workflow_id,
                    flow_run_id=current_flow_run.id,
                    provider=drifted.provider,
                    resource_id=drifted.resource_id,
                    operation_id=drifted.operation_id,
                    drift=drifted.drift,
                    expected=drifted.expected,
                    actual=drifted.actual,
                )
            )
    return report
