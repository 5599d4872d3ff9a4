"""Workflows that create servers on the sandboxes, run in this process under Prefect's harness.

Each test runs a real workflow flow against moto and the UpCloud emulator (and a private dockerd
when the machine can start one), then asks the sandboxes directly what exists: servers created
and listed in the result, undone in reverse completion order when a later operation fails (or
when their own operation fails after the provider acted), deleted by name, retried through
injected transient faults, failed at once on a permanent error, kept under a provider's
``max_concurrency`` and ``requests_per_second``, destroyed, and swept up when orphaned.
"""

from __future__ import annotations

import bisect
import itertools
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from flows.destroy import destroy_workflow_flow
from flows.rollback import RollbackReport
from flows.run import run_workflow
from providers.aws import AWSProvider
from providers.base import ServerSpec
from providers.local import LocalProvider
from providers.upcloud import UpCloudProvider
from provisioning.config import load_config
from provisioning.envelope import WorkflowResult
from provisioning.events import ResourceDeleted, bus
from provisioning.journal import Journal
from provisioning.sandbox.moto import MotoSandbox
from provisioning.sandbox.upcloud import UpCloudEmulator
from provisioning.sweep import find_orphans
from tests.fixtures.sandbox_procs import HoldingProxy, aws_call, upcloud_call

AMI = "ami-12345678"


@dataclass
class Project:
    """A project directory whose ``config.user.toml`` points the providers at the sandboxes."""

    base: Path
    providers: dict[str, dict[str, Any]]
    aws: AWSProvider
    upcloud: UpCloudProvider

    def configure(self, name: str, **settings: Any) -> None:
        self.providers.setdefault(name, {}).update(settings)
        config = {
            "engine": {"retry_backoff": 0.05, "retry_jitter": 0.0},
            "providers": self.providers,
        }
        (self.base / "config.user.toml").write_text(tomli_w.dumps(config))

    def journal(self) -> Journal:
        return Journal(str(load_config(self.base).get("journal.url")))

    def server_ids(self) -> dict[str, set[str]]:
        """Live servers carrying our key label at each sandbox, asked directly."""
        return {
            driver.name: {server.id for server in driver.list_servers() if server.key}
            for driver in (self.aws, self.upcloud)
        }


@pytest.fixture
def project(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    aws_provider: AWSProvider,
    aws_config: dict[str, Any],
    upcloud_provider: UpCloudProvider,
    upcloud_config: dict[str, Any],
) -> Project:
    """Clean sandboxes (the provider fixtures reset them) and a project dir as cwd and base."""
    monkeypatch.setenv("PROVISIONING_BASE", str(tmp_path))
    monkeypatch.delenv("PROVISIONING_ENV", raising=False)
    monkeypatch.chdir(tmp_path)
    project = Project(tmp_path, {}, aws_provider, upcloud_provider)
    project.configure("aws", **aws_config)
    project.configure("upcloud", **upcloud_config, requests_per_second=0)
    return project


def operation(op_id: str, kind: str, provider: str | None = None, **params: Any) -> dict[str, Any]:
    found = {"id": op_id, "kind": kind, "params": params}
    return found if provider is None else {**found, "provider": provider}


def server(op_id: str, provider: str, name: str, **params: Any) -> dict[str, Any]:
    if provider == "aws":
        params.setdefault("image", AMI)
    return operation(op_id, "server.create", provider, name=name, **params)


def workflow(
    workflow_id: str,
    operations: list[dict[str, Any]],
    dependencies: dict[str, list[str]] | None = None,
    **configuration: Any,
) -> dict[str, Any]:
    return {
        "workflow_id": workflow_id,
        "name": workflow_id,
        "operations": operations,
        "dependencies": dependencies or {},
        "configuration": configuration,
    }


def chain(*operation_ids: str) -> dict[str, list[str]]:
    """Each operation waits for the one before: completion order is the listed order."""
    return {later: [earlier] for earlier, later in itertools.pairwise(operation_ids)}


def created(result: WorkflowResult) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for resource in result.result.resources:
        found.setdefault(resource.provider, set()).add(resource.resource_id)
    return found


