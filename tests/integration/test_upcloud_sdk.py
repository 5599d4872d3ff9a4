"""The official ``upcloud-api`` SDK against the emulator: proof that it speaks the real shapes.

The SDK knows nothing of our code. If it can create a server from its own ``Server``/``Storage``
objects, read it back, list, stop and delete it, and sees the API's error codes, the emulator's
requests, answers and errors are the ones UpCloud's own client expects.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from upcloud_api import CloudManager, Label, Server, Storage
from upcloud_api.errors import UpCloudAPIError
from upcloud_api.server import login_user_block

from providers.base import KEY_LABEL, ServerSpec
from providers.upcloud import UpCloudProvider
from provisioning.sandbox.upcloud import PLANS, TEMPLATES, ZONES, UpCloudEmulator

UBUNTU = "01000000-0000-4000-8000-000030240200"


def _manager(emulator: UpCloudEmulator, **credentials: str) -> CloudManager:
    if not credentials:
        credentials = {"username": emulator.username, "password": emulator.password}
    manager = CloudManager(**credentials, timeout=10)
    manager.api.api_root = emulator.api_root
    return manager


def _wait_for_state(manager: CloudManager, uuid: str, state: str) -> Any:
    deadline = time.monotonic() + 5
    while (server := manager.get_server(uuid)).state != state:
        assert time.monotonic() < deadline, f"server still {server.state}, wanted {state}"
        time.sleep(0.05)
    return server


@pytest.fixture
def manager(upcloud_emulator: UpCloudEmulator, upcloud_config: dict[str, Any]) -> CloudManager:
    """An SDK client on a freshly reset emulator (``upcloud_config`` does the reset)."""
    return _manager(upcloud_emulator)


def _sdk_server(**overrides: Any) -> Server:
    fields: dict[str, Any] = {
        "plan": "1xCPU-2GB",
        "hostname": "sdk.example.test",
        "zone": "fi-hel1",
        "title": "SDK server",
        "labels": [Label("role", "sdk")],
        "login_user": login_user_block("deploy", ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 sdk@test"]),
        "storage_devices": [Storage(os=UBUNTU, size=30)],
    }
    return Server(**{**fields, **overrides})


def test_sdk_create_get_list_stop_delete(manager: CloudManager) -> None:
    created = manager.create_server(_sdk_server())

    assert created.state == "maintenance"
    assert created.storage_devices[0].size == 30
    assert created.storage_devices[0].title == "sdk.example.test OS disk"

    fetched = manager.get_server(created.uuid)
    assert (fetched.hostname, fetched.title, fetched.zone, fetched.plan) == (
        "sdk.example.test",
        "SDK server",
        "fi-hel1",
        "1xCPU-2GB",
    )
    assert fetched.labels == {"label": [{"key": "role", "value": "sdk"}]}
    assert fetched.get_public_ip().startswith("198.18.")
    assert fetched.get_utility_ip().startswith("10.")
    assert [server.uuid for server in manager.get_servers()] == [created.uuid]

    running = _wait_for_state(manager, created.uuid, "started")
    with pytest.raises(UpCloudAPIError) as refused:
        manager.delete_server(created.uuid)
    assert refused.value.error_code == "SERVER_STATE_ILLEGAL"

    running.shutdown(hard=True)
    assert running.state == "maintenance"
    stopped = _wait_for_state(manager, created.uuid, "stopped")
    stopped.destroy(delete_storages=True)

    with pytest.raises(UpCloudAPIError) as gone:
        manager.get_server(created.uuid)
    assert gone.value.error_code == "SERVER_NOT_FOUND"
    assert manager.get_servers() == []
    assert manager.get_storages() == []


def test_sdk_start_after_stop(manager: CloudManager) -> None:
    created = manager.create_server(_sdk_server(plan="2xCPU-4GB"))
    _wait_for_state(manager, created.uuid, "started").shutdown()
    stopped = _wait_for_state(manager, created.uuid, "stopped")

    stopped.start()

    assert _wait_for_state(manager, created.uuid, "started").plan == "2xCPU-4GB"
    with pytest.raises(UpCloudAPIError) as twice:
        stopped.start()
    assert twice.value.error_code == "SERVER_STATE_ILLEGAL"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"plan": "64xCPU-1TB"}, "PLAN_INVALID"),
        ({"zone": "mars-base1"}, "ZONE_INVALID"),
        ({"hostname": "not a hostname"}, "HOSTNAME_INVALID"),
        ({"labels": [Label("x", "too short a key")]}, "LABEL_KEY_INVALID"),
    ],
)
def test_sdk_sees_the_api_error_codes(
    manager: CloudManager, overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(UpCloudAPIError) as raised:
        manager.create_server(_sdk_server(**overrides))

    assert raised.value.error_code == code
    assert manager.get_servers() == []


def test_sdk_credentials(upcloud_emulator: UpCloudEmulator, manager: CloudManager) -> None:
    assert manager.authenticate()["account"]["username"] == upcloud_emulator.username
    by_token = _manager(upcloud_emulator, token=upcloud_emulator.token)
    assert by_token.get_account()["account"]["credits"] > 0

    wrong = _manager(upcloud_emulator, username="sandbox", password="wrong")
    with pytest.raises(UpCloudAPIError) as refused:
        wrong.authenticate()
    assert refused.value.error_code == "AUTHENTICATION_FAILED"


def test_sdk_catalogue_calls(manager: CloudManager) -> None:
    zones = {zone["id"] for zone in manager.get_zones()["zones"]["zone"]}
    plans = {plan["name"] for plan in manager.get_server_plans()["plans"]["plan"]}
    templates = {uuid: title for entry in manager.get_templates() for title, uuid in entry.items()}

    assert zones == set(ZONES)
    assert plans == set(PLANS)
    assert templates == TEMPLATES


def test_sdk_reads_what_the_driver_created(
    manager: CloudManager, upcloud_provider: UpCloudProvider
) -> None:
    created = upcloud_provider.create_server(
        ServerSpec(name="web-1", labels={"role": "web"}), "wf-web/web"
    )

    seen = manager.get_server(created.id)

    labels = {label["key"]: label["value"] for label in seen.labels["label"]}
    assert labels["role"] == "web"
    assert labels[KEY_LABEL] == "wf-web~2Fweb"
    assert seen.zone == "de-fra1"
    assert [storage.size for storage in seen.storage_devices] == [PLANS["1xCPU-1GB"].storage_size]
