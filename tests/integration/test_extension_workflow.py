"""The example ``process`` provider extension, discovered from config and used by a workflow."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.destroy import destroy_workflow_flow
from flows.drift import drift_check_flow
from flows.run import run_workflow
from providers.registry import get_provider
from provisioning.cli import app
from provisioning.extensions import active_extensions, deactivate
from tests.fixtures.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_a_workflow_creates_and_destroys_process_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONING_BASE", str(tmp_path))
    overrides = [
        f"extensions.paths={json.dumps([str(REPO / 'extensions')])}",
        f"providers.process.state_dir={json.dumps(str(tmp_path / 'processes'))}",
    ]
    workflow_id = f"wf-process-{uuid.uuid4().hex[:6]}"
    spec = {
        "workflow_id": workflow_id,
        "name": "process-stack",
        "operations": [
            {
                "id": "worker",
                "kind": "server.create",
                "provider": "process",
                "params": {"name": "worker-1", "extra": {"command": ["sleep", "300"]}},
            },
            {
                "id": "marker",
                "kind": "file.write",
                "params": {"path": "marker.txt", "content": "worker up"},
            },
        ],
        "dependencies": {"marker": ["worker"]},
    }
    result = run_workflow(spec, overrides=overrides)
    assert result.status == "success", result
    [resource] = result.result.resources
    assert resource.provider == "process"
    provider = get_provider("process", {"state_dir": str(tmp_path / "processes")})
    server = provider.get_server(resource.resource_id)
    assert server.state.value == "running"
    assert server.key == f"{workflow_id}/worker"
    pid = int(resource.resource_id.split("-")[0])
    os.kill(pid, 0)  # a real process

    report = destroy_workflow_flow(workflow_id, overrides)
    assert report.ok and [step.operation_id for step in report.steps] == ["worker"]
    assert provider.find(f"{workflow_id}/worker") is None


def test_drift_check_sees_an_extension_providers_server_go_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONING_BASE", str(tmp_path))
    overrides = [
        f"extensions.paths={json.dumps([str(REPO / 'extensions')])}",
        f"providers.process.state_dir={json.dumps(str(tmp_path / 'processes'))}",
    ]
    workflow_id = f"wf-drift-process-{uuid.uuid4().hex[:6]}"
    spec = {
        "workflow_id": workflow_id,
        "name": "process-drift",
        "operations": [
            {"id": "worker", "kind": "server.create", "provider": "process",
             "params": {"name": "worker-1", "extra": {"command": ["sleep", "300"]}}},
        ],
    }  # fmt: skip
    result = run_workflow(spec, overrides=overrides)
    assert result.status == "success", result
    for info in active_extensions():  # as in a runner process that only serves drift-check
        deactivate(info)
    healthy = drift_check_flow(workflow_id, overrides)
    assert (healthy.checked, healthy.drifted, healthy.unreachable) == (1, [], {})

    [resource] = result.result.resources
    provider = get_provider("process", {"state_dir": str(tmp_path / "processes")})
    provider.delete_server(resource.resource_id)  # gone behind the journal's back
    drifted = drift_check_flow(workflow_id, overrides)
    assert [(d.operation_id, d.drift) for d in drifted.drifted] == [("worker", "missing")]


def test_the_example_workflow_extension_runs_by_reference(workspace: Workspace) -> None:
    workspace.configure({"extensions": {"paths": [str(REPO / "extensions")]}})

    result = CliRunner().invoke(app, ["run", "starter:hello"], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    assert (workspace.base / "hello.txt").read_text() == "hello from the starter extension\n"
    assert "success 2 operations, 0 resources" in result.output
