"""The event stream of real runs, read from a bus subscriber and back from Prefect's API."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.run import run_workflow
from provisioning.events import SystemEvent, bus

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


def _stored_in_prefect(events: list[SystemEvent], deadline_s: float = 30.0) -> dict[str, str]:
    """Event id -> Prefect event name, for the events Prefect has persisted."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter

    wanted = [UUID(event.event_id) for event in events]
    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=EventFilter(id=EventIDFilter(id=wanted)), limit=50)
            found = {str(event.id): event.event for event in page.events}
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found
            time.sleep(0.25)


def _spec(operations: list[dict[str, Any]], dependencies: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "workflow_id": f"wf-events-{uuid.uuid4().hex[:8]}",
        "name": "events",
        "operations": operations,
        "dependencies": dependencies,
    }


def test_successful_run_events_in_order_on_the_bus_and_in_prefect(tmp_path: Path) -> None:
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
                "params": {"file": str(tmp_path / "c.toml"), "key": "a.b", "value": 1},
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
    stored = _stored_in_prefect(events)
    assert stored == {event.event_id: event.prefect_event_name for event in events}


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
    stored = _stored_in_prefect(events)
    assert "provisioning.operation.retried" in stored.values()


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
    stored = _stored_in_prefect(events)
    assert list(stored.values()).count("provisioning.rollback.executed") == 2
