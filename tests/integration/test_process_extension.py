"""The example extension in ``extensions/process``: discovered, activated, and a full lifecycle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import (
    PermanentProviderError,
    Provider,
    ResourceNotFound,
    ServerSpec,
    ServerState,
)
from providers.registry import get_provider, provider_names
from provisioning.extensions import ExtensionInfo, activate, deactivate, discover

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS = REPO / "extensions"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def process_extension() -> Iterator[ExtensionInfo]:
    (info,) = [info for info in discover([EXTENSIONS]) if info.name == "process"]
    activate(info)
    try:
        yield info
    finally:
        deactivate(info)


@pytest.fixture
def provider(process_extension: ExtensionInfo, tmp_path: Path) -> Iterator[Provider]:
    driver = get_provider("process", {"state_dir": str(tmp_path / "state"), "stop_timeout": 2})
    try:
        yield driver
    finally:
        for server in driver.list_servers():
            driver.delete_server(server.id)


def test_the_example_extension_is_valid_and_compatible() -> None:
    (info,) = [info for info in discover([EXTENSIONS]) if info.name == "process"]

    assert info.problems == []
    assert info.usable
    assert info.manifest is not None and info.manifest.type == "provider"


def test_activation_makes_the_process_provider_available(process_extension: ExtensionInfo) -> None:
    assert "process" in provider_names()
    deactivate(process_extension)
    assert "process" not in provider_names()


def test_a_process_server_lives_from_create_to_delete(provider: Provider) -> None:
    spec = ServerSpec(name="worker-1", labels={"role": "worker"})

    server = provider.create_server(spec, "wf-proc/worker")
    pid = server.raw["pid"]

    assert server.state == ServerState.running
    assert (server.name, server.key, server.labels) == ("worker-1", "wf-proc/worker", spec.labels)
    assert alive(pid)
    assert provider.get_server(server.id).state == ServerState.running
    assert provider.find("wf-proc/worker") == provider.get_server(server.id)
    assert provider.create_server(spec, "wf-proc/worker").id == server.id  # same key, same server
    other = provider.create_server(ServerSpec(name="worker-2"), "wf-proc/other")
    assert other.id != server.id
    assert sorted(s.id for s in provider.list_servers()) == sorted([server.id, other.id])

    provider.delete_server(server.id)

    assert not alive(pid)
    with pytest.raises(ResourceNotFound):
        provider.get_server(server.id)
    assert provider.find("wf-proc/worker") is None
    assert provider.wait_for(server.id, ServerState.deleted, timeout=1).state == ServerState.deleted
    provider.delete_server(server.id)  # deleting twice is fine
    assert [s.id for s in provider.list_servers()] == [other.id]


def test_a_server_that_exits_is_reported_stopped(provider: Provider) -> None:
    server = provider.create_server(
        ServerSpec(name="short", extra={"command": [sys.executable, "-c", "pass"]}), "wf-proc/short"
    )

    stopped = provider.wait_for(server.id, ServerState.stopped, timeout=10)

    assert stopped.id == server.id


def test_commands_may_be_given_as_a_command_line(provider: Provider, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    server = provider.create_server(
        ServerSpec(name="line", extra={"command": f"sh -c 'touch {marker}; exec sleep 60'"}),
        "wf-proc/line",
    )
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)

    assert marker.exists()
    assert provider.get_server(server.id).state == ServerState.running


def test_a_command_that_does_not_exist_fails_permanently(provider: Provider) -> None:
    spec = ServerSpec(name="nope", extra={"command": ["/nonexistent/binary"]})

    with pytest.raises(PermanentProviderError, match="cannot start '/nonexistent/binary'"):
        provider.create_server(spec, "wf-proc/nope")
    assert provider.find("wf-proc/nope") is None


def test_ids_from_users_never_name_other_files(provider: Provider) -> None:
    with pytest.raises(ResourceNotFound):
        provider.get_server("../../etc/passwd")


def test_another_process_finds_the_server_by_its_key(provider: Provider) -> None:
    server = provider.create_server(ServerSpec(name="shared"), "wf-proc/shared")
    script = textwrap.dedent(
        f"""
        import json
        from provisioning.extensions import activate, discover
        from providers.registry import get_provider
        (info,) = [i for i in discover([{str(EXTENSIONS)!r}]) if i.name == "process"]
        activate(info)
        driver = get_provider("process", {{"state_dir": {str(provider.config["state_dir"])!r}}})
        found = driver.find("wf-proc/shared")
        print(json.dumps({{"id": found.id, "state": found.state.value}}))
        """
    )

    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout

    assert json.loads(output) == {"id": server.id, "state": "running"}


def test_a_process_started_before_a_crash_is_adopted_not_duplicated(provider: Provider) -> None:
    # What a crash between starting the process and writing its record leaves behind.
    state_dir = str(Path(provider.config["state_dir"]).resolve())
    orphan = subprocess.Popen(
        ["sleep", "60"],
        env={
            **os.environ,
            "PROVISIONING_KEY": "wf-proc/orphan",
            "PROVISIONING_SERVER_NAME": "orphan-1",
            "PROVISIONING_STATE_DIR": state_dir,
        },
        start_new_session=True,
    )
    try:
        server = provider.create_server(ServerSpec(name="orphan-1"), "wf-proc/orphan")

        assert server.raw["pid"] == orphan.pid
        assert server.name == "orphan-1"
        provider.delete_server(server.id)
        assert orphan.wait(timeout=5) is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
