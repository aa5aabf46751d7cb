"""Faults during transfers: aborts, resets, killed workers, a full disk, a locked database, limits and timeouts.

Every test runs a real `dicomd run` on loopback. After each fault, every
instance acknowledged with success is on disk and identical to what was
sent, nothing else is at a final path, and the association log records
what happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from sqlalchemy import select

from portal.models import Association, Instance
from tests.dicomd_process import Dicomd, add_identity, associations, start_dicomd, stop_dicomd, wait_for_end, wait_until_ready
from tests.reliability_tools import (
    break_after_pdus,
    final_files,
    final_path,
    incoming_files,
    make_instance,
    pause_between_pdus,
    sender,
    stored_identically,
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


def wait_for(condition, message: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {seconds} seconds waiting until {message}")


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
