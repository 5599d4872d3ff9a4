"""The ``data`` of each response: small pydantic models, documented in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from provisioning.journal import ResourceRecord, WorkflowRecord

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int | None = None
    limit: int
    offset: int
    #: The ``offset`` of the next page, or None on the last one.
    next_offset: int | None = None


class FlowRunInfo(BaseModel):
    """The Prefect side of a workflow: its latest flow run."""

    id: str
    name: str | None = None
    state: str | None = None
    state_type: str | None = None
    final: bool = False
    ui_url: str | None = None


class WorkflowSummary(BaseModel):
    workflow_id: str
    name: str
    status: str
    generation: int
    flow_run_id: str | None
    created_at: datetime
    updated_at: datetime
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, record: WorkflowRecord) -> WorkflowSummary:
        return cls.model_validate(record.model_dump(exclude={"spec"}))


class WorkflowDetail(WorkflowSummary):
    spec: dict[str, Any]
    flow_run: FlowRunInfo | None = None
    #: Why ``flow_run`` is missing although the journal names one (Prefect unreachable).
    prefect_error: str | None = None


class Submission(BaseModel):
    """The answer to ``POST /workflows``."""

    workflow_id: str
    flow_run_id: str
    #: False when the workflow id was known: the existing run is returned, none is started.
    created: bool
    status: str
    state: str | None = None
    deployment: str


class Cancellation(BaseModel):
    workflow_id: str
    flow_run_id: str | None
    #: The cancelled run's state after the request (``Cancelling``, ``Cancelled``, ...).
    state: str | None
    rollback_flow_run_id: str | None = None


class LogLine(BaseModel):
    timestamp: datetime
    level: int
    level_name: str
    logger: str
    message: str
    task_run_id: str | None = None


class RunLogs(Page[LogLine]):
    flow_run_id: str


class ProviderInfo(BaseModel):
    name: str
    reachable: bool | None
    message: str = ""
    config: dict[str, Any] = Field(default_factory=dict)


class ResourcePage(Page[ResourceRecord]):
    pass


class WorkflowPage(Page[WorkflowSummary]):
    pass


class HealthCheck(BaseModel):
    ok: bool
    detail: str = ""


class Health(BaseModel):
    service: str = "provisioning-api"
    version: str
    ok: bool
    prefect: HealthCheck
    journal: HealthCheck
