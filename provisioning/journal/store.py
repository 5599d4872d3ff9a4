"""The :class:`Journal`: every read and write of the workflow record, each its own transaction.

Writers of one process take turns on a mutex so threads do not spin in SQLite's busy handler. On
other databases the writes that read before they write lock the workflow's row
(``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, get_args

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Row, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)

from provisioning.config import Config
from provisioning.errors import (
    ConfigurationError,
    ProvisioningError,
    ResourceNotFound,
    WorkflowLocked,
    WorkflowNotFound,
)
from provisioning.journal import tables
from provisioning.journal.database import WRITE_OPTION, create_engine, is_memory
from provisioning.journal.records import (
    Checkpoint,
    ErrorInput,
    LockRecord,
    OperationRecord,
    OperationStatus,
    ResourceRecord,
    ResourceState,
    RollbackEntry,
    RollbackStatus,
    WorkflowRecord,
    WorkflowStatus,
)

logger = logging.getLogger("provisioning.journal")

_FINISHED_OPERATION = {"succeeded", "failed", "not_run", "rolled_back"}
_T = TypeVar("_T")


def _now() -> datetime:
    return datetime.now(UTC)


def _error_json(error: ErrorInput) -> dict[str, Any] | None:
    """The envelope's error object (code, message, details) for whatever the caller has."""
    if error is None:
        return None
    if isinstance(error, ProvisioningError):
        return error.to_dict()
    if isinstance(error, BaseException):
        return {"code": type(error).__name__, "message": str(error), "details": {}}
    if isinstance(error, str):
        return {"code": "ERROR", "message": error, "details": {}}
    return dict(error)


def _check(value: str, allowed: Any, what: str) -> None:
    if value not in get_args(allowed):
        raise ValueError(
            f"unknown {what} {value!r}; expected one of {', '.join(get_args(allowed))}"
        )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet still answers ``kill(pid, 0)``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"


