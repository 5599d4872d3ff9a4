"""What undoes each operation kind.

An operation's rollback action is computed *before* it changes anything (a file's previous bytes,
a setting's previous value) and pushed onto the workflow's rollback stack in the journal when the
operation completes. Actions are plain data so that another process (``provision rollback``) can
run them after a crash; the executor that needs providers lives in ``tasks.undo``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter


class DeleteResource(BaseModel):
    type: Literal["delete_resource"] = "delete_resource"
    provider: str
    resource_id: str
    key: str | None = None


class RestoreFile(BaseModel):
    """Write back ``previous_content`` (base64) and mode, or delete the file if it was new."""

    type: Literal["restore_file"] = "restore_file"
    path: str
    previous_content: str | None = None
    previous_mode: int | None = None


class RevertConfiguration(BaseModel):
    """Put back the previous value of ``key`` in ``file``, or remove what was added."""

    type: Literal["revert_configuration"] = "revert_configuration"
    file: str
    key: str
    previous_value: Any = None
    key_existed: bool
    file_existed: bool


class CustomAction(BaseModel):
    """A command's ``undo`` argv."""

    type: Literal["custom"] = "custom"
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float = 300.0


RollbackAction = Annotated[
    DeleteResource | RestoreFile | RevertConfiguration | CustomAction,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[RollbackAction] = TypeAdapter(RollbackAction)


def parse_action(data: dict[str, Any]) -> RollbackAction:
    return _ADAPTER.validate_python(data)


def describe(action: RollbackAction) -> str:
    """One line for plans, status tables and reports."""
    if isinstance(action, DeleteResource):
        return f"delete {action.provider} server {action.resource_id}"
    if isinstance(action, RestoreFile):
        verb = "delete" if action.previous_content is None else "restore"
        return f"{verb} file {action.path}"
    if isinstance(action, RevertConfiguration):
        verb = "revert" if action.key_existed else "remove"
        return f"{verb} {action.key} in {action.file}"
    return "run " + " ".join(action.argv)


#: What ``plan`` says each kind's rollback will be.
ROLLBACK_BY_KIND: dict[str, str | None] = {
    "server.create": "delete the server",
    "server.delete": None,
    "file.write": "restore the previous file (or delete it if new)",
    "config.set": "revert the previous value (or remove the key)",
    "command.run": "run its undo command",
}
