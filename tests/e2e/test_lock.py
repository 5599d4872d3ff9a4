"""One writer per workflow: a live run locks out the others; a killed one does not, for long.

The first ``provision run`` blocks in a ``gate`` command until a file appears, holding the
workflow's lock. A second ``run`` and a ``resume`` of the same workflow id, started meanwhile,
are refused with ``WORKFLOW_LOCKED`` naming the holder. After ``kill -9`` of the first its lock
row is still there, but its pid is gone, so ``resume`` takes the lock over and finishes.
"""

from __future__ import annotations

import json

import pytest
import tomli_w

from tests.fixtures.sandbox_procs import CliProject, wait_until

pytestmark = pytest.mark.slow

WORKFLOW_ID = "wf-lock"
GATE_FILE = "gate.open"


def gated_spec() -> dict[str, object]:
    return {
        "workflow_id": WORKFLOW_ID,
        "name": "locked",
        "operations": [
            {
                "id": "gate",
                "kind": "command.run",
                "params": {
                    "argv": ["sh", "-c", f"while [ ! -e {GATE_FILE} ]; do sleep 0.05; done"],
                    "timeout": 60,
                },
            },
            {"id": "after", "kind": "command.run", "params": {"argv": ["true"]}},
        ],
        "dependencies": {"after": ["gate"]},
    }


def test_a_live_run_locks_out_others_and_a_killed_one_is_taken_over(
    cli_project: CliProject,
) -> None:
    spec = cli_project.base / "locked.toml"
    spec.write_text(tomli_w.dumps(gated_spec()))
    first = cli_project.start("run", str(spec))
    try:
        wait_until(
            lambda: cli_project.operation_states(WORKFLOW_ID).get("gate") == "intent",
            "the first run to hold the lock and wait at the gate",
            process=first,
            project=cli_project,
        )
        assert cli_project.lock_pid(WORKFLOW_ID) == first.pid
        rivals = [
            cli_project.spawn("run", str(spec)),
            cli_project.spawn("resume", WORKFLOW_ID),
        ]
        answers = [rival.communicate_all() for rival in rivals]

        for answer in answers:
            assert answer.returncode == 1, answer.stdout + answer.stderr
            assert (
                f"error WORKFLOW_LOCKED: workflow '{WORKFLOW_ID}' is locked by pid {first.pid} on "
                in answer.stderr
            )
        assert first.poll() is None, "the refused runs must not disturb the live one"
        assert cli_project.lock_pid(WORKFLOW_ID) == first.pid
    finally:
        cli_project.kill(first)

    assert cli_project.lock_pid(WORKFLOW_ID) == first.pid  # a dead holder's row stays behind
    (cli_project.base / GATE_FILE).touch()
    resumed = cli_project.run("resume", WORKFLOW_ID, "--json")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    operations = json.loads(resumed.stdout)["result"]["operations"]
    assert {op["id"]: op["status"] for op in operations} == {
        "gate": "succeeded",
        "after": "succeeded",
    }
    assert cli_project.lock_pid(WORKFLOW_ID) is None  # released when the resume ended