def test_servers_and_local_changes_run_end_to_end_then_destroy(project: Project) -> None:
    spec = workflow(
        "wf-e2e",
        [
            operation("notes", "file.write", path="app/notes.txt", content="hello\n"),
            operation("flag", "config.set", file="app/settings.toml", key="feature.on", value=True),
            server("db", "aws", "db-1", labels={"role": "db"}),
            server("web", "upcloud", "web-1"),
            operation("check", "command.run", argv=["test", "-s", "app/notes.txt"]),
        ],
        {"db": ["notes"], "web": ["notes"], "check": ["db", "web", "flag"]},
    )

    result = run_workflow(spec)

    assert result.ok, result
    assert project.server_ids() == created(result)
    assert {len(ids) for ids in created(result).values()} == {1}
    db = project.aws.get_server(next(iter(created(result)["aws"])))
    assert (db.name, db.key, db.labels["role"]) == ("db-1", "wf-e2e/db", "db")
    assert (project.base / "app/notes.txt").read_text() == "hello\n"
    settings = tomllib.loads((project.base / "app/settings.toml").read_text())
    assert settings == {"feature": {"on": True}}

    report = destroy_workflow_flow("wf-e2e")

    assert report.ok, report
    assert {step.operation_id for step in report.steps} == {"db", "web"}
    assert project.server_ids() == {"aws": set(), "upcloud": set()}
    assert (project.base / "app/notes.txt").exists()  # destroy deletes servers, nothing else


def _destroy_collecting(workflow_id: str) -> tuple[RollbackReport, list[str]]:
    """Destroy, and the operations whose servers went, in the order their deletes finished."""
    deleted: list[str] = []
    subscription = bus.subscribe(
        ResourceDeleted, lambda event: deleted.append(event.operation_id), workflow_id=workflow_id
    )
    try:
        report = destroy_workflow_flow(workflow_id)
        assert subscription.flush(10)
    finally:
        subscription.close()
    return report, deleted


def test_destroy_deletes_in_parallel_dependants_before_what_they_wait_for(
    project: Project, slow_upcloud: HoldingProxy
) -> None:
    spec = workflow(
        "wf-tiers",
        [
            server("db", "upcloud", "db-1"),
            server("web1", "upcloud", "web-1"),
            server("web2", "upcloud", "web-2"),
        ],
        {"web1": ["db"], "web2": ["db"]},
        parallelism=3,
    )
    assert run_workflow(spec).ok
    slow_upcloud.peak_in_flight = 0

    report, deleted = _destroy_collecting("wf-tiers")

    assert report.ok, report
    assert sorted(deleted[:2]) == ["web1", "web2"] and deleted[2:] == ["db"]
    assert slow_upcloud.peak_in_flight >= 2, "the two web servers should go at once"
    assert project.server_ids()["upcloud"] == set()


def test_destroy_keeps_what_a_failed_delete_still_waits_for(project: Project) -> None:
    spec = workflow(
        "wf-stuck",
        [
            server("db", "aws", "db-1"),
            server("web", "upcloud", "web-1"),
            server("cache", "aws", "cache-1"),
        ],
        {"web": ["db"]},
    )
    assert run_workflow(spec).ok
    project.configure("upcloud", password="wrong")  # every UpCloud call now fails for good

    report, deleted = _destroy_collecting("wf-stuck")

    steps = {step.operation_id: step for step in report.steps}
    assert deleted == ["cache"]
    assert (steps["cache"].status, steps["web"].status, steps["db"].status) == (
        "done",
        "failed",
        "failed",
    )
    assert steps["db"].error == "not attempted: the servers of web are still there"
    assert len(project.server_ids()["aws"]) == 1  # db outlives the web server still on it

    project.configure("upcloud", password=project.upcloud.config["password"])
    again, _ = _destroy_collecting("wf-stuck")

    assert again.ok, again
    assert {step.operation_id for step in again.steps} == {"db", "web"}
    assert project.server_ids() == {"aws": set(), "upcloud": set()}


