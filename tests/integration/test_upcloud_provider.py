"""The UpCloud driver against the API emulator: what a workflow run relies on.

Create, find by key, wait, delete (stopping first), idempotent re-creates, labels, and how every
kind of failure reaches the engine: retried (429, 5xx, no answer) or reported at once.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest

from providers.base import (
    KEY_LABEL,
    OPERATION_LABEL,
    WORKFLOW_LABEL,
    PermanentProviderError,
    ProviderUnavailable,
    ResourceNotFound,
    ServerSpec,
    ServerState,
    TransientProviderError,
)
from providers.registry import get_provider
from providers.upcloud import UpCloudProvider, decode_label_value, encode_label_value
from provisioning.errors import is_transient
from provisioning.sandbox.upcloud import TEMPLATES, UpCloudEmulator

KEY = "wf-web/web"
DEBIAN = "Debian GNU/Linux 12 (Bookworm)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _sandbox_url(emulator: UpCloudEmulator, path: str) -> str:
    return emulator.api_root.removesuffix("/1.3") + "/_sandbox" + path


# --- lifecycle ----------------------------------------------------------------------------


def test_server_lifecycle_from_create_to_gone(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    created = upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)

    assert created.provider == "upcloud"
    assert created.name == "web-1"
    assert created.key == KEY
    assert created.state is ServerState.pending  # UpCloud says "maintenance" while it boots
    assert created.raw["zone"] == "de-fra1"  # from the config
    assert created.raw["plan"] == "1xCPU-1GB"  # the default plan
    found = upcloud_provider.find(KEY)
    assert found is not None and found.id == created.id
    assert [server.id for server in upcloud_provider.list_servers()] == [created.id]

    running = upcloud_provider.wait_for(created.id, ServerState.running, timeout=5)
    assert running.addresses[0].startswith("198.18.")  # the public IPv4 first
    assert upcloud_provider.get_server(created.id).state is ServerState.running

    upcloud_provider.delete_server(created.id)  # started: the driver stops it first

    with pytest.raises(ResourceNotFound):
        upcloud_provider.get_server(created.id)
    assert upcloud_provider.find(KEY) is None
    assert upcloud_emulator.servers() == []
    assert upcloud_emulator.storages() == []  # the OS disk went with it
    upcloud_provider.delete_server(created.id)  # deleting again is fine


def test_delete_right_after_create_waits_for_boot_then_stops(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    created = upcloud_provider.create_server(ServerSpec(name="short-lived"), KEY)

    upcloud_provider.delete_server(created.id)

    assert upcloud_emulator.servers() == []


def test_same_key_twice_gives_the_same_single_server(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    first = upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)
    second = upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)

    assert second.id == first.id
    assert len(upcloud_emulator.servers()) == 1


def test_key_lookup_matches_whole_keys_only(upcloud_provider: UpCloudProvider) -> None:
    short = upcloud_provider.create_server(ServerSpec(name="a"), "wf/a")
    longer = upcloud_provider.create_server(ServerSpec(name="ab"), "wf/ab")

    assert short.id != longer.id
    assert (found := upcloud_provider.find("wf/a")) is not None and found.id == short.id
    assert upcloud_provider.find("wf/") is None


def test_spec_zone_plan_and_template_name_reach_the_api(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    spec = ServerSpec(
        name="Db Primary_1",
        zone="fi-hel1",
        size="2xCPU-4GB",
        image=DEBIAN,
        extra={"storage_size": 40},
    )

    server = upcloud_provider.create_server(spec, KEY)

    assert (server.raw["zone"], server.raw["plan"]) == ("fi-hel1", "2xCPU-4GB")
    assert server.raw["hostname"] == "db-primary-1"  # made valid from the name
    assert server.name == "Db Primary_1"
    [disk] = upcloud_emulator.storages()
    assert TEMPLATES[disk["origin"]] == DEBIAN
    assert disk["size"] == 40


# --- labels -------------------------------------------------------------------------------


def test_labels_round_trip(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    spec = ServerSpec(name="db-1", labels={"role": "db", "team": "core"})

    created = upcloud_provider.create_server(spec, "wf-web/db")

    expected = {
        "role": "db",
        "team": "core",
        KEY_LABEL: "wf-web/db",
        WORKFLOW_LABEL: "wf-web",
        OPERATION_LABEL: "db",
    }
    assert created.labels == expected
    assert upcloud_provider.get_server(created.id).labels == expected
    assert upcloud_provider.list_servers()[0].labels == expected
    stored = {
        label["key"]: label["value"] for label in upcloud_emulator.servers()[0]["labels"]["label"]
    }
    assert stored[KEY_LABEL] == "wf-web~2Fdb"  # what UpCloud stores is plain label text


@pytest.mark.parametrize("key", ["wf ü=1,2/op~x", "a/b/c", "wf-1/op", "x" * 40 + "/é"])
def test_any_key_survives_the_label_encoding(upcloud_provider: UpCloudProvider, key: str) -> None:
    assert decode_label_value(encode_label_value(key)) == key

    created = upcloud_provider.create_server(ServerSpec(name="odd"), key)

    assert created.key == key
    assert (found := upcloud_provider.find(key)) is not None and found.id == created.id


def test_invalid_label_key_fails_before_any_server_exists(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    spec = ServerSpec(name="web-1", labels={"bad key!": "x"})

    with pytest.raises(PermanentProviderError, match="bad key!") as raised:
        upcloud_provider.create_server(spec, KEY)

    assert raised.value.context["field"] == "params.labels.bad key!"
    assert upcloud_emulator.servers() == []


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"), [("unavailable", 503), ("throttle", 429), ("error", 500)]
)
def test_outages_and_throttling_are_transient(
    upcloud_provider: UpCloudProvider,
    upcloud_emulator: UpCloudEmulator,
    kind: Any,
    status: int,
) -> None:
    upcloud_emulator.inject(1, kind)

    with pytest.raises(TransientProviderError) as raised:
        upcloud_provider.list_servers()

    assert is_transient(raised.value)
    assert raised.value.context["http_status"] == status
    assert raised.value.context["provider"] == "upcloud"
    assert upcloud_provider.list_servers() == []  # the next try goes through


def test_retried_create_after_an_outage_creates_one_server(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    upcloud_emulator.inject(1, "unavailable")
    with pytest.raises(TransientProviderError):
        upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)

    first = upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)
    again = upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)

    assert first.id == again.id
    assert len(upcloud_emulator.servers()) == 1


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        (ServerSpec(name="web-1", size="64xCPU-1TB"), "PLAN_INVALID"),
        (ServerSpec(name="web-1", zone="mars-base1"), "ZONE_INVALID"),
        (
            ServerSpec(name="web-1", image="0100dead-0000-4000-8000-000000000000"),
            "STORAGE_NOT_FOUND",
        ),
    ],
)
def test_invalid_parameters_fail_fast_with_the_api_message(
    upcloud_provider: UpCloudProvider,
    upcloud_emulator: UpCloudEmulator,
    spec: ServerSpec,
    code: str,
) -> None:
    with pytest.raises(PermanentProviderError) as raised:
        upcloud_provider.create_server(spec, KEY)

    assert not is_transient(raised.value)
    assert str(raised.value).startswith(f"provider 'upcloud': {code}: ")
    assert "\n" not in str(raised.value)
    assert upcloud_emulator.servers() == []


def test_invalid_plan_message_names_the_plan(upcloud_provider: UpCloudProvider) -> None:
    with pytest.raises(PermanentProviderError) as raised:
        upcloud_provider.create_server(ServerSpec(name="web-1", size="64xCPU-1TB"), KEY)

    assert raised.value.message == "PLAN_INVALID: The plan '64xCPU-1TB' does not exist."


def test_unknown_template_name_is_permanent(upcloud_provider: UpCloudProvider) -> None:
    with pytest.raises(PermanentProviderError, match="no public UpCloud template") as raised:
        upcloud_provider.create_server(ServerSpec(name="web-1", image="TempleOS 5"), KEY)

    assert raised.value.context["field"] == "params.image"


def test_bad_credentials_fail_permanently_without_revealing_them(
    upcloud_config: dict[str, Any],
) -> None:
    provider = UpCloudProvider({**upcloud_config, "password": "not-the-password-42"})

    with pytest.raises(PermanentProviderError) as raised:
        provider.list_servers()
    status = provider.check()

    assert "AUTHENTICATION_FAILED" in str(raised.value)
    assert raised.value.context["http_status"] == 401
    assert not status.reachable and "AUTHENTICATION_FAILED" in status.message
    for text in (str(raised.value), repr(raised.value.to_dict()), repr(provider), status.message):
        assert "not-the-password-42" not in text


def test_missing_server_is_not_found_and_deleting_it_is_a_no_op(
    upcloud_provider: UpCloudProvider,
) -> None:
    missing = "00000000-0000-4000-8000-000000000000"

    with pytest.raises(ResourceNotFound, match="SERVER_NOT_FOUND"):
        upcloud_provider.get_server(missing)
    upcloud_provider.delete_server(missing)


def test_error_state_stops_a_wait(
    upcloud_provider: UpCloudProvider, upcloud_emulator: UpCloudEmulator
) -> None:
    created = upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)
    upcloud_emulator.set_state(created.id, "error")

    assert upcloud_provider.get_server(created.id).state is ServerState.error
    with pytest.raises(PermanentProviderError, match="error state"):
        upcloud_provider.wait_for(created.id, ServerState.running, timeout=5)


# --- reachability and credentials ----------------------------------------------------------


def test_check_reports_a_reachable_api(upcloud_provider: UpCloudProvider) -> None:
    status = upcloud_provider.check()

    assert status.reachable and status.provider == "upcloud"


def test_unreachable_endpoint_is_transient_and_check_says_so(
    upcloud_config: dict[str, Any],
) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}/1.3"
    provider = UpCloudProvider({**upcloud_config, "api_endpoint": endpoint})

    with pytest.raises(TransientProviderError, match="no answer"):
        provider.list_servers()
    assert not provider.check().reachable


def test_token_from_the_environment(
    upcloud_config: dict[str, Any],
    upcloud_emulator: UpCloudEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPCLOUD_TOKEN", upcloud_emulator.token)
    config = {k: v for k, v in upcloud_config.items() if k not in ("username", "password")}

    assert UpCloudProvider(config).check().reachable


def test_no_credentials_means_unavailable(
    upcloud_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("UPCLOUD_TOKEN", "UPCLOUD_USERNAME", "UPCLOUD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    provider = UpCloudProvider({"api_endpoint": upcloud_config["api_endpoint"]})

    with pytest.raises(ProviderUnavailable, match="UPCLOUD_TOKEN"):
        provider.list_servers()
    assert not provider.check().reachable


def test_registry_builds_the_driver(upcloud_config: dict[str, Any]) -> None:
    provider = get_provider("upcloud", upcloud_config)

    assert isinstance(provider, UpCloudProvider)
    assert provider.check().reachable


# --- the emulator's own controls -----------------------------------------------------------


def test_emulator_is_driven_over_http(
    upcloud_emulator: UpCloudEmulator, upcloud_provider: UpCloudProvider
) -> None:
    upcloud_provider.create_server(ServerSpec(name="web-1"), KEY)
    faults = httpx.post(
        _sandbox_url(upcloud_emulator, "/faults"), json={"count": 2, "kind": "throttle"}
    )
    assert faults.status_code == 200

    for _ in range(2):
        with pytest.raises(TransientProviderError, match="RATE_LIMIT_EXCEEDED"):
            upcloud_provider.list_servers()
    assert len(upcloud_provider.list_servers()) == 1
    assert upcloud_emulator.requests_served >= 4

    assert httpx.post(_sandbox_url(upcloud_emulator, "/reset")).status_code == 200
    assert upcloud_emulator.servers() == [] and upcloud_emulator.requests_served == 0
    bad = httpx.post(_sandbox_url(upcloud_emulator, "/faults"), json={"count": 1, "kind": "x"})
    assert bad.status_code == 400


def test_emulator_runs_as_its_own_process() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "provisioning.sandbox.upcloud", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        api_root = process.stdout.readline().strip()
        assert api_root == f"http://127.0.0.1:{port}/1.3"
        answer = httpx.get(f"{api_root}/account", auth=("sandbox", "sandbox-password"))
        assert answer.json()["account"]["username"] == "sandbox"
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
