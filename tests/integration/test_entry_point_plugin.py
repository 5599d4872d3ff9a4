"""A provider shipped as an installed package is found through its entry point alone.

The test installs ``tests/data/plugin_pkg`` (``provisioning-plugin-echo``) into the running
environment once, from a copy so the source tree gets no build artefacts, and leaves it installed:
later runs find it there and skip the install. The build is offline when the environment can
build wheels by itself (setuptools >= 70.1, or older setuptools plus ``wheel``); otherwise pip
fetches a build backend into an isolated environment, which needs the package index.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from providers.base import ServerSpec, ServerState
from providers.registry import ENTRY_POINT_GROUP, get_provider, provider_names

PACKAGE = Path(__file__).resolve().parents[1] / "data" / "plugin_pkg"
DISTRIBUTION = "provisioning-plugin-echo"


def _offline_build_options() -> list[str]:
    try:
        setuptools = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        return []
    can_build = setuptools >= Version("70.1") or importlib.util.find_spec("wheel") is not None
    return ["--no-build-isolation", "--no-index"] if can_build else []


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def echo_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    if _installed_version() is None:
        source = tmp_path_factory.mktemp("plugin") / "plugin_pkg"
        shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q"]
        result = subprocess.run(
            [*install, *_offline_build_options(), str(source)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, f"installing the plugin failed:\n{result.stderr}"
        importlib.invalidate_caches()  # let this process see the new distribution and module
    assert _installed_version() == "0.1.0"


@pytest.mark.usefixtures("echo_plugin")
def test_an_installed_plugin_is_listed_under_its_entry_point_name() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}

    assert "echo" in names
    assert "echo" in provider_names()


@pytest.mark.usefixtures("echo_plugin")
def test_the_plugin_provider_works_like_a_built_in_one() -> None:
    provider = get_provider("echo", {"timeout": 3})

    server = provider.create_server(ServerSpec(name="e-1"), "wf-echo/one")

    assert type(provider).__module__ == "provisioning_plugin_echo"
    assert provider.timeout == 3
    assert server.state == ServerState.running
    assert get_provider("echo").find("wf-echo/one") == server
    assert provider.create_server(ServerSpec(name="e-1"), "wf-echo/one").id == server.id
    provider.delete_server(server.id)
    assert provider.find("wf-echo/one") is None
    assert provider.check().reachable