def test_a_later_failure_rolls_back_in_reverse_completion_order(project: Project) -> None:
    order = ("notes", "db", "web", "flag", "migrate")
    spec = workflow(
        "wf-undo",
        [
            operation("notes", "file.write", path="notes.txt", content="temporary\n"),
            server("db", "aws", "db-1"),
            server("web", "upcloud", "web-1"),
            operation("flag", "config.set", file="settings.toml", key="feature.on", value=True),
            operation(
                "migrate", "command.run", argv=["sh", "-c", "echo 'table locked' >&2; exit 3"]
            ),
        ],
        chain(*order),
        on_failure="rollback",
    )

    result = run_workflow(spec)

    assert result.status == "error"
    assert result.error is not None and "table locked" in result.error.message
    assert result.result.rollback is not None
    assert [step.operation_id for step in result.result.rollback] == ["flag", "web", "db", "notes"]
    assert {step.status for step in result.result.rollback} == {"done"}
    assert project.server_ids() == {"aws": set(), "upcloud": set()}
    assert not (project.base / "notes.txt").exists()
    assert not (project.base / "settings.toml").exists()
    journal = project.journal()
    undone = {entry.operation_id: entry for entry in journal.rollback_stack("wf-undo", None)}
    journal.close()
    assert {undone[op].action["type"] for op in ("db", "web")} == {"delete_resource"}
    assert {entry.status for entry in undone.values()} == {"done"}
    statuses = {op.id: op.status for op in result.result.operations}
    assert statuses == {
        "notes": "rolled_back",
        "db": "rolled_back",
        "web": "rolled_back",
        "flag": "rolled_back",
        "migrate": "failed",
    }


def test_server_delete_by_name(project: Project, moto_sandbox: MotoSandbox) -> None:
    """A name the workflow created resolves, by the journal, to the server it made (a namesake
    made elsewhere survives); any other name is looked up at the provider."""
    namesake = project.aws.create_server(ServerSpec(name="scratch-aws", image=AMI), "other/box")
    legacy = project.aws.create_server(ServerSpec(name="legacy", image=AMI), "other/legacy")
    spec = workflow(
        "wf-delete",
        [
            server("up", "upcloud", "scratch-up"),
            server("box", "aws", "scratch-aws"),
            operation("drop-up", "server.delete", "upcloud", name="scratch-up"),
            operation("drop-box", "server.delete", "aws", name="scratch-aws"),
            operation("drop-legacy", "server.delete", "aws", name="legacy"),
        ],
        {"drop-up": ["up"], "drop-box": ["box"]},
    )

    result = run_workflow(spec)

    assert result.ok, result
    made = {op.id: op.output["server"]["id"] for op in result.result.operations if op.resources}
    deleted = {op.id: op.output["deleted"] for op in result.result.operations if not op.resources}
    assert deleted == {"drop-up": made["up"], "drop-box": made["box"], "drop-legacy": legacy.id}
    assert project.server_ids() == {"aws": {namesake.id}, "upcloud": set()}


def test_a_name_matching_several_servers_is_refused(project: Project) -> None:
    twins = [
        project.aws.create_server(ServerSpec(name="twin", image=AMI), f"other/twin-{n}")
        for n in (1, 2)
    ]
    spec = workflow("wf-twins", [operation("drop", "server.delete", "aws", name="twin")])

    result = run_workflow(spec)

    drop = result.result.operation("drop")
    assert drop.status == "failed" and drop.error is not None
    assert drop.error.message.startswith("operation 'drop': provider 'aws': 2 servers are named")
    assert project.server_ids()["aws"] == {twin.id for twin in twins}


def test_transient_faults_are_retried_until_the_workflow_succeeds(
    project: Project, moto_sandbox: MotoSandbox, upcloud_emulator: UpCloudEmulator
) -> None:
    spec = workflow("wf-flaky", [server("db", "aws", "db-1"), server("web", "upcloud", "web-1")])
    moto_sandbox.inject(2, "throttle")
    upcloud_emulator.inject(2, "unavailable")

    result = run_workflow(spec)

    assert result.ok, result
    attempts = {op.id: op.attempts for op in result.result.operations}
    assert attempts == {"db": 3, "web": 3}  # two faults each, one per attempt
    assert moto_sandbox.faults_pending == 0
    assert {len(ids) for ids in project.server_ids().values()} == {1}


