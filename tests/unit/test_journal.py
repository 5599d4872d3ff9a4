"""The journal: every record round-trips, the rollback stack pops in reverse, the lock holds
against live processes and yields to dead or hung ones, and concurrent writers never fail."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from provisioning.errors import (
    ConfigurationError,
    PermanentProviderError,
    ProvisioningError,
    ResourceNotFound,
    WorkflowLocked,
    WorkflowNotFound,
)
from provisioning.journal import Journal

ROOT = Path(__file__).resolve().parents[2]

# A second process using the journal: ``hold`` records a resource, takes the lock, says so and
# keeps it until its stdin closes; ``write`` writes as fast as it can until it is killed.
CHILD = """
import sys
import time
from provisioning.journal import Journal

mode, url, workflow_id, stale_after = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
journal = Journal(url, stale_after=stale_after)
if mode == "hold":
    journal.record_resource(
        workflow_id, "child", provider="local", resource_id="child-box", key=f"{workflow_id}/child"
    )
    with journal.lock(workflow_id, owner="child") as held:
        print("locked", held.pid, flush=True)
        sys.stdin.read()
else:
    n = 0
    while True:
        op = f"w{n}"
        journal.record_intent(workflow_id, op, kind="file.write", provider=None, key=op)
        journal.push_rollback(workflow_id, op, {"type": "RestoreFile", "n": n})
        n += 1
        if n == 5:
            print("writing", flush=True)
        time.sleep(0.005)  # a busy neighbour, not one that starves the others
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'journal.db'}"


@pytest.fixture
def journal(url: str) -> Iterator[Journal]:
    opened = Journal(url)
    yield opened
    opened.close()


@pytest.fixture
def workflow(journal: Journal) -> str:
    journal.upsert_workflow("wf-web", "web-stack", {"operations": [{"id": "db"}]})
    return "wf-web"


def start_child(mode: str, url: str, workflow_id: str, stale_after: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, url, workflow_id, str(stale_after)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"child {mode} exited early with {child.wait()}"
    return child


def stop_child(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()


def integrity(url: str) -> str:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# ----------------------------------------------------------------------------------- opening


def test_state_dir_journal_is_a_wal_sqlite_file_in_a_created_directory(tmp_path: Path) -> None:
    state = tmp_path / "does" / "not" / "exist"
    journal = Journal.from_state_dir(state)
    journal.upsert_workflow("wf", "n", {})
    journal.close()

    assert journal.url == f"sqlite:///{state / 'journal.db'}"
    with sqlite3.connect(state / "journal.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT workflow_id FROM workflows").fetchall() == [("wf",)]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:"])
def test_in_memory_urls_work_from_many_threads(url: str) -> None:
    journal = Journal(url)
    journal.upsert_workflow("wf", "n", {})

    def push(n: int) -> int:
        return journal.push_rollback("wf", f"op{n}", {"type": "CustomAction"})

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(push, range(8)))
    assert sorted(e.id for e in journal.rollback_stack("wf")) == sorted(ids)
    assert len(set(ids)) == 8


def test_relative_sqlite_path_is_created_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Journal("sqlite:///rel/dir/journal.db").close()
    assert (tmp_path / "rel" / "dir" / "journal.db").is_file()


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://admin:hunter2@127.0.0.1:1/journal",  # driver not installed here
        "postgresql+asyncpg://admin:hunter2@127.0.0.1:1/journal",  # async driver
        "nosuchdb://admin:hunter2@host/journal",
        "definitely not a url",
    ],
)
def test_unusable_urls_are_configuration_errors_that_hide_passwords(bad: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Journal(bad)
    assert caught.value.code == "JOURNAL_URL_INVALID"
    assert "hunter2" not in str(caught.value)


# --------------------------------------------------------------------------------- workflows


def test_upsert_keeps_status_and_generation_of_a_known_workflow(journal: Journal) -> None:
    first = journal.upsert_workflow("wf", "old-name", {"v": 1})
    assert (first.status, first.generation, first.flow_run_id, first.error) == (
        "pending",
        0,
        None,
        None,
    )
    assert first.created_at.tzinfo is UTC

    journal.set_workflow_status("wf", "failed", flow_run_id="run-1")
    journal.new_generation("wf")
    again = journal.upsert_workflow("wf", "new-name", {"v": 2})

    assert (again.name, again.spec, again.status) == ("new-name", {"v": 2}, "failed")
    assert (again.generation, again.flow_run_id) == (1, "run-1")
    assert again.created_at == first.created_at
    assert again.updated_at > first.updated_at


def test_status_error_and_run_id(journal: Journal, workflow: str) -> None:
    failed = journal.set_workflow_status(
        workflow,
        "failed",
        error=PermanentProviderError("bad image", provider="aws"),
        flow_run_id="run-1",
    )
    assert failed.error == {
        "code": "PROVIDER_PERMANENT",
        "message": "provider 'aws': bad image",
        "details": {"provider": "aws"},
    }
    running = journal.set_workflow_status(workflow, "running")
    assert (running.status, running.error, running.flow_run_id) == ("running", None, "run-1")
    with_dict = journal.set_workflow_status(workflow, "partial", error={"code": "X", "n": 1})
    assert with_dict.error == {"code": "X", "n": 1}

    with pytest.raises(ValueError, match="unknown workflow status 'exploded'"):
        journal.set_workflow_status(workflow, "exploded")  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotFound):
        journal.set_workflow_status("nope", "running")
    assert journal.get_workflow("nope") is None


