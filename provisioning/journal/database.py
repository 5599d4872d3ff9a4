"""The journal's connection to its database: SQLite tuned for crash safety and many threads.

For SQLite the file runs in WAL mode (readers never block the writer), and every write transaction
starts with ``BEGIN IMMEDIATE`` (so two writers queue on the busy timeout instead of failing with
"database is locked" when one upgrades a read lock). Other databases are used as SQLAlchemy
configures them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlalchemy.engine import URL, Connection, Engine

#: Execution option that marks a connection as a writer (it then begins ``IMMEDIATE``).
WRITE_OPTION = "journal_write"


def _dumps(value: Any) -> str:
    # Lenient on purpose: datetimes, paths and models in results become their JSON form.
    return json.dumps(value, default=to_jsonable_python, ensure_ascii=False)


def is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def create_engine(url: URL, busy_timeout: float) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, json_serializer=_dumps, pool_pre_ping=True)

    memory = is_memory(url)
    database = url.database or ""
    if not memory and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        json_serializer=_dumps,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
        # An in-memory database exists once per connection: share a single one.
        poolclass=sa.StaticPool if memory else sa.QueuePool,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (below) instead of pysqlite's implicit deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL keeps every commit through a killed process (what crash-safe
            # resume needs) and only risks the last commits on power loss; FULL's fsync per
            # commit made journal writes the engine's bottleneck (bench/README.md).
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")

    return engine


# -------------------------------------------------------------------------------------- journal
