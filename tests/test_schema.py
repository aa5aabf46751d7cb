import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from portal.database import check_schema_current, current_revision, ensure_sqlite_directory, head_revision, make_engine
from portal.models import Base

ROOT = Path(__file__).resolve().parent.parent


def test_migrations_match_models(engine):
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgraded_database_is_current(engine):
    assert current_revision(engine) == head_revision()
    check_schema_current(engine)


def test_sqlite_uses_wal_and_busy_timeout(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("WAL and busy_timeout are SQLite settings")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        # 2 is FULL: each commit survives a power loss.
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_portal_refuses_old_schema(tmp_path):
    environ = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "run `portal db upgrade` to upgrade it" in result.stderr


def test_new_sqlite_database_private(tmp_path):
    database = tmp_path / "data" / "portal.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE probe (id INTEGER PRIMARY KEY)")
            connection.exec_driver_sql("INSERT INTO probe DEFAULT VALUES")
            assert Path(f"{database}-wal").stat().st_mode & 0o777 == 0o600
    finally:
        engine.dispose()

    assert database.stat().st_mode & 0o777 == 0o600


def test_existing_sqlite_database_keeps_mode(tmp_path):
    database = tmp_path / "portal.db"
    database.touch()
    database.chmod(0o640)

    ensure_sqlite_directory(f"sqlite:///{database}")

    assert database.stat().st_mode & 0o777 == 0o640