def test_list_is_newest_first_with_filter_and_paging(journal: Journal) -> None:
    for n in range(5):
        journal.upsert_workflow(f"wf-{n}", f"name-{n}", {})
    journal.set_workflow_status("wf-1", "succeeded")
    journal.set_workflow_status("wf-3", "succeeded")

    assert [w.workflow_id for w in journal.list_workflows()] == [f"wf-{n}" for n in (4, 3, 2, 1, 0)]
    assert [w.workflow_id for w in journal.list_workflows("succeeded")] == ["wf-3", "wf-1"]
    assert [w.workflow_id for w in journal.list_workflows(limit=2, offset=1)] == ["wf-3", "wf-2"]
    assert journal.count_workflows() == 5
    assert journal.count_workflows("succeeded") == 2
    assert journal.count_workflows("failed") == 0


def test_new_generation_counts_up_and_persists(journal: Journal, workflow: str, url: str) -> None:
    assert journal.new_generation(workflow) == 1
    assert journal.new_generation(workflow) == 2
    reopened = Journal(url)
    assert reopened.get_workflow(workflow).generation == 2  # type: ignore[union-attr]
    with pytest.raises(WorkflowNotFound):
        journal.new_generation("nope")


def test_json_round_trips_through_the_file(journal: Journal, url: str) -> None:
    spec: dict[str, Any] = {
        "name": "ünïcode ☃",
        "configuration": {"parallelism": 10, "ratio": 0.25, "on_failure": None, "dry": False},
        "operations": [{"id": "db", "params": {"labels": {"role": "db"}, "ports": [80, 443]}}],
    }
    journal.upsert_workflow("wf", "n", spec)
    journal.record_intent("wf", "db", kind="server.create", provider="aws", key="wf/db")
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    journal.record_outcome("wf", "db", "succeeded", result={"id": "i-1", "at": stamp, "n": [1]})

    reopened = Journal(url)
    assert reopened.get_workflow("wf").spec == spec  # type: ignore[union-attr]
    stored = reopened.get_operation("wf", "db")
    assert stored is not None
    assert stored.result == {"id": "i-1", "at": "2024-05-01T12:00:00Z", "n": [1]}


# -------------------------------------------------------------------------------- operations


