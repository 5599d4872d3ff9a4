"""``command.run`` and custom undo actions: an argv list, never a shell string.

Exit status 75 (``EX_TEMPFAIL`` in sysexits.h, "try again later") and a timeout are transient:
the engine retries them with backoff. Any other non-zero status fails the operation for good.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from provisioning.errors import OperationError, TransientOperationError
from provisioning.rollback import CustomAction
from provisioning.spec import CommandRunOperation
from tasks.context import RunContext
from tasks.outcome import OperationOutput

EX_TEMPFAIL = 75
_TAIL = 2000


def _tail(text: str) -> str:
    return text[-_TAIL:]


def execute(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path | None,
    timeout: float,
    operation_id: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; a failure is an :class:`OperationError` carrying the command's last words."""
    try:
        completed = subprocess.run(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            timeout=timeout,
            capture_output=True,
            text=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TransientOperationError(
            f"command timed out after {timeout:g}s: {argv[0]}", operation=operation_id
        ) from None
    except OSError as error:
        raise OperationError(
            f"cannot run {argv[0]}: {error.strerror}", operation=operation_id, field="params.argv"
        ) from None
    if completed.returncode != 0:
        last = (completed.stderr.strip() or completed.stdout.strip()).splitlines()[-1:] or [""]
        error_class = (
            TransientOperationError if completed.returncode == EX_TEMPFAIL else OperationError
        )
        raise error_class(
            f"command exited with status {completed.returncode}: {last[0]}".rstrip(": "),
            operation=operation_id,
            exit_code=completed.returncode,
        )
    return completed


def run_command(context: RunContext, operation: CommandRunOperation) -> OperationOutput:
    params = operation.params
    cwd = (
        context.resolve_path(params.cwd)
        if params.cwd
        else Path(str(context.config.get("paths.base")))
    )
    completed = execute(
        params.argv, env=params.env, cwd=cwd, timeout=params.timeout, operation_id=operation.id
    )
    undo = (
        CustomAction(argv=params.undo, env=params.env, cwd=str(cwd), timeout=params.timeout)
        if params.undo
        else None
    )
    return OperationOutput(
        output={
            "exit_code": completed.returncode,
            "stdout": _tail(completed.stdout),
            "stderr": _tail(completed.stderr),
        },
        rollback=undo,
    )


def run_custom(action: CustomAction) -> str:
    cwd = Path(action.cwd) if action.cwd else None
    execute(action.argv, env=action.env, cwd=cwd, timeout=action.timeout)
    return "ran " + " ".join(action.argv)
