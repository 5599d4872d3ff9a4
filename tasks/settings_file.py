"""``config.set``: one dotted key in a TOML file, with the previous value kept for undo."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from provisioning.errors import OperationError
from provisioning.events import ConfigurationChanged, emit
from provisioning.rollback import RevertConfiguration
from provisioning.secrets import mask_secrets
from provisioning.spec import ConfigSetOperation
from tasks.context import RunContext
from tasks.files import write_atomically
from tasks.outcome import OperationOutput

_MISSING = object()


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _lookup(tree: dict[str, Any], parts: list[str]) -> Any:
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _assign(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _remove(tree: dict[str, Any], parts: list[str]) -> None:
    """Delete the key and any table it leaves empty."""
    chain = [tree]
    for part in parts[:-1]:
        child = chain[-1].get(part)
        if not isinstance(child, dict):
            return
        chain.append(child)
    chain[-1].pop(parts[-1], None)
    for depth in range(len(parts) - 1, 0, -1):
        if not chain[depth]:
            chain[depth - 1].pop(parts[depth - 1], None)


def set_value(context: RunContext, operation: ConfigSetOperation) -> OperationOutput:
    params = operation.params
    path = context.resolve_path(params.file)
    parts = params.key.split(".")
    file_existed = path.is_file()
    try:
        tree = _read(path)
        previous = _lookup(tree, parts)
        _assign(tree, parts, params.value)
        write_atomically(path, tomli_w.dumps(tree).encode("utf-8"), None)
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError) as error:
        raise OperationError(
            f"cannot set {params.key} in {path}: {error}", operation=operation.id, field="params"
        ) from None
    existed = previous is not _MISSING
    emit(
        ConfigurationChanged(
            workflow_id=context.workflow_id,
            flow_run_id=context.flow_run_id,
            source=str(path),
            key=params.key,
            old_value=previous if existed else None,
            new_value=params.value,
        )
    )
    undo = RevertConfiguration(
        file=str(path),
        key=params.key,
        previous_value=previous if existed else None,
        key_existed=existed,
        file_existed=file_existed,
    )
    return OperationOutput(
        output={
            "file": str(path),
            "key": params.key,
            "value": mask_secrets(params.key, params.value),
        },
        rollback=undo,
    )


def revert_value(action: RevertConfiguration) -> str:
    path = Path(action.file)
    parts = action.key.split(".")
    tree = _read(path)
    if action.key_existed:
        _assign(tree, parts, action.previous_value)
    else:
        _remove(tree, parts)
    if not tree and not action.file_existed:
        path.unlink(missing_ok=True)
        return f"removed {path}"
    write_atomically(path, tomli_w.dumps(tree).encode("utf-8"), None)
    return f"reverted {action.key} in {path}"
