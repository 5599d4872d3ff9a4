"""The seed's exchange formats: the workflow result and the REST API envelope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from provisioning.errors import ProvisioningError

OperationStatus = Literal["succeeded", "failed", "not_run", "rolled_back", "pending", "running"]


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        if isinstance(error, ProvisioningError):
            return cls.model_validate(error.to_dict())
        return cls(code="INTERNAL_ERROR", message=f"{type(error).__name__}: {error}")


class ResourceInfo(BaseModel):
    """A resource an operation created or touched."""

    provider: str
    resource_id: str
    operation_id: str
    name: str = ""
    key: str | None = None
    state: str = "present"


class OperationResult(BaseModel):
    id: str
    kind: str
    provider: str | None = None
    status: OperationStatus
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The operation's own output (e.g. the server record, the command's exit code and output).
    output: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    resources: list[ResourceInfo] = Field(default_factory=list)
    #: True when a persisted result from an earlier run was reused instead of running again.
    reused: bool = False

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class RollbackStep(BaseModel):
    operation_id: str
    action: str
    status: Literal["done", "failed", "skipped"]
    error: str | None = None


class WorkflowOutcome(BaseModel):
    """The ``result`` part of :class:`WorkflowResult`."""

    workflow_id: str
    name: str
    flow_run_id: str | None = None
    operations: list[OperationResult] = Field(default_factory=list)
    resources: list[ResourceInfo] = Field(default_factory=list)
    rollback: list[RollbackStep] | None = None
    duration_s: float = 0.0

    def operation(self, operation_id: str) -> OperationResult:
        for operation in self.operations:
            if operation.id == operation_id:
                return operation
        raise KeyError(operation_id)


class ResultContext(BaseModel):
    workflow_id: str
    step: str
    flow_run_id: str | None = None


class WorkflowResult(BaseModel):
    """What ``run_workflow`` returns: ``status`` success | error | partial, in the seed's shape."""

    status: Literal["success", "error", "partial"]
    result: WorkflowOutcome
    error: ErrorInfo | None = None
    context: ResultContext

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def counts(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for operation in self.result.operations:
            tally[operation.status] = tally.get(operation.status, 0) + 1
        return tally

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items()))
        lines = [
            f"<WorkflowResult {self.context.workflow_id} {self.status}: {counts}; "
            f"{len(self.result.resources)} resources; {self.result.duration_s:.2f}s>"
        ]
        lines += [
            f"  {op.id:<20} {op.kind:<14} {op.status:<11} {op.error.message if op.error else ''}"
            for op in self.result.operations
        ]
        if self.error is not None:
            lines.append(f"  error {self.error.code}: {self.error.message}")
        return "\n".join(lines)

    __str__ = __repr__


class Metadata(BaseModel):
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    version: str = ""


class ApiEnvelope(BaseModel):
    """The seed's envelope around every REST response."""

    status: Literal["success", "error", "pending"]
    data: Any = None
    metadata: Metadata = Field(default_factory=Metadata)
    error: ErrorInfo | None = None
