"""Fixtures shared by every test: a temporary DATA_DIR with an upgraded SQLite database."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from flask_migrate import upgrade
from sqlalchemy import text
from sqlalchemy.orm import Session

from portal import create_app
from portal.database import make_engine
from portal.extensions import db as flask_db
from portal.settings import Settings
from portal.users import create_user

PASSWORD = "correct-horse-battery"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture
def environ(tmp_path) -> dict[str, str]:
    """Environment variables for one isolated installation on loopback."""
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "DICOM_HOST": "127.0.0.1",
        "DICOM_PORT": str(free_port()),
        "DICOM_TLS_PORT": str(free_port()),
        "DICOM_AE_TITLE": "PACS",
        "DICOMD_WORKERS": "1",
        "PORTAL_PORT": str(free_port()),
    }


@pytest.fixture
def settings(environ) -> Settings:
    return Settings.from_env(environ)


@pytest.fixture(scope="session")
def template_database(tmp_path_factory) -> Path:
    """A SQLite file upgraded once per run, with one user per default role.

    Upgrading and hashing passwords for every test would dominate the run time,
    so each test gets a copy of this file.
    """
    data_dir = tmp_path_factory.mktemp("template")
    app = create_app(Settings.from_env({"DATA_DIR": str(data_dir)}), TESTING=True)
    with app.app_context():
        upgrade()
        for username, role in (("admin", "Administrator"), ("support", "Support"), ("clinician", "Clinician")):
            create_user(flask_db.session, username, role, PASSWORD)
        flask_db.session.commit()
        flask_db.session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        flask_db.engine.dispose()
    return data_dir / "portal.db"


@pytest.fixture
def app(settings, template_database):
    """The portal app on a database at the latest revision, with users admin, support and clinician."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template_database, settings.data_dir / "portal.db")
    app = create_app(settings, TESTING=True, WTF_CSRF_ENABLED=False)
    yield app
    with app.app_context():
        flask_db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def client_factory(app):
    """Make further clients of the same app, each with its own cookies."""
    return app.test_client


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def engine(app, settings):
    """A plain SQLAlchemy engine on the same database, as dicomd uses it."""
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    with Session(engine) as session:
        yield session


def login(client, username: str = "admin", password: str = PASSWORD):
    return client.post("/login", data={"username": username, "password": password})


@pytest.fixture
def admin_client(client):
    response = login(client)
    assert response.status_code == 302
    return client