class Journal:
    """The workflow journal on one database (``Journal(url)``; ``from_state_dir`` for SQLite).

    Safe to share between threads and to open from several processes at once.
    """

    def __init__(
        self, url: str | URL, *, stale_after: float = 30.0, busy_timeout: float = 30.0
    ) -> None:
        self._stale_after = stale_after
        self._hostname = socket.gethostname()
        try:
            parsed = make_url(url)
        except ArgumentError as error:
            raise ConfigurationError(
                f"the journal database URL is not a valid SQLAlchemy URL: {error}",
                code="JOURNAL_URL_INVALID",
            ) from error
        self.url = parsed.render_as_string(hide_password=True)
        try:
            if parsed.get_dialect().is_async:
                raise ConfigurationError(
                    f"journal database URL {self.url}: use a synchronous driver, not"
                    f" {parsed.get_driver_name()!r}",
                    code="JOURNAL_URL_INVALID",
                )
            self._engine = create_engine(parsed, busy_timeout)
        except (NoSuchModuleError, ImportError) as error:
            raise ConfigurationError(
                f"journal database URL {self.url}: no such database driver ({error})",
                code="JOURNAL_URL_INVALID",
            ) from error
        sqlite = parsed.get_backend_name() == "sqlite"
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        # Writers of one process take turns; an in-memory database also serialises readers.
        self._write_mutex: AbstractContextManager[Any] = (
            threading.Lock() if sqlite else nullcontext()
        )
        self._read_mutex: AbstractContextManager[Any] = (
            self._write_mutex if sqlite and is_memory(parsed) else nullcontext()
        )
        try:
            with self._write() as conn:
                tables.metadata.create_all(conn)
        except OperationalError as error:
            self._engine.dispose()
            raise ConfigurationError(
                f"cannot open the journal at {self.url}: {error.orig}", code="JOURNAL_UNAVAILABLE"
            ) from error

    @classmethod
    def from_state_dir(cls, path: str | os.PathLike[str], **kwargs: float) -> Journal:
        """The default journal: ``journal.db`` in the state directory (created if missing)."""
        database = Path(path).expanduser().resolve() / "journal.db"
        return cls(URL.create("sqlite", database=str(database)), **kwargs)

    @classmethod
    def from_config(cls, config: Config) -> Journal:
        """The journal the configuration names (``[journal] url`` and ``lock_stale_after``)."""
        return cls(
            str(config.get("journal.url")),
            stale_after=float(config.get("journal.lock_stale_after", 30)),
        )

    def close(self) -> None:
        """Release the database connections (the journal is unusable afterwards)."""
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Journal({self.url!r})"

    # ---------------------------------------------------------------------------- transactions

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_mutex, self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._read_mutex, self._engine.connect() as conn:
            yield conn

    def _write_retrying(self, body: Callable[[Connection], _T]) -> _T:
        """Run ``body`` in a write transaction, again if a concurrent insert won the race.

        Only databases without whole-file write locks can race like this; SQLite never does.
        """
        for _ in range(2):
            try:
                with self._write() as conn:
                    return body(conn)
            except IntegrityError:
                logger.debug("journal write lost an insert race; retrying")
        with self._write() as conn:
            return body(conn)

    @staticmethod
    def _lock_workflow(conn: Connection, workflow_id: str) -> None:
        """Serialise writers of one workflow (FOR UPDATE; SQLite's IMMEDIATE already does)."""
        found = conn.execute(
            sa.select(tables.workflows.c.workflow_id)
            .where(tables.workflows.c.workflow_id == workflow_id)
            .with_for_update()
        ).first()
        if found is None:
            raise WorkflowNotFound(f"no workflow {workflow_id!r} in the journal")

    # ------------------------------------------------------------------------------- workflows

    def upsert_workflow(
        self, workflow_id: str, name: str, spec: Mapping[str, Any]
    ) -> WorkflowRecord:
        """Record a submitted spec; a known workflow keeps its status, generation and run id."""

        def body(conn: Connection) -> None:
            now = _now()
            updated = conn.execute(
                sa.update(tables.workflows)
                .where(tables.workflows.c.workflow_id == workflow_id)
                .values(name=name, spec=dict(spec), updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    sa.insert(tables.workflows).values(
                        workflow_id=workflow_id,
                        name=name,
                        spec=dict(spec),
                        status="pending",
                        flow_run_id=None,
                        created_at=now,
                        updated_at=now,
                        generation=0,
                        error=None,
                    )
                )

        self._write_retrying(body)
        return self._require_workflow(workflow_id)

    def set_workflow_status(
        self,
        workflow_id: str,
        status: WorkflowStatus,
        *,
        error: ErrorInput = None,
        flow_run_id: str | None = None,
    ) -> WorkflowRecord:
        """Set the status and its error (``None`` clears an old one); keep an unset run id."""
        _check(status, WorkflowStatus, "workflow status")
        values: dict[str, Any] = {
            "status": status,
            "error": _error_json(error),
            "updated_at": _now(),
        }
        if flow_run_id is not None:
            values["flow_run_id"] = flow_run_id
        with self._write() as conn:
            updated = conn.execute(
                sa.update(tables.workflows)
                .where(tables.workflows.c.workflow_id == workflow_id)
                .values(**values)
            ).rowcount
        if not updated:
            raise WorkflowNotFound(f"no workflow {workflow_id!r} in the journal")
        return self._require_workflow(workflow_id)

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.workflows).where(tables.workflows.c.workflow_id == workflow_id)
            ).first()
        return None if row is None else WorkflowRecord.model_validate(row._asdict())

    def _require_workflow(self, workflow_id: str) -> WorkflowRecord:
        record = self.get_workflow(workflow_id)
        if record is None:
            raise WorkflowNotFound(f"no workflow {workflow_id!r} in the journal")
        return record

    def list_workflows(
        self, status: WorkflowStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[WorkflowRecord]:
        """Newest first."""
        query = sa.select(tables.workflows).order_by(
            tables.workflows.c.created_at.desc(), tables.workflows.c.workflow_id.desc()
        )
        if status is not None:
            query = query.where(tables.workflows.c.status == status)
        with self._read() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [WorkflowRecord.model_validate(row._asdict()) for row in rows]

    def count_workflows(self, status: WorkflowStatus | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(tables.workflows)
        if status is not None:
            query = query.where(tables.workflows.c.status == status)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def new_generation(self, workflow_id: str) -> int:
        """Start a new generation (after a rollback) and return its number."""
        where = tables.workflows.c.workflow_id == workflow_id
        with self._write() as conn:
            updated = conn.execute(
                sa.update(tables.workflows)
                .where(where)
                .values(generation=tables.workflows.c.generation + 1, updated_at=_now())
            ).rowcount
            if not updated:
                raise WorkflowNotFound(f"no workflow {workflow_id!r} in the journal")
            return int(
                conn.execute(sa.select(tables.workflows.c.generation).where(where)).scalar_one()
            )

    # ------------------------------------------------------------------------------ operations

    def record_intent(
        self, workflow_id: str, operation_id: str, *, kind: str, provider: str | None, key: str
    ) -> int:
        """Note that an operation is about to act, before it does; return the attempt number."""
        with self._write() as conn:
            self._lock_workflow(conn, workflow_id)
            where = (tables.operations.c.workflow_id == workflow_id) & (
                tables.operations.c.operation_id == operation_id
            )
            previous = conn.execute(sa.select(tables.operations.c.attempt).where(where)).scalar()
            attempt = 1 if previous is None else int(previous) + 1
            values = {
                "kind": kind,
                "provider": provider,
                "key": key,
                "status": "intent",
                "attempt": attempt,
                "result": None,
                "error": None,
                "started_at": _now(),
                "finished_at": None,
            }
            if previous is None:
                conn.execute(
                    sa.insert(tables.operations).values(
                        workflow_id=workflow_id, operation_id=operation_id, **values
                    )
                )
            else:
                conn.execute(sa.update(tables.operations).where(where).values(**values))
        return attempt

    def record_outcome(
        self,
        workflow_id: str,
        operation_id: str,
        status: OperationStatus,
        *,
        result: Any = None,
        error: ErrorInput = None,
        kind: str | None = None,
        provider: str | None = None,
        rollback: Mapping[str, Any] | None = None,
    ) -> OperationRecord:
        """Record how an operation ended (or that it is running).

        An operation that never recorded an intent (one skipped as ``not_run``) is added with
        attempt 0; ``kind`` (and ``provider``) are then required to describe it. ``rollback`` is
        pushed in the same transaction (see :meth:`push_rollback`).
        """
        _check(status, OperationStatus, "operation status")
        finished = _now() if status in _FINISHED_OPERATION else None
        values = {"status": status, "result": result, "error": _error_json(error)}
        where = (tables.operations.c.workflow_id == workflow_id) & (
            tables.operations.c.operation_id == operation_id
        )
        with self._write() as conn:
            self._lock_workflow(conn, workflow_id)
            updated = conn.execute(
                sa.update(tables.operations).where(where).values(finished_at=finished, **values)
            ).rowcount
            if not updated:
                if kind is None:
                    raise ProvisioningError(
                        f"operation {operation_id!r} of workflow {workflow_id!r} has no recorded"
                        " intent; pass kind= to record its outcome",
                        code="OPERATION_NOT_FOUND",
                        operation=operation_id,
                    )
                conn.execute(
                    sa.insert(tables.operations).values(
                        workflow_id=workflow_id,
                        operation_id=operation_id,
                        kind=kind,
                        provider=provider,
                        key=f"{workflow_id}/{operation_id}",
                        attempt=0,
                        started_at=None,
                        finished_at=finished,
                        **values,
                    )
                )
            if rollback is not None:
                self._push_rollback(conn, workflow_id, operation_id, rollback)
            row = conn.execute(sa.select(tables.operations).where(where)).one()
        return OperationRecord.model_validate(row._asdict())

    def get_operation(self, workflow_id: str, operation_id: str) -> OperationRecord | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.operations).where(
                    (tables.operations.c.workflow_id == workflow_id)
                    & (tables.operations.c.operation_id == operation_id)
                )
            ).first()
        return None if row is None else OperationRecord.model_validate(row._asdict())

    def operations(self, workflow_id: str) -> list[OperationRecord]:
        """The workflow's operations in the order they started (never-started ones last)."""
        with self._read() as conn:
            rows = self._operation_rows(conn, workflow_id)
        return [OperationRecord.model_validate(row._asdict()) for row in rows]

    @staticmethod
    def _operation_rows(conn: Connection, workflow_id: str) -> list[Row[Any]]:
        return list(
            conn.execute(
                sa.select(tables.operations)
                .where(tables.operations.c.workflow_id == workflow_id)
                .order_by(
                    sa.nulls_last(tables.operations.c.started_at), tables.operations.c.operation_id
                )
            ).all()
        )

    def reset_operations(self, workflow_id: str) -> int:
        """Make every operation pending again (a fresh run after a rollback); return the count."""
        with self._write() as conn:
            self._lock_workflow(conn, workflow_id)
            return conn.execute(
                sa.update(tables.operations)
                .where(tables.operations.c.workflow_id == workflow_id)
                .values(
                    status="pending",
                    attempt=0,
                    result=None,
                    error=None,
                    started_at=None,
                    finished_at=None,
                )
            ).rowcount

    # ------------------------------------------------------------------------------- resources

    def record_resource(
        self,
        workflow_id: str,
        operation_id: str,
        *,
        provider: str,
        resource_id: str,
        key: str,
        state: ResourceState = "present",
        rollback: Mapping[str, Any] | None = None,
    ) -> ResourceRecord:
        """Remember a resource the workflow created; recording it again only updates its state.

        ``rollback`` (how to undo it) is pushed in the same transaction.
        """
        _check(state, ResourceState, "resource state")

        def body(conn: Connection) -> None:
            self._lock_workflow(conn, workflow_id)
            now = _now()
            updated = conn.execute(
                sa.update(tables.resources)
                .where(
                    (tables.resources.c.provider == provider)
                    & (tables.resources.c.resource_id == resource_id)
                )
                .values(state=state, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    sa.insert(tables.resources).values(
                        workflow_id=workflow_id,
                        operation_id=operation_id,
                        provider=provider,
                        resource_id=resource_id,
                        key=key,
                        state=state,
                        created_at=now,
                        updated_at=now,
                    )
                )
            if rollback is not None:
                self._push_rollback(conn, workflow_id, operation_id, rollback)

        self._write_retrying(body)
        return self._require_resource(provider, resource_id)

    def set_resource_state(
        self, provider: str, resource_id: str, state: ResourceState
    ) -> ResourceRecord:
        _check(state, ResourceState, "resource state")
        with self._write() as conn:
            updated = conn.execute(
                sa.update(tables.resources)
                .where(
                    (tables.resources.c.provider == provider)
                    & (tables.resources.c.resource_id == resource_id)
                )
                .values(state=state, updated_at=_now())
            ).rowcount
        if not updated:
            raise _resource_not_found(provider, resource_id)
        return self._require_resource(provider, resource_id)

    def _require_resource(self, provider: str, resource_id: str) -> ResourceRecord:
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.resources).where(
                    (tables.resources.c.provider == provider)
                    & (tables.resources.c.resource_id == resource_id)
                )
            ).first()
        if row is None:
            raise _resource_not_found(provider, resource_id)
        return ResourceRecord.model_validate(row._asdict())

    def resources(
        self,
        workflow_id: str | None = None,
        *,
        provider: str | None = None,
        include_deleted: bool = False,
    ) -> list[ResourceRecord]:
        """Resources in the order they were recorded."""
        query = sa.select(tables.resources).order_by(tables.resources.c.id)
        if workflow_id is not None:
            query = query.where(tables.resources.c.workflow_id == workflow_id)
        if provider is not None:
            query = query.where(tables.resources.c.provider == provider)
        if not include_deleted:
            query = query.where(tables.resources.c.state != "deleted")
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [ResourceRecord.model_validate(row._asdict()) for row in rows]

    def resource_by_key(self, key: str) -> ResourceRecord | None:
        """The newest resource created under an idempotency key that is not deleted.

        A deleted one does not count: a resumed run must then create the resource again.
        """
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.resources)
                .where((tables.resources.c.key == key) & (tables.resources.c.state != "deleted"))
                .order_by(tables.resources.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else ResourceRecord.model_validate(row._asdict())

    def key_may_exist(self, workflow_id: str, operation_id: str, key: str) -> bool:
        """Whether a provider may already hold a resource carrying ``key``.

        False only on the operation's first recorded attempt with no live resource recorded under
        the key: the intent is committed before any provider call, so no earlier call can have
        carried the key, and a create may skip asking the provider for it. A retry, a resume or a
        re-run all count a further attempt, which makes this True.
        """
        with self._read() as conn:
            attempt = conn.execute(
                sa.select(tables.operations.c.attempt).where(
                    (tables.operations.c.workflow_id == workflow_id)
                    & (tables.operations.c.operation_id == operation_id)
                )
            ).scalar()
            if attempt is None or int(attempt) > 1:
                return True
            live = conn.execute(
                sa.select(tables.resources.c.id)
                .where((tables.resources.c.key == key) & (tables.resources.c.state != "deleted"))
                .limit(1)
            ).first()
        return live is not None

    def owned_keys(self, provider: str | None = None) -> set[str]:
        """Idempotency keys the orphan sweep must spare.

        Those of every resource not deleted, and those of operations a run may still adopt: an
        intent with no outcome yet (a live run, or a killed one that ``resume`` will finish), and
        a failed operation of a workflow kept for resume (its create may have reached the
        provider before the answer was lost).
        """
        resources = sa.select(tables.resources.c.key).where(tables.resources.c.state != "deleted")
        in_flight = (
            sa.select(tables.operations.c.key)
            .join(tables.workflows)
            .where(
                tables.operations.c.status.in_(("intent", "running"))
                | (
                    (tables.operations.c.status == "failed")
                    & tables.workflows.c.status.in_(("running", "partial"))
                )
            )
        )
        if provider is not None:
            resources = resources.where(tables.resources.c.provider == provider)
            in_flight = in_flight.where(tables.operations.c.provider == provider)
        with self._read() as conn:
            return set(conn.execute(sa.union(resources, in_flight)).scalars())

    # -------------------------------------------------------------------------- rollback stack

    def push_rollback(self, workflow_id: str, operation_id: str, action: Mapping[str, Any]) -> int:
        """Push an operation's undo action; return its entry id.

        Idempotent while the entry is pending: a hook that fires twice gets the first id back.
        """
        with self._write() as conn:
            self._lock_workflow(conn, workflow_id)
            return self._push_rollback(conn, workflow_id, operation_id, action)

    @staticmethod
    def _push_rollback(
        conn: Connection, workflow_id: str, operation_id: str, action: Mapping[str, Any]
    ) -> int:
        if "type" not in action:
            raise ValueError(f"rollback action for {operation_id!r} has no 'type': {dict(action)}")
        pending = (
            sa.select(tables.rollback_stack.c.id)
            .where(
                (tables.rollback_stack.c.workflow_id == workflow_id)
                & (tables.rollback_stack.c.operation_id == operation_id)
                & (tables.rollback_stack.c.status == "pending")
            )
            .order_by(tables.rollback_stack.c.id)
            .limit(1)
        )
        existing = conn.execute(pending).scalar()
        if existing is None:
            conn.execute(
                sa.insert(tables.rollback_stack).values(
                    workflow_id=workflow_id,
                    operation_id=operation_id,
                    action=dict(action),
                    status="pending",
                    error=None,
                    pushed_at=_now(),
                    done_at=None,
                )
            )
            existing = conn.execute(pending).scalar_one()
        return int(existing)

    def rollback_stack(
        self, workflow_id: str, status: RollbackStatus | None = "pending"
    ) -> list[RollbackEntry]:
        """Entries with ``status`` (all if ``None``), top of the stack (last pushed) first."""
        query = (
            sa.select(tables.rollback_stack)
            .where(tables.rollback_stack.c.workflow_id == workflow_id)
            .order_by(tables.rollback_stack.c.id.desc())
        )
        if status is not None:
            query = query.where(tables.rollback_stack.c.status == status)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [RollbackEntry.model_validate(row._asdict()) for row in rows]

    def mark_rollback(
        self, entry_id: int, status: RollbackStatus, error: ErrorInput = None
    ) -> RollbackEntry:
        """Record what happened to an entry (``pending`` puts it back on the stack)."""
        _check(status, RollbackStatus, "rollback status")
        done_at = None if status == "pending" else _now()
        with self._write() as conn:
            conn.execute(
                sa.update(tables.rollback_stack)
                .where(tables.rollback_stack.c.id == entry_id)
                .values(status=status, error=_error_json(error), done_at=done_at)
            )
            row = conn.execute(
                sa.select(tables.rollback_stack).where(tables.rollback_stack.c.id == entry_id)
            ).first()
        if row is None:
            raise ProvisioningError(
                f"no rollback entry {entry_id} in the journal", code="ROLLBACK_ENTRY_NOT_FOUND"
            )
        return RollbackEntry.model_validate(row._asdict())

    def clear_rollback(self, workflow_id: str) -> int:
        """Drop the workflow's whole stack (before a fresh run); return how many entries went."""
        with self._write() as conn:
            return conn.execute(
                sa.delete(tables.rollback_stack).where(
                    tables.rollback_stack.c.workflow_id == workflow_id
                )
            ).rowcount

    # ---------------------------------------------------------------------------------- locks

    @contextmanager
    def lock(self, workflow_id: str, owner: str | None = None) -> Iterator[LockRecord]:
        """Hold the workflow exclusively (one run or resume at a time, across processes).

        Raises ``WorkflowLocked`` naming the holder if a live one has it. A holder is dead when
        its pid is gone on this host, or when its heartbeat is older than ``stale_after``
        seconds (another host, or a hung process): its lock is then taken over.
        """
        owner = owner or f"{self._hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        record = self._acquire(workflow_id, owner)
        heartbeat = _Heartbeat(self, workflow_id, owner, self._stale_after / 3)
        heartbeat.start()
        try:
            yield record
        finally:
            heartbeat.stop()
            with self._write() as conn:
                conn.execute(
                    sa.delete(tables.locks).where(
                        (tables.locks.c.workflow_id == workflow_id)
                        & (tables.locks.c.owner == owner)
                    )
                )

    def lock_holder(self, workflow_id: str) -> LockRecord | None:
        """Who holds the workflow's lock row (alive or not), for status displays."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.locks).where(tables.locks.c.workflow_id == workflow_id)
            ).first()
        return None if row is None else LockRecord.model_validate(row._asdict())

    def _acquire(self, workflow_id: str, owner: str) -> LockRecord:
        for _ in range(3):
            try:
                with self._write() as conn:
                    record = self._try_acquire(conn, workflow_id, owner)
            except IntegrityError:  # another process inserted the row first: look again
                continue
            if record is not None:
                return record
        raise WorkflowLocked(
            f"workflow {workflow_id!r} is contended: its lock changed hands while we took it",
            workflow=workflow_id,
        )

    def _try_acquire(self, conn: Connection, workflow_id: str, owner: str) -> LockRecord | None:
        """Take the lock in one transaction; ``None`` if a concurrent taker won a race."""
        now = _now()
        mine = LockRecord(
            workflow_id=workflow_id,
            owner=owner,
            pid=os.getpid(),
            hostname=self._hostname,
            acquired_at=now,
            heartbeat_at=now,
        )
        row = conn.execute(
            sa.select(tables.locks).where(tables.locks.c.workflow_id == workflow_id)
        ).first()
        if row is None:
            conn.execute(sa.insert(tables.locks).values(**mine.model_dump()))
            return mine
        holder = LockRecord.model_validate(row._asdict())
        if not self._is_stale(holder, now):
            raise WorkflowLocked(
                f"workflow {workflow_id!r} is locked by pid {holder.pid} on {holder.hostname}"
                f" since {holder.acquired_at.isoformat(timespec='seconds')}"
                f" (owner {holder.owner})",
                workflow=workflow_id,
                pid=holder.pid,
                hostname=holder.hostname,
            )
        taken = conn.execute(
            sa.update(tables.locks)
            .where(
                (tables.locks.c.workflow_id == workflow_id)
                & (tables.locks.c.owner == holder.owner)
                & (tables.locks.c.heartbeat_at == holder.heartbeat_at)
            )
            .values(**mine.model_dump(exclude={"workflow_id"}))
        ).rowcount
        if not taken:
            return None
        logger.warning(
            "took over the stale lock of workflow %r from pid %s on %s (last heartbeat %s)",
            workflow_id,
            holder.pid,
            holder.hostname,
            holder.heartbeat_at.isoformat(),
        )
        return mine

    def _is_stale(self, holder: LockRecord, now: datetime) -> bool:
        if holder.hostname == self._hostname and not _pid_alive(holder.pid):
            return True
        return (now - holder.heartbeat_at).total_seconds() > self._stale_after

    def _beat(self, workflow_id: str, owner: str) -> bool:
        """Refresh our heartbeat; ``False`` if the lock is no longer ours."""
        with self._write() as conn:
            return bool(
                conn.execute(
                    sa.update(tables.locks)
                    .where(
                        (tables.locks.c.workflow_id == workflow_id)
                        & (tables.locks.c.owner == owner)
                    )
                    .values(heartbeat_at=_now())
                ).rowcount
            )

    # ----------------------------------------------------------------------------- checkpoint

    def checkpoint(self, workflow_id: str) -> Checkpoint:
        """How far the workflow got, read in one consistent snapshot."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.workflows).where(tables.workflows.c.workflow_id == workflow_id)
            ).first()
            if row is None:
                raise WorkflowNotFound(f"no workflow {workflow_id!r} in the journal")
            workflow = WorkflowRecord.model_validate(row._asdict())
            operations = [
                OperationRecord.model_validate(op._asdict())
                for op in self._operation_rows(conn, workflow_id)
            ]
            resource_count = conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.resources)
                .where(
                    (tables.resources.c.workflow_id == workflow_id)
                    & (tables.resources.c.state != "deleted")
                )
            ).scalar_one()
            rollback_depth = conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.rollback_stack)
                .where(
                    (tables.rollback_stack.c.workflow_id == workflow_id)
                    & (tables.rollback_stack.c.status == "pending")
                )
            ).scalar_one()
        completed = sorted(
            (op for op in operations if op.status == "succeeded" and op.finished_at is not None),
            key=lambda op: (op.finished_at, op.operation_id),
        )
        return Checkpoint(
            workflow_id=workflow_id,
            step=len(completed),
            completed_operations=[op.operation_id for op in completed],
            current_state={
                "status": workflow.status,
                "operations": {op.operation_id: op.status for op in operations},
            },
            metadata={
                "name": workflow.name,
                "generation": workflow.generation,
                "flow_run_id": workflow.flow_run_id,
                "resource_count": int(resource_count),
                "rollback_depth": int(rollback_depth),
            },
            timestamp=_now(),
        )


def _resource_not_found(provider: str, resource_id: str) -> ResourceNotFound:
    return ResourceNotFound(f"resource {resource_id!r} is not in the journal", provider=provider)


class _Heartbeat(threading.Thread):
    """Keeps a held lock fresh so that only a dead or hung holder ever looks stale."""

    def __init__(self, journal: Journal, workflow_id: str, owner: str, interval: float) -> None:
        super().__init__(name=f"journal-heartbeat-{workflow_id}", daemon=True)
        self._journal = journal
        self._workflow_id = workflow_id
        self._owner = owner
        self._interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            try:
                if not self._journal._beat(self._workflow_id, self._owner):
                    logger.warning(
                        "lost the lock of workflow %r: another process took it over",
                        self._workflow_id,
                    )
                    return
            except SQLAlchemyError as error:  # keep beating; the next one may get through
                logger.warning("journal heartbeat for %r failed: %s", self._workflow_id, error)

    def stop(self) -> None:
        self._halt.set()
        self.join()
