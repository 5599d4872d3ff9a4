"""``provision demo`` (what ``make demo`` runs): the main job, on its own sandboxes.

It starts moto, the UpCloud emulator and a private dockerd itself, runs the demo workflow under
this session's Prefect harness, prints the result and destroys what it built. Without a Docker
engine (none installed, not root, or one that fails to start) it says so in one line and runs
the rest.
"""

from __future__ import annotations

import os

import pytest
from rich.console import Console

from provisioning.config import load_config
from provisioning.demo import run_demo
from provisioning.sandbox.docker import DockerSandbox, SandboxError
from tests.fixtures.workspace import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

DEMO_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "UPCLOUD_USERNAME",
    "UPCLOUD_PASSWORD",
)


@pytest.fixture
def demo_console(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Console:
    """A recording console; the credentials the demo puts in the environment are undone after."""
    for name in DEMO_CREDENTIALS:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])  # recorded, so restored afterwards
        else:
            monkeypatch.delenv(name, raising=False)
    return Console(record=True, width=200, force_terminal=False)


def test_the_demo_builds_a_server_on_each_provider_and_destroys_them(
    demo_console: Console,
) -> None:
    available, reason = DockerSandbox.available()
    if not available and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the demo must run with Docker in CI: {reason}")

    status = run_demo(demo_console, load_config())

    shown = demo_console.export_text()
    assert status == 0, shown
    if available:
        assert "success 7 operations, 3 resources" in shown
        assert "destroyed 3 servers" in shown
    else:
        assert f"no Docker engine: {reason}; the demo runs without its container" in shown
        assert "destroyed 2 servers" in shown


def test_an_engine_that_fails_to_start_leaves_the_demo_running_without_it(
    demo_console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: DockerSandbox) -> str:
        raise SandboxError("dockerd exited at once: operation not permitted")

    monkeypatch.setattr(DockerSandbox, "available", staticmethod(lambda: (True, "")))
    monkeypatch.setattr(DockerSandbox, "start", refuse)

    status = run_demo(demo_console, load_config())

    shown = demo_console.export_text()
    assert status == 0, shown
    assert "no Docker engine: dockerd exited at once: operation not permitted" in shown
    assert "success 6 operations, 2 resources" in shown
    assert "destroyed 2 servers" in shown