def test_a_permanent_error_fails_at_once_with_the_providers_message(
    project: Project, moto_sandbox: MotoSandbox
) -> None:
    spec = workflow(
        "wf-bad-image", [server("db", "aws", "db-1", image="bad-image")], on_failure="keep"
    )

    result = run_workflow(spec)

    assert result.status == "error"
    db = result.result.operation("db")
    assert db.status == "failed"
    assert db.attempts == 1
    assert db.error is not None
    assert db.error.message == (
        'provider \'aws\': InvalidAMIID.Malformed: Invalid id: "bad-image" (expecting "ami-...")'
    )
    # One RunInstances: a first attempt needs no key lookup (the journal proves the key is new),
    # and a permanent error is not retried.
    assert moto_sandbox.requests_served == 1
    assert project.server_ids()["aws"] == set()


@pytest.fixture
def lossy_aws(project: Project, moto_proxy: HoldingProxy) -> Iterator[HoldingProxy]:
    """moto behind the proxy, which can lose an answer after moto acted on the request."""
    moto_proxy.reset()
    project.configure("aws", endpoint_url=moto_proxy.url)
    yield moto_proxy
    moto_proxy.reset()


@pytest.mark.parametrize("lost", ["status poll", "create answer"])
def test_a_create_that_fails_after_the_provider_acted_is_rolled_back(
    project: Project, lossy_aws: HoldingProxy, lost: str
) -> None:
    """The server exists at the sandbox although its operation failed (no retries left)."""
    lossy_aws.drop(
        aws_call("DescribeInstances", with_instance_id=True)
        if lost == "status poll"
        else aws_call("RunInstances")
    )
    spec = workflow(
        f"wf-lost-{lost.replace(' ', '-')}",
        [server("web", "upcloud", "web-1"), {**server("db", "aws", "db-1"), "retries": 0}],
        on_failure="rollback",
    )

    result = run_workflow(spec)

    assert result.status == "error"
    db = result.result.operation("db")
    assert db.error is not None and db.error.code == "PROVIDER_TRANSIENT", db.error
    assert project.server_ids() == {"aws": set(), "upcloud": set()}


@pytest.fixture
def lossy_upcloud(project: Project, upcloud_proxy: HoldingProxy) -> Iterator[HoldingProxy]:
    """The emulator behind the proxy, which can lose an answer after the emulator acted."""
    upcloud_proxy.reset()
    project.configure("upcloud", api_endpoint=f"{upcloud_proxy.url}/1.3")
    yield upcloud_proxy
    upcloud_proxy.reset()


@pytest.mark.parametrize("provider", ["aws", "upcloud"])
def test_a_retry_after_a_lost_create_answer_adopts_the_server_it_made(
    project: Project, lossy_aws: HoldingProxy, lossy_upcloud: HoldingProxy, provider: str
) -> None:
    """The first attempt skips the key lookup; the retry must not, or it makes a second server."""
    if provider == "aws":
        lossy_aws.drop(aws_call("RunInstances"))
    else:
        lossy_upcloud.drop(upcloud_call("POST", server_id=False))
    spec = workflow(f"wf-lost-answer-{provider}", [server("db", provider, "db-1")])

    result = run_workflow(spec)

    assert result.ok, result
    assert result.result.operation("db").attempts == 2
    assert len(project.server_ids()[provider]) == 1


@pytest.fixture
def slow_upcloud(project: Project, upcloud_proxy: HoldingProxy) -> Iterator[HoldingProxy]:
    """The emulator behind the proxy, each request 50 ms slower so that overlaps show."""
    upcloud_proxy.reset()
    upcloud_proxy.delay = 0.05
    project.configure("upcloud", api_endpoint=f"{upcloud_proxy.url}/1.3")
    yield upcloud_proxy
    upcloud_proxy.reset()


