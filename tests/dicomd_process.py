"""A real `dicomd run` process for tests, and DCMTK tools that talk to it on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.identities.service import create_identity
from portal.models import Association, DicomIdentity
from tests.tools import dcmtk_environ, require_tool

DICOMD = Path(sys.executable).parent / "dicomd"
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30
TOOL_TIMEOUT_SECONDS = 60

class Dicomd:
    """A running `dicomd run` process and what it logged."""

    def __init__(self, process: subprocess.Popen, log_path: Path, port: int, host: str = "127.0.0.1"):
        self.process = process
        self.log_path = log_path
        self.port = port
        self.host = host

    def log(self) -> str:
        return self.log_path.read_text()


def start_dicomd(environ: dict[str, str], log_path: Path, *options: str) -> subprocess.Popen:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [str(DICOMD), "run", *options],
            env={**os.environ, **environ},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def wait_until_ready(server: Dicomd) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"dicomd exited early:\n{server.log()}"
        if "dicomd ready" in server.log():
            with socket.create_connection((server.host, server.port), timeout=1):
                return
        time.sleep(0.1)
    pytest.fail(f"dicomd was not ready within {START_TIMEOUT_SECONDS} seconds:\n{server.log()}")


@pytest.fixture
def dicomd(app, environ, tmp_path):
    """`dicomd run` on the upgraded database of `app`; stopped with SIGTERM, which must exit 0."""
    log_path = tmp_path / "dicomd.log"
    server = Dicomd(start_dicomd(environ, log_path), log_path, int(environ["DICOM_PORT"]))
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_dicomd(server)


def stop_dicomd(server: Dicomd) -> None:
    """Stop dicomd with SIGTERM and check that it exits 0 after logging its stop."""
    server.process.send_signal(signal.SIGTERM)
    try:
        exit_code = server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(f"dicomd did not stop within {STOP_TIMEOUT_SECONDS} seconds:\n{server.log()}")
    assert exit_code == 0, server.log()
    assert "dicomd stopped" in server.log()


def add_identity(session: Session, ae_title: str, **settings) -> DicomIdentity:
    identity = create_identity(session, name=f"Device {ae_title}", ae_title=ae_title, **settings)
    session.commit()
    return identity


def echoscu(port: int, calling: str, called: str = "PACS") -> subprocess.CompletedProcess:
    command = require_tool("echoscu", "dcmtk")
    return subprocess.run(
        [command, "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS,
    )


def storescu(port: int, calling: str, files: list[Path], *options: str) -> subprocess.CompletedProcess:
    command = require_tool("storescu", "dcmtk")
    return subprocess.run(
        [command, "-v", *options, "-aet", calling, "-aec", "PACS", "127.0.0.1", str(port), *map(str, files)],
        env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS,
    )


def associations(session: Session) -> list[Association]:
    session.expire_all()
    return list(session.scalars(select(Association).order_by(Association.id)))


def reload(session: Session, identity: DicomIdentity) -> DicomIdentity:
    session.expire_all()
    return session.get(DicomIdentity, identity.id)


def wait_for_end(session: Session) -> list[Association]:
    """Return the association rows once every one has an end time; release is recorded after the peer leaves."""
    deadline = time.monotonic() + 10
    rows = associations(session)
    while any(row.ended_at is None for row in rows) and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = associations(session)
    return rows
