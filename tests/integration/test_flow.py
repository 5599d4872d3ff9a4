"""The run flow on Prefect's test harness: DAG order, parallelism, retries of transient errors
only, failure containment, rollback, reuse of stored results, readable run names and the seed's
result shape.

Operations are ``command.run`` steps running small Python scripts that write ``time.time()`` to
files, so every assertion is about what happened on the machine, not about engine internals.
Timing margins are generous: the suite runs on a loaded 2-core machine.
"""

from __future__ import annotations

import stat
import time
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.run import run_workflow
from provisioning.envelope import WorkflowResult
from provisioning.journal import Journal
from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.usefixtures("prefect_api")

#: Appends "start T" and, after a pause, "end T" to a file.
STAMP = """
import sys, time
path, pause = sys.argv[1], float(sys.argv[2])
with open(path, "a") as out:
    out.write(f"start {time.time()!r}\\n")
time.sleep(pause)
with open(path, "a") as out:
    out.write(f"end {time.time()!r}\\n")
"""

#: Appends the time of this try to a file; succeeds from try N on, else exits with a status.
TRIES = """
import sys, time
path, succeed_from, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "a") as out:
    out.write(f"{time.time()!r}\\n")
with open(path) as tries:
    count = len(tries.read().split())
sys.exit(0 if count >= succeed_from else status)
"""

EX_TEMPFAIL = 75


def new_id(label: str) -> str:
    return f"wf-{label}-{uuid.uuid4().hex[:8]}"


def spec(
    label: str,
    operations: list[dict[str, Any]],
    dependencies: dict[str, list[str]] | None = None,
    **configuration: Any,
) -> dict[str, Any]:
    return {
        "workflow_id": new_id(label),
        "name": label,
        "operations": operations,
        "dependencies": dependencies or {},
        "configuration": configuration,
    }


def stamped(workspace: Workspace, operation_id: str, pause: float = 0.0) -> dict[str, Any]:
    """A command that records when it started and ended in ``<operation_id>.stamps``."""
    path = workspace.path(f"{operation_id}.stamps")
    return {
        "id": operation_id,
        "kind": "command.run",
        "params": {"argv": [*workspace.python(STAMP), str(path), str(pause)]},
    }


def counted(
    workspace: Workspace,
    operation_id: str,
    *,
    succeed_from: int = 1,
    status: int = 3,
    undo: list[str] | None = None,
) -> dict[str, Any]:
    """A command that records each try in ``<operation_id>.tries``."""
    path = workspace.path(f"{operation_id}.tries")
    params: dict[str, Any] = {
        "argv": [*workspace.python(TRIES), str(path), str(succeed_from), str(status)]
    }
    if undo is not None:
        params["undo"] = undo
    return {"id": operation_id, "kind": "command.run", "params": params}


def marker(workspace: Workspace, name: str) -> list[str]:
    """An argv that appends ``name`` to ``undone.log``: proof an undo ran, and when."""
    log = workspace.path("undone.log")
    return workspace.python(f"open({str(log)!r}, 'a').write({name!r} + '\\n')")


def write(operation_id: str, path: Path, content: str = "x\n") -> dict[str, Any]:
    return {
        "id": operation_id,
        "kind": "file.write",
        "params": {"path": str(path), "content": content},
    }


def interval(workspace: Workspace, operation_id: str) -> tuple[float, float]:
    lines = dict(
        line.split() for line in workspace.path(f"{operation_id}.stamps").read_text().splitlines()
    )
    return float(lines["start"]), float(lines["end"])


def tries(workspace: Workspace, operation_id: str) -> list[float]:
    path = workspace.path(f"{operation_id}.tries")
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def statuses(result: WorkflowResult) -> dict[str, str]:
    return {operation.id: operation.status for operation in result.result.operations}


# ------------------------------------------------------------------------------------ order


