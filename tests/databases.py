"""Test databases: SQLite files by default, PostgreSQL databases when TEST_DATABASE_URL is set.

TEST_DATABASE_URL names a PostgreSQL server and a maintenance database the
tests may connect to, for example
`postgresql+psycopg://pacs@127.0.0.1:5432/postgres`; the role needs CREATEDB.
Each test then gets its own database, cloned from a template that is upgraded
once per run.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path

from flask_migrate import upgrade
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from portal import create_app
from portal.extensions import db as flask_db
from portal.settings import Settings
from portal.users import create_user

PASSWORD = "correct-horse-battery"
DEFAULT_USERS = (("admin", "Administrator"), ("support", "Support"), ("clinician", "Clinician"))


def postgres_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


def _seed(database_url: str, data_dir: Path) -> None:
    """Upgrade the database at `database_url` and add one user per default role."""
    app = create_app(Settings.from_env({"DATA_DIR": str(data_dir), "DATABASE_URL": database_url}), TESTING=True)
    with app.app_context():
        upgrade()
        for username, role in DEFAULT_USERS:
            create_user(flask_db.session, username, role, PASSWORD)
        flask_db.session.commit()
        if flask_db.engine.dialect.name == "sqlite":
            flask_db.session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        flask_db.engine.dispose()


class SQLiteDatabases:
    """Copies of one upgraded SQLite file."""

    def __init__(self, work_dir: Path):
        self.template = work_dir / "portal.db"
        _seed(f"sqlite:///{self.template}", work_dir)

    def provision(self, data_dir: Path) -> str:
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template, data_dir / "portal.db")
        return f"sqlite:///{data_dir / 'portal.db'}"

    def empty(self, data_dir: Path) -> str:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{data_dir / 'empty.db'}"

    def close(self) -> None:
        pass


class PostgresDatabases:
    """Databases cloned from one upgraded template database on a PostgreSQL server."""

    def __init__(self, maintenance_url: str, work_dir: Path):
        self.url = make_url(maintenance_url)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        self.created: list[str] = []
        self.template = self._create(f"pacs_template_{uuid.uuid4().hex[:12]}")
        _seed(self._url_of(self.template), work_dir)

    def provision(self, data_dir: Path) -> str:
        data_dir.mkdir(parents=True, exist_ok=True)
        return self._url_of(self._create(f"pacs_test_{uuid.uuid4().hex[:12]}", template=self.template))

    def empty(self, data_dir: Path) -> str:
        data_dir.mkdir(parents=True, exist_ok=True)
        return self._url_of(self._create(f"pacs_empty_{uuid.uuid4().hex[:12]}"))

    def close(self) -> None:
        """Drop the databases of this run; one still in use is left behind with a warning."""
        with self.admin.connect() as connection:
            for name in reversed(self.created):
                try:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                except SQLAlchemyError as error:
                    # FORCE may not end a session of another role, such as an autovacuum worker.
                    warnings.warn(f"test database {name} was not dropped: {error}", stacklevel=1)
        self.admin.dispose()

    def _create(self, name: str, template: str | None = None) -> str:
        statement = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with self.admin.connect() as connection:
            connection.execute(text(statement))
        self.created.append(name)
        return name

    def _url_of(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)


def open_databases(work_dir: Path) -> SQLiteDatabases | PostgresDatabases:
    url = postgres_url()
    return PostgresDatabases(url, work_dir) if url else SQLiteDatabases(work_dir)
