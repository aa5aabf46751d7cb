"""Engine set-up and the schema revision check shared by both processes."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Integer primary keys are signed 32-bit in PostgreSQL, so no row id is larger.
MAX_ROW_ID = 2**31 - 1

# Milliseconds a SQLite writer waits for another process's lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 15000


class SchemaNotCurrent(RuntimeError):
    """The database is not at the latest migration revision."""


def engine_options(url: str) -> dict:
    """Return `create_engine` keyword arguments suited to the database in `url`."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    if backend == "postgresql":
        # The same bound on lock waits as SQLite's busy timeout, so a locked
        # table fails a request instead of holding a device indefinitely.
        return {"pool_pre_ping": True, "connect_args": {"options": f"-c lock_timeout={SQLITE_BUSY_TIMEOUT_MS}"}}
    return {"pool_pre_ping": True}


def configure_engine(engine: Engine) -> Engine:
    """Put SQLite connections in WAL mode, so the portal and dicomd can write at once."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def make_engine(url: str) -> Engine:
    ensure_sqlite_directory(url)
    return configure_engine(create_engine(url, **engine_options(url)))


def ensure_sqlite_directory(url: str) -> None:
    """Create the directory of a SQLite database file, and the file itself, readable only by its owner.

    SQLite would create the file with the process's umask, often 0644, and
    the database contains password and API token hashes. SQLite gives its -wal
    and -shm files the database file's mode. An existing file keeps its mode.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite opens an empty file as an empty database.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass


def _sqlite_on_connect(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL fsyncs the write-ahead log at each commit. With NORMAL a power loss
    # could undo commits that were already reported as done. dicomd's index
    # writes switch to NORMAL for their commit and fdatasync the log
    # themselves afterwards (dicomd.group_commit).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def head_revision() -> str:
    # Alembic is imported only where it is used, so that dicomd's workers,
    # which import this module for their engine, do not load it.
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema_current(engine: Engine) -> None:
    """Raise SchemaNotCurrent unless the database is at the latest revision."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        found = current or "an empty database"
        raise SchemaNotCurrent(
            f"the database at {engine.url.render_as_string(hide_password=True)} is at {found}, "
            f"not at the latest revision {head}: run `portal db upgrade` to upgrade it"
        )


def dialect_name(connection: Session | Connection) -> str:
    """Return the SQL dialect ("sqlite", "postgresql") that `connection` or a session speaks."""
    if isinstance(connection, Connection):
        return connection.dialect.name
    return connection.get_bind().dialect.name


def upsert(dialect: str, table: Table):
    """Return an INSERT on `table` that takes ON CONFLICT clauses in `dialect`.

    SQLite (3.24 and later) and PostgreSQL share the ON CONFLICT syntax, and
    SQLAlchemy offers it per dialect.
    """
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
