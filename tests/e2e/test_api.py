"""The REST API through a real uvicorn server on 127.0.0.1, with runs executed by a real runner.

Every answer is checked for the seed's envelope; runs go API -> Prefect deployment -> runner ->
journal, and the test reads the outcome back through the API like a client would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from providers.registry import load_workflow
from provisioning.sandbox.moto import MotoSandbox
from provisioning.sandbox.prefect_server import free_port
from tests.fixtures.api import UPCLOUD_PASSWORD, ApiProcess

pytestmark = pytest.mark.slow

LOCAL_WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "workflows" / "local.toml"


@pytest.fixture
def api(api_server: ApiProcess) -> Iterator[httpx.Client]:
    with api_server.client() as client:
        yield client


def envelope(response: httpx.Response, status: str = "success") -> dict[str, Any]:
    """The body, after checking it is the seed's envelope with ``status``."""
    body: dict[str, Any] = response.json()
    assert set(body) == {"status", "data", "metadata", "error"}, body
    assert body["status"] == status, body
    metadata = body["metadata"]
    assert set(metadata) == {"timestamp", "request_id", "version"}
    assert metadata["request_id"] == response.headers["X-Request-ID"]
    assert metadata["version"]
    if status == "error":
        assert set(body["error"]) == {"code", "message", "details"}
        assert body["data"] is None
    else:
        assert body["error"] is None
    return body


def error_of(response: httpx.Response, http_status: int, code: str) -> dict[str, Any]:
    assert response.status_code == http_status, response.text
    error: dict[str, Any] = envelope(response, "error")["error"]
    assert error["code"] == code, error
    return error


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def local_spec(workflow_id: str) -> dict[str, Any]:
    spec = load_workflow(LOCAL_WORKFLOW).model_dump(mode="json")
    spec["workflow_id"] = workflow_id
    return spec


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def workflow_status(api: httpx.Client, workflow_id: str) -> str:
    return str(envelope(api.get(f"/workflows/{workflow_id}"))["data"]["status"])


@pytest.fixture(scope="module")
def finished_local(api_server: ApiProcess) -> dict[str, Any]:
    """The example local workflow, submitted once on the seed's path and run to completion by
    the runner (the cancel test submits on ``/workflows``)."""
    workflow_id = unique("wf-api-local")
    with api_server.client() as api:
        response = api.post("/workflows/submit", json=local_spec(workflow_id))
        assert response.status_code == 202, response.text
        submitted = envelope(response, "pending")["data"]
        wait_until(
            lambda: workflow_status(api, workflow_id) == "succeeded",
            what=f"{workflow_id} to succeed",
        )
    return dict(submitted)


# ----------------------------------------------------------------------------- health and auth