def test_intent_then_outcome(journal: Journal, workflow: str) -> None:
    attempt = journal.record_intent(workflow, "db", kind="server.create", provider="aws", key="k")
    assert attempt == 1
    pending = journal.get_operation(workflow, "db")
    assert pending is not None
    assert (pending.status, pending.attempt, pending.key, pending.provider) == (
        "intent",
        1,
        "k",
        "aws",
    )
    assert pending.started_at is not None and pending.finished_at is None

    failed = journal.record_outcome(
        workflow, "db", "failed", error=PermanentProviderError("quota", provider="aws")
    )
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None and failed.error["code"] == "PROVIDER_PERMANENT"

    assert journal.record_intent(workflow, "db", kind="server.create", provider="aws", key="k") == 2
    retried = journal.get_operation(workflow, "db")
    assert retried is not None
    assert (retried.status, retried.error, retried.finished_at) == ("intent", None, None)

    running = journal.record_outcome(workflow, "db", "running")
    assert running.finished_at is None
    done = journal.record_outcome(workflow, "db", "succeeded", result={"id": "i-1"})
    assert (done.status, done.result, done.attempt) == ("succeeded", {"id": "i-1"}, 2)


def test_a_key_may_exist_once_an_attempt_or_a_live_resource_could_have_carried_it(
    journal: Journal, workflow: str
) -> None:
    key = f"{workflow}/db"
    assert journal.key_may_exist(workflow, "db", key)  # no intent: nothing is proven
    journal.record_intent(workflow, "db", kind="server.create", provider="aws", key=key)
    assert not journal.key_may_exist(workflow, "db", key)  # first attempt, nothing recorded

    journal.record_resource(workflow, "db", provider="aws", resource_id="i-1", key=key)
    assert journal.key_may_exist(workflow, "db", key)
    journal.set_resource_state("aws", "i-1", "deleted")
    assert not journal.key_may_exist(workflow, "db", key)

    journal.record_intent(workflow, "db", kind="server.create", provider="aws", key=key)
    assert journal.key_may_exist(workflow, "db", key)  # the first attempt may have reached it


def test_outcome_without_intent_needs_a_kind(journal: Journal, workflow: str) -> None:
    with pytest.raises(ProvisioningError) as caught:
        journal.record_outcome(workflow, "web", "not_run")
    assert caught.value.code == "OPERATION_NOT_FOUND"

    skipped = journal.record_outcome(
        workflow, "web", "not_run", kind="server.create", provider="upcloud"
    )
    assert (skipped.status, skipped.attempt, skipped.key) == ("not_run", 0, f"{workflow}/web")
    assert journal.get_operation(workflow, "other") is None


def test_operations_in_start_order_and_reset(journal: Journal, workflow: str) -> None:
    for op in ("web", "db", "app"):
        journal.record_intent(workflow, op, kind="config.set", provider=None, key=op)
    journal.record_outcome(workflow, "never", "not_run", kind="command.run")
    journal.record_outcome(workflow, "db", "succeeded", result=1)

    assert [op.operation_id for op in journal.operations(workflow)] == ["web", "db", "app", "never"]
    assert journal.operations("nope") == []

    assert journal.reset_operations(workflow) == 4
    reset = journal.operations(workflow)
    assert {(op.status, op.attempt, op.result) for op in reset} == {("pending", 0, None)}
    assert journal.record_intent(workflow, "db", kind="config.set", provider=None, key="db") == 1


def test_operations_need_a_known_workflow(journal: Journal) -> None:
    with pytest.raises(WorkflowNotFound):
        journal.record_intent("nope", "db", kind="server.create", provider="aws", key="k")
    with pytest.raises(WorkflowNotFound):
        journal.push_rollback("nope", "db", {"type": "DeleteResource"})
    with pytest.raises(WorkflowNotFound):
        journal.record_resource("nope", "db", provider="aws", resource_id="i-1", key="k")


# --------------------------------------------------------------------------------- resources


