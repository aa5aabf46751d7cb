"""Durable storage of received instances: layout, validation, duplicates, failures."""

import errno
import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomd import storage
from dicomd.storage import (
    InvalidDataset,
    SOPClassMismatch,
    StorageFailed,
    is_valid_uid,
    prepare_storage_dir,
    read_header,
    store_instance,
)

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_INSTANCE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def storage_dir(tmp_path) -> Path:
    directory = tmp_path / "storage"
    prepare_storage_dir(directory)
    return directory


def store(source: Path, storage_dir: Path, sop_class=CT_IMAGE_STORAGE, sop_instance=CT_INSTANCE):
    return store_instance(
        source, storage_dir, expected_sop_class_uid=sop_class, expected_sop_instance_uid=sop_instance
    )


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def modified_copy(tmp_path: Path, **elements) -> Path:
    dataset = dcmread(CT_SMALL)
    for keyword, value in elements.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    path = tmp_path / "modified.dcm"
    dataset.save_as(path)
    return path


def test_store_layout_and_bytes(storage_dir):
    stored = store(CT_SMALL, storage_dir)

    final = storage_dir / CT_STUDY / CT_SERIES / f"{CT_INSTANCE}.dcm"
    assert stored.relative_path == f"{CT_STUDY}/{CT_SERIES}/{CT_INSTANCE}.dcm"
    assert final.read_bytes() == CT_SMALL.read_bytes()
    assert stored.size_bytes == CT_SMALL.stat().st_size
    assert stored.duplicate is False
    assert stored.header.modality == "CT"
    assert stored.header.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_store_leaves_no_temporary_files(storage_dir):
    store(CT_SMALL, storage_dir)

    assert [path.name for path in files_under(storage_dir)] == [f"{CT_INSTANCE}.dcm"]


def test_store_fsyncs_file_and_directories(storage_dir, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", recording_fsync)
    store(CT_SMALL, storage_dir)

    series_dir = storage_dir / CT_STUDY / CT_SERIES
    assert any(path.startswith(str(series_dir / ".")) for path in synced), synced
    assert str(series_dir) in synced
    assert str(storage_dir / CT_STUDY) in synced
    assert str(storage_dir) in synced


def test_duplicate_keeps_stored_copy(storage_dir, tmp_path):
    store(CT_SMALL, storage_dir)
    changed = modified_copy(tmp_path, PatientName="Changed^Name")

    stored = store(changed, storage_dir)

    final = storage_dir / stored.relative_path
    assert stored.duplicate is True
    assert final.read_bytes() == CT_SMALL.read_bytes()
    assert len(files_under(storage_dir)) == 1


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.0.3", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),
        ("", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.02.3", False),
        ("1.2.3a", False),
        ("1.2/3", False),
        ("../1.2", False),
        ("1.2 3", False),
    ],
)
def test_uid_validation(value, valid):
    assert is_valid_uid(value) is valid


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "elements",
    [
        {"StudyInstanceUID": "1.02.3"},
        {"SeriesInstanceUID": "1.2..3"},
        {"StudyInstanceUID": None},
        {"SeriesInstanceUID": None},
    ],
)
def test_invalid_uids_rejected(storage_dir, tmp_path, elements):
    source = modified_copy(tmp_path, **elements)

    with pytest.raises(InvalidDataset):
        store(source, storage_dir)
    assert files_under(storage_dir) == []


def test_sop_instance_mismatch_rejected(storage_dir):
    with pytest.raises(InvalidDataset):
        store(CT_SMALL, storage_dir, sop_instance="1.2.3.4")
    assert files_under(storage_dir) == []


def test_sop_class_mismatch_rejected(storage_dir):
    with pytest.raises(SOPClassMismatch):
        store(CT_SMALL, storage_dir, sop_class="1.2.840.10008.5.1.4.1.1.4")
    assert files_under(storage_dir) == []


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_undecodable_dataset_rejected(storage_dir, tmp_path):
    source = tmp_path / "garbage.dcm"
    source.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)

    with pytest.raises(InvalidDataset):
        store(source, storage_dir)
    assert files_under(storage_dir) == []


def test_blocked_directory_fails(storage_dir):
    # A file where the study directory belongs makes the write fail even for root.
    (storage_dir / CT_STUDY).write_bytes(b"not a directory")

    with pytest.raises(StorageFailed):
        store(CT_SMALL, storage_dir)
    assert [path.name for path in files_under(storage_dir)] == [CT_STUDY]


def test_disk_full_leaves_nothing(storage_dir, monkeypatch):
    def full_disk_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "fsync", full_disk_fsync)

    with pytest.raises(StorageFailed) as failure:
        store(CT_SMALL, storage_dir)
    assert "No space left on device" in str(failure.value)
    assert files_under(storage_dir) == []


def test_prepare_removes_interrupted_transfers(tmp_path):
    incoming = tmp_path / "storage" / storage.INCOMING_DIR_NAME
    incoming.mkdir(parents=True)
    shutil.copyfile(CT_SMALL, incoming / "tmpabc.dcm")

    prepare_storage_dir(tmp_path / "storage")

    assert list(incoming.iterdir()) == []


def test_incoming_file_linked_not_copied(storage_dir, monkeypatch):
    received = storage_dir / storage.INCOMING_DIR_NAME / "tmpreceived.dcm"
    shutil.copyfile(CT_SMALL, received)
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", recording_fsync)
    stored = store(received, storage_dir)

    final = storage_dir / stored.relative_path
    assert final.stat().st_ino == received.stat().st_ino
    assert final.read_bytes() == CT_SMALL.read_bytes()
    assert str(received) in synced
    assert str(final.parent) in synced
    assert str(storage_dir) in synced


def test_index_values_cut_to_column_length():
    from dicomd.usage import fit_text, fitted
    from portal.models import Instance, Study

    study = fitted(Study, study_instance_uid="1.2.3", study_description="x" * 300, patient_name="Doe^Jane")
    assert study.study_description == "x" * 128
    assert study.patient_name == "Doe^Jane"
    assert fit_text(Instance.__table__.columns["series_description"], "y" * 65) == "y" * 64
    assert fit_text(Study.modalities, None) is None


@pytest.mark.parametrize(("elements", "field", "expected"), [
    ({"StudyDate": "1994.11.05"}, "study_date", "19941105"),
    ({"PatientBirthDate": "1950.01.31"}, "patient_birth_date", "19500131"),
    ({"StudyTime": "11:20:05.5"}, "study_time", "112005.5"),
    ({"StudyTime": "11:20"}, "study_time", "1120"),
    ({"StudyDate": "20240229"}, "study_date", "20240229"),
    ({"StudyDate": "1994-11-05"}, "study_date", "1994-11-05"),
])
def test_older_date_forms_normalized(tmp_path, elements, field, expected):
    header = read_header(modified_copy(tmp_path, **elements))

    assert getattr(header, field) == expected
