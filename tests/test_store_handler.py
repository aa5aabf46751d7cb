"""dicomd's C-STORE handler when indexing a placed instance fails, in the worker's process on a real database.

The handler acknowledges an instance only with its index rows. What it does
with the placed file depends on whether those rows were committed.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import select

from dicomd.handlers import AssociationState, ListenerHandlers
from dicomd.policy import Transport
from dicomd.usage import Peer, UsageRecorder
from portal.identities.service import create_identity
from portal.models import Instance

PEER = Peer(address="127.0.0.1", port=40001, local_port=11112, transport=Transport.PLAIN)
STATUS_OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def recorder(engine, session) -> UsageRecorder:
    create_identity(session, name="Cath lab", ae_title="CATHLAB1", permitted=["store"],
                    allowed_networks=["127.0.0.0/8"])
    session.commit()
    recorder = UsageRecorder(engine)
    yield recorder
    recorder.close()


@pytest.fixture
def handlers(recorder, tmp_path) -> ListenerHandlers:
    storage_dir = tmp_path / "storage"
    storage_dir.mkdir()
    return ListenerHandlers(recorder=recorder, own_ae_title="PACS", storage_dir=storage_dir,
                            transport=Transport.PLAIN, local_port=PEER.local_port)


@pytest.fixture
def state(recorder) -> AssociationState:
    policy = recorder.load_identity("CATHLAB1")
    record_id = recorder.record_request(calling_ae_title="CATHLAB1", called_ae_title="PACS", peer=PEER,
                                        identity=policy, rejection=None)
    return AssociationState(record_id=record_id, calling_ae_title="CATHLAB1", peer=PEER, identity=policy)


@pytest.fixture
def received(tmp_path) -> Path:
    path = tmp_path / "received.dcm"
    shutil.copyfile(get_testdata_file("CT_small.dcm"), path)
    return path


def store(handlers: ListenerHandlers, state: AssociationState, path: Path):
    dataset = dcmread(path, stop_before_pixels=True)
    return handlers.store_received(state, dataset.SOPClassUID, dataset.SOPInstanceUID, path)


def placed_files(handlers: ListenerHandlers) -> list[Path]:
    return [path for path in handlers.storage_dir.rglob("*.dcm")]


def indexed_instances(engine) -> int:
    with engine.connect() as connection:
        return len(connection.execute(select(Instance.id)).all())


def test_failed_index_removes_file(engine, handlers, state, received, monkeypatch):
    def failing_record_instance(**_values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(handlers.recorder, "record_instance", failing_record_instance)

    status = store(handlers, state, received)

    assert status.Status == STATUS_OUT_OF_RESOURCES
    assert status.ErrorComment == "indexing the instance failed; send it again"
    assert placed_files(handlers) == []
    assert indexed_instances(engine) == 0


def test_unflushed_index_keeps_file(engine, handlers, state, received, monkeypatch):
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL flushes its log within the commit")
    fdatasync = os.fdatasync

    def failing_log_fdatasync(descriptor):
        if os.readlink(f"/proc/self/fd/{descriptor}").endswith("-wal"):
            raise OSError(errno.EIO, "Input/output error")
        fdatasync(descriptor)

    monkeypatch.setattr(os, "fdatasync", failing_log_fdatasync)
    status = store(handlers, state, received)

    # The rows are committed and refer to the file, so both stay.
    assert status.Status == STATUS_OUT_OF_RESOURCES
    assert status.ErrorComment == "indexing the instance failed; send it again"
    assert len(placed_files(handlers)) == 1
    assert indexed_instances(engine) == 1

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    assert store(handlers, state, received) == 0x0000
    assert state.operations["store_duplicate"] == 1
    assert len(placed_files(handlers)) == 1
    assert indexed_instances(engine) == 1