def create_upcloud_servers_at_once(project: Project, workflow_id: str, count: int) -> None:
    """One run creating ``count`` UpCloud servers with nothing between them; all must exist."""
    spec = workflow(
        workflow_id,
        [server(f"web{n}", "upcloud", f"web-{n}") for n in range(count)],
        parallelism=count,
    )

    result = run_workflow(spec)

    assert result.ok, result
    assert len(project.server_ids()["upcloud"]) == count


@pytest.mark.parametrize(("limit", "peak"), [(2, "== 2"), (6, "> 2")])
def test_provider_max_concurrency_caps_requests_in_flight(
    project: Project, slow_upcloud: HoldingProxy, limit: int, peak: str
) -> None:
    project.configure("upcloud", max_concurrency=limit)

    create_upcloud_servers_at_once(project, f"wf-limit-{limit}", 6)

    seen = slow_upcloud.peak_in_flight
    assert seen == 2 if peak == "== 2" else seen > 2, f"peak in flight {seen}"


def busiest_second(arrivals: list[float]) -> int:
    """The most requests seen in any one-second window."""
    ordered = sorted(arrivals)
    return max(bisect.bisect_left(ordered, start + 1.0) - i for i, start in enumerate(ordered))


@pytest.mark.parametrize("rate", [5, 0], ids=["5-per-second", "unlimited"])
def test_provider_requests_per_second_holds_across_all_operations_of_a_run(
    project: Project, upcloud_proxy: HoldingProxy, rate: int
) -> None:
    """Eight servers created and polled at once share one token bucket of 5 requests a second
    (bursts up to 5): no second sees more than twice that, and the requests take at least the
    time the bucket needs for them. Unlimited, the same run is several times faster."""
    limit = 5
    upcloud_proxy.reset()
    project.configure("upcloud", api_endpoint=f"{upcloud_proxy.url}/1.3", requests_per_second=rate)

    create_upcloud_servers_at_once(project, f"wf-rate-{rate}", 8)

    arrivals = sorted(upcloud_proxy.arrivals)
    span = arrivals[-1] - arrivals[0]
    paced = (len(arrivals) - limit) / limit  # the least time a bucket of `limit` needs for them
    if rate:
        assert busiest_second(arrivals) <= 2 * limit + 1, arrivals
        assert span >= paced - 0.1, f"{len(arrivals)} requests in {span:.2f}s"
    else:
        assert span < paced, f"{len(arrivals)} requests in {span:.2f}s: nothing to limit"
    upcloud_proxy.reset()


def test_sweep_lists_and_deletes_only_servers_no_journal_owns(project: Project) -> None:
    result = run_workflow(workflow("wf-owned", [server("db", "aws", "db-1")]))
    assert result.ok, result
    orphan = project.aws.create_server(ServerSpec(name="lost", image=AMI), "wf-lost/db")
    config = load_config(project.base)

    listed = find_orphans(config, ["aws", "upcloud"])

    assert [(o.provider, o.id, o.key, o.deleted) for o in listed.orphans] == [
        ("aws", orphan.id, "wf-lost/db", False)
    ]
    assert project.server_ids()["aws"] == created(result)["aws"] | {orphan.id}

    swept = find_orphans(config, ["aws"], delete=True)

    assert [(o.id, o.deleted) for o in swept.orphans] == [(orphan.id, True)]
    assert project.server_ids()["aws"] == created(result)["aws"]
    assert find_orphans(config, ["aws", "upcloud"]).orphans == []


@pytest.mark.docker
def test_local_server_is_created_and_rolled_back(
    project: Project, local_config: dict[str, Any], local_provider: LocalProvider
) -> None:
    project.configure("local", **local_config)
    spec = workflow(
        "wf-local-box",
        [
            server("box", "local", "box-1"),
            server("db", "aws", "db-1"),
            operation("smoke", "command.run", argv=["false"]),
        ],
        {"smoke": ["box", "db"]},
        on_failure="rollback",
    )

    result = run_workflow(spec)

    assert result.status == "error"
    assert result.result.rollback is not None
    assert {step.operation_id for step in result.result.rollback} == {"box", "db"}
    box = result.result.operation("box")
    assert box.status == "rolled_back"
    assert local_provider.list_servers() == []
    assert project.server_ids()["aws"] == set()
