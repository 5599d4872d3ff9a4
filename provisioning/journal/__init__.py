"""The durable record of every workflow: what it is, what ran, what it created, how to undo it.

Rollback and crash-safe resume both rest on this record, so it is written before and after every
side effect and each write is its own short transaction, committed before the call returns: a
process killed at any instant leaves the journal consistent and tells the next run exactly how far
the last one got.

The store is SQLite by default (one file in the state directory) and any SQL database SQLAlchemy
can reach by URL otherwise. ``records`` holds what callers read, ``tables`` the schema,
``database`` the engine set-up and ``store`` the :class:`Journal` itself.

This package is core: it must never import Prefect, providers, tasks or flows.
"""

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
from provisioning.journal.store import Journal

__all__ = [
    "Checkpoint",
    "ErrorInput",
    "Journal",
    "LockRecord",
    "OperationRecord",
    "OperationStatus",
    "ResourceRecord",
    "ResourceState",
    "RollbackEntry",
    "RollbackStatus",
    "WorkflowRecord",
    "WorkflowStatus",
]
