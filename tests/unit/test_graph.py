"""Dependency resolution: waves and order follow the DAG, and a cycle is refused naming it."""

from __future__ import annotations

from typing import Any

import pytest

from provisioning.errors import WorkflowError
from provisioning.graph import WorkflowGraph, resolve
from provisioning.spec import validate_workflow


def graph(operation_ids: list[str], dependencies: dict[str, list[str]]) -> WorkflowGraph:
    operations: list[dict[str, Any]] = [
        {"id": operation_id, "kind": "command.run", "params": {"argv": ["true"]}}
        for operation_id in operation_ids
    ]
    workflow = validate_workflow(
        {"name": "g", "operations": operations, "dependencies": dependencies}
    )
    return resolve(workflow)


DIAMOND = {"left": ["top"], "right": ["top"], "bottom": ["left", "right"]}


def cycle_error(operation_ids: list[str], dependencies: dict[str, list[str]]) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        graph(operation_ids, dependencies)
    assert caught.value.code == "WORKFLOW_CYCLE"
    assert caught.value.exit_code == 2
    return caught.value


def test_a_diamond_runs_in_three_waves() -> None:
    diamond = graph(["top", "left", "right", "bottom"], DIAMOND)

    assert diamond.waves == [["top"], ["left", "right"], ["bottom"]]
    assert diamond.order == ["top", "left", "right", "bottom"]
    assert diamond.critical_path_length() == 3
    assert [diamond.wave_of(op) for op in ("top", "left", "right", "bottom")] == [0, 1, 1, 2]


def test_within_a_wave_the_spec_order_is_kept() -> None:
    diamond = graph(["bottom", "right", "left", "top"], DIAMOND)

    assert diamond.waves == [["top"], ["right", "left"], ["bottom"]]


def test_the_order_puts_every_operation_after_what_it_waits_for() -> None:
    dependencies = {"e": ["d"], "d": ["a", "c"], "c": ["b"], "f": []}
    chain = graph(["f", "e", "d", "c", "b", "a"], dependencies)

    position = {operation_id: index for index, operation_id in enumerate(chain.order)}
    assert sorted(position) == ["a", "b", "c", "d", "e", "f"]
    for dependant, upstream in dependencies.items():
        for upstream_id in upstream:
            assert position[upstream_id] < position[dependant]
    assert chain.waves[0] == ["f", "b", "a"]


def test_independent_operations_share_the_first_wave() -> None:
    flat = graph(["a", "b", "c"], {})

    assert flat.waves == [["a", "b", "c"]]
    assert flat.upstream == {"a": [], "b": [], "c": []}


def test_upstream_and_downstream_mirror_each_other() -> None:
    diamond = graph(["top", "left", "right", "bottom"], DIAMOND)

    assert diamond.upstream["bottom"] == ["left", "right"]
    assert diamond.downstream == {
        "top": ["left", "right"],
        "left": ["bottom"],
        "right": ["bottom"],
        "bottom": [],
    }


def test_descendants_are_everything_that_waits_directly_or_not() -> None:
    diamond = graph(["top", "left", "right", "bottom", "alone"], DIAMOND)

    assert diamond.descendants("top") == {"left", "right", "bottom"}
    assert diamond.descendants("left") == {"bottom"}
    assert diamond.descendants("bottom") == set()
    assert diamond.descendants("alone") == set()


def test_a_two_cycle_is_named() -> None:
    error = cycle_error(["web", "api"], {"web": ["api"], "api": ["web"]})

    assert str(error) == "dependency cycle: web -> api -> web"
    assert error.context["cycle"] == ["web", "api", "web"]


def test_a_three_cycle_is_named_in_dependency_direction() -> None:
    error = cycle_error(["web", "api", "db"], {"web": ["api"], "api": ["db"], "db": ["web"]})

    # Each arrow reads like the spec: web waits for api, api for db, db for web.
    assert str(error) == "dependency cycle: web -> api -> db -> web"


def test_a_cycle_below_valid_operations_names_only_the_cycle() -> None:
    error = cycle_error(
        ["base", "web", "api"], {"web": ["api", "base"], "api": ["web"], "base": []}
    )

    assert str(error) == "dependency cycle: web -> api -> web"


def test_a_self_dependency_is_a_cycle() -> None:
    error = cycle_error(["a", "web"], {"web": ["web"]})

    assert str(error) == "dependency cycle: web -> web"
