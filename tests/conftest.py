"""Fixtures shared by every test: a temporary DATA_DIR with an upgraded database."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy.orm import Session

from portal import create_app
from portal.database import make_engine
from portal.extensions import db as flask_db
from portal.settings import Settings

from tests.databases import PASSWORD, open_databases

# The `dicomd` fixture: a real `dicomd run` process, for every test module.
from tests.dicomd_process import dicomd  # noqa: F401

def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def databases(tmp_path_factory):
    """Where test databases come from: SQLite copies, or PostgreSQL clones with TEST_DATABASE_URL."""
    source = open_databases(tmp_path_factory.mktemp("template"))
    yield source
    source.close()


@pytest.fixture
def environ(tmp_path, databases) -> dict[str, str]:
    """Environment variables for one isolated installation on loopback, with an upgraded database."""
    data_dir = tmp_path / "data"
    return {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": databases.provision(data_dir),
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


@pytest.fixture
def app(settings):
    """The portal app on a database at the latest revision, with users admin, support and clinician."""
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
