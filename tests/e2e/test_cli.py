"""The ``provision`` command line as a user meets it.

Commands that only read or validate run in-process through typer's ``CliRunner``; commands that
run flows run as real subprocesses against the session's standing Prefect server, as a user's
shell would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from typer.testing import CliRunner, Result

from providers.aws import AWSProvider
from provisioning.cli import app
from provisioning.journal import Journal
from provisioning.sandbox.prefect_server import PrefectServer
from provisioning.secrets import MASK
from provisioning.spec import ServerSpec
from tests.fixtures.workspace import BASE_SETTINGS, Workspace

#: Wide enough that rich never wraps or truncates a line we look for.
WIDE = {"COLUMNS": "250"}

WEB: dict[str, Any] = {
    "workflow_id": "wf-cli-web",
    "name": "cli-web",
    "operations": [
        {
            "id": "db",
            "kind": "server.create",
            "provider": "aws",
            "params": {"name": "db-1", "image": "ami-123", "size": "t3.micro"},
        },
        {"id": "motd", "kind": "file.write", "params": {"path": "motd", "content": "hi\n"}},
        {"id": "old", "kind": "server.delete", "provider": "aws", "params": {"name": "old-1"}},
    ],
    "dependencies": {"motd": ["db"], "old": ["motd"]},
}


def write_spec(directory: Path, name: str, data: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=WIDE)


# ------------------------------------------------------------------------- in-process commands


def test_plan_lists_waves_and_operations(workspace: Workspace) -> None:
    spec = write_spec(workspace.base, "web.toml", WEB)

    result = invoke("plan", str(spec))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("cli-web (wf-cli-web): 3 operations" in line for line in lines)
    rows = {line.split("│")[2].strip(): line for line in lines if line.count("│") > 2}
    assert set(rows) >= {"db", "motd", "old"}
    assert rows["db"].split("│")[1].strip() == "1"
    assert rows["motd"].split("│")[1].strip() == "2"
    assert rows["old"].split("│")[1].strip() == "3"
    assert "create server 'db-1' on aws (image ami-123, size t3.micro)" in rows["db"]
    assert "irreversible" in rows["old"]
    assert "3 operations in 3 waves; valid." in result.output


def test_plan_as_json(workspace: Workspace) -> None:
    spec = write_spec(workspace.base, "web.toml", WEB)

    result = invoke("plan", str(spec), "--json")

    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [[step["id"] for step in wave] for wave in plan["waves"]] == [["db"], ["motd"], ["old"]]
    assert plan["waves"][2][0]["rollback"] is None


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        (
            {"id": "db", "kind": "server.create", "provider": "aws", "params": {"image": "x"}},
            "operation 'db': field 'params.name': Field required",
        ),
        (
            {"id": "db", "kind": "server.explode", "params": {}},
            "operation 'db': field 'kind': unknown operation kind 'server.explode'",
        ),
        (
            {"id": "db", "kind": "server.create", "provider": "azure", "params": {"name": "x"}},
            "operation 'db': field 'provider': unknown provider 'azure'",
        ),
    ],
    ids=["missing-field", "unknown-kind", "unknown-provider"],
)
def test_plan_names_what_is_wrong(
    workspace: Workspace, operation: dict[str, Any], expected: str
) -> None:
    spec = write_spec(workspace.base, "web.toml", {"name": "bad", "operations": [operation]})

    result = invoke("plan", str(spec))

    assert result.exit_code == 2
    assert f"error WORKFLOW_INVALID: {spec}: {expected}" in result.stderr
    assert "Traceback" not in result.output


def test_plan_names_a_syntax_error_and_a_missing_file(workspace: Workspace) -> None:
    broken = workspace.path("broken.toml")
    broken.write_text("name = 'x'\n[[operations]\n")
    missing = workspace.path("[prod]") / "missing.toml"  # brackets are text, not markup

    syntax = invoke("plan", str(broken))
    absent = invoke("plan", str(missing))

    assert syntax.exit_code == absent.exit_code == 2
    assert f"error SPEC_PARSE_ERROR: {broken}: invalid TOML" in syntax.stderr
    assert f"error SPEC_NOT_FOUND: {missing}: cannot read spec" in absent.stderr
    assert "Traceback" not in syntax.output + absent.output


def test_plan_names_a_cycle(workspace: Workspace) -> None:
    data = {
        "name": "cyclic",
        "operations": [
            {"id": op, "kind": "command.run", "params": {"argv": ["true"]}} for op in ("web", "api")
        ],
        "dependencies": {"web": ["api"], "api": ["web"]},
    }
    spec = write_spec(workspace.base, "cyclic.toml", data)

    result = invoke("plan", str(spec))

    assert result.exit_code == 2
    assert "error WORKFLOW_CYCLE: dependency cycle: web -> api -> web" in result.stderr
    assert "Traceback" not in result.output


def test_config_show_masks_secrets(workspace: Workspace) -> None:
    workspace.configure(
        {"api": {"token": "tok-visible-nowhere"}, "providers": {"upcloud": {"password": "pw-1"}}}
    )

    result = invoke("config", "show", "--set", "engine.parallelism=7")

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["api"]["token"] == MASK
    assert shown["providers"]["upcloud"]["password"] == MASK
    assert shown["engine"]["parallelism"] == 7
    assert shown["engine"]["retry_backoff"] == BASE_SETTINGS["engine"]["retry_backoff"]
    assert shown["paths"]["base"] == str(workspace.base)
    assert "tok-visible-nowhere" not in result.output
    assert "pw-1" not in result.output


def test_config_show_sources(workspace: Workspace) -> None:
    workspace.configure({"api": {"token": "tok-visible-nowhere"}})
    write_spec(workspace.base, "config.staging.toml", {"engine": {"retries": 9}})

    result = invoke(
        "config", "show", "--sources", "--env", "staging", "--set", "engine.parallelism=7"
    )

    assert result.exit_code == 0, result.output
    rows = {
        cells[1].strip(): (cells[2].strip(), cells[3].strip())
        for line in result.output.splitlines()
        if len(cells := line.split("│")) == 5
    }
    assert rows["engine.parallelism"] == ("7", "--set")
    assert rows["engine.retries"] == ("9", str(workspace.path("config.staging.toml")))
    assert rows["engine.retry_backoff"] == ("0.05", str(workspace.user_file))
    assert rows["api.token"] == (f'"{MASK}"', str(workspace.user_file))
    assert rows["engine.on_failure"][1].endswith("config.defaults.toml")
    assert rows["paths.base"] == (f'"{workspace.base}"', "project directory")
    assert "tok-visible-nowhere" not in result.output


def test_a_bad_set_is_named(workspace: Workspace) -> None:
    result = invoke("config", "show", "--set", "engine.parallelism")

    assert result.exit_code == 2
    assert "error CONFIGURATION_INVALID: --set: expected KEY=VALUE" in result.stderr


def test_status_of_an_unknown_workflow_is_named(workspace: Workspace) -> None:
    result = invoke("status", "wf-never-ran", "--no-prefect")

    assert result.exit_code == 2
    assert "error WORKFLOW_NOT_FOUND: no workflow 'wf-never-ran'" in result.stderr
    assert "Traceback" not in result.output


def test_sweep_lists_and_deletes_only_servers_no_journal_owns(
    workspace: Workspace, aws_provider: AWSProvider, aws_config: dict[str, Any]
) -> None:
    workspace.configure({"providers": {"aws": aws_config}})
    journal = Journal(workspace.journal_url)
    journal.upsert_workflow("wf-live", "live", {})
    journal.record_intent("wf-live", "web", kind="server.create", provider="aws", key="wf-live/web")
    spec = ServerSpec(name="box", image="ami-0abcdef1234567890", size="t3.micro")
    orphan = aws_provider.create_server(spec, "wf-gone/db")
    in_flight = aws_provider.create_server(spec, "wf-live/web")

    listed = invoke("sweep", "--provider", "aws", "--json")

    assert listed.exit_code == 0, listed.output
    found = json.loads(listed.stdout)
    assert [(o["id"], o["key"], o["deleted"]) for o in found["orphans"]] == [
        (orphan.id, "wf-gone/db", False)
    ]
    assert aws_provider.get_server(orphan.id).state != "deleted"

    deleted = invoke("sweep", "--provider", "aws", "--delete")

    assert deleted.exit_code == 0, deleted.output
    assert "orphans: 1" in deleted.output and orphan.id in deleted.output
    assert aws_provider.find("wf-gone/db") is None
    survivor = aws_provider.find("wf-live/web")
    assert survivor is not None and survivor.id == in_flight.id


def test_version() -> None:
    from importlib.metadata import version

    result = invoke("version")

    assert result.exit_code == 0
    assert result.output.strip() == (
        f"provisioning {version('provisioning')} (prefect {version('prefect')})"
    )


# ------------------------------------------------------------------------------ plan is fast

#: Runs ``plan`` in-process, then reports whether Prefect (or a provider SDK) was imported.
PLAN_IMPORTS = """
import json, sys
from typer.testing import CliRunner, Result
from provisioning.cli import app
from provisioning.journal import Journal
result = CliRunner().invoke(app, ["plan", sys.argv[1]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"prefect", "boto3", "docker", "flows"})
print(json.dumps({"exit_code": result.exit_code, "heavy": heavy}))
"""


@pytest.mark.slow
def test_plan_answers_quickly_without_importing_prefect(workspace: Workspace) -> None:
    spec = write_spec(workspace.base, "web.toml", WEB)
    environment = workspace.environment()

    elapsed: list[float] = []
    for _ in range(2):  # the faster of two, so one scheduling hiccup does not decide
        began = time.monotonic()
        completed = subprocess.run(
            [sys.executable, "-m", "provisioning.cli", "plan", str(spec)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        elapsed.append(time.monotonic() - began)
    probe = subprocess.run(
        [sys.executable, "-c", PLAN_IMPORTS, str(spec)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert "3 operations in 3 waves; valid." in completed.stdout
    assert min(elapsed) < 2.0
    assert json.loads(probe.stdout) == {"exit_code": 0, "heavy": []}  # the precise check


# --------------------------------------------------------------------- flows in subprocesses


@dataclass
class CliProject:
    """A project directory shared by the subprocess tests, and how to run ``provision`` in it."""

    workspace: Workspace
    server: PrefectServer
    prefect_home: Path

    def start(self, *args: str) -> subprocess.Popen[str]:
        environment = self.workspace.environment(
            PREFECT_API_URL=self.server.api_url,
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_LOGGING_LEVEL="WARNING",
            **WIDE,
        )
        return subprocess.Popen(
            [sys.executable, "-m", "provisioning.cli", *args],
            cwd=self.workspace.base,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def finish(
        process: subprocess.Popen[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def provision(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.finish(self.start(*args))

    def wait_for_task_states(self, flow_run_id: str, count: int, timeout: float = 20) -> None:
        """Task-run states reach the API through events: wait until all are final there."""
        deadline = time.monotonic() + timeout
        final: list[str] = []
        while time.monotonic() < deadline:
            response = httpx.post(
                f"{self.server.api_url}/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
                timeout=10,
            )
            response.raise_for_status()
            final = [
                run["state_type"]
                for run in response.json()
                if run["state_type"] in {"COMPLETED", "FAILED"}
            ]
            if len(final) >= count:
                return
            time.sleep(0.2)
        raise AssertionError(f"task runs of {flow_run_id} not final after {timeout}s: {final}")


@dataclass
class Runs:
    project: CliProject
    ok_id: str
    ko_id: str
    ok: subprocess.CompletedProcess[str]
    ko: subprocess.CompletedProcess[str]


def table_rows(output: str) -> dict[str, list[str]]:
    """Rows of rich tables in ``output`` by their first cell."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0]:
            rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def runs(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """One succeeding and one failing workflow, each run once by ``provision run``."""
    root = tmp_path_factory.mktemp("cli")
    base = root / "project"
    base.mkdir()
    workspace = Workspace(base=base, settings={})
    workspace.configure(BASE_SETTINGS)
    project = CliProject(workspace, prefect_server, root / "prefect-home")
    suffix = uuid.uuid4().hex[:8]
    ok_id, ko_id = f"wf-cli-ok-{suffix}", f"wf-cli-ko-{suffix}"
    prepare = {"id": "prepare", "kind": "command.run", "params": {"argv": ["true"]}}
    ok_spec = write_spec(
        base,
        "ok.toml",
        {
            "workflow_id": ok_id,
            "name": "cli-ok",
            "operations": [
                prepare,
                {"id": "motd", "kind": "file.write", "params": {"path": "motd", "content": "hi\n"}},
            ],
            "dependencies": {"motd": ["prepare"]},
        },
    )
    ko_spec = write_spec(
        base,
        "ko.toml",
        {
            "workflow_id": ko_id,
            "name": "cli-ko",
            "configuration": {"on_failure": "keep"},
            "operations": [
                prepare,
                {"id": "broken", "kind": "command.run", "params": {"argv": ["false"]}},
            ],
            "dependencies": {"broken": ["prepare"]},
        },
    )
    # Two workflows at once, as two users' shells would: they share the journal and the server.
    ok, ko = project.start("run", str(ok_spec)), project.start("run", str(ko_spec))
    return Runs(
        project=project,
        ok_id=ok_id,
        ko_id=ko_id,
        ok=project.finish(ok),
        ko=project.finish(ko),
    )


@pytest.mark.slow
def test_run_succeeds_with_a_final_table(runs: Runs) -> None:
    assert runs.ok.returncode == 0, runs.ok.stderr
    assert f"cli-ok ({runs.ok_id}): success" in runs.ok.stdout
    rows = table_rows(runs.ok.stdout)
    assert rows["prepare"][1:3] == ["command.run", "succeeded"]
    assert rows["motd"][1:3] == ["file.write", "succeeded"]
    assert "success 2 operations, 0 resources" in runs.ok.stdout
    assert (runs.project.workspace.base / "motd").read_text() == "hi\n"
    assert "Traceback" not in runs.ok.stdout + runs.ok.stderr


@pytest.mark.slow
def test_run_of_a_failing_workflow_exits_1(runs: Runs) -> None:
    assert runs.ko.returncode == 1, runs.ko.stderr
    assert f"cli-ko ({runs.ko_id}): partial" in runs.ko.stdout
    rows = table_rows(runs.ko.stdout)
    assert rows["prepare"][2] == "succeeded"
    assert rows["broken"][2] == "failed"
    assert "command exited with status 1" in rows["broken"][5]
    expected = "error WORKFLOW_FAILED: 1 operation(s) failed; first: operation 'broken'"
    assert expected in runs.ko.stdout
    assert "Traceback" not in runs.ko.stdout + runs.ko.stderr


@pytest.mark.slow
def test_checkpoint_prints_the_seed_json(runs: Runs) -> None:
    completed = runs.project.provision("checkpoint", runs.ko_id)

    assert completed.returncode == 0, completed.stderr
    checkpoint = json.loads(completed.stdout)
    assert set(checkpoint) == {
        "workflow_id",
        "step",
        "completed_operations",
        "current_state",
        "metadata",
        "timestamp",
    }
    assert checkpoint["workflow_id"] == runs.ko_id
    assert checkpoint["step"] == 1
    assert checkpoint["completed_operations"] == ["prepare"]
    assert checkpoint["current_state"] == {
        "status": "partial",
        "operations": {"prepare": "succeeded", "broken": "failed"},
    }
    assert checkpoint["metadata"]["name"] == "cli-ko"
    assert checkpoint["metadata"]["flow_run_id"]


@pytest.mark.slow
def test_status_shows_operations_with_prefect_states(runs: Runs) -> None:
    record = Journal(runs.project.workspace.journal_url).get_workflow(runs.ko_id)
    assert record is not None and record.flow_run_id is not None
    runs.project.wait_for_task_states(record.flow_run_id, count=2)

    completed = runs.project.provision("status", runs.ko_id)

    assert completed.returncode == 0, completed.stderr
    assert f"cli-ko ({runs.ko_id}): partial" in completed.stdout
    rows = table_rows(completed.stdout)
    # operation | kind | journal | prefect | tries | error
    assert rows["prepare"][:5] == ["prepare", "command.run", "succeeded", "Completed", "1"]
    assert rows["broken"][:5] == ["broken", "command.run", "failed", "Failed", "1"]
    assert "command exited with status 1" in rows["broken"][5]


@pytest.mark.slow
def test_status_shows_resources_and_the_stack_then_destroy_deletes_the_server(
    runs: Runs, aws_provider: AWSProvider, aws_config: dict[str, Any]
) -> None:
    project = runs.project
    project.workspace.configure({"providers": {"aws": aws_config}})
    workflow_id = f"wf-cli-destroy-{uuid.uuid4().hex[:8]}"
    server = {"name": "db-destroy", "image": "ami-0abcdef1234567890", "size": "t3.micro"}
    spec = write_spec(
        project.workspace.base,
        "destroy.toml",
        {
            "workflow_id": workflow_id,
            "name": "cli-destroy",
            "operations": [
                {"id": "db", "kind": "server.create", "provider": "aws", "params": server},
                {"id": "note", "kind": "file.write", "params": {"path": "note", "content": "x"}},
            ],
            "dependencies": {"note": ["db"]},
        },
    )
    assert (ran := project.provision("run", str(spec))).returncode == 0, ran.stderr
    instance = aws_provider.find(f"{workflow_id}/db")
    assert instance is not None

    shown = project.provision("status", workflow_id, "--no-prefect")

    assert shown.returncode == 0, shown.stderr
    _, _, after_operations = shown.stdout.partition("resources")
    resources, _, stack = after_operations.partition("rollback stack (top first)")
    assert table_rows(resources)["db"] == ["db", "aws", instance.id, "present"]
    stack_rows = [cells[0] for cells in table_rows(stack).values()]
    assert stack_rows == ["note", "db"]  # newest first: note completed after db

    destroyed = project.provision("destroy", workflow_id)

    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert aws_provider.find(f"{workflow_id}/db") is None
    assert aws_provider.get_server(instance.id).state == "deleted"
    states = [
        r.state
        for r in Journal(project.workspace.journal_url).resources(workflow_id, include_deleted=True)
    ]
    assert states == ["deleted"]
