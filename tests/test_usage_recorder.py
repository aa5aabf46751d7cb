"""dicomd's usage recorder: association rows, their commits, and the identity it reads for each request.

Runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from sqlalchemy import event, select

from dicomd.policy import IdentityPolicy, RejectReason, Rejection, Transport
from dicomd.storage import InstanceHeader, StoredInstance
from dicomd.tls import TlsSession
from dicomd.usage import Peer, UsageRecorder
from portal.identities.service import create_identity
from portal.models import Association, DicomIdentity, UsageDay

PLAIN_PEER = Peer(address="127.0.0.1", port=40001, local_port=11112, transport=Transport.PLAIN)
TLS_PEER = Peer(
    address="127.0.0.1", port=40002, local_port=2762, transport=Transport.TLS,
    tls=TlsSession(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", client_certificate_subject="anonymous",
                   client_certificate_fingerprint=None),
)


@pytest.fixture
def identity(session) -> DicomIdentity:
    identity = create_identity(session, name="Cath lab", ae_title="CATHLAB1", permitted=["echo", "store"],
                               allowed_networks=["127.0.0.0/8", "::1/128"], allow_anonymous_tls=True)
    session.commit()
    return identity


@pytest.fixture
def recorder(engine) -> UsageRecorder:
    recorder = UsageRecorder(engine)
    yield recorder
    recorder.close()


def commit_flush_settings(engine, monkeypatch=None) -> list[str]:
    """Collect, for each commit on `engine`, whether that commit waits for the disk's flush.

    With `monkeypatch`, an fdatasync of SQLite's write-ahead log is collected too, as "log flushed".
    """
    seen = []
    if monkeypatch is not None:
        fdatasync = os.fdatasync

        def noting_fdatasync(descriptor):
            if os.readlink(f"/proc/self/fd/{descriptor}").endswith("-wal"):
                seen.append("log flushed")
            fdatasync(descriptor)

        monkeypatch.setattr(os, "fdatasync", noting_fdatasync)

    def on_commit(connection):
        cursor = connection.connection.cursor()
        if connection.dialect.name == "sqlite":
            cursor.execute("PRAGMA synchronous")
            seen.append({1: "no flush", 2: "flush"}[cursor.fetchone()[0]])
        else:
            cursor.execute("SHOW synchronous_commit")
            seen.append({"off": "no flush", "on": "flush"}[cursor.fetchone()[0]])

    event.listen(engine, "commit", on_commit)
    return seen


def open_association(recorder: UsageRecorder, policy: IdentityPolicy | None, peer: Peer = PLAIN_PEER,
                     rejection: Rejection | None = None) -> int:
    """Record an association request from CATHLAB1 to PACS and return its row id."""
    return recorder.record_request(calling_ae_title="CATHLAB1", called_ae_title="PACS", peer=peer,
                                   identity=policy, rejection=rejection)


def stored_instance(uid: str) -> StoredInstance:
    header = InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1", sop_instance_uid=uid, study_instance_uid="2.25.71",
        series_instance_uid="2.25.72", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="US",
        study_date="20261205", study_time="081500", accession_number=None, study_description=None,
    )
    return StoredInstance(header=header, relative_path=f"2.25.71/2.25.72/{uid}.dcm", size_bytes=1024,
                          duplicate=False)


def association_row(engine, association_id: int):
    with engine.connect() as connection:
        return connection.execute(select(Association).where(Association.id == association_id)).one()


def usage_of(engine, identity_id: int) -> dict[str, int]:
    with engine.connect() as connection:
        row = connection.execute(select(UsageDay).where(UsageDay.identity_id == identity_id)).one_or_none()
    if row is None:
        return {}
    return {name: value for name, value in row._mapping.items() if name not in ("id", "identity_id", "day") and value}


def test_log_commits_skip_flush_index_commits_flush(engine, recorder, identity, monkeypatch):
    commits = commit_flush_settings(engine, monkeypatch)
    policy = recorder.load_identity("CATHLAB1")

    association_id = open_association(recorder, policy)
    recorder.record_instance(association_id=association_id, identity_id=identity.id,
                             stored=stored_instance("2.25.73"))
    recorder.record_end(association_id, operations={"store": 1}, aborted=False)

    if engine.dialect.name == "sqlite":
        # The index write flushes the log itself, after its commit.
        assert commits == ["no flush", "no flush", "log flushed", "no flush"]
    else:
        assert commits == ["no flush", "flush", "no flush"]
    # Every pooled connection is back to flushing at each commit.
    assert commit_flush_settings(engine) == []
    with engine.begin() as connection:
        connection.execute(select(1))
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        else:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def test_failed_log_transaction_restores_flush(engine, recorder, identity, monkeypatch):
    policy = recorder.load_identity("CATHLAB1")
    missing_identity = IdentityPolicy(**{**policy.__dict__, "identity_id": 999_999})

    with pytest.raises(Exception):
        open_association(recorder, missing_identity)

    commits = commit_flush_settings(engine, monkeypatch)
    with engine.begin() as connection:
        connection.execute(select(1))
    association_id = open_association(recorder, policy)
    recorder.record_instance(association_id=association_id, identity_id=identity.id,
                             stored=stored_instance("2.25.74"))

    if engine.dialect.name == "sqlite":
        assert commits == ["flush", "no flush", "no flush", "log flushed"]
    else:
        assert commits == ["flush", "no flush", "flush"]


def test_request_and_end_rows_counted(engine, recorder, identity):
    policy = recorder.load_identity("CATHLAB1")

    association_id = open_association(recorder, policy, peer=TLS_PEER)
    started = association_row(engine, association_id)
    assert started.outcome == "accepted"
    assert started.ended_at is None
    assert started.operations == {}
    assert (started.transport, started.local_port, started.peer_port) == ("tls", 2762, 40002)
    assert (started.tls_version, started.client_certificate_subject) == ("TLSv1.3", "anonymous")

    recorder.record_end(association_id, operations={"echo": 2, "store": 3, "store_duplicate": 1}, aborted=True)

    ended = association_row(engine, association_id)
    assert ended.outcome == "aborted"
    assert ended.ended_at >= started.started_at
    assert ended.operations == {"echo": 2, "store": 3, "store_duplicate": 1}
    assert usage_of(engine, identity.id) == {"associations_accepted": 1, "echo_requests": 2, "store_requests": 3}
    with engine.connect() as connection:
        counted = connection.execute(select(DicomIdentity).where(DicomIdentity.id == identity.id)).one()
    assert (counted.associations_accepted, counted.last_transport, counted.last_peer_address) == (1, "tls", "127.0.0.1")


def test_rejected_request_closed_and_counted(engine, recorder, identity):
    policy = recorder.load_identity("CATHLAB1")
    rejection = Rejection(reason=RejectReason.TLS_REQUIRED, result=1, source=1, diagnostic=1,
                          detail="the identity requires TLS")

    association_id = open_association(recorder, policy, rejection=rejection)

    row = association_row(engine, association_id)
    assert (row.outcome, row.reason, row.detail) == ("rejected", "tls_required", "the identity requires TLS")
    assert row.ended_at == row.started_at
    assert row.tls_version is None
    assert usage_of(engine, identity.id) == {"associations_rejected": 1}


def test_end_after_identity_deleted(engine, session, recorder, identity):
    policy = recorder.load_identity("CATHLAB1")
    association_id = open_association(recorder, policy)
    session.delete(session.get(DicomIdentity, identity.id))
    session.commit()

    recorder.record_end(association_id, operations={"echo": 1}, aborted=False)

    row = association_row(engine, association_id)
    assert row.identity_id is None
    assert row.ended_at is not None
    assert row.operations == {"echo": 1}
    with engine.connect() as connection:
        assert connection.execute(select(UsageDay)).all() == []


def test_identity_read_matches_model(engine, session, recorder, identity):
    policy = recorder.load_identity(" CATHLAB1 ")

    assert policy == IdentityPolicy.of(session.get(DicomIdentity, identity.id))
    assert policy.enabled is True
    assert policy.require_tls is False
    assert policy.allow_anonymous_tls is True
    assert policy.permitted == frozenset({"echo", "store"})
    assert policy.allowed_networks == ("127.0.0.0/8", "::1/128")
    assert recorder.load_identity("CATHLAB2") is None


def test_identity_read_sees_changes(session, recorder, identity):
    identity.enabled = False
    identity.permitted = ["echo"]
    session.commit()

    policy = recorder.load_identity("CATHLAB1")

    assert policy.enabled is False
    assert policy.permitted == frozenset({"echo"})


def test_start_time_is_now(engine, recorder, identity):
    before = datetime.now(timezone.utc)
    association_id = open_association(recorder, recorder.load_identity("CATHLAB1"))
    started_at = association_row(engine, association_id).started_at
    assert before <= started_at <= datetime.now(timezone.utc)
