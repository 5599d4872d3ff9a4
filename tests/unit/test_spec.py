"""The workflow spec: every mistake a user can make is named by file, operation and field, and a
valid spec reads the same from TOML, JSON, YAML or a dict."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml

from providers.registry import load_workflow as load_checked
from provisioning.errors import WorkflowError
from provisioning.spec import (
    CommandRunOperation,
    ServerCreateOperation,
    Workflow,
    load_workflow,
    validate_workflow,
)


def web_spec() -> dict[str, Any]:
    """A valid spec using every part of the contract."""
    return {
        "workflow_id": "wf-web",
        "name": "web-stack",
        "description": "db, web, motd",
        "configuration": {
            "parallelism": 4,
            "on_failure": "keep",
            "providers": {"aws": {"region": "eu-west-1"}},
        },
        "operations": [
            {
                "id": "db",
                "kind": "server.create",
                "provider": "aws",
                "params": {
                    "name": "db-1",
                    "image": "ami-123",
                    "size": "t3.micro",
                    "labels": {"role": "db"},
                },
            },
            {
                "id": "web",
                "kind": "server.create",
                "provider": "upcloud",
                "params": {"name": "web-1", "zone": "de-fra1", "size": "1xCPU-1GB"},
            },
            {"id": "motd", "kind": "file.write", "params": {"path": "motd", "content": "hi\n"}},
            {
                "id": "port",
                "kind": "config.set",
                "params": {"file": "app.toml", "key": "server.port", "value": 8080},
            },
            {
                "id": "prepare",
                "kind": "command.run",
                "retries": 0,
                "params": {"argv": ["true"], "undo": ["false"]},
            },
            {"id": "old", "kind": "server.delete", "provider": "aws", "params": {"name": "old-1"}},
        ],
        "dependencies": {"web": ["db"], "motd": ["web"], "port": ["db", "web"]},
    }


def spec_with(operations: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"workflow_id": "wf-t", "name": "t", "operations": operations, **extra}


def command(operation_id: str) -> dict[str, Any]:
    return {"id": operation_id, "kind": "command.run", "params": {"argv": ["true"]}}


def invalid(data: dict[str, Any], source: str = "web.toml") -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        validate_workflow(data, source=source)
    return caught.value


# ----------------------------------------------------------------------------- valid specs


@pytest.mark.parametrize("fmt", ["toml", "json", "yaml", "yml"])
def test_a_valid_spec_reads_the_same_from_every_format(tmp_path: Path, fmt: str) -> None:
    data = web_spec()
    path = tmp_path / f"web.{fmt}"
    if fmt == "toml":
        path.write_text(tomli_w.dumps(data))
    elif fmt == "json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))

    workflow = load_workflow(path)

    assert workflow == validate_workflow(data)
    assert workflow.workflow_id == "wf-web"
    assert workflow.operation_ids == ["db", "web", "motd", "port", "prepare", "old"]
    assert workflow.upstream("port") == ["db", "web"]
    assert workflow.upstream("db") == []
    db = workflow.operation("db")
    assert isinstance(db, ServerCreateOperation)
    assert db.params.labels == {"role": "db"}
    prepare = workflow.operation("prepare")
    assert isinstance(prepare, CommandRunOperation)
    assert prepare.params.undo == ["false"]
    assert prepare.retries == 0
    assert workflow.configuration.overrides() == {
        "engine": {"parallelism": 4, "on_failure": "keep"},
        "providers": {"aws": {"region": "eu-west-1"}},
    }


def test_a_valid_spec_round_trips_through_its_dump() -> None:
    workflow = validate_workflow(web_spec())
    dumped = workflow.model_dump(mode="json")

    again = validate_workflow(json.loads(json.dumps(dumped)))

    assert again == workflow
    assert again.model_dump(mode="json") == dumped


def test_load_workflow_accepts_dicts_and_passes_workflows_through() -> None:
    workflow = load_workflow(web_spec())

    assert isinstance(workflow, Workflow)
    assert load_workflow(workflow) is workflow


def test_a_workflow_id_is_generated_from_the_name_when_absent() -> None:
    data = spec_with([command("a")], name="My web stack!")
    del data["workflow_id"]

    first = validate_workflow(data)
    second = validate_workflow(data)

    assert re.fullmatch(r"My-web-stack-[0-9a-f]{8}", first.workflow_id)
    assert first.workflow_id != second.workflow_id


def test_the_registry_accepts_builtin_providers() -> None:
    workflow = load_checked(web_spec())

    assert workflow.operation("web").provider == "upcloud"


# ------------------------------------------------------------------------- validation errors


def test_a_missing_field_names_file_operation_and_field() -> None:
    error = invalid(
        spec_with([{"id": "db", "kind": "server.create", "provider": "aws", "params": {}}])
    )

    assert str(error) == "web.toml: operation 'db': field 'params.name': Field required"
    assert error.code == "WORKFLOW_INVALID"
    assert error.exit_code == 2
    assert error.context["file"] == "web.toml"
    assert error.context["operation"] == "db"
    assert error.context["field"] == "params.name"


def test_an_operation_without_id_is_named_by_its_position() -> None:
    error = invalid(spec_with([command("a"), {"kind": "command.run", "params": {"argv": ["x"]}}]))

    assert str(error) == "web.toml: operation '#2': field 'id': Field required"


def test_several_problems_are_all_listed() -> None:
    error = invalid(
        spec_with(
            [
                {"id": "db", "kind": "server.create", "provider": "aws", "params": {}},
                {"id": "motd", "kind": "file.write", "params": {}},
            ]
        )
    )

    assert str(error).endswith("Field required (and 2 more problems)")
    assert [(e["operation"], e["field"]) for e in error.context["errors"]] == [
        ("db", "params.name"),
        ("motd", "params.path"),
        ("motd", "params.content"),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            spec_with(
                [
                    {
                        "id": "motd",
                        "kind": "file.write",
                        "params": {"path": "p", "content": "c", "colour": "red"},
                    }
                ]
            ),
            "web.toml: operation 'motd': field 'params.colour': unknown field",
        ),
        (
            spec_with([{**command("a"), "colour": "red"}]),
            "web.toml: operation 'a': field 'colour': unknown field",
        ),
        (
            spec_with([command("a")], colour="red"),
            "web.toml: field 'colour': unknown field",
        ),
        (
            spec_with([command("a")], configuration={"paralelism": 2}),
            "web.toml: field 'configuration.paralelism': unknown field",
        ),
    ],
    ids=["param", "operation", "top-level", "configuration"],
)
def test_an_unknown_field_is_named(data: dict[str, Any], expected: str) -> None:
    assert str(invalid(data)) == expected


def test_a_credential_in_the_spec_is_refused_without_echoing_it() -> None:
    data = spec_with([command("a")], configuration={"providers": {"upcloud": {"token": "t-42"}}})

    message = str(invalid(data))

    assert message.startswith(
        "web.toml: field 'configuration.providers': 'upcloud.token' holds a secret"
    )
    assert "t-42" not in message


def test_an_unknown_operation_kind_lists_the_known_ones() -> None:
    error = invalid(spec_with([{"id": "db", "kind": "server.explode", "params": {}}]))

    assert str(error) == (
        "web.toml: operation 'db': field 'kind': unknown operation kind 'server.explode' "
        "(known: server.create, server.delete, file.write, config.set, command.run)"
    )


def test_a_missing_kind_is_named() -> None:
    error = invalid(spec_with([{"id": "db", "params": {}}]))

    assert str(error) == "web.toml: operation 'db': field 'kind': missing 'kind'"


def test_duplicate_operation_ids_are_refused() -> None:
    error = invalid(spec_with([command("a"), command("b"), command("a")]))

    assert str(error) == "web.toml: operation 'a': field 'id': duplicate operation id"


def test_a_dependency_on_an_unknown_operation_is_named() -> None:
    error = invalid(spec_with([command("a")], dependencies={"a": ["ghost"]}))

    assert str(error) == (
        "web.toml: operation 'a': field 'dependencies.a': depends on unknown operation id 'ghost'"
    )


def test_dependencies_of_an_unknown_operation_are_named() -> None:
    error = invalid(spec_with([command("a")], dependencies={"ghost": ["a"]}))

    assert str(error) == "web.toml: field 'dependencies.ghost': unknown operation id 'ghost'"


@pytest.mark.parametrize("kind", ["server.create", "server.delete"])
def test_a_server_operation_needs_a_provider(kind: str) -> None:
    params = {"name": "db-1"}
    error = invalid(spec_with([{"id": "db", "kind": kind, "params": params}]))

    assert str(error) == f"web.toml: operation 'db': field 'provider': {kind} needs a provider"


def test_server_delete_needs_exactly_one_selector() -> None:
    operation = {"id": "old", "kind": "server.delete", "provider": "aws", "params": {}}

    error = invalid(spec_with([operation]))

    assert str(error) == (
        "web.toml: operation 'old': field 'params': give exactly one of server_id or name"
    )


def test_an_unknown_provider_is_refused_by_the_registry() -> None:
    operation = {"id": "db", "kind": "server.create", "provider": "azure", "params": {"name": "x"}}

    with pytest.raises(WorkflowError) as caught:
        load_checked(spec_with([operation]))

    message = str(caught.value)
    assert message.startswith("operation 'db': field 'provider': unknown provider 'azure' (known:")
    for builtin in ("aws", "local", "upcloud"):
        assert builtin in message


def test_an_unknown_provider_in_the_configuration_is_refused_by_the_registry() -> None:
    data = spec_with([command("a")], configuration={"providers": {"azure": {"region": "x"}}})

    with pytest.raises(WorkflowError) as caught:
        load_checked(data)

    assert str(caught.value) == "field 'configuration.providers.azure': unknown provider 'azure'"


def test_without_the_registry_any_provider_name_passes() -> None:
    operation = {"id": "db", "kind": "server.create", "provider": "azure", "params": {"name": "x"}}

    assert validate_workflow(spec_with([operation])).operation("db").provider == "azure"


# ----------------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("name", "text", "detail"),
    [
        ("web.toml", 'name = "web"\n[[operations]\n', "invalid TOML"),
        ("web.json", '{"name": "web",\n "operations": [}', "invalid JSON at line 2"),
        ("web.yaml", "name: web\noperations: [\n  - id: a\n  : :\n", "invalid YAML"),
    ],
)
def test_a_syntax_error_names_the_file(tmp_path: Path, name: str, text: str, detail: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)

    assert caught.value.code == "SPEC_PARSE_ERROR"
    assert str(caught.value).startswith(f"{path}: {detail}")


def test_an_unknown_file_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "web.ini"
    path.write_text("name = web\n")

    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)

    assert str(caught.value) == (
        f"{path}: unknown spec format '.ini' (use .toml, .json, .yaml or .yml)"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"

    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)

    assert caught.value.code == "SPEC_NOT_FOUND"
    assert str(caught.value) == f"{path}: cannot read spec: No such file or directory"


def test_a_spec_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    path.write_text("[1, 2]")

    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)

    assert str(caught.value) == f"{path}: a workflow spec must be a table/object at the top"


def test_a_validation_error_in_a_file_names_that_file(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump(spec_with([{"id": "db", "kind": "file.write", "params": {}}])))

    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)

    assert str(caught.value).startswith(f"{path}: operation 'db': field 'params.path': ")