def test_resources_record_idempotently_and_filter(journal: Journal, workflow: str) -> None:
    journal.upsert_workflow("wf-other", "other", {})
    first = journal.record_resource(
        workflow, "db", provider="aws", resource_id="i-1", key="wf-web/db", state="creating"
    )
    again = journal.record_resource(workflow, "db", provider="aws", resource_id="i-1", key="x")
    assert again.id == first.id
    assert (again.state, again.key) == ("present", "wf-web/db")
    same_id_elsewhere = journal.record_resource(
        workflow, "web", provider="upcloud", resource_id="i-1", key="wf-web/web"
    )
    assert same_id_elsewhere.id != first.id
    journal.record_resource("wf-other", "x", provider="aws", resource_id="i-9", key="wf-other/x")

    assert [r.resource_id for r in journal.resources(workflow)] == ["i-1", "i-1"]
    assert [r.provider for r in journal.resources(workflow, provider="upcloud")] == ["upcloud"]
    assert len(journal.resources()) == 3
    assert len(journal.resources(provider="aws")) == 2

    deleted = journal.set_resource_state("aws", "i-1", "deleted")
    assert deleted.state == "deleted" and deleted.updated_at >= first.updated_at
    assert [r.provider for r in journal.resources(workflow)] == ["upcloud"]
    assert len(journal.resources(workflow, include_deleted=True)) == 2
    assert journal.owned_keys() == {"wf-web/web", "wf-other/x"}
    assert journal.owned_keys("aws") == {"wf-other/x"}

    with pytest.raises(ResourceNotFound):
        journal.set_resource_state("aws", "i-404", "deleted")
    with pytest.raises(ValueError, match="resource state"):
        journal.set_resource_state("aws", "i-1", "gone")  # type: ignore[arg-type]


def test_sweep_spares_keys_a_run_may_still_adopt(journal: Journal, workflow: str) -> None:
    """An intent with no outcome (a live or killed run) and a failed create of a workflow kept
    for resume may own a server the journal has no id for: the sweep must not delete it."""
    journal.upsert_workflow("wf-done", "done", {})
    for workflow_id, operation_id in [(workflow, "live"), (workflow, "lost"), ("wf-done", "old")]:
        journal.record_intent(
            workflow_id,
            operation_id,
            kind="server.create",
            provider="aws",
            key=f"{workflow_id}/{operation_id}",
        )
    journal.record_outcome(workflow, "lost", "failed", error="timed out")
    journal.record_outcome("wf-done", "old", "failed", error="timed out")
    journal.set_workflow_status(workflow, "partial")
    journal.set_workflow_status("wf-done", "rolled_back")

    assert journal.owned_keys("aws") == {f"{workflow}/live", f"{workflow}/lost"}
    assert journal.owned_keys("upcloud") == set()
    journal.set_workflow_status(workflow, "destroyed")
    assert journal.owned_keys() == {f"{workflow}/live"}


def test_resource_by_key_finds_the_newest_live_one(journal: Journal, workflow: str) -> None:
    assert journal.resource_by_key("wf-web/db") is None
    journal.record_resource(workflow, "db", provider="aws", resource_id="i-1", key="wf-web/db")
    journal.set_resource_state("aws", "i-1", "deleted")
    assert journal.resource_by_key("wf-web/db") is None  # rolled back: create again on resume

    journal.record_resource(workflow, "db", provider="aws", resource_id="i-2", key="wf-web/db")
    found = journal.resource_by_key("wf-web/db")
    assert found is not None and found.resource_id == "i-2"


# ---------------------------------------------------------------------------- rollback stack


def test_rollback_stack_pops_last_pushed_first(journal: Journal, workflow: str) -> None:
    ids = [
        journal.push_rollback(workflow, op, {"type": "DeleteResource", "resource_id": op})
        for op in ("db", "web", "dns")
    ]
    assert ids == sorted(ids)
    stack = journal.rollback_stack(workflow)
    assert [entry.operation_id for entry in stack] == ["dns", "web", "db"]
    assert stack[0].action == {"type": "DeleteResource", "resource_id": "dns"}
    assert {entry.status for entry in stack} == {"pending"}


