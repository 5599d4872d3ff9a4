"""Extensions: directories with an ``extension.toml`` that add a provider, workflows or a hook.

::

    extensions/process/
        extension.toml          name, version, type, [entry_points], [compatibility]
        provider.py

    name = "process"
    version = "0.1.0"
    type = "provider"                       # provider | workflow | hook
    description = "Local processes as servers"
    [entry_points]
    provider = "provider:ProcessProvider"   # module (or .py path) inside this directory : class
    name = "process"                        # provider name; defaults to the extension name
    [compatibility]
    provisioning = ">=0.1,<1"

A *workflow* extension lists ``workflows = ["workflows/x.toml"]`` (any extension may): once
active, each is offered as ``EXTENSION:STEM`` (``starter:hello``), which ``provision plan`` and
``provision run`` accept in place of a file (:func:`resolve_workflow`). A *hook* extension names a
function ``hook = "module:function"`` that is called with every :class:`SystemEvent` (or only the
kinds in ``events = [...]``); its module's ``activate()`` / ``deactivate()`` run if present.

:func:`discover` only reads and checks manifests, so a broken extension is reported (one line per
problem, naming the file and field) instead of breaking the command that looked at it. Code runs
only on :func:`activate`, loaded by file path from inside the extension's own directory: an entry
point cannot reach outside it, and nothing is added to ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from provisioning.config import Config
from provisioning.errors import ConfigurationError, WorkflowNotFound

__all__ = [
    "MANIFEST",
    "Contribution",
    "ExtensionInfo",
    "Manifest",
    "activate",
    "activate_all",
    "active_extensions",
    "contribution",
    "deactivate",
    "discover",
    "inspect_extension",
    "is_workflow_reference",
    "offered_workflows",
    "resolve_workflow",
]

logger = logging.getLogger(__name__)

MANIFEST = "extension.toml"
#: Each type of extension and the entry point it cannot do without.
_REQUIRED_ENTRY_POINT = {"provider": "provider", "workflow": "workflows", "hook": "hook"}
_TYPES = tuple(_REQUIRED_ENTRY_POINT)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: ``EXTENSION:WORKFLOW``: an extension name, then the stem of one of its workflow files.
_WORKFLOW_REFERENCE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _check_reference(value: str) -> str:
    """``module:attribute`` syntax only; where the module lives is checked by discover()."""
    module, sep, attribute = value.partition(":")
    if not sep or not module or not _ATTRIBUTE.match(attribute):
        raise ValueError(f"'{value}' must look like 'module:name'")
    return value


class EntryPoints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: ``module:Class`` of a :class:`providers.base.Provider` subclass.
    provider: str | None = None
    #: The provider's registry name; defaults to the extension's name.
    name: str | None = None
    #: Workflow spec files shipped by the extension.
    workflows: list[str] = Field(default_factory=list)
    #: ``module:function`` called with each system event.
    hook: str | None = None
    #: Event kinds the hook wants (all when empty).
    events: list[str] = Field(default_factory=list)

    @field_validator("provider", "hook")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else _check_reference(value)


class Compatibility(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: PEP 440 specifier the installed ``provisioning`` version must satisfy, e.g. ``>=0.1,<1``.
    provisioning: str

    @field_validator("provisioning")
    @classmethod
    def _specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"'{value}' is not a version specifier such as '>=0.1,<1'") from None
        return value


class Manifest(BaseModel):
    """The contents of an ``extension.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    type: str
    description: str = ""
    entry_points: EntryPoints = Field(default_factory=EntryPoints)
    compatibility: Compatibility

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"'{value}' must start with a letter and hold only letters, digits, '_' and '-'"
            )
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(f"'{value}' is not a PEP 440 version such as '0.1.0'") from None
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        # A plain str + check (not a Literal) so the message lists the choices in plain words.
        if value not in _TYPES:
            raise ValueError(f"must be one of {', '.join(_TYPES)}")
        return value

    @property
    def provider_name(self) -> str:
        return self.entry_points.name or self.name


class ExtensionInfo(BaseModel):
    """What :func:`discover` found in one directory. ``problems`` say why it cannot be used."""

    path: Path
    manifest: Manifest | None = None
    valid: bool = False
    compatible: bool = False
    problems: list[str] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest is not None else self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def usable(self) -> bool:
        return self.valid and self.compatible

    def workflow_files(self) -> list[Path]:
        """The workflow specs a workflow extension ships (checked to be inside its directory)."""
        if self.manifest is None:
            return []
        return [self.path / item for item in self.manifest.entry_points.workflows]

    def workflow_references(self) -> dict[str, Path]:
        """``EXTENSION:STEM`` of each shipped workflow file, and the file."""
        return {f"{self.name}:{path.stem}": path for path in self.workflow_files()}