def test_health_answers_without_a_token(api_server: ApiProcess) -> None:
    response = httpx.get(f"{api_server.url}/health")
    assert response.status_code == 200
    data = envelope(response)["data"]
    assert data["ok"] and data["prefect"]["ok"] and data["journal"]["ok"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "AUTH_REQUIRED"),
        ({"Authorization": "Bearer wrong-token"}, "AUTH_INVALID"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "AUTH_INVALID"),
        ({"Authorization": "Bearer"}, "AUTH_INVALID"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/workflows"),
        ("GET", "/providers"),
        ("GET", "/openapi.json"),
        ("GET", "/no-such-route"),
        ("POST", "/workflows"),
        ("POST", "/workflows/submit"),
        ("DELETE", "/workflows/wf-any"),
    ],
)
def test_every_route_but_health_refuses_a_missing_or_wrong_token(
    api_server: ApiProcess, headers: dict[str, str], code: str, method: str, path: str
) -> None:
    response = httpx.request(method, f"{api_server.url}{path}", headers=headers, json={})
    error_of(response, 401, code)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_refuses_to_listen_beyond_loopback_without_a_token(api_project: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PROVISIONING_BASE": str(api_project)}
    done = subprocess.run(
        [sys.executable, "-m", "provisioning.api", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "API_INSECURE_BIND" in done.stderr and "0.0.0.0" in done.stderr


# ----------------------------------------------------------------------------- the envelope


def test_request_id_is_echoed_or_made_up(api: httpx.Client) -> None:
    mine = api.get("/workflows", headers={"X-Request-ID": "client-req-42"})
    assert mine.headers["X-Request-ID"] == "client-req-42"
    assert envelope(mine)["metadata"]["request_id"] == "client-req-42"
    for unfit in ("has spaces", "x" * 200):
        made_up = api.get("/workflows", headers={"X-Request-ID": unfit})
        assert made_up.headers["X-Request-ID"] not in ("", unfit)
        envelope(made_up)


def test_unknown_route_and_wrong_method_answer_in_the_envelope(api: httpx.Client) -> None:
    error_of(api.get("/nothing-here"), 404, "NOT_FOUND")
    error_of(api.put("/workflows"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "query.limit"), ({"status": "bogus"}, "query.status")],
)
def test_bad_parameters_are_422_request_invalid(
    api: httpx.Client, params: dict[str, Any], field: str
) -> None:
    error = error_of(api.get("/workflows", params=params), 422, "REQUEST_INVALID")
    assert error["details"]["field"] == field
    assert error["message"].startswith(field)


def test_openapi_document_shows_the_workflow_contract(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()
    assert {"/workflows", "/workflows/submit", "/workflows/{workflow_id}/events"} <= set(
        document["paths"]
    )
    body = document["paths"]["/workflows"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/WorkflowSpec"}
    assert "operations" in document["components"]["schemas"]["WorkflowSpec"]["properties"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# ----------------------------------------------------------------------------- submission


@pytest.mark.parametrize(
    ("mutate", "code", "context"),
    [
        (
            lambda spec: spec["operations"][1]["params"].pop("key"),
            "WORKFLOW_INVALID",
            {"operation": "app-config", "field": "params.key"},
        ),
        (
            lambda spec: spec["operations"][0].update(kind="server.create", provider="nowhere"),
            "WORKFLOW_INVALID",
            {"operation": "prepare"},
        ),
        (
            lambda spec: spec["dependencies"].update(prepare=["check"]),
            "WORKFLOW_CYCLE",
            {},
        ),
    ],
    ids=["missing-field", "unknown-provider", "cycle"],
)
def test_invalid_workflows_are_refused_like_files(
    api: httpx.Client, mutate: Callable[[dict[str, Any]], Any], code: str, context: dict[str, str]
) -> None:
    workflow_id = unique("wf-invalid")
    spec = local_spec(workflow_id)
    mutate(spec)
    error = error_of(api.post("/workflows", json=spec), 422, code)
    for key, value in context.items():
        assert error["details"][key] == value
    error_of(api.get(f"/workflows/{workflow_id}"), 404, "WORKFLOW_NOT_FOUND")


def test_a_body_that_is_not_a_workflow_object_is_refused(api: httpx.Client) -> None:
    error_of(api.post("/workflows", json=["not", "an", "object"]), 422, "REQUEST_INVALID")
    error_of(
        api.post("/workflows", content=b"{nope", headers={"content-type": "application/json"}),
        422,
        "REQUEST_INVALID",
    )


def test_submission_runs_through_the_runner_and_is_idempotent(
    api: httpx.Client, finished_local: dict[str, Any], api_project: Path
) -> None:
    workflow_id = finished_local["workflow_id"]
    assert finished_local["created"] is True
    assert finished_local["deployment"] == "run-workflow/run-workflow"
    assert (api_project / ".demo" / "app" / "motd.txt").read_text() == (
        "provisioned by provisioning\n"
    )
    for path in ("/workflows", "/workflows/submit"):
        again = api.post(path, json=local_spec(workflow_id))
        assert again.status_code == 200, again.text
        data = envelope(again)["data"]
        assert data["created"] is False
        assert data["flow_run_id"] == finished_local["flow_run_id"]
        assert data["state"] == "Completed"
    detail = envelope(api.get(f"/workflows/{workflow_id}"))["data"]
    assert detail["flow_run"]["id"] == finished_local["flow_run_id"]
    assert detail["flow_run"]["state"] == "Completed" and detail["flow_run"]["final"]
    assert detail["spec"]["name"] == "local-stack"


def test_list_is_paginated_and_filtered_by_status(
    api: httpx.Client, finished_local: dict[str, Any]
) -> None:
    page = envelope(api.get("/workflows", params={"status": "succeeded", "limit": 500}))["data"]
    assert finished_local["workflow_id"] in [item["workflow_id"] for item in page["items"]]
    assert all(item["status"] == "succeeded" for item in page["items"])
    first = envelope(api.get("/workflows", params={"limit": 1}))["data"]
    assert len(first["items"]) == 1 and first["limit"] == 1 and first["total"] >= 1
    if first["total"] > 1:
        assert first["next_offset"] == 1
        second = envelope(api.get("/workflows", params={"limit": 1, "offset": 1}))["data"]
        assert second["items"][0]["workflow_id"] != first["items"][0]["workflow_id"]
    none = envelope(api.get("/workflows", params={"status": "destroyed", "offset": 10_000}))
    assert none["data"]["items"] == []


def test_status_shows_journal_and_prefect_states_per_operation(
    api: httpx.Client, finished_local: dict[str, Any]
) -> None:
    url = f"/workflows/{finished_local['workflow_id']}/status"

    def all_completed() -> dict[str, Any] | None:
        data: dict[str, Any] = envelope(api.get(url))["data"]
        states = {row["prefect_state"] for row in data["operations"]}
        return data if states == {"Completed"} else None

    data = wait_until(all_completed, timeout=45, what="Prefect task states")
    assert {row["operation_id"]: row["status"] for row in data["operations"]} == {
        "prepare": "succeeded",
        "app-config": "succeeded",
        "motd": "succeeded",
        "check": "succeeded",
    }
    assert data["flow_run_id"] == finished_local["flow_run_id"]
    # ``check`` has no undo command: nothing to stack for it.
    assert {entry["operation_id"] for entry in data["rollback_stack"]} == {
        "prepare",
        "app-config",
        "motd",
    }


def test_logs_of_a_finished_run_are_paginated(
    api: httpx.Client, finished_local: dict[str, Any]
) -> None:
    url = f"/workflows/{finished_local['workflow_id']}/logs"

    def final_line_arrived() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = envelope(api.get(url, params={"limit": 200}))["data"]["items"]
        return items if any("Finished in state" in i["message"] for i in items) else None

    lines = wait_until(final_line_arrived, timeout=30, what="the run's logs")
    assert "Beginning flow run" in lines[0]["message"]
    assert lines[0]["level_name"] == "INFO"
    first = envelope(api.get(url, params={"limit": 2}))["data"]
    second = envelope(api.get(url, params={"limit": 2, "offset": 2}))["data"]
    assert first["flow_run_id"] == finished_local["flow_run_id"]
    assert len(first["items"]) == 2 and first["next_offset"] == 2
    assert [i["message"] for i in first["items"] + second["items"]] == [
        i["message"] for i in lines[:4]
    ]


def read_stream(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event until the stream ends."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and name:
            events.append((name, json.loads(data)))
            name, data = "", ""
    return events


def test_events_stream_a_run_live_until_it_ends(api: httpx.Client) -> None:
    workflow_id = unique("wf-api-events")
    assert api.post("/workflows", json=local_spec(workflow_id)).status_code == 202
    with api.stream("GET", f"/workflows/{workflow_id}/events", params={"timeout": 90}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = read_stream(stream)
    names = [name for name, _ in events]
    assert names[-1] == "end" and events[-1][1]["state"] == "Completed"
    ours = [name for name in names if name.startswith("provisioning.")]
    assert ours[0] == "provisioning.workflow.started"
    assert ours[-1] == "provisioning.workflow.completed"
    assert ours.count("provisioning.operation.completed") == 4
    assert names.index("prefect.flow-run.Running") < names.index("provisioning.workflow.started")
    started = next(data for name, data in events if name == "provisioning.workflow.started")
    assert started["payload"]["workflow_id"] == workflow_id
    assert len({data.get("id") for _, data in events[:-1]}) == len(events) - 1  # no repeats


def test_events_without_follow_send_the_history_and_end(
    api: httpx.Client, finished_local: dict[str, Any]
) -> None:
    url = f"/workflows/{finished_local['workflow_id']}/events"
    with api.stream("GET", url, params={"follow": "false"}) as stream:
        events = read_stream(stream)
    assert events[-1][0] == "end"
    assert "provisioning.workflow.completed" in [name for name, _ in events]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("GET", "/status"), ("GET", "/logs"), ("GET", "/events"), ("DELETE", "")],
)
def test_unknown_workflows_are_404(api: httpx.Client, method: str, suffix: str) -> None:
    response = api.request(method, f"/workflows/wf-never-submitted{suffix}")
    error_of(response, 404, "WORKFLOW_NOT_FOUND")


def test_cancelling_a_finished_run_without_rollback_is_a_conflict(
    api: httpx.Client, finished_local: dict[str, Any]
) -> None:
    response = api.delete(f"/workflows/{finished_local['workflow_id']}")
    error_of(response, 409, "WORKFLOW_NOT_RUNNING")


# ----------------------------------------------------------------------------- providers, resources


def test_providers_show_masked_config_and_reachability(
    api: httpx.Client, moto_sandbox: MotoSandbox
) -> None:
    response = api.get("/providers")
    assert UPCLOUD_PASSWORD not in response.text
    providers = {item["name"]: item for item in envelope(response)["data"]}
    assert {"aws", "upcloud", "local"} <= set(providers)
    assert providers["aws"]["reachable"] is True
    assert providers["aws"]["config"]["endpoint_url"] == moto_sandbox.endpoint_url
    assert providers["upcloud"]["config"]["password"] == "********"
    assert providers["local"]["reachable"] is False and providers["local"]["message"]
    unchecked = envelope(api.get("/providers", params={"check": "false"}))["data"]
    assert {item["reachable"] for item in unchecked} == {None}


def test_cancel_with_rollback_undoes_what_the_run_created(
    api: httpx.Client, moto_sandbox: MotoSandbox, api_project: Path
) -> None:
    workflow_id = unique("wf-api-cancel")
    spec = {
        "workflow_id": workflow_id,
        "name": "cancel-me",
        "operations": [
            {
                "id": "db",
                "kind": "server.create",
                "provider": "aws",
                "params": {"name": f"{workflow_id}-db", "image": "ami-12345678"},
            },
            {"id": "note", "kind": "file.write", "params": {"path": "cancel.txt", "content": "x"}},
            {"id": "slow", "kind": "command.run", "params": {"argv": ["sleep", "4"]}},
        ],
        "dependencies": {"note": ["db"], "slow": ["note"]},
    }
    assert api.post("/workflows", json=spec).status_code == 202

    def slow_started() -> bool:
        data = envelope(api.get(f"/workflows/{workflow_id}/status"))["data"]
        statuses = {row["operation_id"]: row["status"] for row in data["operations"]}
        return statuses.get("slow") in ("intent", "running")

    wait_until(slow_started, what="the slow operation to start")
    resources = envelope(
        api.get("/resources", params={"workflow_id": workflow_id, "provider": "aws"})
    )["data"]
    assert resources["total"] == 1 and resources["items"][0]["state"] == "present"
    instance_id = resources["items"][0]["resource_id"]
    assert (api_project / "cancel.txt").exists()

    response = api.delete(f"/workflows/{workflow_id}", params={"rollback": "true"})
    assert response.status_code == 202, response.text
    cancelled = envelope(response, "pending")["data"]
    assert cancelled["state"] == "Cancelled"
    assert cancelled["rollback_flow_run_id"]

    wait_until(
        lambda: workflow_status(api, workflow_id) == "rolled_back", what="the rollback to finish"
    )
    gone = envelope(
        api.get("/resources", params={"workflow_id": workflow_id, "include_deleted": "true"})
    )["data"]["items"]
    assert [(item["resource_id"], item["state"]) for item in gone] == [(instance_id, "deleted")]
    assert not (api_project / "cancel.txt").exists()
    ec2 = boto3.client("ec2", endpoint_url=moto_sandbox.endpoint_url, region_name="us-east-1")
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    assert reservations[0]["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")
