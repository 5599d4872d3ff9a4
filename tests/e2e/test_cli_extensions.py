"""``provision extensions list`` and workflows named ``EXTENSION:WORKFLOW``, in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from provisioning.cli import app
from provisioning.extensions import active_extensions, deactivate
from tests.e2e.test_cli import table_rows
from tests.fixtures.workspace import Workspace
from tests.unit.test_extensions import make_extension, manifest

REPO = Path(__file__).resolve().parents[2]
CURRENT = version("provisioning")


def invoke(*args: str) -> Result:
    # Wide enough that a problem naming a temporary path stays on one table line.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


@pytest.fixture(autouse=True)
def _deactivate_everything() -> Iterator[None]:
    yield
    for info in active_extensions():
        deactivate(info)


@pytest.fixture
def starter(workspace: Workspace) -> Workspace:
    """A project whose configured extensions are the repository's examples."""
    workspace.configure({"extensions": {"paths": [str(REPO / "extensions")]}})
    return workspace


def test_extensions_list_shows_each_one_and_why_it_cannot_be_used(workspace: Workspace) -> None:
    root = workspace.path("[lab]")  # brackets in the reason are text, not markup
    workflows = 'workflows = ["flows/site.toml"]'
    make_extension(
        root,
        "pack",
        manifest("pack", kind="workflow", version_="1.2.0", entry_points=workflows),
        files={"flows/site.toml": 'name = "site"\n'},
    )
    make_extension(root, "future", manifest("future", version_="2.0.0", requires=f">{CURRENT}"))
    workspace.configure({"extensions": {"paths": [str(root)]}})

    result = invoke("extensions", "list")

    assert result.exit_code == 0, result.output
    assert "extensions: 2" in result.output
    header = next(line for line in result.output.splitlines() if "┃" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "name", "version", "type", "valid", "compatible", "provides", "problems"
    ]  # fmt: skip
    rows = table_rows(result.output)
    assert rows["pack"] == ["pack", "1.2.0", "workflow", "yes", "yes", "workflows pack:site", ""]
    assert rows["future"] == [
        "future",
        "2.0.0",
        "provider",
        "yes",
        "no",
        "-",
        f"{root}/future/extension.toml: field 'compatibility.provisioning': requires "
        f"provisioning >{CURRENT}, but {CURRENT} is installed",
    ]


def test_extensions_list_as_json_says_what_each_active_one_provides(starter: Workspace) -> None:
    result = invoke("extensions", "list", "--json")

    assert result.exit_code == 0, result.output
    provides = {item["manifest"]["name"]: item["provides"] for item in json.loads(result.stdout)}
    assert provides == {
        "process": {"provider": "process", "workflows": {}},
        "starter": {
            "provider": None,
            "workflows": {"starter:hello": str(REPO / "extensions/starter/workflows/hello.toml")},
        },
    }


def test_plan_of_an_extension_workflow_by_reference(starter: Workspace) -> None:
    result = invoke("plan", "starter:hello")

    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert rows["1"][1:3] == ["greeting", "file.write"]
    assert rows["2"][1:3] == ["check", "command.run"]
    assert "2 operations in 2 waves; valid." in result.output


def test_a_file_whose_name_looks_like_a_reference_is_read_as_a_file(
    starter: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    (starter.base / "starter:hello.toml").write_text(
        'name = "mine"\n[[operations]]\nid = "only"\nkind = "command.run"\n'
        'params = { argv = ["true"] }\n'
    )
    monkeypatch.chdir(starter.base)

    result = invoke("plan", "starter:hello.toml")

    assert result.exit_code == 0, result.output
    assert "1 operations in 1 waves; valid." in result.output


def test_an_unknown_reference_is_bad_input_naming_the_known_ones(starter: Workspace) -> None:
    result = invoke("plan", "starter:goodbye")

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error WORKFLOW_NOT_FOUND: no file 'starter:goodbye' and no extension workflow of that "
        "name (known: starter:hello)"
    )