def test_a_diamond_runs_in_dependency_order(workspace: Workspace) -> None:
    operations = [stamped(workspace, op, 0.2) for op in ("top", "left", "right", "bottom")]
    dependencies = {"left": ["top"], "right": ["top"], "bottom": ["left", "right"]}

    result = run_workflow(spec("diamond", operations, dependencies))

    assert result.status == "success", result
    assert statuses(result) == dict.fromkeys(("top", "left", "right", "bottom"), "succeeded")
    top, left, right, bottom = (
        interval(workspace, op) for op in ("top", "left", "right", "bottom")
    )
    assert left[0] >= top[1]
    assert right[0] >= top[1]
    assert bottom[0] >= max(left[1], right[1])
    reported = {op.id: op for op in result.result.operations}
    for child, parents in dependencies.items():
        for parent in parents:
            started, finished = reported[child].started_at, reported[parent].finished_at
            assert started is not None and finished is not None
            assert started >= finished


def test_independent_operations_run_at_the_same_time(workspace: Workspace) -> None:
    names = ["s1", "s2", "s3", "s4"]
    operations = [stamped(workspace, name, 0.7) for name in names]

    result = run_workflow(spec("overlap", operations), parallelism=4)

    assert result.status == "success", result
    intervals = [interval(workspace, name) for name in names]
    first_start = min(start for start, _ in intervals)
    last_end = max(end for _, end in intervals)
    assert last_end - first_start < 1.5  # one at a time would take at least 2.8 s
    # All four were running at one instant: the last started before the first ended.
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)


def test_parallelism_one_runs_one_operation_at_a_time(workspace: Workspace) -> None:
    names = ["q1", "q2", "q3"]
    operations = [stamped(workspace, name, 0.2) for name in names]

    result = run_workflow(spec("serial", operations, parallelism=1))

    assert result.status == "success", result
    intervals = sorted(interval(workspace, name) for name in names)
    for (_, previous_end), (next_start, _) in pairwise(intervals):
        assert next_start >= previous_end


# ---------------------------------------------------------------------------------- retries


def test_a_transient_error_is_retried_with_growing_delays(workspace: Workspace) -> None:
    operation = counted(workspace, "flaky", succeed_from=3, status=EX_TEMPFAIL)

    result = run_workflow(
        spec("transient", [operation]),
        overrides=["engine.retry_backoff=0.6", "engine.retry_jitter=0"],
    )

    assert result.status == "success", result
    flaky = result.result.operation("flaky")
    assert flaky.status == "succeeded"
    assert flaky.attempts == 3
    stamps = tries(workspace, "flaky")
    assert len(stamps) == 3
    first_gap, second_gap = stamps[1] - stamps[0], stamps[2] - stamps[1]
    assert first_gap >= 0.6  # backoff 0.6 s, then 1.2 s
    assert second_gap >= 1.2
    assert second_gap > first_gap


def test_a_permanent_error_fails_fast_without_retries(workspace: Workspace) -> None:
    operation = counted(workspace, "broken", succeed_from=99, status=3)

    result = run_workflow(
        spec("permanent", [operation]),
        overrides=["engine.retry_backoff=5", "engine.retry_jitter=0"],
    )

    assert result.status == "error"
    broken = result.result.operation("broken")
    assert broken.status == "failed"
    assert broken.attempts == 1
    assert len(tries(workspace, "broken")) == 1
    assert broken.error is not None
    assert broken.error.code == "OPERATION_FAILED"
    assert "command exited with status 3" in broken.error.message
    assert broken.duration_s is not None and broken.duration_s < 4  # a retry would wait 5 s


# --------------------------------------------------------------------------------- failures


def failing_branch(workspace: Workspace) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """``base -> broken -> after -> last`` next to an independent ``side -> side2``."""
    operations = [
        write("base", workspace.path("base.txt")),
        counted(workspace, "broken", succeed_from=99, status=3),
        counted(workspace, "after"),
        counted(workspace, "last"),
        counted(workspace, "side", undo=marker(workspace, "side")),
        write("side2", workspace.path("side2.txt")),
    ]
    dependencies = {
        "broken": ["base"],
        "after": ["broken"],
        "last": ["after"],
        "side2": ["side"],
    }
    return operations, dependencies


