"""Two dicomd nodes on one PostgreSQL database behind HAProxy in TCP mode."""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from portal.models import Instance
from tests.conftest import free_port
from tests.databases import postgres_url
from tests.dicomd_process import (
    TOOL_TIMEOUT_SECONDS,
    Dicomd,
    add_identity,
    reload,
    start_dicomd,
    stop_dicomd,
    wait_for_end,
    wait_until_ready,
)
from tests.tools import dcmtk_environ, require_tool

pytestmark = [pytest.mark.dcmtk, pytest.mark.postgres]

SENDERS = 4
FILES_PER_SENDER = 10


@pytest.fixture
def postgres(environ):
    if postgres_url() is None:
        pytest.skip("needs PostgreSQL: set TEST_DATABASE_URL, as the PostgreSQL pass of .ci/run does")
    return environ


@pytest.fixture
def nodes(app, postgres, tmp_path):
    """Two dicomd nodes sharing the database and the data directory, each on its own ports."""
    servers = []
    try:
        for name in ("node-a", "node-b"):
            node_environ = {**postgres, "DICOMD_NODE_NAME": name, "DICOM_PORT": str(free_port()),
                            "DICOM_TLS_PORT": str(free_port())}
            log_path = tmp_path / f"{name}.log"
            server = Dicomd(start_dicomd(node_environ, log_path), log_path, int(node_environ["DICOM_PORT"]))
            servers.append(server)
            wait_until_ready(server)
        yield servers
    finally:
        for server in servers:
            stop_dicomd(server)


@pytest.fixture
def haproxy(nodes, tmp_path):
    """HAProxy in TCP mode on a loopback port, round-robin over the nodes' plain DICOM ports."""
    command = require_tool("haproxy", "haproxy")
    port = free_port()
    backends = "\n".join(f"    server {index} 127.0.0.1:{node.port}" for index, node in enumerate(nodes))
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend dicom
    bind 127.0.0.1:{port}
    default_backend dicomd
backend dicomd
    balance roundrobin
{backends}
""")
    process = subprocess.Popen([command, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=10)


def make_instances(directory: Path, count: int) -> list[Path]:
    """Write `count` copies of CT_small.dcm, each a new SOP instance in one new study."""
    directory.mkdir(parents=True)
    source = dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count):
        source.StudyInstanceUID = study
        source.SeriesInstanceUID = series
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        path = directory / f"{number}.dcm"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    command = require_tool("storescu", "dcmtk")
    return subprocess.run([command, "-aet", "ECHO1", "-aec", "PACS", "127.0.0.1", str(port), *map(str, files)],
                          env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)


def echo(port: int) -> subprocess.CompletedProcess:
    command = require_tool("echoscu", "dcmtk")
    return subprocess.run([command, "-aet", "ECHO1", "-aec", "PACS", "127.0.0.1", str(port)],
                          env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)


def test_two_nodes_behind_haproxy(nodes, haproxy, session, admin_client, settings, tmp_path):
    identity = add_identity(session, "ECHO1")
    batches = [make_instances(tmp_path / f"sender{number}", FILES_PER_SENDER) for number in range(SENDERS)]

    with ThreadPoolExecutor(SENDERS) as pool:
        results = list(pool.map(lambda files: send(haproxy, files), batches))
    for result in results:
        assert result.returncode == 0, result.stderr

    rows = wait_for_end(session)
    assert len(rows) == SENDERS
    assert {row.local_port for row in rows} == {node.port for node in nodes}
    assert session.scalar(select(func.count()).select_from(Instance)) == SENDERS * FILES_PER_SENDER
    for files in batches:
        for path in files:
            sent = dcmread(path)
            stored = settings.storage_dir / sent.StudyInstanceUID / sent.SeriesInstanceUID / f"{sent.SOPInstanceUID}.dcm"
            assert stored.is_file()
            assert dcmread(stored).PixelData == sent.PixelData
    counted = reload(session, identity)
    assert counted.instances_received == SENDERS * FILES_PER_SENDER
    assert counted.associations_accepted == SENDERS

    # The portal's change reaches both nodes at their next association.
    identity_id = counted.id
    response = admin_client.post(f"/settings/devices/dicom/{identity_id}/enabled", data={"enabled": "false"})
    assert response.status_code == 302
    for _ in range(len(nodes)):
        assert echo(haproxy).returncode != 0
    rejected = [row for row in wait_for_end(session) if row.outcome == "rejected"]
    assert [row.reason for row in rejected] == ["identity_disabled"] * len(nodes)
    assert {row.local_port for row in rejected} == {node.port for node in nodes}


def test_heartbeats_per_node(nodes, admin_client):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
        panel = page.split('id="service-status"')[1].split("</section>")[0]
        if "node-a" in panel and "node-b" in panel:
            break
        time.sleep(0.5)
    assert "<td>node-a</td>" in panel
    assert "<td>node-b</td>" in panel
    for node in nodes:
        assert f"127.0.0.1:{node.port}" in panel
