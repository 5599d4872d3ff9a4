"""What every flow needs to reopen a workflow the journal knows."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from providers.registry import load_workflow
from provisioning.config import Config, Layer, load_config
from provisioning.errors import WorkflowNotFound
from provisioning.extensions import activate_configured
from provisioning.journal import Journal
from provisioning.spec import Workflow


def base_config(overrides: Iterable[str] = ()) -> Config:
    """The configuration from files and overrides, with the configured extensions activated
    (an extension's provider must be known before a spec naming it is validated)."""
    config = load_config(overrides=overrides)
    activate_configured(config)
    return config


def without_heartbeat() -> AbstractContextManager[Any]:
    """For flows called in-process: Prefect's heartbeat thread adds about 1 s to every run's end,
    and a process that calls a flow directly sees its outcome without the server's help."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def workflow_config(workflow: Workflow, overrides: Iterable[str] = ()) -> Config:
    """Layered configuration with the workflow's own ``configuration`` above the files."""
    layer = Layer(f"workflow {workflow.workflow_id}", workflow.configuration.overrides())
    return load_config(overrides=overrides, extra_layers=[layer])


def parallelism_of(workflow: Workflow, config: Config) -> int:
    """Operations at once: the spec's ``parallelism``, else ``engine.parallelism`` (10)."""
    return int(workflow.configuration.parallelism or config.get("engine.parallelism", 10))


def reopen(workflow_id: str, overrides: Iterable[str] = ()) -> tuple[Workflow, Config, Journal]:
    """The stored spec of ``workflow_id``, its configuration and the journal holding it."""
    overrides = list(overrides)
    journal = Journal.from_config(base_config(overrides))
    record = journal.get_workflow(workflow_id)
    if record is None:
        raise WorkflowNotFound(f"no workflow '{workflow_id}' in the journal {journal.url}")
    workflow = load_workflow(record.spec)
    return workflow, workflow_config(workflow, overrides), journal
