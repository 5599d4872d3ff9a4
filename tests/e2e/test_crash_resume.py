"""kill -9 of ``provision run`` at the dangerous instants, then ``resume`` or ``rollback``.

The workflow has five servers on moto and the UpCloud emulator, some waiting on a ``gate``
command and one (``app``) on two servers. ``provision run`` runs as a subprocess in its own
process group and is SIGKILLed at one of four points, found from the outside:

* ``before``: the servers that wait for the gate have not been asked for (the gate command blocks
  until a file appears), while the independent ``cache`` server is done;
* ``sent``: the creates of the servers behind the gate are on their way but held before they
  reach the sandboxes, so the journal has an intent and the sandboxes have nothing;
* ``during``: the sandboxes have created servers but their answers are held back by the proxy, so
  the journal has an intent and no resource id for them;
* ``after``: the servers are created and journalled as ``creating``, and the first status poll of
  ``wait_for`` is held back, so no completion hook has run.

Each kill point crashes two copies of the workflow at once (two project directories sharing one
journal, each behind its own proxies): ``provision resume`` of the first must leave every server
existing exactly once, all owned by the journal (no orphan for ``sweep``), and ``provision
rollback`` of the second must remove every server it made, leaving the sandboxes as before the
run (a server that is not ours, planted first, survives both). The pairs run side by side to
halve the wall time: each CLI process costs seconds of start-up.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import boto3
import httpx
import pytest
import tomli_w

from providers.aws import AWSProvider
from providers.base import Server
from providers.upcloud import UpCloudProvider
from provisioning.sandbox.moto import MotoSandbox
from provisioning.sandbox.upcloud import UpCloudEmulator
from provisioning.sweep import find_orphans
from tests.fixtures.sandbox_procs import (
    CliProject,
    ProjectFactory,
    aws_call,
    upcloud_call,
    wait_until,
)

pytestmark = pytest.mark.slow

#: server.create operations and their providers.
SERVERS = {"cache": "aws", "db": "aws", "web1": "upcloud", "web2": "upcloud", "app": "aws"}
GATE_FILE = "gate.open"


def create(op_id: str, name: str) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if SERVERS[op_id] == "aws":
        params.update(image="ami-12345678", size="t3.micro")
    return {"id": op_id, "kind": "server.create", "provider": SERVERS[op_id], "params": params}


def crash_spec(workflow_id: str) -> dict[str, Any]:
    gate = f"while [ ! -e {GATE_FILE} ]; do sleep 0.05; done"
    return {
        "workflow_id": workflow_id,
        "name": "crash-stack",
        "configuration": {"parallelism": 8, "on_failure": "keep"},
        "operations": [
            {"id": "gate", "kind": "command.run", "params": {"argv": ["sh", "-c", gate]}},
            create("cache", "cache-1"),
            create("db", "db-1"),
            create("web1", "web-1"),
            create("web2", "web-2"),
            create("app", "app-1"),
        ],
        "dependencies": {
            "db": ["gate"],
            "web1": ["gate"],
            "web2": ["gate"],
            "app": ["db", "web1"],
        },
    }


# ------------------------------------------------------------------------------ the sandboxes


@dataclass
class Sandboxes:
    moto: MotoSandbox
    upcloud: UpCloudEmulator

    def servers(self) -> list[Server]:
        """Every live server at both sandboxes, asked directly (not through the proxies)."""
        aws = AWSProvider({"endpoint_url": self.moto.endpoint_url, "region": "us-east-1"})
        upcloud = UpCloudProvider(
            {
                "api_endpoint": self.upcloud.api_root,
                "username": self.upcloud.username,
                "password": self.upcloud.password,
            }
        )
        try:
            return aws.list_servers() + upcloud.list_servers()
        finally:
            upcloud.close()

    def plant_foreign_servers(self) -> set[str]:
        """One server per sandbox that provisioning did not create (no labels of ours)."""
        ec2 = boto3.client("ec2", endpoint_url=self.moto.endpoint_url, region_name="us-east-1")
        instance = ec2.run_instances(
            ImageId="ami-0badc0de", MinCount=1, MaxCount=1, InstanceType="t3.micro"
        )["Instances"][0]
        body = {
            "server": {
                "zone": "de-fra1",
                "title": "foreign",
                "hostname": "foreign",
                "plan": "1xCPU-1GB",
                "storage_devices": {
                    "storage_device": [{"action": "create", "size": 10, "title": "disk"}]
                },
            }
        }
        answer = httpx.post(
            f"{self.upcloud.api_root}/server",
            json=body,
            auth=(self.upcloud.username, self.upcloud.password),
        )
        answer.raise_for_status()
        return {str(instance["InstanceId"]), str(answer.json()["server"]["uuid"])}


@pytest.fixture
def sandboxes(
    cli_projects: ProjectFactory, moto_sandbox: MotoSandbox, upcloud_emulator: UpCloudEmulator
) -> Sandboxes:
    """The sandboxes, clean (``cli_projects`` resets them)."""
    return Sandboxes(moto_sandbox, upcloud_emulator)


# ------------------------------------------------------------------------------- kill points


def _held_on_both(project: CliProject) -> bool:
    return project.aws.held >= 1 and project.upcloud.held >= 1


def _before(project: CliProject, workflow_id: str) -> bool:
    states = project.operation_states(workflow_id)
    return states.get("gate") == "intent" and states.get("cache") == "succeeded"


def _after(project: CliProject, workflow_id: str) -> bool:
    creating = {r.provider for r in project.resources(workflow_id) if r.state == "creating"}
    return _held_on_both(project) and creating >= {"aws", "upcloud"}


def _arm_sent(project: CliProject) -> None:
    project.aws.hold(aws_call("RunInstances"), before_sandbox=True)
    project.upcloud.hold(upcloud_call("POST", server_id=False), before_sandbox=True)


def _arm_during(project: CliProject) -> None:
    project.aws.hold(aws_call("RunInstances"))
    project.upcloud.hold(upcloud_call("POST", server_id=False))


def _arm_after(project: CliProject) -> None:
    project.aws.hold(aws_call("DescribeInstances", with_instance_id=True))
    project.upcloud.hold(upcloud_call("GET", server_id=True))


@dataclass(frozen=True)
class KillPoint:
    name: str
    gate_open: bool
    arm: Callable[[CliProject], None]
    reached: Callable[[CliProject, str], bool]


KILL_POINTS = {
    "before": KillPoint("before", False, lambda project: None, _before),
    "sent": KillPoint("sent", True, _arm_sent, lambda p, w: _held_on_both(p)),
    "during": KillPoint("during", True, _arm_during, lambda p, w: _held_on_both(p)),
    "after": KillPoint("after", True, _arm_after, _after),
}


@dataclass
class Crash:
    """What a killed run left behind, counted right after the kill."""

    #: Servers the sandboxes made whose ids the journal never heard of (answer held back).
    unjournalled: dict[str, int]
    #: Servers journalled as ``creating`` whose completion hook never ran.
    creating: dict[str, int]
    #: Servers done before the kill (their operation succeeded).
    done: int
    #: Operations that succeeded before the kill: a resume must reuse their stored results.
    succeeded: set[str]
    #: Ids of every server of the workflow that existed at the kill.
    present: set[str]

    def __str__(self) -> str:
        return (
            f"unjournalled {sum(self.unjournalled.values())} {self.unjournalled},"
            f" creating {sum(self.creating.values())} {self.creating}, done {self.done}"
        )


def crash_side_by_side(
    runs: list[tuple[CliProject, str]], point: KillPoint, sandboxes: Sandboxes
) -> list[Crash]:
    """Start ``provision run`` in each project, SIGKILL each at ``point``; what each left."""
    processes: dict[int, subprocess.Popen[bytes]] = {}
    for index, (project, workflow_id) in enumerate(runs):
        spec = project.base / "crash.toml"
        spec.write_text(tomli_w.dumps(crash_spec(workflow_id)))
        if point.gate_open:
            (project.base / GATE_FILE).touch()
        point.arm(project)
        processes[index] = project.start("run", str(spec))
    try:
        for index, (project, workflow_id) in enumerate(runs):
            wait_until(
                partial(point.reached, project, workflow_id),
                f"kill point '{point.name}' of {workflow_id}",
                process=processes[index],
                project=project,
            )
            project.kill(processes.pop(index))
            project.release()
    finally:
        for index, process in processes.items():
            runs[index][0].kill(process)
    servers = sandboxes.servers()
    return [crashed(project, workflow_id, point, servers) for project, workflow_id in runs]


def crashed(
    project: CliProject, workflow_id: str, point: KillPoint, servers: list[Server]
) -> Crash:
    (project.base / GATE_FILE).touch()  # the resumed gate passes at once
    journalled = project.resources(workflow_id)
    keys = {resource.key for resource in journalled}
    ours = [s for s in servers if s.key is not None and s.key.startswith(f"{workflow_id}/")]
    states = project.operation_states(workflow_id)
    left = Crash(
        unjournalled=dict(Counter(s.provider for s in ours if s.key not in keys)),
        creating=dict(Counter(r.provider for r in journalled if r.state == "creating")),
        done=sum(1 for op in SERVERS if states.get(op) == "succeeded"),
        succeeded={op for op, state in states.items() if state == "succeeded"},
        present={server.id for server in ours},
    )
    if point.name == "before":
        assert {server.key for server in ours} == {f"{workflow_id}/cache"}
        assert all(op not in states for op in ("db", "web1", "web2", "app"))
    if point.name == "sent":
        assert left.unjournalled == {} and left.creating == {}, "no create reached a sandbox"
        assert states.get("db") == "intent" and "intent" in {states.get("web1"), states.get("web2")}
    if point.name == "during":
        assert set(left.unjournalled) == {"aws", "upcloud"}, "a create in flight on each sandbox"
    if point.name == "after":
        assert set(left.creating) == {"aws", "upcloud"}, "a server waited for on each sandbox"
    return left


# ------------------------------------------------------------------------------ the checks


def duplicates(servers: list[Server]) -> int:
    counts = Counter(server.key for server in servers if server.key is not None)
    return sum(count - 1 for count in counts.values())


def orphans(project: CliProject, servers: list[Server]) -> int:
    """Servers with our key that the journal does not own (by id), or that ``sweep`` reports."""
    owned = {(r.provider, r.resource_id) for r in project.resources() if r.state != "deleted"}
    unowned = {
        (server.provider, server.id)
        for server in servers
        if server.key is not None and (server.provider, server.id) not in owned
    }
    report = find_orphans(project.config(), ["aws", "upcloud"])
    assert report.unreachable == {}
    return len(unowned | {(orphan.provider, orphan.id) for orphan in report.orphans})


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_resume_or_rollback_leaves_no_duplicate_and_no_orphan(
    cli_projects: ProjectFactory, sandboxes: Sandboxes, point: str
) -> None:
    resumed_project, undone_project = cli_projects("resumed"), cli_projects("undone")
    resumed_id, undone_id = f"wf-resume-{point}", f"wf-undo-{point}"
    foreign = sandboxes.plant_foreign_servers()

    crashes = crash_side_by_side(
        [(resumed_project, resumed_id), (undone_project, undone_id)], KILL_POINTS[point], sandboxes
    )
    finishing = [
        resumed_project.spawn("resume", resumed_id, "--json"),
        undone_project.spawn("rollback", undone_id, "--json"),
    ]
    resumed, rolled_back = (spawned.communicate_all() for spawned in finishing)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
    servers = sandboxes.servers()
    ours = [server for server in servers if server.key is not None]
    # resume: every server of the workflow exactly once, and listed in the result
    result = json.loads(resumed.stdout)["result"]
    assert {op["id"]: op["status"] for op in result["operations"]} == dict.fromkeys(
        ["gate", *SERVERS], "succeeded"
    )
    assert sorted(str(server.key) for server in ours) == sorted(
        f"{resumed_id}/{op}" for op in SERVERS
    )
    listed = {(r["provider"], r["resource_id"]) for r in result["resources"]}
    assert listed == {(server.provider, server.id) for server in ours}
    assert crashes[0].present <= {server.id for server in ours}, "adopted, not replaced"
    # rollback: nothing of the second workflow is left, foreign servers untouched
    report = json.loads(rolled_back.stdout)
    assert [step for step in report["steps"] if step["status"] != "done"] == []
    assert len(report["adopted"]) == sum(crashes[1].unjournalled.values())
    assert {server.id for server in servers} == foreign | {server.id for server in ours}
    assert [r for r in undone_project.resources(undone_id) if r.state != "deleted"] == []
    found_duplicates, found_orphans = duplicates(servers), orphans(resumed_project, servers)
    reused = sum(1 for op in result["operations"] if op["reused"])
    assert {op["id"] for op in result["operations"] if op["reused"]} == crashes[0].succeeded
    print(
        f"\nkill -9 '{point}':"
        f"\n  resume   ({crashes[0]}): reused {reused} stored results;"
        f" servers {len(ours)}/{len(SERVERS)}, duplicates {found_duplicates}"
        f"\n  rollback ({crashes[1]}): adopted {len(report['adopted'])},"
        f" undone {len(report['steps'])}; servers of the workflow left"
        f" {sum(1 for s in servers if str(s.key).startswith(undone_id + '/'))}"
        f"\n  orphans {found_orphans}"
    )
    assert found_duplicates == 0
    assert found_orphans == 0


def test_kill_9_during_rollback_then_rollback_again_finishes_the_undo(
    cli_projects: ProjectFactory, sandboxes: Sandboxes
) -> None:
    """Killed while the emulator has deleted ``mid`` but its answer is held back: ``last`` is
    undone and marked, ``mid`` is in flight, ``first`` untouched. A second rollback takes over
    the dead run's lock, finds ``mid`` already gone, undoes ``first``, and redoes nothing."""
    project = cli_projects("undo-crash")
    workflow_id = "wf-undo-crash"
    foreign = sandboxes.plant_foreign_servers()
    spec = project.base / "chain.toml"
    chain = {
        "workflow_id": workflow_id,
        "name": "chain",
        "configuration": {"on_failure": "keep"},
        "operations": [
            {**create("db", "first"), "id": "first"},
            {**create("web1", "mid"), "id": "mid"},
            {**create("app", "last"), "id": "last"},
        ],
        "dependencies": {"mid": ["first"], "last": ["mid"]},
    }
    spec.write_text(tomli_w.dumps(chain))
    created = project.run("run", str(spec), "--json")
    assert created.returncode == 0, created.stdout + created.stderr

    project.upcloud.hold(upcloud_call("DELETE", server_id=True))
    process = project.start("rollback", workflow_id, log="rollback")
    wait_until(
        lambda: project.upcloud.held >= 1,
        "the held delete of 'mid'",
        process=process,
        project=project,
    )
    project.kill(process)
    project.release()
    assert project.rollback_states(workflow_id) == {
        "first": "pending",
        "mid": "pending",
        "last": "done",
    }
    assert project.lock_pid(workflow_id) == process.pid, "the dead run still holds the lock"

    finished = project.run("rollback", workflow_id, "--json")

    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(finished.stdout)
    assert [(step["operation_id"], step["status"]) for step in report["steps"]] == [
        ("mid", "done"),
        ("first", "done"),
    ]
    assert set(project.rollback_states(workflow_id).values()) == {"done"}
    assert {server.id for server in sandboxes.servers()} == foreign
    assert {r.state for r in project.resources(workflow_id)} == {"deleted"}
