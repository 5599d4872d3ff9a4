"""Every flow of the project as a Prefect deployment, declared once.

``serve.py`` serves these with a runner (``python -m deployments.serve``), ``prefect.yaml`` declares
the same names for ``prefect deploy --all``, and the API starts runs of them by name
(``run-workflow/run-workflow``). Each deployment is named after its flow, so the full name is
``<flow>/<flow>`` and the three places cannot drift apart unnoticed (a test compares them).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect import Flow

__all__ = ["DEPLOYMENTS", "DRIFT_CRON", "DeploymentSpec", "by_flow", "full_name"]

#: Example schedule of the drift check: every day at 06:00 (UTC).
DRIFT_CRON = "0 6 * * *"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, where its file is, and its schedule if it has one."""

    flow_name: str
    #: ``module:attribute`` of the flow object, imported by the runner (cwd-independent).
    target: str
    #: ``path/to/file.py:function``, the form ``prefect.yaml`` uses.
    entrypoint: str
    description: str
    cron: str | None = None

    @property
    def name(self) -> str:
        return self.flow_name

    @property
    def full_name(self) -> str:
        """What ``run_deployment(name=...)`` takes."""
        return f"{self.flow_name}/{self.name}"

    def load(self) -> Flow[Any, Any]:
        module_name, _, attribute = self.target.partition(":")
        flow: Flow[Any, Any] = getattr(importlib.import_module(module_name), attribute)
        return flow


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "run-workflow",
        "flows.run:run_workflow_flow",
        "flows/run.py:run_workflow_flow",
        "Run (or, for a known workflow id, resume) a workflow spec.",
    ),
    DeploymentSpec(
        "resume-workflow",
        "flows.resume:resume_workflow_flow",
        "flows/resume.py:resume_workflow_flow",
        "Finish a workflow after a crash without creating anything twice.",
    ),
    DeploymentSpec(
        "rollback-workflow",
        "flows.rollback:rollback_workflow_flow",
        "flows/rollback.py:rollback_workflow_flow",
        "Undo what a workflow did, newest first.",
    ),
    DeploymentSpec(
        "destroy-workflow",
        "flows.destroy:destroy_workflow_flow",
        "flows/destroy.py:destroy_workflow_flow",
        "Delete every resource the journal says a workflow owns.",
    ),
    DeploymentSpec(
        "drift-check",
        "flows.drift:drift_check_flow",
        "flows/drift.py:drift_check_flow",
        "Compare the journal's resources with the providers; one event per drifted resource.",
        cron=DRIFT_CRON,
    ),
)


def by_flow(flow_name: str) -> DeploymentSpec:
    for spec in DEPLOYMENTS:
        if spec.flow_name == flow_name:
            return spec
    raise KeyError(flow_name)


def full_name(flow_name: str) -> str:
    """``run-workflow`` -> ``run-workflow/run-workflow``."""
    return by_flow(flow_name).full_name
