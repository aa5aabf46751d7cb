"""Faults during transfers: aborts, resets, killed workers, a full disk, a locked database, limits and timeouts.

Every test runs a real `dicomd run` on loopback. After each fault, every
instance acknowledged with success is on disk and identical to what was
sent, nothing else is at a final path, and the association log records
what happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time

import pytest
from sqlalchemy import select

from portal.models import Instance
from tests.dicomd_process import (
    Dicomd,
    add_identity,
    associations,
    echoscu,
    start_dicomd,
    stop_dicomd,
    wait_for_end,
    wait_until_ready,
)
from tests.reliability_tools import (
    association_request_pdu,
    break_after_pdus,
    final_files,
    final_path,
    incoming_files,
    make_instance,
    pause_between_pdus,
    read_pdu,
    sender,
    stored_identically,
    wait_for,
    worker_pids,
)

LARGE_INSTANCE_BYTES = 24 * 1024 * 1024
WAIT_SECONDS = 30
# A worker that dies sooner than this after its start stops dicomd instead of
# being restarted (MIN_WORKER_UPTIME_SECONDS in dicomd.supervisor).
WORKER_UPTIME_SECONDS = 10.5


@pytest.fixture
def environ(environ):
    """Short timeouts and small limits, so that faults show within seconds."""
    return {
        **environ,
        "DICOM_ACSE_TIMEOUT": "2",
        "DICOM_NETWORK_TIMEOUT": "5",
        "DICOMD_STOP_GRACE_SECONDS": "2",
        "DICOMD_MAX_ASSOCIATIONS": "3",
        "DICOMD_MAX_ASSOCIATIONS_PER_IDENTITY": "2",
    }


def store(port: int, calling: str, datasets) -> list[int | None]:
    """Send `datasets` on one association; return each C-STORE status, None where no response came."""
    assoc = sender(calling).associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, f"association from {calling} was not accepted"
    statuses = []
    for dataset in datasets:
        response = assoc.send_c_store(dataset)
        statuses.append(response.Status if "Status" in response else None)
    assoc.release()
    return statuses


def check_storage(storage_dir, acknowledged) -> None:
    """Every acknowledged instance is stored identically, and nothing else is at a final path."""
    for dataset in acknowledged:
        assert stored_identically(storage_dir, dataset), f"{dataset.SOPInstanceUID} was acknowledged but is not stored"
    assert final_files(storage_dir) == {final_path(storage_dir, dataset) for dataset in acknowledged}


@pytest.mark.parametrize("how", ["abort", "reset"])
def test_broken_transfer_leaves_nothing(dicomd, session, settings, how):
    add_identity(session, "MODALITY1")
    first, large = make_instance(4096), make_instance(LARGE_INSTANCE_BYTES)

    assoc = sender("MODALITY1").associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert assoc.is_established
    assert assoc.send_c_store(first).Status == 0x0000
    break_after_pdus(assoc, 4, how)
    response = assoc.send_c_store(large)
    assert "Status" not in response

    [row] = wait_for_end(session)
    assert row.outcome == "aborted"
    assert row.operations == {"store": 1}
    assert row.instances_received == 1
    wait_for(lambda: not incoming_files(settings.storage_dir), "the partial incoming file is removed")
    check_storage(settings.storage_dir, [first])
    assert store(dicomd.port, "MODALITY1", [large]) == [0x0000]
    check_storage(settings.storage_dir, [first, large])


def test_killed_worker_restarted(dicomd, session, settings):
    add_identity(session, "MODALITY1")
    large = make_instance(LARGE_INSTANCE_BYTES)
    [worker] = worker_pids(dicomd.process.pid)
    time.sleep(WORKER_UPTIME_SECONDS)

    assoc = sender("MODALITY1").associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert assoc.is_established
    pause_between_pdus(assoc, 0.2)
    result = {}
    transfer = threading.Thread(target=lambda: result.update(response=assoc.send_c_store(large)))
    transfer.start()
    wait_for(lambda: any(path.stat().st_size > 0 for path in incoming_files(settings.storage_dir)),
             "the transfer has started")
    os.kill(worker, signal.SIGKILL)
    transfer.join(WAIT_SECONDS)

    assert "Status" not in result["response"]
    wait_for(lambda: "restarting worker 1" in dicomd.log(), "the supervisor restarts the worker")
    [replacement] = wait_for(lambda: [pid for pid in worker_pids(dicomd.process.pid) if pid != worker],
                             "the new worker is running")
    wait_for(lambda: dicomd.log().count("worker 1 ready") == 2, "the new worker is ready")
    assert "worker 1 exited unexpectedly with status -9" in dicomd.log()
    assert incoming_files(settings.storage_dir) == []
    [row] = associations(session)
    assert row.outcome == "aborted"
    assert row.ended_at is not None
    assert "exited unexpectedly" in row.detail
    check_storage(settings.storage_dir, [])

    assert store(dicomd.port, "MODALITY1", [large]) == [0x0000]
    check_storage(settings.storage_dir, [large])


@pytest.fixture
def small_volume(tmp_path):
    """A 2 MiB tmpfs mounted for the storage directory; skipped when mounting is not permitted."""
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs failed (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def dicomd_on_small_volume(app, environ, tmp_path, small_volume):
    log_path = tmp_path / "dicomd-small-volume.log"
    server_environ = {**environ, "DICOM_STORAGE_DIR": str(small_volume / "storage")}
    server = Dicomd(start_dicomd(server_environ, log_path), log_path, int(environ["DICOM_PORT"]))
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_dicomd(server)


def test_full_storage_volume(dicomd_on_small_volume, session, small_volume):
    storage_dir = small_volume / "storage"
    add_identity(session, "MODALITY1")
    instances = [make_instance(600 * 1024) for _ in range(4)]

    statuses = store(dicomd_on_small_volume.port, "MODALITY1", instances)

    assert statuses[:2] == [0x0000, 0x0000]
    assert 0xA700 in statuses[2:]
    acknowledged = [dataset for dataset, status in zip(instances, statuses) if status == 0x0000]
    check_storage(storage_dir, acknowledged)
    [row] = wait_for_end(session)
    assert row.reason == "storage_failed"
    assert incoming_files(storage_dir) == []

    # Space returns: the rejected instances are stored on the next attempt.
    for dataset in acknowledged:
        final_path(storage_dir, dataset).unlink()
    rejected = [dataset for dataset, status in zip(instances, statuses) if status != 0x0000]
    assert store(dicomd_on_small_volume.port, "MODALITY1", rejected[:1]) == [0x0000]
    check_storage(storage_dir, rejected[:1])


@contextlib.contextmanager
def running_dicomd(environ, tmp_path, name: str, **overrides: str):
    """Run `dicomd run` with `overrides` added to `environ`; stop it with SIGTERM on exit."""
    log_path = tmp_path / f"dicomd-{name}.log"
    server = Dicomd(start_dicomd({**environ, **overrides}, log_path), log_path, int(environ["DICOM_PORT"]))
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_dicomd(server)


def rejection_of(assoc) -> tuple[int, int, int]:
    """Return (result, source, reason) of the A-ASSOCIATE-RJ that rejected `assoc`."""
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


@pytest.mark.parametrize(
    "limit, second_calling",
    [("DICOMD_MAX_ASSOCIATIONS_PER_IDENTITY", "MODALITY1"), ("DICOMD_MAX_ASSOCIATIONS", "MODALITY2")],
)
def test_association_limit(app, environ, tmp_path, session, limit, second_calling):
    add_identity(session, "MODALITY1")
    add_identity(session, "MODALITY2")
    with running_dicomd(environ, tmp_path, "limit", **{limit: "1"}) as server:
        first = sender("MODALITY1").associate("127.0.0.1", server.port, ae_title="PACS")
        assert first.is_established

        second = sender(second_calling).associate("127.0.0.1", server.port, ae_title="PACS")
        assert second.is_rejected
        # Rejected-transient (2), by the service provider's presentation
        # related function (3), reason 2: local-limit-exceeded.
        assert rejection_of(second) == (0x02, 0x03, 0x02)
        rows = associations(session)
        assert [row.outcome for row in rows] == ["accepted", "rejected"]
        assert rows[1].reason == "local_limit_exceeded"
        assert rows[1].calling_ae_title == second_calling
        assert limit in rows[1].detail

        assert first.send_c_echo().Status == 0x0000
        first.release()
        wait_for_end(session)
        third = sender(second_calling).associate("127.0.0.1", server.port, ae_title="PACS")
        assert third.is_established
        assert third.send_c_echo().Status == 0x0000
        third.release()


@pytest.mark.dcmtk
def test_silent_peer_dropped(dicomd, session):
    add_identity(session, "MODALITY1")
    silent = socket.create_connection(("127.0.0.1", dicomd.port))
    # A peer that stops in the middle of a PDU header is recorded. One that
    # never sends a byte, such as a health check, is only dropped.
    partial = socket.create_connection(("127.0.0.1", dicomd.port))
    partial.sendall(association_request_pdu(b"MODALITY1")[:3])
    opened = time.monotonic()

    echo = echoscu(dicomd.port, "MODALITY1")
    assert echo.returncode == 0, echo.stdout + echo.stderr
    # The ACSE timeout of this module is 2 seconds.
    assert time.monotonic() - opened < 2, "the echo waited for the silent peers"

    for connection in (silent, partial):
        connection.settimeout(WAIT_SECONDS)
        try:
            received = connection.recv(1024)
        except TimeoutError:
            pytest.fail(f"dicomd did not close the connection after the ACSE timeout:\n{dicomd.log()}")
        assert received == b""
        connection.close()
    assert time.monotonic() - opened < 10

    wait_for(lambda: len(associations(session)) == 2, "the partial request is recorded")
    rows = associations(session)
    assert [row.outcome for row in rows] == ["accepted", "rejected"]
    assert rows[1].reason == "invalid_association_request"
    assert rows[1].peer_address == "127.0.0.1"


def test_idle_association_aborted(dicomd, session):
    add_identity(session, "MODALITY1")
    assoc = sender("MODALITY1").associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert assoc.is_established
    opened = time.monotonic()

    # Nothing is sent: the network timeout of this module (5 seconds) ends it.
    wait_for(lambda: not assoc.is_established, "dicomd ends the idle association")
    waited = time.monotonic() - opened
    assert assoc.is_aborted
    assert 4 < waited < 15, f"ended after {waited:.1f} seconds"

    rows = wait_for_end(session)
    assert [row.outcome for row in rows] == ["aborted"]


@pytest.mark.dcmtk
def test_blank_calling_ae_title(dicomd, session):
    add_identity(session, "MODALITY1")
    with socket.create_connection(("127.0.0.1", dicomd.port), timeout=WAIT_SECONDS) as connection:
        connection.sendall(association_request_pdu(b" " * 16))
        response = read_pdu(connection)
    # pynetdicom (3.0.4) cannot decode an AE title of only spaces and sends an A-ABORT (type 7).
    assert response[:1] == b"\x07"

    [row] = wait_for(lambda: associations(session), "the request is recorded")
    assert row.outcome == "rejected"
    assert row.peer_address == "127.0.0.1"
    assert row.reason == "invalid_association_request"
    assert row.calling_ae_title is None

    echo = echoscu(dicomd.port, "MODALITY1")
    assert echo.returncode == 0, echo.stdout + echo.stderr


def test_stop_waits_for_open_association(dicomd, session, settings):
    add_identity(session, "MODALITY1")
    instance = make_instance(4 * 1024 * 1024)
    assoc = sender("MODALITY1").associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert assoc.is_established

    # The module's grace period is 2 seconds. This transfer of four 1 MiB
    # P-DATA PDUs with a pause of 0.2 seconds after each takes about one.
    pause_between_pdus(assoc, 0.2)
    result = {}
    transfer = threading.Thread(target=lambda: result.update(status=assoc.send_c_store(instance).Status))
    transfer.start()
    wait_for(lambda: incoming_files(settings.storage_dir), "the transfer has started")
    dicomd.process.send_signal(signal.SIGTERM)
    assert transfer.is_alive(), "the transfer ended before the stop request"
    transfer.join(WAIT_SECONDS)
    assoc.release()

    assert result == {"status": 0x0000}
    assert dicomd.process.wait(timeout=WAIT_SECONDS) == 0
    check_storage(settings.storage_dir, [instance])
    [row] = associations(session)
    assert row.outcome == "accepted"
    assert row.operations == {"store": 1}
    assert "dicomd stopped" in dicomd.log()


def sqlite_path(database_url: str) -> str:
    return database_url.split(":///", 1)[1]


def test_locked_database_store(dicomd, session, settings):
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("holds a SQLite write lock; on PostgreSQL the same 15 s bound comes from lock_timeout")
    add_identity(session, "MODALITY1")
    instance = make_instance(64 * 1024)
    assoc = sender("MODALITY1").associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert assoc.is_established

    # Another writer locks the database for longer than dicomd's busy timeout
    # (15 seconds, SQLITE_BUSY_TIMEOUT_MS in portal.database).
    writer = sqlite3.connect(sqlite_path(settings.database_url), isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        response = assoc.send_c_store(instance)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    # No success without the record: Out of Resources, so the device sends it again later.
    assert response.Status == 0xA700
    assert final_files(settings.storage_dir) == set()
    session.expire_all()
    assert session.scalars(select(Instance)).all() == []
    if assoc.is_established:
        assoc.release()

    assert store(dicomd.port, "MODALITY1", [instance]) == [0x0000]
    check_storage(settings.storage_dir, [instance])
    rows = wait_for_end(session)
    assert [row.operations for row in rows] == [{"store_failed": 1}, {"store": 1}]
    assert "indexing" in dicomd.log()


@pytest.mark.dcmtk
def test_oversized_pdu_length(dicomd, session):
    add_identity(session, "MODALITY1")
    request = association_request_pdu(b"MODALITY1")
    # The declared length is 5 MiB, more than the 4 MiB dicomd reads.
    oversized = request[:2] + struct.pack(">L", 5 * 1024 * 1024) + request[6:]
    with socket.create_connection(("127.0.0.1", dicomd.port), timeout=WAIT_SECONDS) as connection:
        connection.sendall(oversized)
        response = read_pdu(connection)
    # The connection is closed, with or without an A-ABORT (type 7) first.
    assert response[:1] in (b"", b"\x07")

    [row] = wait_for(lambda: associations(session), "the request is recorded")
    assert row.reason == "invalid_association_request"
    assert row.peer_address == "127.0.0.1"
    assert "declared a PDU of 5242880 bytes" in row.detail

    echo = echoscu(dicomd.port, "MODALITY1")
    assert echo.returncode == 0, echo.stdout + echo.stderr


def test_locked_database_rejects_new_association_transiently(dicomd, session, settings):
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("holds a SQLite write lock; on PostgreSQL the same 15 s bound comes from lock_timeout")
    add_identity(session, "MODALITY1")

    # The association record cannot be written while another writer locks the
    # database past dicomd's busy timeout, so dicomd rejects the device transiently.
    writer = sqlite3.connect(sqlite_path(settings.database_url), isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        assoc = sender("MODALITY1").associate("127.0.0.1", dicomd.port, ae_title="PACS")
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    assert assoc.is_rejected
    assert assoc.acceptor.primitive.result == 0x02
    assert "rejecting it as transient" in dicomd.log()
    assert store(dicomd.port, "MODALITY1", [make_instance(1024)]) == [0x0000]
