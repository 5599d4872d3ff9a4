"""The journal's records as callers see them: frozen pydantic models and the status vocabularies."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

WorkflowStatus = Literal[
    "pending", "running", "succeeded", "failed", "rolled_back", "destroyed", "partial", "cancelled"
]
OperationStatus = Literal[
    "pending", "intent", "running", "succeeded", "failed", "not_run", "rolled_back"
]
ResourceState = Literal["creating", "present", "deleted", "unknown"]
RollbackStatus = Literal["pending", "done", "failed", "skipped"]

#: What callers may pass as an ``error``: the envelope's error object, the exception itself, or
#: just a message. All are stored as the envelope's ``{"code", "message", "details"}`` object.
ErrorInput = Mapping[str, Any] | BaseException | str | None


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class WorkflowRecord(_Record):
    workflow_id: str
    name: str
    spec: dict[str, Any]
    status: WorkflowStatus
    flow_run_id: str | None
    created_at: datetime
    updated_at: datetime
    #: Bumped by ``Journal.new_generation``; part of the engine's cache keys so that a re-run after
    #: a rollback creates things again instead of returning results of undone operations.
    generation: int
    error: dict[str, Any] | None


class OperationRecord(_Record):
    workflow_id: str
    operation_id: str
    kind: str
    provider: str | None
    key: str
    status: OperationStatus
    #: How many times an intent was recorded (1 on the first try; retries and resumes add one).
    attempt: int
    result: Any
    error: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None


class ResourceRecord(_Record):
    id: int
    workflow_id: str
    operation_id: str
    provider: str
    resource_id: str
    key: str
    state: ResourceState
    created_at: datetime
    updated_at: datetime


class RollbackEntry(_Record):
    #: Push order: a higher id was pushed later and is undone earlier.
    id: int
    workflow_id: str
    operation_id: str
    action: dict[str, Any]
    status: RollbackStatus
    error: dict[str, Any] | None
    pushed_at: datetime
    done_at: datetime | None


class LockRecord(_Record):
    workflow_id: str
    owner: str
    pid: int
    hostname: str
    acquired_at: datetime
    heartbeat_at: datetime


class Checkpoint(_Record):
    """How far a workflow got, in the seed's checkpoint shape.

    ``step`` is the number of completed (succeeded) operations: with parallel waves there is no
    single "current step", while a count is what a progress display and a resume report need.
    ``current_state`` holds ``status`` (the workflow's) and ``operations`` (id -> status, in start
    order); ``metadata`` holds ``name``, ``generation``, ``flow_run_id``, ``resource_count``
    (resources not deleted) and ``rollback_depth`` (pending rollback entries).
    """

    workflow_id: str
    step: int
    completed_operations: list[str]
    current_state: dict[str, Any]
    metadata: dict[str, Any]
    timestamp: datetime


# --------------------------------------------------------------------------------------- schema
