"""The local provider against a real, private Docker engine (see tests/fixtures/docker.py)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from providers.base import (
    KEY_LABEL,
    OPERATION_LABEL,
    WORKFLOW_LABEL,
    PermanentProviderError,
    ResourceNotFound,
    ServerSpec,
    ServerState,
    TransientProviderError,
)
from providers.local import LocalProvider, container_name, translate_error
from providers.registry import get_provider
from provisioning.sandbox.docker import DockerSandbox

pytestmark = pytest.mark.docker


def _containers_with_key(sandbox: DockerSandbox, key: str) -> list[Any]:
    client = sandbox.client()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"{KEY_LABEL}={key}"}, sparse=True)
        )
    finally:
        client.close()


def test_lifecycle_create_find_get_list_wait_delete(local_provider: LocalProvider) -> None:
    key = "wf-life/web"
    created = local_provider.create_server(ServerSpec(name="web-1"), key)

    assert created.provider == "local"
    assert created.key == key
    assert created.name.startswith("web-1-")
    assert local_provider.find(key) == created
    assert local_provider.get_server(created.id).id == created.id
    assert [server.id for server in local_provider.list_servers()] == [created.id]

    running = local_provider.wait_for(created.id, ServerState.running, timeout=10)
    assert running.addresses == []  # network_mode "none": no address to reach
    assert running.raw["NetworkMode"] == "none"

    local_provider.delete_server(created.id)

    with pytest.raises(ResourceNotFound) as missing:
        local_provider.get_server(created.id)
    assert missing.value.context["provider"] == "local"
    assert local_provider.find(key) is None
    assert local_provider.list_servers() == []
    local_provider.delete_server(created.id)  # idempotent
    assert local_provider.wait_for(created.id, ServerState.deleted).state == ServerState.deleted


def test_same_key_twice_gives_the_same_single_container(
    local_provider: LocalProvider, docker_sandbox: DockerSandbox
) -> None:
    key = "wf-idem/db"
    first = local_provider.create_server(ServerSpec(name="db"), key)
    again = local_provider.create_server(ServerSpec(name="db"), key)

    assert again.id == first.id
    assert len(_containers_with_key(docker_sandbox, key)) == 1


def test_a_create_interrupted_before_start_is_finished_on_resume(
    local_provider: LocalProvider, docker_sandbox: DockerSandbox
) -> None:
    key = "wf-crash/web"
    client = docker_sandbox.client()
    try:
        # What a crash between the engine's ``create`` and ``start`` leaves behind.
        client.containers.create(
            docker_sandbox.image,
            name=container_name("web", key),
            labels={KEY_LABEL: key},
            network_mode="none",
        )
    finally:
        client.close()

    resumed = local_provider.create_server(ServerSpec(name="web"), key)

    assert resumed.state == ServerState.running
    assert len(_containers_with_key(docker_sandbox, key)) == 1


def test_labels_round_trip(local_provider: LocalProvider) -> None:
    labels = {"role": "db", "team": "payments", "tier": "backend"}
    created = local_provider.create_server(ServerSpec(name="db", labels=labels), "wf-lab/db")

    assert created.labels == labels
    assert local_provider.get_server(created.id).labels == labels
    assert [server.labels for server in local_provider.list_servers()] == [labels]
    assert created.raw["Labels"][WORKFLOW_LABEL] == "wf-lab"
    assert created.raw["Labels"][OPERATION_LABEL] == "db"


def test_list_servers_ignores_containers_we_did_not_create(
    local_provider: LocalProvider, docker_sandbox: DockerSandbox
) -> None:
    client = docker_sandbox.client()
    foreign = client.containers.create(docker_sandbox.image, network_mode="none")
    try:
        ours = local_provider.create_server(ServerSpec(name="ours"), "wf-own/ours")
        assert [server.id for server in local_provider.list_servers()] == [ours.id]
    finally:
        foreign.remove(force=True)
        client.close()


def test_command_from_spec_extra_runs_and_its_exit_is_visible(
    local_provider: LocalProvider,
) -> None:
    spec = ServerSpec(name="job", extra={"command": ["sh", "-c", "exit 3"]})
    created = local_provider.create_server(spec, "wf-cmd/job")

    finished = local_provider.wait_for(created.id, ServerState.stopped, timeout=10)
    assert finished.raw["State"]["ExitCode"] == 3


def test_missing_image_is_a_permanent_one_line_error(local_provider: LocalProvider) -> None:
    key = "wf-img/web"
    with pytest.raises(PermanentProviderError) as failure:
        local_provider.create_server(ServerSpec(name="web", image="no-such-image:1.0"), key)

    message = str(failure.value)
    assert "\n" not in message
    assert "no-such-image:1.0" in message
    assert "provider 'local'" in message
    assert not failure.value.transient
    assert local_provider.find(key) is None


def test_bad_parameters_are_permanent_and_leave_nothing_behind(
    local_config: dict[str, Any], docker_sandbox: DockerSandbox
) -> None:
    provider = LocalProvider({**local_config, "network_mode": "no-such-network"})
    key = "wf-net/web"
    with pytest.raises(PermanentProviderError) as failure:
        provider.create_server(ServerSpec(name="web"), key)

    assert "no-such-network" in str(failure.value)
    assert _containers_with_key(docker_sandbox, key) == []


def test_engine_down_is_transient_and_calls_work_again_after_restart(
    local_provider: LocalProvider, docker_sandbox: DockerSandbox
) -> None:
    assert local_provider.check().reachable
    socket_url = docker_sandbox.socket_url
    docker_sandbox.stop()
    try:
        with pytest.raises(TransientProviderError) as failure:
            local_provider.list_servers()
        assert failure.value.context["provider"] == "local"
        assert socket_url in str(failure.value)
        status = local_provider.check()
        assert not status.reachable
        assert status.message
    finally:
        assert docker_sandbox.start() == socket_url

    assert local_provider.check().reachable
    created = local_provider.create_server(ServerSpec(name="after"), "wf-down/after")
    assert local_provider.get_server(created.id).key == "wf-down/after"


def test_closed_socket_is_transient_from_the_first_call(tmp_path: Path) -> None:
    provider = get_provider("local", {"docker_socket": f"unix://{tmp_path}/closed.sock"})

    with pytest.raises(TransientProviderError):
        provider.get_server("abc")
    assert provider.check().reachable is False


def _api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    response.url = "http+docker://localhost/v1.41/containers/create"
    return docker.errors.APIError("engine error", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, TransientProviderError),
        (503, TransientProviderError),
        (429, TransientProviderError),
        (400, PermanentProviderError),
        (409, PermanentProviderError),
    ],
)
def test_http_status_decides_retry_or_fail(status: int, expected: type[Exception]) -> None:
    error = translate_error(
        _api_error(status, "line one\nline two"), action="create container", socket="unix:///x"
    )

    assert type(error) is expected
    assert error.context["provider"] == "local"
    assert "\n" not in str(error)


def test_container_names_are_valid_and_unique_per_key() -> None:
    first = container_name("web server #1/é", "wf/a")
    second = container_name("web server #1/é", "wf/b")

    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", first)
    assert first != second
    assert container_name("---", "wf/a").startswith("server-")


def test_parallel_creates_with_one_key_make_one_container(
    local_provider: LocalProvider, docker_sandbox: DockerSandbox
) -> None:
    key = "wf-race/web"
    with ThreadPoolExecutor(max_workers=4) as pool:
        servers = list(
            pool.map(lambda _: local_provider.create_server(ServerSpec(name="web"), key), range(4))
        )

    assert len({server.id for server in servers}) == 1
    assert len(_containers_with_key(docker_sandbox, key)) == 1
