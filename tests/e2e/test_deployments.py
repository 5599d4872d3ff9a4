"""Deployments: ``prefect.yaml`` and ``deployments.serve`` declare the same flows, the file deploys
to a real Prefect server, and a deployed run completes through the served runner.

``prefect deploy`` silently ignores misspelled keys (DESIGN.md), so the file is also validated
with Prefect's own models made strict, and every entrypoint is loaded and given parameters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from pydantic import ConfigDict

from deployments import DEPLOYMENTS, DRIFT_CRON, full_name
from provisioning.sandbox.moto import MotoSandbox
from provisioning.sandbox.prefect_server import PrefectServer, free_port
from tests.fixtures.api import SOURCE_ROOT, ApiProcess

PREFECT_YAML = SOURCE_ROOT / "prefect.yaml"


def prefect_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PREFECT_YAML.read_text())
    return loaded


def test_prefect_yaml_has_no_key_prefect_would_ignore() -> None:
    from prefect.cli.deploy import _models
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig

    class StrictPool(WorkPoolConfig):
        model_config = ConfigDict(extra="forbid")

    class StrictDeployment(DeploymentConfig):
        model_config = ConfigDict(extra="forbid")
        work_pool: StrictPool | None = None

    class StrictFile(PrefectYamlModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True)
        definitions: dict[str, Any] | None = None
        deployments: list[StrictDeployment]  # type: ignore[assignment]

    namespace = {**vars(_models), "StrictPool": StrictPool, "StrictDeployment": StrictDeployment}
    StrictDeployment.model_rebuild(_types_namespace=namespace)
    StrictFile.model_rebuild(_types_namespace=namespace)
    document = StrictFile.model_validate(prefect_yaml())
    with pytest.raises(ValueError, match="entry_point"):
        StrictFile.model_validate({"deployments": [{"name": "x", "entry_point": "a.py:f"}]})
    assert {d.work_pool.name for d in document.deployments if d.work_pool} == {"provisioning"}


def test_prefect_yaml_and_the_runner_serve_the_same_deployments() -> None:
    declared = {item["name"]: item for item in prefect_yaml()["deployments"]}
    assert set(declared) == {spec.name for spec in DEPLOYMENTS}
    for spec in DEPLOYMENTS:
        assert declared[spec.name]["entrypoint"] == spec.entrypoint
        crons = [schedule["cron"] for schedule in declared[spec.name].get("schedules", [])]
        assert crons == ([spec.cron] if spec.cron else [])
    assert full_name("drift-check") == "drift-check/drift-check"
    assert DRIFT_CRON in [s["cron"] for s in declared["drift-check"]["schedules"]]


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=lambda spec: spec.name)
def test_every_entrypoint_loads_and_takes_its_parameters(
    spec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.flows import Flow, load_flow_from_entrypoint

    monkeypatch.chdir(SOURCE_ROOT)
    flow: Flow[Any, Any] = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
    assert flow.name == spec.flow_name
    assert flow.fn.__qualname__ == spec.load().fn.__qualname__
    samples: dict[str, dict[str, Any]] = {
        "run-workflow": {"spec": {"name": "x", "operations": []}, "overrides": ["a.b=1"]},
        "drift-check": {"workflow_id": None, "overrides": []},
    }
    parameters = samples.get(spec.name, {"workflow_id": "wf-1", "overrides": []})
    assert flow.validate_parameters(parameters) == parameters
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError

    with pytest.raises(SignatureMismatchError, match="not_a_parameter"):
        flow.validate_parameters({**parameters, "not_a_parameter": 1})
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({**parameters, "overrides": "not-a-list"})


def prefect(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=SOURCE_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


class BusyRetrying(httpx.HTTPTransport):
    """Retries what the SQLite-backed Prefect server answers under bursts (503, 429), as
    Prefect's own client does: a busy server is not what these tests are about."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(20):
            response = super().handle_request(request)
            if response.status_code not in (429, 503):
                return response
            response.close()
            time.sleep(0.5)
        return super().handle_request(request)


def submit_and_wait(api: ApiProcess, spec: dict[str, Any], timeout: float = 90) -> None:
    with api.client() as client:
        assert client.post("/workflows", json=spec).status_code == 202
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get(f"/workflows/{spec['workflow_id']}").json()["data"]["status"]
            if status not in ("pending", "running"):
                assert status == "succeeded"
                return
            time.sleep(0.5)
    raise AssertionError(f"{spec['workflow_id']} did not finish")


