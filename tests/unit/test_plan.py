"""``plan``: the waves a workflow will run in, what each operation does and how it is undone."""

from __future__ import annotations

from typing import Any

from provisioning.plan import Plan, PlannedOperation, make_plan
from provisioning.spec import validate_workflow


def plan_of(operations: list[dict[str, Any]], **extra: Any) -> Plan:
    return make_plan(
        validate_workflow(
            {"workflow_id": "wf-plan", "name": "plan", "operations": operations, **extra}
        )
    )


def by_id(plan: Plan) -> dict[str, PlannedOperation]:
    return {step.id: step for wave in plan.waves for step in wave}


STACK: list[dict[str, Any]] = [
    {
        "id": "db",
        "kind": "server.create",
        "provider": "aws",
        "params": {"name": "db-1", "image": "ami-123", "size": "t3.micro"},
    },
    {
        "id": "web",
        "kind": "server.create",
        "provider": "upcloud",
        "params": {"name": "web-1", "zone": "de-fra1"},
    },
    {
        "id": "motd",
        "kind": "file.write",
        "params": {"path": "motd", "content": "héllo\n", "mode": "0644"},
    },
    {
        "id": "port",
        "kind": "config.set",
        "params": {"file": "app.toml", "key": "server.port", "value": 8080},
    },
    {
        "id": "migrate",
        "kind": "command.run",
        "params": {"argv": ["migrate", "--up"], "undo": ["migrate", "--down"]},
    },
    {"id": "notify", "kind": "command.run", "params": {"argv": ["notify", "done"]}},
    {"id": "old", "kind": "server.delete", "provider": "aws", "params": {"server_id": "i-0ld"}},
]
DEPENDENCIES = {
    "web": ["db"],
    "motd": ["web"],
    "port": ["db"],
    "migrate": ["db", "port"],
    "notify": ["motd", "migrate"],
    "old": ["notify"],
}


def test_the_plan_lists_the_waves_in_order() -> None:
    plan = plan_of(STACK, dependencies=DEPENDENCIES)

    assert [[step.id for step in wave] for wave in plan.waves] == [
        ["db"],
        ["web", "port"],
        ["motd", "migrate"],
        ["notify"],
        ["old"],
    ]
    assert plan.operation_count == 7
    assert plan.workflow_id == "wf-plan"
    assert plan.name == "plan"
    steps = by_id(plan)
    assert steps["migrate"].waits_for == ["db", "port"]
    assert steps["db"].waits_for == []


def test_the_plan_says_what_each_operation_will_do() -> None:
    steps = by_id(plan_of(STACK, dependencies=DEPENDENCIES))

    assert steps["db"].action == "create server 'db-1' on aws (image ami-123, size t3.micro)"
    assert steps["db"].provider == "aws"
    assert steps["web"].action == "create server 'web-1' on upcloud (zone de-fra1)"
    assert steps["motd"].action == "write motd (7 bytes, mode 0644)"
    assert steps["port"].action == "set server.port = 8080 in app.toml"
    assert steps["migrate"].action == "run migrate --up"
    assert steps["old"].action == "delete server i-0ld on aws"
    assert steps["motd"].kind == "file.write"
    assert steps["motd"].provider is None


def test_the_plan_says_how_each_operation_is_undone() -> None:
    steps = by_id(plan_of(STACK, dependencies=DEPENDENCIES))

    assert steps["db"].rollback == "delete the server"
    assert steps["motd"].rollback == "restore the previous file (or delete it if new)"
    assert steps["port"].rollback == "revert the previous value (or remove the key)"
    assert steps["migrate"].rollback == "run migrate --down"


def test_server_delete_and_command_without_undo_are_irreversible() -> None:
    steps = by_id(plan_of(STACK, dependencies=DEPENDENCIES))

    assert steps["old"].rollback is None
    assert steps["notify"].rollback is None


def test_the_plan_carries_the_run_settings() -> None:
    plan = plan_of(STACK[:1], configuration={"parallelism": 3, "on_failure": "keep"})
    unset = plan_of(STACK[:1])

    assert (plan.parallelism, plan.on_failure) == (3, "keep")
    assert (unset.parallelism, unset.on_failure) == (None, None)


def test_a_server_delete_by_name_says_so() -> None:
    operation = {
        "id": "old",
        "kind": "server.delete",
        "provider": "local",
        "params": {"name": "box-1"},
    }

    step = by_id(plan_of([operation]))["old"]

    assert step.action == "delete server named 'box-1' on local"
