"""``provision demo`` (``make demo``): the main demo on local stand-ins for the three clouds.

AWS is a moto server, UpCloud our API emulator and ``local`` a private Docker engine, all on
127.0.0.1 and all started here, so the demo needs no account and no network. Where no Docker
engine can be started (no dockerd, not root, or it fails to start) the demo says so and runs
without the container.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from provisioning.config import Config
from provisioning.sandbox.docker import DockerSandbox, SandboxError
from provisioning.sandbox.moto import MotoSandbox
from provisioning.sandbox.upcloud import UpCloudEmulator
from provisioning.spec import Workflow

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "workflows" / "demo.toml"


@dataclass
class Sandboxes:
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Why the Docker engine could not be started, when it could not.
    docker_problem: str | None = None


@contextmanager
def sandboxes(state_dir: Path) -> Iterator[Sandboxes]:
    """Start the stand-ins and yield the ``[providers.*]`` settings that point at them.

    Credentials go to the environment, never into the workflow's configuration: that is stored
    in the journal and in Prefect's flow-run parameters.
    """
    found = Sandboxes()
    with ExitStack() as stack:
        moto = stack.enter_context(MotoSandbox())
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
        found.providers["aws"] = {"endpoint_url": moto.endpoint_url, "region": "us-east-1"}
        upcloud = stack.enter_context(UpCloudEmulator())
        os.environ["UPCLOUD_USERNAME"] = upcloud.username
        os.environ["UPCLOUD_PASSWORD"] = upcloud.password
        found.providers["upcloud"] = {"api_endpoint": upcloud.api_root}
        available, reason = DockerSandbox.available()
        if available:
            try:
                docker = stack.enter_context(DockerSandbox(state_dir / "docker"))
                found.providers["local"] = {
                    "docker_socket": docker.socket_url,
                    "image": docker.image,
                }
            except SandboxError as error:  # e.g. a kernel without what dockerd needs
                found.docker_problem = str(error)
        else:
            found.docker_problem = reason
        yield found


def without_provider(workflow: Workflow, provider: str) -> Workflow:
    """The workflow minus the operations on ``provider`` (and the edges to them)."""
    dropped = {op.id for op in workflow.operations if op.provider == provider}
    return workflow.model_copy(
        update={
            "operations": [op for op in workflow.operations if op.id not in dropped],
            "dependencies": {
                op_id: [up for up in upstream if up not in dropped]
                for op_id, upstream in workflow.dependencies.items()
                if op_id not in dropped
            },
        }
    )


def run_demo(console: Console, config: Config) -> int:
    """Run the demo workflow, show the result, destroy what it built; the exit status."""
    from flows.destroy import destroy_workflow_flow
    from flows.run import run_workflow
    from providers.registry import load_workflow
    from provisioning.console import live_progress, print_result

    with sandboxes(config.state_dir) as found:
        workflow = load_workflow(DEMO_SPEC)
        workflow.workflow_id = f"wf-demo-{uuid.uuid4().hex[:6]}"
        if found.docker_problem is not None:
            console.print(
                f"[yellow]no Docker engine[/yellow]: {found.docker_problem}; "
                "the demo runs without its container"
            )
            workflow = without_provider(workflow, "local")
        workflow.configuration.providers = found.providers
        console.print(
            "sandboxes: "
            + ", ".join(
                f"{name} at {next(iter(settings.values()))}"
                for name, settings in found.providers.items()
            )
        )
        if console.is_terminal:
            with live_progress(console, workflow):
                result = run_workflow(workflow)
        else:
            result = run_workflow(workflow)
        print_result(console, result)
        report = destroy_workflow_flow(workflow.workflow_id)
        console.print(
            f"destroyed {sum(step.status == 'done' for step in report.steps)} servers "
            f"of {workflow.workflow_id}; the sandboxes stop with this process"
        )
    return 0 if result.ok else 1
