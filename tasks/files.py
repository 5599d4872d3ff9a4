"""``file.write`` and its undo: the previous bytes and mode are kept before writing."""

from __future__ import annotations

import base64
import os
import stat
import uuid
from pathlib import Path

from provisioning.errors import OperationError
from provisioning.rollback import RestoreFile
from provisioning.spec import FileWriteOperation
from tasks.context import RunContext
from tasks.outcome import OperationOutput


def write_atomically(path: Path, data: bytes, mode: int | None) -> None:
    """Replace ``path`` in one rename, so a crash leaves the old or the new file, never half.

    Without ``mode`` an existing file keeps its mode and a new one gets the umask's, as with a
    plain write (``mkstemp`` would make every file private, 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None and path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_file(context: RunContext, operation: FileWriteOperation) -> OperationOutput:
    params = operation.params
    path = context.resolve_path(params.path)
    try:
        if path.is_file():
            previous = path.read_bytes()
            undo = RestoreFile(
                path=str(path),
                previous_content=base64.b64encode(previous).decode("ascii"),
                previous_mode=stat.S_IMODE(path.stat().st_mode),
            )
        else:
            undo = RestoreFile(path=str(path))
        mode = int(params.mode, 8) if params.mode else None
        write_atomically(path, params.content.encode("utf-8"), mode)
    except OSError as error:
        raise OperationError(
            f"cannot write {path}: {error.strerror}", operation=operation.id, field="params.path"
        ) from None
    return OperationOutput(
        output={"path": str(path), "bytes": len(params.content.encode("utf-8"))}, rollback=undo
    )


def restore_file(action: RestoreFile) -> str:
    path = Path(action.path)
    if action.previous_content is None:
        path.unlink(missing_ok=True)
        return f"deleted {path}"
    write_atomically(path, base64.b64decode(action.previous_content), action.previous_mode)
    return f"restored {path}"