def test_a_failure_stops_only_its_dependants(workspace: Workspace) -> None:
    operations, dependencies = failing_branch(workspace)

    result = run_workflow(spec("keep", operations, dependencies, on_failure="keep"))

    assert statuses(result) == {
        "base": "succeeded",
        "broken": "failed",
        "after": "not_run",
        "last": "not_run",
        "side": "succeeded",
        "side2": "succeeded",
    }
    assert result.status == "partial"
    assert result.error is not None
    assert result.error.code == "WORKFLOW_FAILED"
    assert "broken" in result.error.message
    assert result.context.step == "failed at broken"
    assert tries(workspace, "after") == []
    assert tries(workspace, "last") == []
    not_run = result.result.operation("after")
    assert not_run.error is not None and not_run.error.code == "UPSTREAM_FAILED"
    # on_failure = keep: nothing is undone.
    assert result.result.rollback is None
    assert workspace.path("base.txt").exists()
    assert workspace.path("side2.txt").exists()
    assert not workspace.path("undone.log").exists()


def test_a_failure_rolls_back_completed_operations_newest_first(workspace: Workspace) -> None:
    operations, dependencies = failing_branch(workspace)

    result = run_workflow(spec("rollback", operations, dependencies, on_failure="rollback"))

    assert result.status == "error"
    assert result.error is not None and result.error.code == "WORKFLOW_FAILED"
    assert "rolled back 3" in result.error.message
    assert statuses(result) == {
        "base": "rolled_back",
        "broken": "failed",
        "after": "not_run",
        "last": "not_run",
        "side": "rolled_back",
        "side2": "rolled_back",
    }
    rollback = result.result.rollback
    assert rollback is not None
    assert all(step.status == "done" for step in rollback)
    finished = {op.id: op.finished_at for op in result.result.operations if op.finished_at}
    completion_order = sorted(("base", "side", "side2"), key=finished.__getitem__)
    undone = [step.operation_id for step in rollback]
    assert undone == list(reversed(completion_order))
    assert undone.index("side2") < undone.index("side")  # side2 waited for side
    assert not workspace.path("base.txt").exists()
    assert not workspace.path("side2.txt").exists()
    assert workspace.path("undone.log").read_text() == "side\n"
    assert result.result.resources == []


# ----------------------------------------------------------------------------------- resume


def test_a_rerun_of_a_succeeded_workflow_reuses_its_results(workspace: Workspace) -> None:
    data = spec("reuse", [counted(workspace, "once"), write("note", workspace.path("n.txt"))])

    first = run_workflow(data)
    workspace.path("n.txt").unlink()
    second = run_workflow(data)

    assert first.status == second.status == "success"
    assert [op.reused for op in first.result.operations] == [False, False]
    assert [op.reused for op in second.result.operations] == [True, True]
    assert len(tries(workspace, "once")) == 1  # the command did not run again
    assert not workspace.path("n.txt").exists()  # nor did the write
    assert second.result.operation("once").output == first.result.operation("once").output


# ------------------------------------------------------------------------------------ files


def test_writes_keep_file_modes(workspace: Workspace) -> None:
    shared = workspace.path("shared.txt")
    shared.write_text("old\n")
    shared.chmod(0o604)
    settings = workspace.path("app.toml")
    settings.write_text("port = 80\n")
    settings.chmod(0o640)
    reference = workspace.path("reference.txt")
    reference.write_text("")  # a plain new file: the umask decides its mode
    operations = [
        write("shared", shared, "new\n"),
        write("fresh", workspace.path("fresh.txt")),
        {"id": "private", "kind": "file.write",
         "params": {"path": "private.txt", "content": "p", "mode": "0700"}},
        {"id": "port", "kind": "config.set",
         "params": {"file": "app.toml", "key": "port", "value": 8080}},
    ]  # fmt: skip

    result = run_workflow(spec("modes", operations))

    assert result.status == "success", result
    assert shared.read_text() == "new\n"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o604
    mode_of_new = stat.S_IMODE(reference.stat().st_mode)
    assert stat.S_IMODE(workspace.path("fresh.txt").stat().st_mode) == mode_of_new
    assert stat.S_IMODE(workspace.path("private.txt").stat().st_mode) == 0o700
    assert settings.read_text() == "port = 8080\n"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o640
    assert sorted(p.name for p in workspace.base.glob(".*")) == []  # no temporary files left