class Contribution(BaseModel):
    """What an active extension plugged in."""

    #: The provider name it registered, if it is a provider extension.
    provider: str | None = None
    #: ``EXTENSION:STEM`` -> spec file, for each workflow it offers.
    workflows: dict[str, Path] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------ discovery


def _installed_version() -> str:
    try:
        return version("provisioning")
    except PackageNotFoundError:  # a source tree that was never installed
        from provisioning import __version__

        return __version__


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """(field, message) of one pydantic error, in the words a manifest author needs."""
    location = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return location, "required field is missing"
    if kind == "extra_forbidden":
        return location, "unknown field"
    if kind == "value_error":
        return location, str(error["ctx"]["error"])
    return location, str(error["msg"])


def _module_file(root: Path, module: str) -> Path | str:
    """The file an entry-point module names, or why it may not be used.

    ``module`` is a dotted name (``provider``, ``lib.provider``) or a relative ``.py`` path.
    Symlinks are resolved before the containment check, so a link pointing outside is refused.
    """
    given = Path(module)
    if given.is_absolute():
        return f"'{module}' is an absolute path; use a module inside the extension directory"
    if ".." in given.parts:
        return f"'{module}' points outside the extension directory"
    if module.endswith(".py"):
        relative = given
    elif _MODULE.match(module):
        relative = Path(*module.split(".")).with_suffix(".py")
    else:
        return f"'{module}' is neither a module name nor a relative .py path"
    candidate = root / relative
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root.resolve()):
        return f"'{module}' resolves to {resolved}, outside the extension directory"
    if not resolved.is_file():
        return f"'{module}' does not exist ({candidate} not found)"
    return resolved


