"""Extension manifests: discovery reports every problem in one line, activation plugs code in."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from providers.registry import get_provider, provider_names
from provisioning import extensions
from provisioning.errors import ConfigurationError, WorkflowNotFound
from provisioning.events import EventBus, Subscription, WorkflowCompleted, WorkflowStarted
from provisioning.extensions import (
    Contribution,
    ExtensionInfo,
    activate,
    activate_all,
    contribution,
    deactivate,
    discover,
    is_workflow_reference,
    offered_workflows,
    resolve_workflow,
)

CURRENT = version("provisioning")

PROVIDER_CODE = """
from typing import ClassVar

from providers.base import Provider, ProviderStatus, ResourceNotFound, Server, ServerSpec


class DummyProvider(Provider):
    name: ClassVar[str] = "dummy"

    def list_servers(self) -> list[Server]:
        return []

    def create_server(self, spec: ServerSpec, key: str) -> Server:
        raise NotImplementedError

    def get_server(self, server_id: str) -> Server:
        raise ResourceNotFound(server_id, provider=self.name)

    def delete_server(self, server_id: str) -> None:
        return None

    def check(self) -> ProviderStatus:
        return ProviderStatus(provider=self.name, reachable=True)
"""


def manifest(
    name: str = "dummy",
    *,
    kind: str = "provider",
    version_: str = "1.0.0",
    entry_points: str = 'provider = "provider:DummyProvider"',
    requires: str = ">=0",
    extra: str = "",
) -> str:
    return textwrap.dedent(
        f"""\
        name = "{name}"
        version = "{version_}"
        type = "{kind}"
        description = "for tests"
        {extra}
        [entry_points]
        {entry_points}
        [compatibility]
        provisioning = "{requires}"
        """
    )


def make_extension(
    root: Path, directory: str, text: str, files: dict[str, str] | None = None
) -> Path:
    path = root / directory
    path.mkdir(parents=True)
    (path / "extension.toml").write_text(text)
    for relative, content in (
        files if files is not None else {"provider.py": PROVIDER_CODE}
    ).items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_text(content)
    return path


def workflow_extension(
    root: Path, files: dict[str, str], *, name: str = "flows", listed: list[str] | None = None
) -> Path:
    """A workflow extension shipping ``files``; it lists ``listed`` (default: those files)."""
    workflows = f"workflows = {json.dumps(list(files) if listed is None else listed)}"
    return make_extension(
        root, name, manifest(name, kind="workflow", entry_points=workflows), files=files
    )


def only(root: Path) -> ExtensionInfo:
    (info,) = discover([root])
    return info


@pytest.fixture(autouse=True)
def _deactivate_everything() -> Iterator[None]:
    yield
    for info in extensions.active_extensions():
        deactivate(info)


# ------------------------------------------------------------------------------------ discovery


def test_a_valid_extension_is_discovered_with_its_manifest(tmp_path: Path) -> None:
    make_extension(tmp_path, "dummy", manifest())

    info = only(tmp_path)

    assert (info.valid, info.compatible, info.problems) == (True, True, [])
    assert info.manifest is not None
    assert (info.name, info.manifest.version, info.manifest.type) == ("dummy", "1.0.0", "provider")
    assert info.manifest.provider_name == "dummy"


def test_missing_search_paths_and_directories_without_manifest_are_ignored(
    tmp_path: Path,
) -> None:
    (tmp_path / "not-an-extension").mkdir()
    assert discover([tmp_path / "nowhere", tmp_path]) == []


def test_invalid_toml_is_reported_not_raised(tmp_path: Path) -> None:
    make_extension(tmp_path, "broken", 'name = "broken"\nversion = \n')

    info = only(tmp_path)

    assert not info.valid
    assert info.manifest is None
    assert info.name == "broken"
    assert info.problems == [
        f"{tmp_path}/broken/extension.toml: invalid TOML: Invalid value (at line 2, column 11)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (manifest(kind="theme"), "field 'type': must be one of provider, workflow, hook"),
        (
            manifest().replace('version = "1.0.0"\n', ""),
            "field 'version': required field is missing",
        ),
        (manifest(version_="1.x"), "field 'version': '1.x' is not a PEP 440 version such as"),
        (manifest(name="9lives"), "field 'name': '9lives' must start with a letter"),
        (manifest(extra='colour = "red"'), "field 'colour': unknown field"),
        (
            manifest(requires="about 1"),
            "field 'compatibility.provisioning': 'about 1' is not a version specifier",
        ),
        (
            manifest(entry_points='hook = "provider:DummyProvider"'),
            "field 'entry_points.provider': required for a provider extension",
        ),
        (
            manifest(entry_points='provider = "provider.DummyProvider"'),
            "field 'entry_points.provider': 'provider.DummyProvider' must look like 'module:name'",
        ),
        (
            manifest(entry_points='provider = "missing:DummyProvider"'),
            "field 'entry_points.provider': 'missing' does not exist",
        ),
    ],
    ids=[
        "bad-type",
        "missing-version",
        "bad-version",
        "bad-name",
        "unknown-field",
        "bad-specifier",
        "type-without-entry-point",
        "bad-reference",
        "missing-module",
    ],
)
def test_each_manifest_mistake_is_one_line_naming_file_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    make_extension(tmp_path, "ext", text)

    info = only(tmp_path)

    assert not info.valid
    assert len(info.problems) == 1, info.problems
    assert info.problems[0].startswith(f"{tmp_path}/ext/extension.toml: ")
    assert expected in info.problems[0]


def test_an_extension_for_another_version_is_valid_but_incompatible(tmp_path: Path) -> None:
    make_extension(tmp_path, "future", manifest(requires=f">{CURRENT}"))

    info = only(tmp_path)

    assert (info.valid, info.compatible) == (True, False)
    assert info.problems == [
        f"{tmp_path}/future/extension.toml: field 'compatibility.provisioning': "
        f"requires provisioning >{CURRENT}, but {CURRENT} is installed"
    ]


def test_entry_points_may_not_leave_the_extension_directory(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text(PROVIDER_CODE)
    outside = tmp_path / "outside.py"
    outside.write_text(PROVIDER_CODE)
    root = tmp_path / "extensions"
    make_extension(root, "parent", manifest("parent", entry_points='provider = "../x.py:Dummy"'))
    make_extension(root, "dots", manifest("dots", entry_points='provider = "../x:Dummy"'))
    make_extension(
        root, "absolute", manifest("absolute", entry_points=f'provider = "{outside}:Dummy"')
    )
    link = make_extension(root, "link", manifest("link"), files={})
    (link / "provider.py").symlink_to(outside)

    problems = {info.name: info.problems for info in discover([root])}

    assert problems == {
        "absolute": [
            f"{root}/absolute/extension.toml: field 'entry_points.provider': '{outside}' is an "
            "absolute path; use a module inside the extension directory"
        ],
        "dots": [
            f"{root}/dots/extension.toml: field 'entry_points.provider': '../x' points outside "
            "the extension directory"
        ],
        "link": [
            f"{root}/link/extension.toml: field 'entry_points.provider': 'provider' resolves to "
            f"{outside}, outside the extension directory"
        ],
        "parent": [
            f"{root}/parent/extension.toml: field 'entry_points.provider': '../x.py' points "
            "outside the extension directory"
        ],
    }


def test_a_symlink_staying_inside_the_directory_is_fine(tmp_path: Path) -> None:
    path = make_extension(tmp_path, "ok", manifest("ok"), files={"impl.py": PROVIDER_CODE})
    (path / "provider.py").symlink_to(path / "impl.py")

    assert only(tmp_path).valid


def test_the_same_name_twice_makes_the_later_one_invalid(tmp_path: Path) -> None:
    make_extension(tmp_path / "a", "one", manifest("twin"))
    make_extension(tmp_path / "b", "two", manifest("twin"))

    first, second = discover([tmp_path / "a", tmp_path / "b"])

    assert first.valid
    assert not second.valid
    assert second.problems == [
        f"{tmp_path}/b/two/extension.toml: field 'name': extension 'twin' is already defined by "
        f"{tmp_path}/a/one/extension.toml"
    ]


def test_workflow_files_must_exist_inside_the_extension(tmp_path: Path) -> None:
    path = workflow_extension(
        tmp_path,
        {"workflows/web.toml": 'name = "web"\n'},
        listed=["workflows/web.toml", "../web.toml"],
    )

    info = only(tmp_path)

    assert info.problems == [
        f"{path}/extension.toml: field 'entry_points.workflows.1': '../web.toml' points outside "
        "the extension directory"
    ]
    assert info.workflow_files()[0] == path / "workflows" / "web.toml"


def test_two_workflow_files_with_the_same_name_are_refused(tmp_path: Path) -> None:
    path = workflow_extension(
        tmp_path, {"a/web.toml": 'name = "a"\n', "b/web.toml": 'name = "b"\n'}
    )

    assert only(tmp_path).problems == [
        f"{path}/extension.toml: field 'entry_points.workflows.1': 'b/web.toml' has the same "
        "name 'web' as 'a/web.toml'"
    ]


# ------------------------------------------------------------------------------------ lifecycle


def workflow_pack(root: Path) -> ExtensionInfo:
    files = {"workflows/web.toml": 'name = "web"\n', "workflows/db.prod.toml": 'name = "db"\n'}
    workflow_extension(root, files, name="pack")
    return only(root)


def test_an_active_workflow_extension_offers_its_workflows_until_deactivated(
    tmp_path: Path,
) -> None:
    info = workflow_pack(tmp_path)
    shipped = tmp_path / "pack" / "workflows"
    web, db = shipped / "web.toml", shipped / "db.prod.toml"
    assert offered_workflows() == {}

    activate(info)

    assert offered_workflows() == {"pack:web": web, "pack:db.prod": db}
    assert contribution(info) == Contribution(workflows={"pack:web": web, "pack:db.prod": db})
    assert resolve_workflow("pack:db.prod") == db

    deactivate(info)

    assert offered_workflows() == {}
    assert contribution(info) is None
    with pytest.raises(WorkflowNotFound, match="known: none: no active extension offers"):
        resolve_workflow("pack:web")


def test_an_unknown_workflow_reference_names_the_known_ones(tmp_path: Path) -> None:
    activate(workflow_pack(tmp_path))

    with pytest.raises(WorkflowNotFound) as unknown:
        resolve_workflow("pack:mail")

    assert str(unknown.value) == (
        "no file 'pack:mail' and no extension workflow of that name (known: pack:db.prod, pack:web)"
    )
    assert (unknown.value.code, unknown.value.exit_code) == ("WORKFLOW_NOT_FOUND", 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("starter:hello", True),
        ("my-pack:web.prod", True),
        ("web.toml", False),
        ("specs/a:b.toml", False),
        (":web", False),
        ("pack:", False),
    ],
)
def test_what_counts_as_a_workflow_reference(value: str, expected: bool) -> None:
    assert is_workflow_reference(value) is expected


def test_activating_a_provider_extension_registers_it_and_deactivating_removes_it(
    tmp_path: Path,
) -> None:
    make_extension(
        tmp_path,
        "dummy",
        manifest(entry_points='provider = "provider:DummyProvider"\nname = "dummy-cloud"'),
    )
    info = only(tmp_path)

    activate(info)
    activate(info)  # a second activation is harmless

    assert "dummy-cloud" in provider_names()
    assert contribution(info) == Contribution(provider="dummy-cloud")
    provider = get_provider("dummy-cloud", {"timeout": 7})
    assert type(provider).__name__ == "DummyProvider"
    assert provider.timeout == 7
    assert type(provider).__module__ == "provisioning_ext_dummy.provider"
    assert str(tmp_path) not in sys.path
    assert extensions.active_extensions() == [info]

    deactivate(info)

    assert "dummy-cloud" not in provider_names()
    assert "provisioning_ext_dummy.provider" not in sys.modules
    assert extensions.active_extensions() == []
    assert contribution(info) is None


def test_invalid_or_incompatible_extensions_refuse_to_activate(tmp_path: Path) -> None:
    make_extension(tmp_path / "a", "bad", manifest(kind="theme"))
    make_extension(tmp_path / "b", "future", manifest("future", requires=f">{CURRENT}"))
    bad, future = discover([tmp_path / "a", tmp_path / "b"])

    with pytest.raises(ConfigurationError, match="must be one of") as invalid:
        activate(bad)
    with pytest.raises(ConfigurationError, match="requires provisioning") as incompatible:
        activate(future)

    assert invalid.value.code == "EXTENSION_INVALID"
    assert incompatible.value.code == "EXTENSION_INCOMPATIBLE"
    assert "future" not in provider_names()


def test_an_extension_whose_code_fails_to_import_leaves_nothing_behind(tmp_path: Path) -> None:
    make_extension(
        tmp_path,
        "crashy",
        manifest("crashy"),
        files={"provider.py": "raise RuntimeError('boom at import')\n"},
    )

    with pytest.raises(ConfigurationError, match="RuntimeError: boom at import") as failed:
        activate(only(tmp_path))

    assert failed.value.code == "EXTENSION_LOAD_FAILED"
    assert str(tmp_path / "crashy" / "extension.toml") in str(failed.value)
    assert "crashy" not in provider_names()
    assert not [name for name in sys.modules if name.startswith("provisioning_ext_crashy")]


def test_an_entry_point_that_is_not_a_provider_is_refused(tmp_path: Path) -> None:
    make_extension(
        tmp_path,
        "fake",
        manifest("fake", entry_points='provider = "provider:Fake"'),
        files={"provider.py": "class Fake:\n    pass\n"},
    )

    with pytest.raises(ConfigurationError, match=r"not a providers\.base\.Provider subclass"):
        activate(only(tmp_path))


def test_activate_all_plugs_in_the_good_ones_and_reports_the_rest(tmp_path: Path) -> None:
    make_extension(tmp_path, "good", manifest("good"))
    make_extension(tmp_path, "bad", manifest("bad", kind="theme"))
    make_extension(
        tmp_path,
        "shadow",
        manifest("shadow", entry_points=('provider = "provider:DummyProvider"\nname = "aws"')),
    )

    activated = activate_all([tmp_path])

    assert [info.name for info in activated] == ["good"]
    assert "good" in provider_names()
    assert get_provider("aws", {}).__class__.__name__ == "AWSProvider"


def test_a_hook_extension_receives_events_between_activate_and_deactivate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus()
    monkeypatch.setattr("provisioning.events.bus", bus)
    code = textwrap.dedent(
        """\
        calls = []

        def activate():
            calls.append("activate")

        def deactivate():
            calls.append("deactivate")

        def on_event(event):
            calls.append(event.kind)
        """
    )
    hook = 'hook = "notify:on_event"\nevents = ["workflow.started"]'
    make_extension(
        tmp_path,
        "notify",
        manifest("notify", kind="hook", entry_points=hook),
        files={"notify.py": code},
    )
    info = only(tmp_path)

    activate(info)
    module = sys.modules["provisioning_ext_notify.notify"]
    bus.publish(WorkflowCompleted(workflow_id="wf", duration_s=1.0))  # not a kind it asked for
    bus.publish(WorkflowStarted(workflow_id="wf", name="x", operation_count=1))
    (subscription,) = bus._listeners
    assert isinstance(subscription, Subscription)
    assert subscription.flush()
    deactivate(info)
    bus.publish(WorkflowStarted(workflow_id="wf", name="x", operation_count=1))

    assert module.calls == ["activate", "workflow.started", "deactivate"]


def test_a_hook_may_only_ask_for_known_event_kinds(tmp_path: Path) -> None:
    hook = 'hook = "notify:on_event"\nevents = ["workflow.begun"]'
    make_extension(
        tmp_path,
        "notify",
        manifest("notify", kind="hook", entry_points=hook),
        files={"notify.py": "def on_event(event):\n    pass\n"},
    )

    assert only(tmp_path).problems == [
        f"{tmp_path}/notify/extension.toml: field 'entry_points.events': unknown event kind(s) "
        "workflow.begun"
    ]
