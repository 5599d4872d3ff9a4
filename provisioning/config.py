"""Layered configuration: defaults < user < environment file < run-time overrides.

Each layer is parsed TOML; layers are deep-merged, and every leaf remembers which layer set it
(``provision config show --sources``). ``{{...}}`` placeholders are resolved on the parsed values,
one string at a time, so a value can never break the structure around it. Placeholders name
another setting (``{{paths.state}}``) or one of the namespaces ``env``, ``now`` and ``git``.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioning.errors import ConfigurationError
from provisioning.secrets import is_secret_key, mask_secrets

DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "config.defaults.toml"
USER_FILE = "config.user.toml"
ENV_VARIABLE = "PROVISIONING_ENV"
BASE_VARIABLE = "PROVISIONING_BASE"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


@dataclass(frozen=True)
class Layer:
    """One source of settings: a name for humans and the parsed values."""

    source: str
    values: Mapping[str, Any]


@dataclass
class Config:
    """Merged, interpolated settings and the source of every leaf (by dotted key)."""

    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    layers: tuple[Layer, ...] = ()

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def section(self, dotted: str) -> dict[str, Any]:
        value = self.get(dotted, {})
        return dict(value) if isinstance(value, Mapping) else {}

    def provider(self, name: str) -> dict[str, Any]:
        """The ``[providers.NAME]`` table a driver is built with."""
        return self.section(f"providers.{name}")

    @property
    def state_dir(self) -> Path:
        return Path(str(self.get("paths.state")))

    def with_layer(self, layer: Layer) -> Config:
        """A new configuration with one more layer on top, re-interpolated."""
        return build_config((*self.layers, layer))

    def masked(self) -> dict[str, Any]:
        """The values with secrets replaced, for display."""
        masked: dict[str, Any] = mask_secrets("", self.values)
        return masked


def read_layer(path: Path) -> Layer | None:
    """The TOML file as a layer, ``None`` when it does not exist."""
    if not path.is_file():
        return None
    try:
        return Layer(str(path), tomllib.loads(path.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"invalid TOML: {error}", file=str(path)) from None


def parse_assignments(assignments: Iterable[str], source: str = "--set") -> Layer:
    """``a.b=c`` strings as a layer; values are read as TOML when they parse, else as strings."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        dotted, sep, raw = assignment.partition("=")
        dotted = dotted.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", dotted):
            raise ConfigurationError(
                f"expected KEY=VALUE with a dotted key, got '{assignment}'", file=source
            )
        if is_secret_key(dotted) and raw.strip():
            raise ConfigurationError(
                f"'{dotted}' holds a secret and cannot be set with {source}: the value would be"
                " recorded in Prefect's flow-run parameters and the shell's history; put it in"
                " config.user.toml or the provider's environment variable",
                file=source,
            )
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        set_dotted(values, dotted, value)
    return Layer(source, values)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _merge(
    target: dict[str, Any],
    layer: Mapping[str, Any],
    source: str,
    sources: dict[str, str],
    prefix: str = "",
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value, source, sources, dotted + ".")
        else:
            target[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
            for stale in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
                del sources[stale]
            _record_sources(target[key], source, sources, dotted)


def _record_sources(value: Any, source: str, sources: dict[str, str], dotted: str) -> None:
    if isinstance(value, Mapping):
        for key, child in value.items():
            _record_sources(child, source, sources, f"{dotted}.{key}")
    else:
        sources[dotted] = source


class _Interpolator:
    """Resolves placeholders against the merged tree, detecting reference cycles."""

    def __init__(self, values: dict[str, Any], base: Path) -> None:
        self.values = values
        self.base = base
        self.resolving: list[str] = []
        self._git_branch: str | None = None

    def resolve_tree(self, node: Any, dotted: str) -> Any:
        if isinstance(node, dict):
            return {
                k: self.resolve_tree(v, f"{dotted}.{k}" if dotted else k) for k, v in node.items()
            }
        if isinstance(node, list):
            return [self.resolve_tree(item, dotted) for item in node]
        if isinstance(node, str):
            return self.resolve_string(node, dotted)
        return node

    def resolve_string(self, text: str, dotted: str) -> Any:
        # The key being resolved joins the chain, so a cycle is reported from where it starts.
        entering = not self.resolving or self.resolving[-1] != dotted
        if entering:
            self.resolving.append(dotted)
        try:
            whole = _PLACEHOLDER.fullmatch(text.strip())
            if whole:  # a lone placeholder keeps the referenced value's type
                return self.lookup(whole.group(1), dotted)
            return _PLACEHOLDER.sub(lambda match: str(self.lookup(match.group(1), dotted)), text)
        finally:
            if entering:
                self.resolving.pop()

    def lookup(self, name: str, dotted: str) -> Any:
        namespace, _, rest = name.partition(".")
        if namespace == "env":
            if rest not in os.environ:
                raise ConfigurationError(
                    f"unknown variable '{{{{{name}}}}}': environment variable {rest} is not set",
                    code="CONFIG_UNKNOWN_VARIABLE",
                    field=dotted,
                )
            return os.environ[rest]
        if namespace == "now":
            return self._now(rest, name, dotted)
        if namespace == "git":
            if rest != "branch":
                raise self._unknown(name, dotted)
            return self._branch(dotted)
        return self._setting(name, dotted)

    def _unknown(self, name: str, dotted: str) -> ConfigurationError:
        return ConfigurationError(
            f"unknown variable '{{{{{name}}}}}'", code="CONFIG_UNKNOWN_VARIABLE", field=dotted
        )

    def _now(self, part: str, name: str, dotted: str) -> str:
        now = datetime.now(UTC)
        formats = {
            "date": now.strftime("%Y-%m-%d"),
            "time": now.strftime("%H:%M:%S"),
            "datetime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "timestamp": str(int(now.timestamp())),
        }
        if part not in formats:
            raise self._unknown(name, dotted)
        return formats[part]

    def _branch(self, dotted: str) -> str:
        if self._git_branch is None:
            try:
                completed = subprocess.run(
                    ["git", "rev-parse", "--abbrev-ref", "HEAD"],
                    cwd=self.base,
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                raise ConfigurationError(
                    f"'{{{{git.branch}}}}' cannot be read: {error}", field=dotted
                ) from None
            if completed.returncode != 0:
                raise ConfigurationError(
                    f"'{{{{git.branch}}}}' cannot be read: {self.base} is not a git work tree",
                    field=dotted,
                )
            self._git_branch = completed.stdout.strip()
        return self._git_branch

    def _setting(self, name: str, dotted: str) -> Any:
        if name in self.resolving:
            chain = " -> ".join([*self.resolving[self.resolving.index(name) :], name])
            raise ConfigurationError(
                f"placeholder cycle: {chain}", code="CONFIG_CYCLE", field=self.resolving[0]
            )
        node: Any = self.values
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                raise self._unknown(name, dotted)
            node = node[part]
        self.resolving.append(name)
        try:
            return self.resolve_tree(node, name)
        finally:
            self.resolving.pop()


def build_config(layers: Iterable[Layer]) -> Config:
    """Merge ``layers`` in order and resolve placeholders (``paths.base`` "." = current dir)."""
    layers = tuple(layers)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        _merge(values, layer.values, layer.source, sources)
    paths = values.setdefault("paths", {})
    if paths.get("base") in (None, "", "."):
        paths["base"] = str(Path.cwd().resolve())
    resolved = _Interpolator(values, Path(paths["base"])).resolve_tree(values, "")
    return Config(values=resolved, sources=sources, layers=layers)


def load_config(
    base: Path | None = None,
    *,
    env: str | None = None,
    overrides: Iterable[str] = (),
    extra_layers: Iterable[Layer] = (),
) -> Config:
    """The configuration seen from project directory ``base`` (default ``$PROVISIONING_BASE``
    or the current directory). ``overrides`` are ``a.b=c`` strings (the CLI's ``--set``);
    ``extra_layers`` go between the files and the overrides (e.g. a workflow's configuration)."""
    base = (base or Path(os.environ.get(BASE_VARIABLE) or Path.cwd())).resolve()
    env = env if env is not None else os.environ.get(ENV_VARIABLE, "")
    candidates = [DEFAULTS_FILE, base / USER_FILE]
    if env:
        candidates.append(base / f"config.{env}.toml")
    layers = [layer for path in candidates if (layer := read_layer(path)) is not None]
    if not layers or layers[0].source != str(DEFAULTS_FILE):
        raise ConfigurationError("the defaults file is missing", file=str(DEFAULTS_FILE))
    layers.insert(1, Layer("project directory", {"paths": {"base": str(base)}}))
    layers.extend(extra_layers)
    overrides = list(overrides)
    if overrides:
        layers.append(parse_assignments(overrides))
    return build_config(layers)


def _leaves(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def changes(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """Settings that differ between two configurations: ``(dotted key, old, new)``, sorted.

    A key only in one of them has ``None`` on the other side. Values are not masked here; the
    event that carries them is (``provisioning.events.ConfigurationChanged``).
    """
    before, after = _leaves(old.values), _leaves(new.values)
    return [
        (key, before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def reload(config: Config) -> Config:
    """The same layers with every file read again (run-time layers such as ``--set`` kept)."""
    layers = []
    for layer in config.layers:
        path = Path(layer.source)
        fresh = read_layer(path) if path.suffix == ".toml" and path.is_absolute() else layer
        if fresh is not None:
            layers.append(fresh)
    return build_config(layers)