def _inside(root: Path, relative: str) -> str | None:
    """Why a data file path may not be used, or None if it is fine."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        return f"'{relative}' points outside the extension directory"
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return f"'{relative}' resolves to {resolved}, outside the extension directory"
    if not resolved.is_file():
        return f"'{relative}' does not exist"
    return None


def _entry_point_problems(root: Path, manifest: Manifest) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    entry_points = manifest.entry_points
    needed = _REQUIRED_ENTRY_POINT[manifest.type]
    if not getattr(entry_points, needed):
        problems.append((f"entry_points.{needed}", f"required for a {manifest.type} extension"))
    for key in ("provider", "hook"):
        reference = getattr(entry_points, key)
        if reference is not None:
            found = _module_file(root, reference.partition(":")[0])
            if isinstance(found, str):
                problems.append((f"entry_points.{key}", found))
    stems: dict[str, str] = {}
    for index, relative in enumerate(entry_points.workflows):
        why = _inside(root, relative)
        stem = Path(relative).stem
        if why is None and stem in stems:
            why = f"'{relative}' has the same name '{stem}' as '{stems[stem]}'"
        if why is not None:
            problems.append((f"entry_points.workflows.{index}", why))
        stems.setdefault(stem, relative)
    if entry_points.events:
        from provisioning.events import EVENT_KINDS

        unknown = sorted(set(entry_points.events) - EVENT_KINDS.keys())
        if unknown:
            problems.append(("entry_points.events", f"unknown event kind(s) {', '.join(unknown)}"))
    return problems


def inspect_extension(directory: Path) -> ExtensionInfo:
    """Read and check one extension directory; never raises for a bad manifest."""
    info = ExtensionInfo(path=directory)
    manifest_file = info.manifest_path

    def problem(location: str, message: str) -> None:
        info.problems.append(f"{manifest_file}: field '{location}': {message}")

    try:
        data = tomllib.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        info.problems.append(f"{manifest_file}: cannot be read: {error}")
        return info
    except tomllib.TOMLDecodeError as error:
        info.problems.append(f"{manifest_file}: invalid TOML: {error}")
        return info
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        for item in error.errors():
            problem(*_describe(item))
        return info
    info.manifest = manifest
    for location, message in _entry_point_problems(directory, manifest):
        problem(location, message)
    info.valid = not info.problems
    current = _installed_version()
    specifier = SpecifierSet(manifest.compatibility.provisioning)
    info.compatible = specifier.contains(current, prereleases=True)
    if not info.compatible:
        problem(
            "compatibility.provisioning",
            f"requires provisioning {specifier}, but {current} is installed",
        )
    return info


def discover(paths: Iterable[Path | str]) -> list[ExtensionInfo]:
    """Every ``*/extension.toml`` under ``paths``, checked, sorted by directory name.

    Missing search paths are skipped (the default ``extensions/`` may not exist); a name used
    twice makes the later directory invalid.
    """
    found: list[ExtensionInfo] = []
    seen: dict[str, Path] = {}
    for base in paths:
        for manifest_file in sorted(Path(base).glob(f"*/{MANIFEST}")):
            info = inspect_extension(manifest_file.parent)
            if info.manifest is not None:
                first = seen.setdefault(info.name, manifest_file)
                if first != manifest_file:
                    info.valid = False
                    info.problems.append(
                        f"{manifest_file}: field 'name': extension '{info.name}' is already "
                        f"defined by {first}"
                    )
            found.append(info)
    return found


# ------------------------------------------------------------------------------------ lifecycle


@dataclass
class _Activation:
    info: ExtensionInfo
    modules: list[str]
    undo: list[Callable[[], None]]
    contribution: Contribution


_active: dict[str, _Activation] = {}


def _package_name(info: ExtensionInfo) -> str:
    return "provisioning_ext_" + info.name.replace("-", "_")


def _load(
    info: ExtensionInfo, key: str, reference: str, modules: list[str]
) -> tuple[ModuleType, Any]:
    """Import ``module:attribute`` (``entry_points.<key>``) from the extension's directory.

    The module becomes ``provisioning_ext_<name>.<module>`` inside a package whose only search
    path is the extension directory, so the extension's own relative imports work and its
    names cannot shadow anything else.
    """
    module_ref, _, attribute = reference.partition(":")
    found = _module_file(info.path, module_ref)
    if isinstance(found, str):  # the directory changed since discover()
        raise ConfigurationError(
            found,
            code="EXTENSION_INVALID",
            file=str(info.manifest_path),
            field=f"entry_points.{key}",
        )
    package = _package_name(info)
    if package not in sys.modules:
        package_spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
        assert package_spec is not None  # only None when no loader and is_package unknown
        package_module = importlib.util.module_from_spec(package_spec)
        package_module.__path__ = [str(info.path.resolve())]
        sys.modules[package] = package_module
        modules.append(package)
    stem = module_ref.removesuffix(".py").replace("/", ".")
    name = f"{package}.{stem}"
    spec = importlib.util.spec_from_file_location(name, found)
    if spec is None or spec.loader is None:
        raise ConfigurationError(
            f"cannot load {found}", code="EXTENSION_INVALID", file=str(info.manifest_path)
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    modules.append(name)
    try:
        spec.loader.exec_module(module)
    # The extension's code is foreign: whatever its import raises becomes one clear error.
    except Exception as error:
        raise ConfigurationError(
            f"importing {found.name} failed: {type(error).__name__}: {error}",
            code="EXTENSION_LOAD_FAILED",
            file=str(info.manifest_path),
        ) from error
    if not hasattr(module, attribute):
        raise ConfigurationError(
            f"{found.name} has no '{attribute}'",
            code="EXTENSION_INVALID",
            file=str(info.manifest_path),
            field=f"entry_points.{key}",
        )
    return module, getattr(module, attribute)


def _activate_provider(info: ExtensionInfo, manifest: Manifest, activation: _Activation) -> None:
    from providers.base import Provider
    from providers.registry import provider_targets, register, unregister

    assert manifest.entry_points.provider is not None  # activate() accepts only valid extensions
    _, provider_class = _load(info, "provider", manifest.entry_points.provider, activation.modules)
    if not (isinstance(provider_class, type) and issubclass(provider_class, Provider)):
        raise ConfigurationError(
            f"{manifest.entry_points.provider} is not a providers.base.Provider subclass",
            code="EXTENSION_INVALID",
            file=str(info.manifest_path),
            field="entry_points.provider",
        )
    name = manifest.provider_name
    existing = provider_targets().get(name)
    if existing is not None:
        raise ConfigurationError(
            f"provider '{name}' is already provided by {existing}",
            code="EXTENSION_CONFLICT",
            file=str(info.manifest_path),
            field="entry_points.name",
        )
    register(name, provider_class)
    activation.undo.append(lambda: unregister(name))
    activation.contribution.provider = name


def _activate_hook(info: ExtensionInfo, manifest: Manifest, activation: _Activation) -> None:
    from provisioning.events import bus

    assert manifest.entry_points.hook is not None  # activate() accepts only valid extensions
    module, hook = _load(info, "hook", manifest.entry_points.hook, activation.modules)
    if not callable(hook):
        raise ConfigurationError(
            f"{manifest.entry_points.hook} is not callable",
            code="EXTENSION_INVALID",
            file=str(info.manifest_path),
            field="entry_points.hook",
        )
    _call_optional(info, module, "activate")
    activation.undo.append(lambda: _call_optional(info, module, "deactivate"))
    subscription = bus.subscribe(manifest.entry_points.events or None, hook)
    activation.undo.append(subscription.close)


def _call_optional(info: ExtensionInfo, module: ModuleType, function: str) -> None:
    target = getattr(module, function, None)
    if not callable(target):
        return
    try:
        target()
    # Foreign code again: report which extension and which call failed, in one error.
    except Exception as error:
        raise ConfigurationError(
            f"{function}() failed: {type(error).__name__}: {error}",
            code="EXTENSION_LOAD_FAILED",
            file=str(info.manifest_path),
        ) from error


def activate(info: ExtensionInfo) -> None:
    """Load the extension's code and plug it in; a second call for an active one does nothing.

    Raises :class:`ConfigurationError` (code ``EXTENSION_INVALID``, ``EXTENSION_INCOMPATIBLE``,
    ``EXTENSION_CONFLICT`` or ``EXTENSION_LOAD_FAILED``) naming the manifest file; on failure
    nothing stays registered.
    """
    if info.manifest is None or not info.valid:
        reason = info.problems[0] if info.problems else "not checked"
        raise ConfigurationError(
            f"invalid extension ({reason})", code="EXTENSION_INVALID", file=str(info.manifest_path)
        )
    if not info.compatible:
        raise ConfigurationError(
            info.problems[-1], code="EXTENSION_INCOMPATIBLE", file=str(info.manifest_path)
        )
    if info.name in _active:
        return
    manifest = info.manifest
    # Workflows are data: offering them is recording where they are (read when planned).
    activation = _Activation(
        info=info,
        modules=[],
        undo=[],
        contribution=Contribution(workflows=info.workflow_references()),
    )
    try:
        if manifest.type == "provider":
            _activate_provider(info, manifest, activation)
        elif manifest.type == "hook":
            _activate_hook(info, manifest, activation)
    except ConfigurationError:
        _undo(activation)
        raise
    _active[info.name] = activation
    logger.info("extension %s %s activated (%s)", info.name, manifest.version, manifest.type)


def _undo(activation: _Activation) -> None:
    # Unplugging must finish even if the extension's own deactivate() fails: log and go on.
    for step in reversed(activation.undo):
        try:
            step()
        except ConfigurationError as error:
            logger.warning("while deactivating %s: %s", activation.info.name, error)
    for name in activation.modules:
        sys.modules.pop(name, None)


def deactivate(info: ExtensionInfo) -> None:
    """Unplug an active extension (unregister its provider, stop its hook); else do nothing."""
    activation = _active.pop(info.name, None)
    if activation is not None:
        _undo(activation)
        logger.info("extension %s deactivated", info.name)


def active_extensions() -> list[ExtensionInfo]:
    return [activation.info for activation in _active.values()]


def contribution(info: ExtensionInfo) -> Contribution | None:
    """What ``info`` plugged in, or None if it (this directory of that name) is not active."""
    activation = _active.get(info.name)
    if activation is None or activation.info.path.resolve() != info.path.resolve():
        return None
    return activation.contribution


def offered_workflows() -> dict[str, Path]:
    """Every ``EXTENSION:STEM`` the active extensions offer, and its spec file."""
    return {
        reference: path
        for activation in _active.values()
        for reference, path in activation.contribution.workflows.items()
    }


def is_workflow_reference(value: str) -> bool:
    """Whether ``value`` looks like ``EXTENSION:WORKFLOW`` rather than a file path."""
    return _WORKFLOW_REFERENCE.match(value) is not None


def resolve_workflow(reference: str) -> Path:
    """The spec file an active extension offers as ``reference`` (``starter:hello``).

    Raises :class:`WorkflowNotFound` (``WORKFLOW_NOT_FOUND``, exit code 2) naming every
    reference that is known.
    """
    offered = offered_workflows()
    if reference in offered:
        return offered[reference]
    known = ", ".join(sorted(offered)) or "none: no active extension offers workflows"
    raise WorkflowNotFound(
        f"no file '{reference}' and no extension workflow of that name (known: {known})"
    )


def activate_all(paths: Iterable[Path | str]) -> list[ExtensionInfo]:
    """Activate every valid, compatible extension under ``paths``; return the activated ones.

    The others are logged with their problems and skipped, so one broken extension never stops
    a run that does not need it.
    """
    activated: list[ExtensionInfo] = []
    for info in discover(paths):
        if not info.usable:
            for problem in info.problems:
                logger.warning("extension skipped: %s", problem)
            continue
        try:
            activate(info)
        except ConfigurationError as error:
            info.problems.append(str(error))
            logger.warning("extension skipped: %s", error)
            continue
        activated.append(info)
    return activated


def activate_configured(config: Config) -> list[ExtensionInfo]:
    """Activate the extensions under the configured ``extensions.paths``."""
    return activate_all(Path(str(path)) for path in config.get("extensions.paths", []))