def test_push_is_idempotent_while_pending(journal: Journal, workflow: str) -> None:
    first = journal.push_rollback(workflow, "db", {"type": "DeleteResource", "n": 1})
    assert journal.push_rollback(workflow, "db", {"type": "DeleteResource", "n": 2}) == first
    assert [e.action["n"] for e in journal.rollback_stack(workflow)] == [1]

    journal.mark_rollback(first, "done")
    second = journal.push_rollback(workflow, "db", {"type": "DeleteResource", "n": 3})
    assert second > first
    assert [e.id for e in journal.rollback_stack(workflow)] == [second]

    with pytest.raises(ValueError, match="no 'type'"):
        journal.push_rollback(workflow, "web", {"resource_id": "i-1"})


def test_mark_and_clear_rollback(journal: Journal, workflow: str) -> None:
    db = journal.push_rollback(workflow, "db", {"type": "DeleteResource"})
    web = journal.push_rollback(workflow, "web", {"type": "DeleteResource"})
    cfg = journal.push_rollback(workflow, "cfg", {"type": "RevertConfiguration"})

    done = journal.mark_rollback(cfg, "done")
    assert done.done_at is not None and done.error is None
    failed = journal.mark_rollback(web, "failed", PermanentProviderError("busy", provider="aws"))
    assert failed.error is not None and failed.error["message"] == "provider 'aws': busy"
    journal.mark_rollback(db, "skipped")

    assert journal.rollback_stack(workflow) == []
    assert [e.id for e in journal.rollback_stack(workflow, "failed")] == [web]
    assert [e.status for e in journal.rollback_stack(workflow, None)] == [
        "done",
        "failed",
        "skipped",
    ]
    again = journal.mark_rollback(web, "pending")
    assert again.done_at is None and [e.id for e in journal.rollback_stack(workflow)] == [web]

    with pytest.raises(ProvisioningError) as caught:
        journal.mark_rollback(9999, "done")
    assert caught.value.code == "ROLLBACK_ENTRY_NOT_FOUND"
    assert journal.clear_rollback(workflow) == 3
    assert journal.rollback_stack(workflow, None) == []


# -------------------------------------------------------------------------------- checkpoint


