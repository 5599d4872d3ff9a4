"""What an operation handler returns; persisted as the task's result for resume."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from provisioning.envelope import ResourceInfo
from provisioning.rollback import RollbackAction


class OperationOutput(BaseModel):
    output: dict[str, Any] = Field(default_factory=dict)
    resources: list[ResourceInfo] = Field(default_factory=list)
    #: How to undo this operation; ``None`` when it cannot be undone.
    rollback: RollbackAction | None = None
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