# ------------------------------------------------------------------------------------ names


def test_flow_and_task_runs_have_readable_names(workspace: Workspace) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    data = spec(
        "names",
        [counted(workspace, "prepare"), write("motd", workspace.path("motd"))],
        {"motd": ["prepare"]},
    )

    result = run_workflow(data)

    assert result.result.flow_run_id is not None
    flow_run_id = UUID(result.result.flow_run_id)
    names: set[str] = set()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        deadline = time.monotonic() + 15  # task runs reach the API through events
        while time.monotonic() < deadline:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            names = {task_run.name for task_run in task_runs}
            if {"run prepare", "write motd"} <= names:
                break
            time.sleep(0.2)
    assert flow_run.name == data["workflow_id"]
    assert flow_run.flow_id is not None
    assert names == {"run prepare", "write motd"}


# ------------------------------------------------------------------------------------ shape


def test_the_result_has_the_seeds_shape(workspace: Workspace) -> None:
    good = spec("shape-ok", [counted(workspace, "ok")])
    bad = spec("shape-bad", [counted(workspace, "ko", succeed_from=99)], on_failure="keep")

    success = run_workflow(good).model_dump(mode="json")
    failure = run_workflow(bad).model_dump(mode="json")

    for dumped, data in ((success, good), (failure, bad)):
        assert set(dumped) == {"status", "result", "error", "context"}
        assert isinstance(dumped["result"]["operations"], list)
        assert isinstance(dumped["result"]["resources"], list)
        assert dumped["result"]["workflow_id"] == data["workflow_id"]
        assert dumped["context"]["workflow_id"] == data["workflow_id"]
        assert {"workflow_id", "step"} <= set(dumped["context"])
    assert success["status"] == "success"
    assert success["error"] is None
    assert success["context"]["step"] == "completed"
    operation = success["result"]["operations"][0]
    assert operation["id"] == "ok"
    assert operation["kind"] == "command.run"
    assert operation["status"] == "succeeded"
    assert operation["output"]["exit_code"] == 0
    assert failure["status"] == "error"  # nothing succeeded, so nothing was kept
    assert {"code", "message"} <= set(failure["error"])
    assert failure["error"]["code"] == "WORKFLOW_FAILED"
    assert failure["context"]["step"] == "failed at ko"
    assert failure["result"]["operations"][0]["error"]["code"] == "OPERATION_FAILED"


def test_the_journal_records_the_outcome(workspace: Workspace) -> None:
    operations = [counted(workspace, "ok"), counted(workspace, "ko", succeed_from=9)]
    data = spec("journal", operations, on_failure="keep")

    result = run_workflow(data)

    journal = Journal(workspace.journal_url)
    record = journal.get_workflow(data["workflow_id"])
    assert record is not None
    assert record.status == "partial"
    assert record.flow_run_id == result.result.flow_run_id
    stored = {op.operation_id: op.status for op in journal.operations(data["workflow_id"])}
    assert stored == {"ok": "succeeded", "ko": "failed"}


def test_a_secret_set_into_a_file_is_masked_in_the_result_and_the_plan(
    workspace: Workspace,
) -> None:
    from providers.registry import load_workflow
    from provisioning.plan import make_plan
    from provisioning.secrets import MASK

    target = workspace.path("db.toml")
    setting = {"file": str(target), "key": "db.password", "value": "pw-in-file-only"}
    data = spec("secret", [{"id": "pw", "kind": "config.set", "params": setting}])

    result = run_workflow(data)

    assert result.status == "success"
    assert 'password = "pw-in-file-only"' in target.read_text()
    assert result.result.operations[0].output["value"] == MASK
    assert "pw-in-file-only" not in result.model_dump_json()
    plan = make_plan(load_workflow(data)).model_dump_json()
    assert MASK in plan and "pw-in-file-only" not in plan
