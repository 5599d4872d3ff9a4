"""The workflow contract: pydantic models and loading from TOML, JSON, YAML or a dict.

The same models validate a file on disk, a notebook dict and a REST submission, so every error
reads the same everywhere: ``web.toml: operation 'db': field 'params.image': ...``.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provisioning.errors import WorkflowError
from provisioning.secrets import is_secret_key

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
OperationKind = Literal["server.create", "server.delete", "file.write", "config.set", "command.run"]
SERVER_KINDS: frozenset[str] = frozenset({"server.create", "server.delete"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSpec(_Strict):
    """What a ``server.create`` operation asks a provider for."""

    name: str = Field(min_length=1)
    image: str | None = None
    size: str | None = None  # AWS instance type, UpCloud plan; ignored by local
    zone: str | None = None  # UpCloud zone, AWS availability zone; defaults from config
    labels: dict[str, str] = Field(default_factory=dict)
    #: Provider-specific extras passed through untouched (e.g. ``command`` for local).
    extra: dict[str, Any] = Field(default_factory=dict)


class ServerDeleteParams(_Strict):
    """Deletes a server by id or by name (the name must match exactly one server)."""

    server_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> ServerDeleteParams:
        if (self.server_id is None) == (self.name is None):
            raise ValueError("give exactly one of server_id or name")
        return self


class FileWriteParams(_Strict):
    path: str = Field(min_length=1)
    content: str
    mode: str | None = Field(default=None, pattern=r"^0?[0-7]{3,4}$", description="octal: 0644")


class ConfigSetParams(_Strict):
    """Sets ``key`` (dotted, e.g. ``server.port``) in the TOML file ``file``."""

    file: str = Field(min_length=1)
    key: str = Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    value: Any

    @field_validator("value")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("TOML has no null: give a value")
        return value


class CommandRunParams(_Strict):
    """A command as an argv list (never a shell string) and its optional ``undo`` argv."""

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float = Field(default=300.0, gt=0)
    undo: list[str] | None = Field(default=None, min_length=1)


class _OperationBase(_Strict):
    id: str = Field(pattern=IDENTIFIER)
    provider: str | None = None
    description: str | None = None
    retries: int | None = Field(default=None, ge=0, le=20, description="overrides the workflow's")


class ServerCreateOperation(_OperationBase):
    kind: Literal["server.create"]
    params: ServerSpec


class ServerDeleteOperation(_OperationBase):
    kind: Literal["server.delete"]
    params: ServerDeleteParams


class FileWriteOperation(_OperationBase):
    kind: Literal["file.write"]
    params: FileWriteParams


class ConfigSetOperation(_OperationBase):
    kind: Literal["config.set"]
    params: ConfigSetParams


class CommandRunOperation(_OperationBase):
    kind: Literal["command.run"]
    params: CommandRunParams


Operation = Annotated[
    ServerCreateOperation
    | ServerDeleteOperation
    | FileWriteOperation
    | ConfigSetOperation
    | CommandRunOperation,
    Field(discriminator="kind"),
]
OPERATION_KINDS: tuple[str, ...] = (
    "server.create",
    "server.delete",
    "file.write",
    "config.set",
    "command.run",
)


class WorkflowConfiguration(_Strict):
    """Run-time settings; unset values fall back to the layered configuration's ``[engine]``."""

    parallelism: int | None = Field(default=None, ge=1, le=1000)
    on_failure: Literal["rollback", "keep"] | None = None
    retries: int | None = Field(default=None, ge=0, le=20)
    retry_backoff: float | None = Field(default=None, ge=0)
    retry_jitter: float | None = Field(default=None, ge=0)
    #: Per-provider overrides of ``[providers.NAME]``, e.g. ``{"aws": {"region": "eu-west-1"}}``.
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("providers")
    @classmethod
    def _no_secrets(cls, providers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A spec is stored in the journal and sent as a Prefect flow-run parameter, where a
        credential would be readable by anyone who can read runs."""
        for name, settings in providers.items():
            for key, value in settings.items():
                if value and is_secret_key(key):
                    raise ValueError(
                        f"'{name}.{key}' holds a secret, which a workflow spec may not carry (it"
                        " would be stored with the run); put it in config.user.toml or the"
                        " provider's environment variable"
                    )
        return providers

    def overrides(self) -> dict[str, Any]:
        """These settings as a layer over the configuration (``engine.*``, ``providers.*``)."""
        engine = self.model_dump(exclude={"providers"}, exclude_none=True)
        layer: dict[str, Any] = {}
        if engine:
            layer["engine"] = engine
        if self.providers:
            layer["providers"] = self.providers
        return layer


class Workflow(_Strict):
    workflow_id: str = Field(default="", pattern=r"^$|" + IDENTIFIER)
    name: str = Field(min_length=1)
    description: str | None = None
    operations: list[Operation] = Field(min_length=1)
    dependencies: dict[str, list[str]] = Field(default_factory=dict)
    configuration: WorkflowConfiguration = Field(default_factory=WorkflowConfiguration)

    @model_validator(mode="after")
    def _default_id(self) -> Workflow:
        if not self.workflow_id:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-.")[:40] or "wf"
            self.workflow_id = f"{slug}-{uuid.uuid4().hex[:8]}"
        return self

    def operation(self, operation_id: str) -> Operation:
        for operation in self.operations:
            if operation.id == operation_id:
                return operation
        raise KeyError(operation_id)

    @property
    def operation_ids(self) -> list[str]:
        return [operation.id for operation in self.operations]

    def upstream(self, operation_id: str) -> list[str]:
        return list(self.dependencies.get(operation_id, []))

    @property
    def providers(self) -> list[str]:
        """The providers the operations call, each once."""
        return sorted({op.provider for op in self.operations if op.provider is not None})


def parse_document(text: str, fmt: str, *, source: str) -> Any:
    """Parse TOML, JSON or YAML text; a syntax error names the file and the line."""
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            return json.loads(text)
        if fmt == "yaml":
            return yaml.safe_load(text)
    except tomllib.TOMLDecodeError as error:
        message = f"invalid TOML: {error}"
    except json.JSONDecodeError as error:
        message = f"invalid JSON at line {error.lineno}: {error.msg}"
    except yaml.YAMLError as error:
        message = "invalid YAML: " + str(error).replace("\n", " ")
    else:
        message = ""
    if message:
        raise WorkflowError(message, code="SPEC_PARSE_ERROR", file=source)
    raise WorkflowError(
        f"unknown spec format '{fmt}' (use .toml, .json, .yaml or .yml)", file=source
    )


_FORMATS = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def read_spec_file(path: Path) -> dict[str, Any]:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WorkflowError(
            f"unknown spec format '{path.suffix}' (use .toml, .json, .yaml or .yml)",
            code="SPEC_PARSE_ERROR",
            file=str(path),
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise WorkflowError(
            f"cannot read spec: {error.strerror}", code="SPEC_NOT_FOUND", file=str(path)
        ) from None
    data = parse_document(text, fmt, source=str(path))
    if not isinstance(data, dict):
        raise WorkflowError("a workflow spec must be a table/object at the top", file=str(path))
    return data


def _operation_id_at(data: Mapping[str, Any], index: Any) -> str | None:
    operations = data.get("operations")
    if isinstance(index, int) and isinstance(operations, list) and index < len(operations):
        item = operations[index]
        if isinstance(item, Mapping) and isinstance(item.get("id"), str):
            return str(item["id"])
        return f"#{index + 1}"
    return None


def _describe(error: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """One pydantic error as (message, context) naming the operation and the field."""
    loc = list(error["loc"])
    context: dict[str, Any] = {}
    message = str(error["msg"]).removeprefix("Value error, ")
    if loc[:1] == ["operations"] and len(loc) > 1:
        context["operation"] = _operation_id_at(data, loc[1])
        loc = loc[2:]
        if loc and loc[0] in OPERATION_KINDS:
            loc = loc[1:]  # the discriminator's tag, not a field the user wrote
        if error["type"] == "union_tag_invalid":
            given = error.get("input")
            kind = given.get("kind") if isinstance(given, dict) else None
            message = f"unknown operation kind '{kind}' (known: {', '.join(OPERATION_KINDS)})"
            loc = ["kind"]
        elif error["type"] == "union_tag_not_found":
            message = "missing 'kind'"
            loc = ["kind"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    if loc:
        context["field"] = ".".join(str(part) for part in loc)
    return message, context


def _check_references(
    workflow: Workflow, known_providers: Collection[str] | None
) -> list[tuple[str, dict[str, Any]]]:
    problems: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for operation in workflow.operations:
        if operation.id in seen:
            problems.append(("duplicate operation id", {"operation": operation.id, "field": "id"}))
        seen.add(operation.id)
        if operation.kind in SERVER_KINDS and operation.provider is None:
            problems.append(
                (
                    f"{operation.kind} needs a provider",
                    {"operation": operation.id, "field": "provider"},
                )
            )
        if (
            operation.provider is not None
            and known_providers is not None
            and operation.provider not in known_providers
        ):
            known = ", ".join(sorted(known_providers))
            problems.append(
                (
                    f"unknown provider '{operation.provider}' (known: {known})",
                    {"operation": operation.id, "field": "provider"},
                )
            )
    for dependant, upstream in workflow.dependencies.items():
        if dependant not in seen:
            problems.append(
                (f"unknown operation id '{dependant}'", {"field": f"dependencies.{dependant}"})
            )
        for upstream_id in upstream:
            if upstream_id not in seen:
                problems.append(
                    (
                        f"depends on unknown operation id '{upstream_id}'",
                        {"operation": dependant, "field": f"dependencies.{dependant}"},
                    )
                )
    for name in workflow.configuration.providers:
        if known_providers is not None and name not in known_providers:
            problems.append(
                (f"unknown provider '{name}'", {"field": f"configuration.providers.{name}"})
            )
    return problems


def _raise(problems: list[tuple[str, dict[str, Any]]], source: str | None) -> None:
    message, context = problems[0]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    errors = [{"message": m, **c} for m, c in problems]
    raise WorkflowError(message, file=source, errors=errors, **context)


def validate_workflow(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    known_providers: Collection[str] | None = None,
) -> Workflow:
    """A validated :class:`Workflow`, or a :class:`WorkflowError` naming file, operation, field.

    ``known_providers`` is passed by callers that can see the provider registry (the core cannot).
    """
    try:
        workflow = Workflow.model_validate(dict(data))
    except ValidationError as error:
        _raise([_describe(item, data) for item in error.errors()], source)
    problems = _check_references(workflow, known_providers)
    if problems:
        _raise(problems, source)
    return workflow


def load_workflow(
    source: str | Path | Mapping[str, Any] | Workflow,
    *,
    known_providers: Collection[str] | None = None,
) -> Workflow:
    """Load a workflow from a file path, a mapping, or pass a :class:`Workflow` through."""
    if isinstance(source, Workflow):
        return source
    if isinstance(source, Mapping):
        return validate_workflow(source, known_providers=known_providers)
    path = Path(source)
    return validate_workflow(
        read_spec_file(path), source=str(path), known_providers=known_providers
    )
