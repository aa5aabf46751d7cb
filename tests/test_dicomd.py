"""`dicomd run` as a real process, driven by DCMTK's echoscu and storescu on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import select

from portal.identities.service import update_identity
from portal.models import Instance, Study
from tests.dicomd_process import (
    START_TIMEOUT_SECONDS,
    add_identity,
    associations,
    echoscu,
    reload,
    start_dicomd,
    storescu,
    wait_for_end,
)
from tests.reliability_tools import incoming_files

# storescu proposes uncompressed transfer syntaxes by default; these flags make
# it propose each file's own syntax, so the file is sent without conversion.
STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}

DATASET_TRAILING_PADDING = 0xFFFCFFFC

SAMPLE_FILES = [
    "US1_UNCR.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "CT_small.dcm",
    "MR_small.dcm",
    "waveform_ecg.dcm",
    "US1_J2KR.dcm",
    "JPEG2000.dcm",
]


@pytest.mark.dcmtk
def test_echo_accepted(dicomd, session):
    identity = add_identity(session, "ECHO1")

    result = echoscu(dicomd.port, "ECHO1")

    assert result.returncode == 0, result.stderr
    [row] = wait_for_end(session)
    assert row.outcome == "accepted"
    assert row.reason is None
    assert row.identity_id == identity.id
    assert row.calling_ae_title == "ECHO1"
    assert row.called_ae_title == "PACS"
    assert row.peer_address == "127.0.0.1"
    assert row.transport == "plain"
    assert row.local_port == dicomd.port
    assert row.operations == {"echo": 1}
    assert row.ended_at is not None
    identity = reload(session, identity)
    assert identity.associations_accepted == 1
    assert identity.associations_rejected == 0
    assert identity.last_seen_at is not None
    assert identity.last_peer_address == "127.0.0.1"
    assert identity.last_transport == "plain"


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("calling", "called", "reason", "message"),
    [
        ("NOBODY", "PACS", "unknown_calling_ae", "Calling AE Title Not Recognized"),
        ("OFF1", "PACS", "identity_disabled", "Calling AE Title Not Recognized"),
        ("ECHO1", "OTHERPACS", "called_ae_mismatch", "Called AE Title Not Recognized"),
        ("SECURE1", "PACS", "tls_required", "Rejected Permanent"),
    ],
)
def test_echo_rejected(dicomd, session, calling, called, reason, message):
    add_identity(session, "ECHO1")
    add_identity(session, "OFF1", enabled=False)
    add_identity(session, "SECURE1", require_tls=True)

    result = echoscu(dicomd.port, calling, called)

    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert "Rejected Permanent" in result.stderr
    assert message in result.stderr
    [row] = associations(session)
    assert row.outcome == "rejected"
    assert row.reason == reason
    assert row.calling_ae_title == calling
    assert row.called_ae_title == called
    assert row.peer_address == "127.0.0.1"
    assert row.ended_at is not None
    assert f"rejected: {reason}" in dicomd.log()


@pytest.mark.dcmtk
def test_rejection_counted_on_identity(dicomd, session):
    identity = add_identity(session, "OFF1", enabled=False)

    echoscu(dicomd.port, "OFF1")

    identity = reload(session, identity)
    assert identity.associations_rejected == 1
    assert identity.associations_accepted == 0
    assert associations(session)[0].identity_id == identity.id


@pytest.mark.dcmtk
def test_store_sample_files(dicomd, session, settings):
    identity = add_identity(session, "ECHO1")
    sources = [Path(get_testdata_file(name)) for name in SAMPLE_FILES]

    for source in sources:
        transfer_syntax = dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
        result = storescu(dicomd.port, "ECHO1", [source], STORESCU_PROPOSAL[transfer_syntax])
        assert result.returncode == 0, f"{source.name}:\n{result.stderr}"

    total_bytes = 0
    for source in sources:
        original = dcmread(source)
        final = (
            settings.storage_dir
            / original.StudyInstanceUID
            / original.SeriesInstanceUID
            / f"{original.SOPInstanceUID}.dcm"
        )
        assert final.is_file(), source.name
        stored = dcmread(final)
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, source.name
        # DCMTK's storescu drops Data Set Trailing Padding (FFFC,FFFC) when it sends a file.
        for tag in original.keys():
            if tag == DATASET_TRAILING_PADDING:
                continue
            assert tag in stored, f"{source.name} {original[tag].name}"
            assert stored[tag] == original[tag], f"{source.name} {original[tag].name}"
        assert set(stored.keys()) <= set(original.keys()), source.name
        for bulk in ("PixelData", "WaveformSequence"):
            if bulk in original:
                assert stored[bulk].value == original[bulk].value, f"{source.name} {bulk}"

        session.expire_all()
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == original.SOPInstanceUID))
        assert instance is not None, source.name
        assert instance.path == final.relative_to(settings.storage_dir).as_posix()
        assert instance.identity_id == identity.id
        assert instance.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        assert instance.size_bytes == final.stat().st_size
        study = session.scalar(select(Study).where(Study.study_instance_uid == original.StudyInstanceUID))
        assert study is not None, source.name
        assert study.identity_id == identity.id
        assert instance.study_id == study.id
        total_bytes += instance.size_bytes

    identity = reload(session, identity)
    assert identity.associations_accepted == len(sources)
    assert identity.instances_received == len(sources)
    assert identity.bytes_received == total_bytes
    rows = wait_for_end(session)
    assert [row.operations for row in rows] == [{"store": 1}] * len(sources)
    assert sum(row.bytes_received for row in rows) == total_bytes
    assert incoming_files(settings.storage_dir) == []


@pytest.mark.dcmtk
def test_store_retired_ultrasound_class(dicomd, session, settings):
    add_identity(session, "ECHOCART1")
    # Ultrasound Image Storage (Retired), as older echo carts send it.
    source = Path(get_testdata_file("color-pl.dcm"))
    assert dcmread(source, stop_before_pixels=True).SOPClassUID == "1.2.840.10008.5.1.4.1.1.6"

    # -R: propose the SOP classes of the files given, which storescu does not propose by default.
    result = storescu(dicomd.port, "ECHOCART1", [source], "-xe", "-R")

    assert result.returncode == 0, result.stderr
    original = dcmread(source)
    stored = dcmread(settings.storage_dir / original.StudyInstanceUID / original.SeriesInstanceUID
                     / f"{original.SOPInstanceUID}.dcm")
    assert stored.SOPClassUID == original.SOPClassUID
    assert stored.PixelData == original.PixelData
    [row] = wait_for_end(session)
    assert row.operations == {"store": 1}


@pytest.mark.dcmtk
def test_store_duplicate_kept(dicomd, session, settings):
    identity = add_identity(session, "ECHO1")
    source = Path(get_testdata_file("CT_small.dcm"))

    first = storescu(dicomd.port, "ECHO1", [source], "-xe")
    second = storescu(dicomd.port, "ECHO1", [source], "-xe")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    stored_files = [path for path in settings.storage_dir.rglob("*.dcm") if ".incoming" not in path.parts]
    assert len(stored_files) == 1
    rows = wait_for_end(session)
    assert rows[1].operations == {"store": 1, "store_duplicate": 1}
    session.expire_all()
    assert len(session.scalars(select(Instance)).all()) == 1
    assert reload(session, identity).instances_received == 2


@pytest.mark.dcmtk
def test_store_not_permitted(dicomd, session, settings):
    add_identity(session, "ECHOONLY", permitted=["echo"])
    sources = [Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm"))]

    # -nh: keep sending after a failure, to show that the association stays
    # usable. With it, storescu exits 0 whatever the statuses were.
    result = storescu(dicomd.port, "ECHOONLY", sources, "-xe", "-nh")

    assert result.stderr.count("Received Store Response (Unknown Status: 0x124)") == 2, result.stderr
    assert "Releasing Association" in result.stderr
    [row] = wait_for_end(session)
    assert row.outcome == "accepted"
    assert row.reason == "operation_not_permitted"
    assert "store" in row.detail
    assert row.operations == {"store_not_permitted": 2}
    assert not any(settings.storage_dir.rglob("*.dcm"))


@pytest.mark.dcmtk
@pytest.mark.dcmtk
def test_store_not_permitted_fails_storescu(dicomd, session):
    add_identity(session, "ECHOONLY", permitted=["echo"])

    result = storescu(dicomd.port, "ECHOONLY", [Path(get_testdata_file("CT_small.dcm"))], "-xe")

    assert result.returncode != 0
    assert "0x124" in result.stderr


@pytest.mark.dcmtk
def test_disable_and_enable_while_running(dicomd, session):
    identity = add_identity(session, "ECHO1", enabled=False)

    rejected = echoscu(dicomd.port, "ECHO1")
    update_identity(session, identity, enabled=True)
    session.commit()
    accepted = echoscu(dicomd.port, "ECHO1")

    assert rejected.returncode != 0
    assert accepted.returncode == 0, accepted.stderr
    rows = associations(session)
    assert [(row.outcome, row.reason) for row in rows] == [("rejected", "identity_disabled"), ("accepted", None)]


def test_refuses_empty_database(environ, tmp_path, databases):
    log_path = tmp_path / "dicomd.log"
    process = start_dicomd({**environ, "DATABASE_URL": databases.empty(tmp_path / "empty")}, log_path)

    exit_code = process.wait(timeout=START_TIMEOUT_SECONDS)

    assert exit_code != 0
    assert "portal db upgrade" in log_path.read_text()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DICOM_PORT", "notaport"), ("DICOM_PORT", "70000"), ("DICOMD_WORKERS", "0"), ("DICOM_AE_TITLE", "A\\B")],
)
def test_bad_settings_exit(environ, tmp_path, variable, value):
    log_path = tmp_path / "dicomd.log"
    process = start_dicomd({**environ, variable: value}, log_path)

    exit_code = process.wait(timeout=START_TIMEOUT_SECONDS)

    assert exit_code == 2
    assert f"{variable}=" in log_path.read_text()


def test_port_in_use_exits(app, environ, tmp_path):
    log_path = tmp_path / "dicomd.log"
    with socket.create_server(("127.0.0.1", int(environ["DICOM_PORT"]))):
        process = start_dicomd(environ, log_path)
        exit_code = process.wait(timeout=START_TIMEOUT_SECONDS)

    assert exit_code == 1
    assert "cannot listen on 127.0.0.1" in log_path.read_text()


def test_storage_dir_not_writable_exits(app, environ, tmp_path):
    # Root may write anywhere, so the storage path goes below a regular file instead.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    log_path = tmp_path / "dicomd.log"
    process = start_dicomd({**environ, "DICOM_STORAGE_DIR": str(blocker / "storage")}, log_path)

    exit_code = process.wait(timeout=START_TIMEOUT_SECONDS)

    assert exit_code == 1
    assert f"the storage directory {blocker / 'storage'} is not writable" in log_path.read_text()


def test_host_not_on_this_machine_exits(app, environ, tmp_path):
    # 192.0.2.1 is a documentation address (RFC 5737): binding to it fails
    # locally, and nothing is sent anywhere.
    log_path = tmp_path / "dicomd.log"
    process = start_dicomd({**environ, "DICOM_HOST": "192.0.2.1"}, log_path)

    exit_code = process.wait(timeout=START_TIMEOUT_SECONDS)

    assert exit_code == 1
    assert "cannot listen on 192.0.2.1" in log_path.read_text()
    assert "set DICOM_HOST" in log_path.read_text()


def test_worker_leaves_out_the_web_stack():
    """A worker imports the portal's models and settings, but not Flask, Alembic or the forms, which would cost each worker about 20 MiB."""
    probe = (
        "import sys, dicomd.cli, dicomd.listener, dicomd.supervisor; "
        "print(' '.join(sorted({name.split('.')[0] for name in sys.modules} & "
        "{'flask', 'werkzeug', 'jinja2', 'wtforms', 'alembic', 'flask_limiter', 'limits'})))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
