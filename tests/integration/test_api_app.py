"""The API app built in this process from a configuration: ``POST /config/reload`` reports and
emits each changed setting with secrets masked, and configured extensions' providers are known."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from provisioning.api import create_app
from provisioning.config import load_config
from provisioning.events import ConfigurationChanged, SystemEvent, bus
from provisioning.extensions import active_extensions, deactivate
from provisioning.secrets import MASK

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_reload_reports_and_emits_each_changed_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONING_BASE", str(tmp_path))
    monkeypatch.setenv("PROVISIONING_API_TOKEN", "t0ken")
    user = tmp_path / "config.user.toml"
    user.write_text('[providers.upcloud]\nzone = "de-fra1"\npassword = "old-secret"\n')
    client = TestClient(create_app(load_config(tmp_path)))
    headers = {"Authorization": "Bearer t0ken"}
    received: list[SystemEvent] = []
    subscription = bus.subscribe(ConfigurationChanged, received.append)
    try:
        user.write_text('[providers.upcloud]\nzone = "fi-hel1"\npassword = "new-secret"\n')
        answer = client.post("/config/reload", headers=headers)
        assert subscription.flush(5)
    finally:
        subscription.close()

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "success"
    assert body["data"] == [
        {"key": "providers.upcloud.password", "old_value": MASK, "new_value": MASK},
        {"key": "providers.upcloud.zone", "old_value": "de-fra1", "new_value": "fi-hel1"},
    ]
    assert "secret" not in answer.text
    zone = next(e for e in received if e.key == "providers.upcloud.zone")  # type: ignore[attr-defined]
    assert (zone.old_value, zone.new_value) == ("de-fra1", "fi-hel1")  # type: ignore[attr-defined]
    assert client.post("/config/reload", headers=headers).json()["data"] == []


def test_reload_needs_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONING_BASE", str(tmp_path))
    monkeypatch.setenv("PROVISIONING_API_TOKEN", "t0ken")
    client = TestClient(create_app(load_config(tmp_path)))
    answer = client.post("/config/reload")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "AUTH_REQUIRED"


def test_the_api_knows_the_providers_of_configured_extensions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m provisioning.api`` and ``provision up`` build the app from the configuration
    alone: its extensions must be active there, or a spec naming their provider is refused."""
    monkeypatch.setenv("PROVISIONING_BASE", str(tmp_path))
    monkeypatch.setenv("PROVISIONING_API_TOKEN", "t0ken")
    examples = Path(__file__).resolve().parents[2] / "extensions"
    (tmp_path / "config.user.toml").write_text(f"[extensions]\npaths = [{str(examples)!r}]\n")
    headers = {"Authorization": "Bearer t0ken"}
    spec = {
        "name": "with-a-process",
        "operations": [
            {"id": "p", "kind": "server.create", "provider": "process", "params": {"name": "p"}}
        ],
    }
    try:
        with TestClient(create_app(load_config(tmp_path))) as client:
            listed = client.get("/providers", headers=headers, params={"check": "false"})
            submitted = client.post("/workflows", headers=headers, json=spec)
    finally:
        for info in active_extensions():
            deactivate(info)

    assert listed.status_code == 200, listed.text
    assert "process" in {provider["name"] for provider in listed.json()["data"]}
    # Valid: it gets as far as asking Prefect for the run deployment, which this harness lacks.
    assert submitted.json()["error"]["code"] == "DEPLOYMENT_NOT_FOUND", submitted.text
