import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from portal.database import check_schema_current, current_revision, head_revision
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
