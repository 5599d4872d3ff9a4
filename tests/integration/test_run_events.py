"""The event stream of real runs, read from a bus subscriber and back from Prefect's API."""

from __future__ import annotations

import re
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import tomli_w
from typer.testing import CliRunner

from flows.run import run_workflow
from provisioning.cli import app
from provisioning.events import ConfigurationChanged, SystemEvent, bus
from tests.fixtures.workspace import Workspace

if TYPE_CHECKING:
    from prefect.events.schemas.events import ReceivedEvent

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST_RETRIES = ["engine.retry_backoff=0.05", "engine.retry_jitter=0"]


def _run_collecting(spec: dict[str, Any]) -> tuple[Any, list[SystemEvent]]:
    received: list[SystemEvent] = []
    subscription = bus.subscribe(None, received.append, workflow_id=spec["workflow_id"])
    try:
        result = run_workflow(spec, overrides=FAST_RETRIES)
        assert subscription.flush(10)
    finally:
        subscription.close()
    return result, received


def _kinds(events: list[SystemEvent], operation: str | None = None) -> list[str]:
    return [
        event.kind
        for event in events
        if operation is None or getattr(event, "operation_id", None) == operation
    ]


def _read_back(workflow_id: str, count: int, deadline_s: float = 30.0) -> list[ReceivedEvent]:
    """The Prefect events about or related to the workflow, oldest first, once ``count`` are in."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventOrder

    wanted = EventFilter(
        any_resource=EventAnyResourceFilter(id=[f"provisioning.workflow.{workflow_id}"]),
        order=EventOrder.ASC,
    )
    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=wanted, limit=50).events
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.25)


def _assert_prefect_saw(events: list[SystemEvent]) -> list[ReceivedEvent]:
    """Prefect stored every bus event of the run, with its id and name, in the same order."""
    stored = _read_back(events[0].workflow_id, len(events))
    assert [(str(event.id), event.event) for event in stored] == [
        (event.event_id, event.prefect_event_name) for event in events
    ]
    return stored


def _spec(operations: list[dict[str, Any]], dependencies: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "workflow_id": f"wf-events-{uuid.uuid4().hex[:8]}",
        "name": "events",
        "operations": operations,
        "dependencies": dependencies,
    }


def test_successful_run_events_in_order_on_the_bus_and_in_prefect(tmp_path: Path) -> None:
    settings = tmp_path / "c.toml"
    settings.write_text("[a]\nb = 0\n")
    spec = _spec(
        [
            {
                "id": "note",
                "kind": "file.write",
                "params": {"path": str(tmp_path / "note.txt"), "content": "hi"},
            },
            {
                "id": "flag",
                "kind": "config.set",
                "params": {"file": str(settings), "key": "a.b", "value": 1},
            },
        ],
        {"flag": ["note"]},
    )
    result, events = _run_collecting(spec)
    assert result.status == "success"
    kinds = _kinds(events)
    assert kinds[0] == "workflow.started"
    assert kinds[-1] == "workflow.completed"
    assert _kinds(events, "note") == ["operation.started", "operation.completed"]
    assert _kinds(events, "flag") == ["operation.started", "operation.completed"]
    assert "configuration.changed" in kinds
    note_done = kinds.index("operation.completed")
    flag_started = next(i for i, e in enumerate(events) if getattr(e, "operation_id", "") == "flag")
    assert note_done < flag_started  # the dependency shows in the stream
    (changed,) = [event for event in events if isinstance(event, ConfigurationChanged)]
    assert (changed.source, changed.key, changed.old_value, changed.new_value) == (
        str(settings),
        "a.b",
        0,
        1,
    )
    stored = _assert_prefect_saw(events)
    (payload,) = [e.payload for e in stored if e.event == "provisioning.configuration.changed"]
    assert (payload["key"], payload["old_value"], payload["new_value"]) == ("a.b", 0, 1)


def test_retried_run_emits_operation_retried_then_completes(tmp_path: Path) -> None:
    counter = tmp_path / "tries"
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
        "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
        "sys.exit(75 if n < 2 else 0)"
    )
    spec = _spec(
        [{"id": "flaky", "kind": "command.run",
          "params": {"argv": [sys.executable, "-c", script, str(counter)]}}],
        {},
    )  # fmt: skip
    result, events = _run_collecting(spec)
    assert result.status == "success"
    assert _kinds(events, "flaky") == [
        "operation.started",
        "operation.retried",
        "operation.started",
        "operation.completed",
    ]
    retried = next(event for event in events if event.kind == "operation.retried")
    assert retried.attempt == 1  # type: ignore[attr-defined]
    assert "status 75" in retried.error  # type: ignore[attr-defined]
    _assert_prefect_saw(events)


def test_rolled_back_run_emits_rollback_executed_in_reverse_order(tmp_path: Path) -> None:
    spec = _spec(
        [
            {
                "id": "first",
                "kind": "file.write",
                "params": {"path": str(tmp_path / "1.txt"), "content": "1"},
            },
            {
                "id": "second",
                "kind": "file.write",
                "params": {"path": str(tmp_path / "2.txt"), "content": "2"},
            },
            {"id": "boom", "kind": "command.run", "params": {"argv": ["false"]}},
        ],
        {"second": ["first"], "boom": ["second"]},
    )
    result, events = _run_collecting(spec)
    assert result.status == "error"
    rollbacks = [event for event in events if event.kind == "rollback.executed"]
    assert [event.operation_id for event in rollbacks] == ["second", "first"]  # type: ignore[attr-defined]
    assert _kinds(events)[-1] == "workflow.failed"
    assert "operation.failed" in _kinds(events, "boom")
    assert not (tmp_path / "1.txt").exists() and not (tmp_path / "2.txt").exists()
    _assert_prefect_saw(events)


def test_provision_run_events_prints_each_event_in_order(workspace: Workspace) -> None:
    spec = _spec(
        [
            {"id": "motd", "kind": "file.write", "params": {"path": "motd", "content": "hi\n"}},
            {
                "id": "check",
                "kind": "command.run",
                "params": {"argv": ["grep", "-q", "hi", "motd"]},
            },
        ],
        {"check": ["motd"]},
    )
    path = workspace.path("events.toml")
    path.write_text(tomli_w.dumps(spec))

    result = CliRunner().invoke(app, ["run", str(path), "--events"], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    line = r"^\d\d:\d\d:\d\d\.\d{3} provisioning\.(?P<kind>\S+)(?:.* operation_id=(?P<op>\S+))?"
    printed = [
        (match["kind"], match["op"]) for match in re.finditer(line, result.output, re.MULTILINE)
    ]
    assert printed == [
        ("workflow.started", None),
        ("operation.started", "motd"),
        ("operation.completed", "motd"),
        ("operation.started", "check"),
        ("operation.completed", "check"),
        ("workflow.completed", None),
    ]
    assert result.output.index("workflow.completed") < result.output.index("success 2 operations")


def test_a_slow_and_a_failing_subscriber_neither_slow_nor_break_a_run(tmp_path: Path) -> None:
    spec = _spec(
        [
            {"id": f"f{n}", "kind": "file.write",
             "params": {"path": str(tmp_path / f"{n}.txt"), "content": str(n)}}
            for n in range(6)
        ],
        {f"f{n}": [f"f{n - 1}"] for n in range(1, 6)},
    )  # fmt: skip
    slow_seen: list[SystemEvent] = []
    failures: list[SystemEvent] = []

    def slow(event: SystemEvent) -> None:
        slow_seen.append(event)
        time.sleep(1.0)

    def failing(event: SystemEvent) -> None:
        failures.append(event)
        raise RuntimeError("subscriber bug")

    slow_subscription = bus.subscribe(None, slow, workflow_id=spec["workflow_id"])
    failing_subscription = bus.subscribe(None, failing, workflow_id=spec["workflow_id"])
    try:
        began = time.monotonic()
        result, events = _run_collecting(spec)
        elapsed = time.monotonic() - began
        assert failing_subscription.flush(10)
        seen_by_slow_at_the_end = len(slow_seen)
    finally:
        slow_subscription.close()
        failing_subscription.close()

    assert result.status == "success"
    assert [path.read_text() for path in sorted(tmp_path.glob("*.txt"))] == list("012345")
    assert len(events) == 14  # started, 6 x (operation started, completed), completed
    # Blocking on the slow subscriber would have cost a second per event.
    assert elapsed < len(events) / 2, f"{elapsed:.1f}s for {len(events)} events"
    assert seen_by_slow_at_the_end < len(events)  # it was still behind when the run ended
    assert [event.event_id for event in failures] == [event.event_id for event in events]
