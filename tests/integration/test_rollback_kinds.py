"""Every rollback kind undoes exactly what its operation did, newest first.

One workflow changes files, settings and runs a command, one step after another; its last step
takes a snapshot of what the machine looks like and then fails, so the flow rolls everything back.
Writing the same file and the same key twice proves the order: only newest-first undoing brings
back the original.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from flows.run import run_workflow
from provisioning.journal import Journal
from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.usefixtures("prefect_api")

ORIGINAL_BYTES = b"original \x00\xff bytes\r\nno newline at the end"
ORIGINAL_MODE = 0o640
APP_TOML = '# settings\n[server]\nhost = "example"\nport = 80\n'

#: Records what the files look like, then fails for good (exit status 3).
SNAPSHOT = """
import json, os, sys
paths, out = sys.argv[1:-1], sys.argv[-1]
seen = {p: (open(p, "rb").read().decode("latin-1") if os.path.exists(p) else None) for p in paths}
with open(out, "w") as handle:
    json.dump(seen, handle)
sys.exit(3)
"""

#: The undo of the command step: proves it ran, in the step's cwd and with the step's env.
UNDO = "import os; open('undo-ran.txt', 'a').write(os.environ['UNDO_MARK'] + '\\n')"


def chain(operations: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each operation waits for the one before: completion order is spec order."""
    return {operation["id"]: [previous["id"]] for previous, operation in pairwise(operations)}


@pytest.fixture
def files(workspace: Workspace) -> dict[str, Path]:
    conf = workspace.path("conf.txt")
    conf.write_bytes(ORIGINAL_BYTES)
    os.chmod(conf, ORIGINAL_MODE)
    app = workspace.path("app.toml")
    app.write_text(APP_TOML)
    return {
        "conf": conf,
        "new": workspace.path("generated") / "new.txt",
        "app": app,
        "fresh": workspace.path("fresh.toml"),
        "snapshot": workspace.path("snapshot.json"),
    }


def test_every_kind_is_undone_newest_first(workspace: Workspace, files: dict[str, Path]) -> None:
    watched = [str(files[name]) for name in ("conf", "new", "app", "fresh")]
    operations: list[dict[str, Any]] = [
        {"id": "conf-v1", "kind": "file.write",
         "params": {"path": str(files["conf"]), "content": "v1\n", "mode": "0755"}},
        {"id": "conf-v2", "kind": "file.write",
         "params": {"path": str(files["conf"]), "content": "v2\n"}},
        {"id": "new-file", "kind": "file.write",
         "params": {"path": str(files["new"]), "content": "brand new\n"}},
        {"id": "port-1", "kind": "config.set",
         "params": {"file": "app.toml", "key": "server.port", "value": 1}},
        {"id": "port-2", "kind": "config.set",
         "params": {"file": "app.toml", "key": "server.port", "value": 2}},
        {"id": "new-key", "kind": "config.set",
         "params": {"file": "app.toml", "key": "extra.deep.flag", "value": True}},
        {"id": "new-toml", "kind": "config.set",
         "params": {"file": "fresh.toml", "key": "a.b", "value": "x"}},
        {"id": "command", "kind": "command.run",
         "params": {"argv": workspace.python("pass"), "undo": workspace.python(UNDO),
                    "env": {"UNDO_MARK": "undone"}}},
        {"id": "snapshot", "kind": "command.run",
         "params": {"argv": [*workspace.python(SNAPSHOT), *watched, str(files["snapshot"])]}},
    ]  # fmt: skip
    workflow_id = f"wf-kinds-{uuid.uuid4().hex[:8]}"
    spec = {
        "workflow_id": workflow_id,
        "name": "kinds",
        "operations": operations,
        "dependencies": chain(operations),
        "configuration": {"on_failure": "rollback"},
    }

    result = run_workflow(spec)

    # Every step did its work before the last one failed ...
    seen = json.loads(files["snapshot"].read_text())
    assert seen[str(files["conf"])] == "v2\n"
    assert seen[str(files["new"])] == "brand new\n"
    assert tomllib.loads(seen[str(files["app"])]) == {
        "server": {"host": "example", "port": 2},
        "extra": {"deep": {"flag": True}},
    }
    assert tomllib.loads(seen[str(files["fresh"])]) == {"a": {"b": "x"}}
    # ... and the rollback undid all of it, newest first.
    assert result.status == "error"
    rollback = result.result.rollback
    assert rollback is not None
    assert [step.operation_id for step in rollback] == [
        "command", "new-toml", "new-key", "port-2", "port-1", "new-file", "conf-v2", "conf-v1",
    ]  # fmt: skip
    assert [step.status for step in rollback] == ["done"] * 8
    assert files["conf"].read_bytes() == ORIGINAL_BYTES
    assert stat.S_IMODE(files["conf"].stat().st_mode) == ORIGINAL_MODE
    assert not files["new"].exists()
    assert tomllib.loads(files["app"].read_text()) == tomllib.loads(APP_TOML)
    assert not files["fresh"].exists()
    assert workspace.path("undo-ran.txt").read_text() == "undone\n"
    journal = Journal(workspace.journal_url)
    assert [entry.status for entry in journal.rollback_stack(workflow_id, status=None)] == (
        ["done"] * 8
    )
    record = journal.get_workflow(workflow_id)
    assert record is not None and record.status == "rolled_back"


def test_the_rollback_report_says_what_was_undone(
    workspace: Workspace, files: dict[str, Path]
) -> None:
    operations: list[dict[str, Any]] = [
        {"id": "conf", "kind": "file.write",
         "params": {"path": str(files["conf"]), "content": "v1\n"}},
        {"id": "new", "kind": "file.write",
         "params": {"path": str(files["new"]), "content": "n\n"}},
        {"id": "port", "kind": "config.set",
         "params": {"file": "app.toml", "key": "server.port", "value": 1}},
        {"id": "key", "kind": "config.set",
         "params": {"file": "app.toml", "key": "server.debug", "value": True}},
        {"id": "fail", "kind": "command.run",
         "params": {"argv": workspace.python("raise SystemExit(3)")}},
    ]  # fmt: skip
    spec = {
        "workflow_id": f"wf-report-{uuid.uuid4().hex[:8]}",
        "name": "report",
        "operations": operations,
        "dependencies": chain(operations),
    }

    result = run_workflow(spec)

    rollback = result.result.rollback
    assert rollback is not None
    app = str(files["app"])
    assert [(step.operation_id, step.action) for step in rollback] == [
        ("key", f"remove server.debug in {app}"),
        ("port", f"revert server.port in {app}"),
        ("new", f"delete file {files['new']}"),
        ("conf", f"restore file {files['conf']}"),
    ]
    assert tomllib.loads(files["app"].read_text()) == tomllib.loads(APP_TOML)
