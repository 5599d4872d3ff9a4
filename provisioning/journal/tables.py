"""The journal's schema: one table per record kind, timestamps in UTC on every backend."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text, so we add UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()
_NAME = sa.String(255)
_STATUS = sa.String(32)


def _workflow_fk() -> sa.ForeignKey:
    return sa.ForeignKey("workflows.workflow_id", ondelete="CASCADE")


workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("workflow_id", _NAME, primary_key=True),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("status", _STATUS, nullable=False),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("error", sa.JSON(none_as_null=True)),
)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("workflow_id", _NAME, _workflow_fk(), primary_key=True),
    sa.Column("operation_id", _NAME, primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(64)),
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("status", _STATUS, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("result", sa.JSON(none_as_null=True)),
    sa.Column("error", sa.JSON(none_as_null=True)),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
)

resources = sa.Table(
    "resources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workflow_id", _NAME, _workflow_fk(), nullable=False, index=True),
    sa.Column("operation_id", _NAME, nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("resource_id", _NAME, nullable=False),
    sa.Column("key", sa.String(512), nullable=False, index=True),
    sa.Column("state", _STATUS, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("provider", "resource_id"),
    # Never reuse an id: a stale id must not address a newer row.
    sqlite_autoincrement=True,
)

rollback_stack = sa.Table(
    "rollback_stack",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workflow_id", _NAME, _workflow_fk(), nullable=False, index=True),
    sa.Column("operation_id", _NAME, nullable=False),
    sa.Column("action", sa.JSON, nullable=False),
    sa.Column("status", _STATUS, nullable=False),
    sa.Column("error", sa.JSON(none_as_null=True)),
    sa.Column("pushed_at", UTCDateTime, nullable=False),
    sa.Column("done_at", UTCDateTime),
    sqlite_autoincrement=True,
)

# No foreign key: a run may take the lock before it records the workflow.
locks = sa.Table(
    "locks",
    metadata,
    sa.Column("workflow_id", _NAME, primary_key=True),
    sa.Column("owner", _NAME, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("hostname", _NAME, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
)


# -------------------------------------------------------------------------------------- helpers