def wait_for_final_state(api: httpx.Client, flow_run_id: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"/flow_runs/{flow_run_id}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return str(state["type"])
        time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} did not finish")


def drift_events(api: httpx.Client, workflow_id: str) -> list[dict[str, Any]]:
    """``provisioning.resource.drifted`` events about the workflow, as Prefect stored them."""
    body = {
        "filter": {
            "occurred": {"since": "2000-01-01T00:00:00Z", "until": "2999-01-01T00:00:00Z"},
            "event": {"name": ["provisioning.resource.drifted"]},
            "any_resource": {"id": [f"provisioning.workflow.{workflow_id}"]},
        },
        "limit": 50,
    }
    events: list[dict[str, Any]] = api.post("/events/filter", json=body).json()["events"]
    return events


@pytest.mark.slow
def test_prefect_deploy_all_then_drift_check_runs_through_the_served_runner(
    prefect_server: PrefectServer,
    api_server: ApiProcess,
    moto_sandbox: MotoSandbox,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server.api_url,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    pool = prefect(["work-pool", "create", "provisioning", "--type", "process"], env)
    assert pool.returncode == 0 or "already exists" in pool.stdout, pool.stdout + pool.stderr
    deployed = prefect(["deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    api = httpx.Client(base_url=prefect_server.api_url, timeout=30, transport=BusyRetrying())
    for spec in DEPLOYMENTS:
        record = api.get(f"/deployments/name/{spec.full_name}").json()
        assert record["work_pool_name"] == "provisioning"
        assert record["entrypoint"] == spec.entrypoint
        crons = [item["schedule"].get("cron") for item in record["schedules"]]
        assert crons == ([spec.cron] if spec.cron else [])

    # A server the journal holds disappears behind our back ...
    workflow_id = f"wf-drift-{uuid.uuid4().hex[:8]}"
    submit_and_wait(
        api_server,
        {
            "workflow_id": workflow_id,
            "name": "drifting",
            "operations": [
                {
                    "id": "web",
                    "kind": "server.create",
                    "provider": "aws",
                    "params": {"name": f"{workflow_id}-web", "image": "ami-12345678"},
                }
            ],
        },
    )
    with api_server.client() as client:
        resources = client.get("/resources", params={"workflow_id": workflow_id}).json()
    instance_id = resources["data"]["items"][0]["resource_id"]
    ec2 = boto3.client("ec2", endpoint_url=moto_sandbox.endpoint_url, region_name="us-east-1")
    ec2.terminate_instances(InstanceIds=[instance_id])

    # ... and the drift check, deployed from prefect.yaml, run by the served runner, says so.
    deployment = api.get("/deployments/name/drift-check/drift-check").json()
    flow_run = api.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"workflow_id": workflow_id, "overrides": []}},
    ).json()
    assert wait_for_final_state(api, flow_run["id"]) == "COMPLETED"
    deadline = time.monotonic() + 30
    while not (events := drift_events(api, workflow_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [event["payload"]["resource_id"] for event in events] == [instance_id]
    assert events[0]["payload"]["drift"] == "missing"
    resource = events[0]["resource"]["prefect.resource.id"]
    assert resource == f"provisioning.resource.aws.{instance_id}"


@pytest.fixture
def embedded_project(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    base = tmp_path / "project"
    base.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PROVISIONING_BASE": str(base),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    (base / "config.user.toml").write_text(f"[api]\nport = {port}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "provisioning.cli", "up"],
        cwd=base,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process, base, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_provision_up_starts_everything_and_stops_cleanly(
    embedded_project: tuple[subprocess.Popen[str], Path, int], stop: signal.Signals
) -> None:
    process, base, port = embedded_project
    record = base / ".provisioning" / "server.json"
    deadline = time.monotonic() + 150
    health: dict[str, Any] = {}
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    assert health.get("status") == "success", health
    server = json.loads(record.read_text())
    assert set(server) >= {"api_url", "ui_url", "pid"}
    assert health["data"]["prefect"]["detail"].startswith(server["api_url"])
    deployment = httpx.get(f"{server['api_url']}/deployments/name/run-workflow/run-workflow")
    assert deployment.status_code == 200

    if stop == signal.SIGINT:
        os.killpg(process.pid, stop)  # Ctrl-C: the terminal signals the whole process group
    else:
        process.send_signal(stop)  # `kill`, a service manager: only the main process
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and server["ui_url"] in output
    assert not record.exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server['api_url']}/health", timeout=2)
    with pytest.raises(ProcessLookupError):
        os.kill(server["pid"], 0)
