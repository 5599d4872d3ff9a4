"""Workflows across all three providers, and each provider's errors as a workflow meets them.

Run in this process under Prefect's harness against moto, the UpCloud emulator and the private
dockerd, with the project directory and helpers of ``test_server_workflows``. After each run the
sandboxes are asked directly what exists: a server on each provider plus local steps run end to
end and are destroyed; Docker faults injected on the wire (a 503, a connection closed) are retried
with backoff until the workflow succeeds; a permanent error (a plan, zone or image the provider
refuses) fails at once with the provider's words; an AWS capacity shortage is tried only the
bounded number of times.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flows.destroy import destroy_workflow_flow
from flows.run import run_workflow
from providers.aws import CAPACITY_MAX_ATTEMPTS
from providers.base import Provider, ServerState
from providers.local import LocalProvider
from provisioning.events import EventStream, OperationRetried, bus
from provisioning.sandbox.moto import MotoSandbox
from tests.fixtures.docker_faults import DockerFaultProxy, FaultMode
from tests.integration import test_server_workflows as workflows
from tests.integration.test_server_workflows import Project, created, operation, server, workflow

project = workflows.project


def servers_by_key(*drivers: Provider) -> dict[str, dict[str, ServerState]]:
    """Provider -> idempotency key -> state of each live server of ours, asked at the sandbox."""
    return {
        driver.name: {server.key: server.state for server in driver.list_servers() if server.key}
        for driver in drivers
    }


@pytest.fixture
def local_project(
    project: Project, local_config: dict[str, Any], local_provider: LocalProvider
) -> Project:
    """The project with ``[providers.local]`` at the session's dockerd as well."""
    project.configure("local", **local_config)
    return project


@pytest.fixture
def retries() -> Iterator[EventStream]:
    """The ``operation.retried`` events of the test's runs, in the order they were emitted."""
    with bus.stream(OperationRetried) as stream:
        yield stream


def retry_delays(stream: EventStream) -> list[float]:
    delays: list[float] = []
    while isinstance(event := stream.get(timeout=0), OperationRetried):
        delays.append(event.delay_s)
    return delays


@pytest.mark.docker
def test_a_server_on_each_provider_and_local_steps_run_then_are_destroyed(
    local_project: Project, local_provider: LocalProvider
) -> None:
    drivers = (local_project.aws, local_project.upcloud, local_provider)
    spec = workflow(
        "wf-three",
        [
            operation("motd", "file.write", path="motd.txt", content="hello from three\n"),
            server("db", "aws", "db-1"),
            server("web", "upcloud", "web-1"),
            server("box", "local", "box-1"),
            operation("smoke", "command.run", argv=["grep", "-q", "three", "motd.txt"]),
        ],
        {"db": ["motd"], "web": ["motd"], "box": ["motd"], "smoke": ["db", "web", "box"]},
    )

    result = run_workflow(spec)

    assert result.ok, result
    assert servers_by_key(*drivers) == {
        "aws": {"wf-three/db": ServerState.running},
        "upcloud": {"wf-three/web": ServerState.running},
        "local": {"wf-three/box": ServerState.running},
    }
    live_ids = {driver.name: {s.id for s in driver.list_servers()} for driver in drivers}
    assert live_ids == created(result)
    assert (local_project.base / "motd.txt").read_text() == "hello from three\n"
    assert result.result.operation("smoke").status == "succeeded"

    report = destroy_workflow_flow("wf-three")

    assert report.ok, report
    assert {step.operation_id for step in report.steps} == {"db", "web", "box"}
    assert servers_by_key(*drivers) == {"aws": {}, "upcloud": {}, "local": {}}


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["503", "close"])
def test_docker_engine_faults_are_retried_with_backoff_until_the_workflow_succeeds(
    local_project: Project,
    local_provider: LocalProvider,
    docker_faults: DockerFaultProxy,
    retries: EventStream,
    mode: FaultMode,
) -> None:
    local_project.configure("local", docker_socket=docker_faults.socket_url)
    docker_faults.fail(2, mode)
    spec = workflow(f"wf-docker-{mode}", [server("box", "local", "box-1")])

    result = run_workflow(spec)

    assert result.ok, result
    assert result.result.operation("box").attempts == 3  # two faults, one per attempt
    assert retry_delays(retries) == [0.05, 0.1]  # exponential backoff, no jitter configured
    assert docker_faults.faults_pending == 0
    key = f"wf-docker-{mode}/box"
    assert servers_by_key(local_provider) == {"local": {key: ServerState.running}}


@pytest.mark.parametrize(
    ("provider", "params", "message"),
    [
        (
            "upcloud",
            {"size": "64xCPU-1TB"},
            "provider 'upcloud': PLAN_INVALID: The plan '64xCPU-1TB' does not exist.",
        ),
        (
            "upcloud",
            {"zone": "mars-north1"},
            "provider 'upcloud': ZONE_INVALID: The zone 'mars-north1' does not exist.",
        ),
        pytest.param(
            "local",
            {"image": "no-such-image:1.0"},
            "provider 'local': image 'no-such-image:1.0' is not in the Docker engine at unix://",
            marks=pytest.mark.docker,
        ),
    ],
    ids=["upcloud-plan", "upcloud-zone", "local-image"],
)
def test_a_permanent_error_fails_at_once_with_the_providers_reason(
    request: pytest.FixtureRequest,
    project: Project,
    retries: EventStream,
    provider: str,
    params: dict[str, Any],
    message: str,
) -> None:
    if provider == "local":
        request.getfixturevalue("local_project")
        driver: Provider = request.getfixturevalue("local_provider")
    else:
        driver = project.upcloud
    spec = workflow(
        f"wf-refused-{provider}", [server("box", provider, "box-1", **params)], on_failure="keep"
    )

    result = run_workflow(spec)

    assert result.status == "error"
    box = result.result.operation("box")
    assert box.status == "failed"
    assert box.attempts == 1
    assert retry_delays(retries) == []
    assert box.error is not None and box.error.message.startswith(message), box.error
    assert servers_by_key(driver) == {provider: {}}


def test_an_aws_capacity_shortage_is_tried_only_the_bounded_number_of_times(
    project: Project, moto_sandbox: MotoSandbox, retries: EventStream
) -> None:
    moto_sandbox.inject(10, "capacity")
    # Far more retries than the bound, so that only the bound can stop the tries.
    db = {**server("db", "aws", "db-1", size="m5.large"), "retries": 6}
    spec = workflow("wf-no-capacity", [db], on_failure="keep")

    result = run_workflow(spec)

    assert result.status == "error"
    failed = result.result.operation("db")
    assert failed.status == "failed"
    assert failed.attempts == CAPACITY_MAX_ATTEMPTS == 2
    assert len(retry_delays(retries)) == CAPACITY_MAX_ATTEMPTS - 1
    assert failed.error is not None
    assert failed.error.message.startswith(
        "provider 'aws': InsufficientInstanceCapacity: We currently do not have sufficient "
        "m5.large capacity"
    ), failed.error
    assert moto_sandbox.faults_pending == 10 - CAPACITY_MAX_ATTEMPTS  # one launch per try
    assert servers_by_key(project.aws) == {"aws": {}}
