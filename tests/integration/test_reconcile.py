"""A completion hook that could not write the journal is made good by the flow itself."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import tasks.operation
from flows.run import run_workflow

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_an_operation_whose_hook_failed_is_still_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def journal_down(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    # Only the hooks look record_success up in tasks.operation; the flow's reconcile does not.
    monkeypatch.setattr(tasks.operation, "record_success", journal_down)
    note = tmp_path / "note.txt"
    result = run_workflow(
        {
            "workflow_id": f"wf-reconcile-{uuid.uuid4().hex[:8]}",
            "name": "reconcile",
            "operations": [
                {
                    "id": "note",
                    "kind": "file.write",
                    "params": {"path": str(note), "content": "written"},
                },
                {"id": "boom", "kind": "command.run", "params": {"argv": ["false"]}},
            ],
            "dependencies": {"boom": ["note"]},
        }
    )
    assert result.status == "error"
    assert [(step.operation_id, step.status) for step in result.result.rollback or []] == [
        ("note", "done")
    ]
    assert not note.exists()
