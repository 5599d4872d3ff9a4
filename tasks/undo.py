"""Running one rollback action as a retried Prefect task."""

from __future__ import annotations

from typing import Any

from prefect import task

from provisioning.rollback import (
    CustomAction,
    DeleteResource,
    RestoreFile,
    RevertConfiguration,
    parse_action,
)
from tasks.commands import run_custom
from tasks.context import current
from tasks.files import restore_file
from tasks.operation import retry_if_transient
from tasks.servers import remove_server
from tasks.settings_file import revert_value


def apply_action(workflow_id: str, operation_id: str, action: dict[str, Any]) -> str:
    """Undo one operation; returns what was done, in words."""
    parsed = parse_action(action)
    if isinstance(parsed, DeleteResource):
        remove_server(current(workflow_id), parsed.provider, parsed.resource_id, operation_id)
        return f"deleted {parsed.provider} server {parsed.resource_id}"
    if isinstance(parsed, RestoreFile):
        return restore_file(parsed)
    if isinstance(parsed, RevertConfiguration):
        return revert_value(parsed)
    assert isinstance(parsed, CustomAction)
    return run_custom(parsed)


@task(
    name="undo",
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    persist_result=False,
)
def undo_action(workflow_id: str, operation_id: str, action: dict[str, Any]) -> str:
    return apply_action(workflow_id, operation_id, action)