def test_checkpoint_in_the_seed_shape(journal: Journal, workflow: str) -> None:
    journal.set_workflow_status(workflow, "running", flow_run_id="run-7")
    for op in ("net", "db", "web"):
        journal.record_intent(workflow, op, kind="server.create", provider="aws", key=op)
    journal.record_outcome(workflow, "db", "succeeded")
    journal.record_outcome(workflow, "net", "succeeded")
    journal.record_resource(workflow, "db", provider="aws", resource_id="i-1", key="db")
    journal.push_rollback(workflow, "db", {"type": "DeleteResource"})

    shape = journal.checkpoint(workflow).model_dump(mode="json")

    assert shape["workflow_id"] == workflow
    assert shape["step"] == 2
    assert shape["completed_operations"] == ["db", "net"]
    assert shape["current_state"] == {
        "status": "running",
        "operations": {"net": "succeeded", "db": "succeeded", "web": "intent"},
    }
    assert shape["metadata"] == {
        "name": "web-stack",
        "generation": 0,
        "flow_run_id": "run-7",
        "resource_count": 1,
        "rollback_depth": 1,
    }
    stamp = datetime.fromisoformat(shape["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    with pytest.raises(WorkflowNotFound):
        journal.checkpoint("nope")


# ------------------------------------------------------------------------------------- locks


def test_lock_is_exclusive_and_released_even_on_error(journal: Journal, url: str) -> None:
    other = Journal(url)
    with pytest.raises(RuntimeError), journal.lock("wf", owner="me") as held:
        assert journal.lock_holder("wf") == held
        with pytest.raises(WorkflowLocked) as caught, other.lock("wf"):
            pass
        raise RuntimeError("the run failed")
    message = str(caught.value)
    assert f"pid {held.pid}" in message and socket.gethostname() in message and "since" in message
    assert caught.value.code == "WORKFLOW_LOCKED"

    assert journal.lock_holder("wf") is None
    with other.lock("wf") as again:
        assert again.owner != "me"


def test_lock_of_a_live_process_is_refused_and_taken_over_once_it_is_killed(
    journal: Journal, url: str
) -> None:
    journal.upsert_workflow("wf", "n", {})
    child = start_child("hold", url, "wf", 30)
    try:
        with pytest.raises(WorkflowLocked, match=f"pid {child.pid} on "), journal.lock("wf"):
            pass
        child.send_signal(signal.SIGKILL)
        # Not reaped yet: a zombie still answers kill(pid, 0) but must count as dead.
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with journal.lock("wf") as held:
            assert held.pid != child.pid
    finally:
        stop_child(child)
    assert [r.resource_id for r in journal.resources("wf")] == ["child-box"]
    assert integrity(url) == "ok"


def test_heartbeat_keeps_a_long_held_lock_alive(url: str) -> None:
    holder, other = Journal(url, stale_after=0.3), Journal(url, stale_after=0.3)
    with holder.lock("wf"):
        time.sleep(0.6)  # twice stale_after: only the heartbeat keeps the lock fresh
        with pytest.raises(WorkflowLocked), other.lock("wf"):
            pass


def test_lock_of_a_hung_process_is_taken_over_after_stale_after(journal: Journal, url: str) -> None:
    journal.upsert_workflow("wf", "n", {})
    quick = Journal(url, stale_after=0.4)
    child = start_child("hold", url, "wf", 0.4)
    try:
        with pytest.raises(WorkflowLocked), quick.lock("wf"):
            pass
        child.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stops
        stopped = time.monotonic()
        while True:
            try:
                with quick.lock("wf", owner="rescuer"):
                    waited = time.monotonic() - stopped
                    # The hung holder wakes up and leaves: it must not release our lock.
                    child.send_signal(signal.SIGCONT)
                    assert child.stdin is not None
                    child.stdin.close()
                    assert child.wait(timeout=5) == 0
                    holder = quick.lock_holder("wf")
                    assert holder is not None and holder.owner == "rescuer"
                break
            except WorkflowLocked:
                assert time.monotonic() - stopped < 3
                time.sleep(0.05)
        assert waited > 0.2
    finally:
        child.send_signal(signal.SIGCONT)
        stop_child(child)


# ------------------------------------------------------------------------------- concurrency


def test_two_journals_on_one_file_see_each_others_writes(journal: Journal, url: str) -> None:
    other = Journal(url)
    journal.upsert_workflow("wf", "n", {})
    assert other.get_workflow("wf") is not None
    other.record_intent("wf", "db", kind="server.create", provider="aws", key="wf/db")
    assert journal.get_operation("wf", "db") is not None
    journal.push_rollback("wf", "db", {"type": "DeleteResource"})
    assert len(other.rollback_stack("wf")) == 1


def test_sixteen_threads_and_another_process_write_without_errors(
    journal: Journal, url: str
) -> None:
    journal.upsert_workflow("wf", "n", {})
    journal.upsert_workflow("wf-child", "n", {})
    other = Journal(url)

    def work(n: int) -> None:
        mine = journal if n % 2 else other
        for i in range(3):
            op = f"t{n}-{i}"
            mine.record_intent("wf", op, kind="server.create", provider="aws", key=op)
            mine.record_resource("wf", op, provider="aws", resource_id=op, key=op)
            mine.push_rollback("wf", op, {"type": "DeleteResource"})
            mine.record_outcome("wf", op, "succeeded", result={"n": n})

    writer = start_child("write", url, "wf-child", 30)  # keeps writing until killed
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(work, range(16)))  # re-raises the first error of any thread
        writer.send_signal(signal.SIGKILL)  # mid-write, most likely
    finally:
        stop_child(writer)

    assert len(journal.operations("wf")) == 48
    assert len(journal.rollback_stack("wf")) == 48
    assert {op.status for op in journal.operations("wf")} == {"succeeded"}
    assert integrity(url) == "ok"
    # Each of the killed writer's calls committed whole or not at all.
    child_ops = {op.operation_id for op in journal.operations("wf-child")}
    child_pushes = {entry.operation_id for entry in journal.rollback_stack("wf-child")}
    assert child_pushes <= child_ops and len(child_ops - child_pushes) <= 1
    assert len(child_ops) >= 5
