"""``provision providers`` and ``provision servers list`` as a user reads them.

In-process through typer's ``CliRunner`` (as in ``test_cli``), with the workspace's configuration
pointing aws at the session's moto sandbox, upcloud at the emulator and local at a socket where no
engine listens, so that both answers of the reachability check show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from providers.aws import AWSProvider
from providers.registry import provider_names
from provisioning.sandbox.upcloud import UpCloudEmulator
from provisioning.secrets import MASK
from provisioning.spec import ServerSpec
from tests.e2e.test_cli import invoke
from tests.fixtures.workspace import Workspace


def cells(line: str) -> list[str]:
    """The cells of one table line (empty when the line is not a row)."""
    return [cell.strip() for cell in line.split("│")[1:-1]]


@pytest.fixture
def no_engine(tmp_path: Path) -> str:
    """A Docker socket URL where nothing listens."""
    return f"unix://{tmp_path}/no-engine.sock"


@pytest.fixture
def configured(
    workspace: Workspace,
    aws_config: dict[str, Any],
    upcloud_config: dict[str, Any],
    no_engine: str,
) -> Workspace:
    workspace.configure(
        {
            "providers": {
                "aws": aws_config,
                "upcloud": upcloud_config,
                "local": {"docker_socket": no_engine, "timeout": 2},
            }
        }
    )
    return workspace


def test_providers_shows_each_provider_reachable_or_not_with_secrets_masked(
    configured: Workspace, upcloud_emulator: UpCloudEmulator, aws_config: dict[str, Any]
) -> None:
    result = invoke("providers")

    assert result.exit_code == 0, result.output
    # A row's first line names the provider; lines a long cell wraps onto leave it empty.
    named = {row[0]: row[1] for line in result.output.splitlines() if (row := cells(line))[:1]}
    named.pop("", None)
    assert set(named) == set(provider_names())
    assert (named["aws"], named["upcloud"], named["local"]) == ("yes", "yes", "no")
    assert f"endpoint_url={aws_config['endpoint_url']}" in result.output
    assert f"password={MASK}" in result.output
    assert upcloud_emulator.password not in result.output


def test_providers_json_gives_settings_and_what_the_check_said(
    configured: Workspace, upcloud_emulator: UpCloudEmulator, no_engine: str
) -> None:
    result = invoke("providers", "--json")

    assert result.exit_code == 0, result.output
    shown = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(shown) == set(provider_names())
    upcloud, local = shown["upcloud"], shown["local"]
    assert upcloud["reachable"] is True
    assert upcloud["message"].endswith("accepted the credentials")
    assert upcloud["config"]["password"] == MASK
    assert upcloud["config"]["username"] == upcloud_emulator.username
    assert shown["aws"]["reachable"] is True
    assert shown["aws"]["config"]["region"] == "us-east-1"
    assert local["reachable"] is False
    assert local["config"]["docker_socket"] == no_engine
    assert f"Docker engine at {no_engine} is unreachable" in local["message"]
    assert upcloud_emulator.password not in result.output


def test_servers_list_shows_the_servers_at_moto_in_a_table(
    workspace: Workspace, aws_config: dict[str, Any], aws_provider: AWSProvider
) -> None:
    workspace.configure({"providers": {"aws": aws_config}})
    made = {
        key: aws_provider.create_server(ServerSpec(name=name, image="ami-12345678"), key)
        for name, key in (("db-1", "wf-list/db"), ("web-1", "wf-list/web"))
    }

    result = invoke("servers", "list", "--provider", "aws")

    assert result.exit_code == 0, result.output
    assert "aws: 2 servers" in result.output
    rows = {row[0]: row for line in result.output.splitlines() if len(row := cells(line)) == 5}
    assert rows == {
        server.id: [server.id, server.name, "running", ", ".join(server.addresses), key]
        for key, server in made.items()
    }
    assert {row[1] for row in rows.values()} == {"db-1", "web-1"}
