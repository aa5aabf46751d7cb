"""Durable storage of received instances, exactly as they arrived.

A received instance is a DICOM Part 10 file that pynetdicom wrote while the
C-STORE data set came in: the File Meta Information followed by the data set
bytes in the negotiated transfer syntax. It is copied unchanged to
`<storage>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`;
only the header elements needed for the path and the index are decoded.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.tag import Tag

log = logging.getLogger(__name__)

# Incoming data sets are written here by pynetdicom before the handler runs,
# so that large instances land on the storage volume rather than in /tmp.
INCOMING_DIR_NAME = ".incoming"

# PS3.5 UID encoding rules: at most 64 characters; components of digits separated
# by dots; no empty component; no leading zero unless the component is "0".
MAX_UID_LENGTH = 64
_UID_COMPONENT = re.compile(r"0|[1-9][0-9]*")

HEADER_TAGS = [
    Tag("SOPClassUID"),
    Tag("SOPInstanceUID"),
    Tag("StudyDate"),
    Tag("StudyTime"),
    Tag("AccessionNumber"),
    Tag("Modality"),
    Tag("StudyDescription"),
    Tag("StudyInstanceUID"),
    Tag("SeriesInstanceUID"),
]

COPY_BUFFER_BYTES = 1024 * 1024


class InvalidDataset(Exception):
    """The data set cannot be stored: missing or invalid UIDs, or undecodable."""


class SOPClassMismatch(InvalidDataset):
    """The data set's SOP Class UID is not the one the C-STORE request announced."""


class StorageFailed(Exception):
    """Writing the instance to the storage directory failed; nothing was left behind."""


@dataclass(frozen=True)
class InstanceHeader:
    """The header elements that place an instance on disk and in the index."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None


@dataclass(frozen=True)
class StoredInstance:
    """An instance at its final path; `duplicate` when that path already held it."""

    header: InstanceHeader
    relative_path: str
    size_bytes: int
    duplicate: bool


def is_valid_uid(value: str) -> bool:
    """Return whether `value` follows the UID encoding rules of PS3.5."""
    if not value or len(value) > MAX_UID_LENGTH:
        return False
    return all(_UID_COMPONENT.fullmatch(component) for component in value.split("."))


def instance_path(storage_dir: Path, header: InstanceHeader) -> Path:
    """Return the final path of an instance; the header's UIDs must be validated first."""
    return (
        storage_dir
        / header.study_instance_uid
        / header.series_instance_uid
        / f"{header.sop_instance_uid}.dcm"
    )


def read_header(path: Path) -> InstanceHeader:
    """Decode the header elements of the Part 10 file at `path` and validate its UIDs.

    Raises InvalidDataset when the file cannot be decoded or a UID is missing
    or invalid. The pixel data is never decoded.
    """
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        values = {
            "sop_class_uid": _text(dataset, "SOPClassUID"),
            "sop_instance_uid": _text(dataset, "SOPInstanceUID"),
            "study_instance_uid": _text(dataset, "StudyInstanceUID"),
            "series_instance_uid": _text(dataset, "SeriesInstanceUID"),
            "transfer_syntax_uid": _text(dataset.file_meta, "TransferSyntaxUID"),
            "modality": _text(dataset, "Modality"),
            "study_date": _text(dataset, "StudyDate"),
            "study_time": _text(dataset, "StudyTime"),
            "accession_number": _text(dataset, "AccessionNumber"),
            "study_description": _text(dataset, "StudyDescription"),
        }
    # pydicom raises many exception types on malformed input (InvalidDicomError,
    # ValueError, EOFError, struct.error, ...); each means the data set is undecodable.
    except Exception as error:
        raise InvalidDataset(f"the data set cannot be decoded: {error}") from error

    for field in ("sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        value = values[field]
        if value is None:
            raise InvalidDataset(f"{_element_name(field)} is missing")
        if not is_valid_uid(value):
            raise InvalidDataset(f"{_element_name(field)} {value!r} is not a valid UID")
    return InstanceHeader(**values)


def store_instance(
    source: Path,
    storage_dir: Path,
    *,
    expected_sop_class_uid: str,
    expected_sop_instance_uid: str,
) -> StoredInstance:
    """Copy the received Part 10 file `source` durably to its final path.

    The expected UIDs are those of the C-STORE request. Returns the stored
    instance; when the final path already exists the stored copy is kept
    and the result is marked as a duplicate. Raises InvalidDataset,
    SOPClassMismatch or StorageFailed.
    """
    header = read_header(source)
    if header.sop_class_uid != expected_sop_class_uid.strip("\0 "):
        raise SOPClassMismatch(
            f"the data set's SOP Class UID {header.sop_class_uid} is not the "
            f"requested {expected_sop_class_uid}"
        )
    if header.sop_instance_uid != expected_sop_instance_uid.strip("\0 "):
        raise InvalidDataset(
            f"the data set's SOP Instance UID {header.sop_instance_uid} is not the "
            f"requested {expected_sop_instance_uid}"
        )

    final_path = instance_path(storage_dir, header)
    relative_path = final_path.relative_to(storage_dir).as_posix()
    size_bytes = source.stat().st_size
    if final_path.exists():
        return StoredInstance(header, relative_path, size_bytes, duplicate=True)

    try:
        duplicate = _write_durably(source, final_path, storage_dir)
    except OSError as error:
        raise StorageFailed(f"writing {relative_path} failed: {error}") from error
    return StoredInstance(header, relative_path, size_bytes, duplicate=duplicate)


def prepare_storage_dir(storage_dir: Path) -> Path:
    """Create the storage directory and an empty incoming directory inside it.

    Files left in the incoming directory belong to transfers that a crash
    interrupted, so they are removed. Call this once, before any listener
    starts. Raises OSError when the directory is not writable.
    """
    incoming = storage_dir / INCOMING_DIR_NAME
    incoming.mkdir(parents=True, exist_ok=True)
    for leftover in incoming.iterdir():
        if leftover.is_file():
            log.warning("removing %s, left over from an interrupted transfer", leftover)
            leftover.unlink()

    probe_fd, probe_path = tempfile.mkstemp(dir=incoming, prefix=".probe-")
    os.close(probe_fd)
    os.unlink(probe_path)
    return incoming


def _write_durably(source: Path, final_path: Path, storage_dir: Path) -> bool:
    """Write `source` to `final_path` through an fsynced temporary file.

    Returns True when another writer placed the same instance first, in which
    case its copy is kept.
    """
    created_dirs = _make_dirs(final_path.parent, storage_dir)
    temp_fd, temp_name = tempfile.mkstemp(dir=final_path.parent, prefix=".", suffix=".tmp")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(temp_fd, "wb") as target, source.open("rb") as received:
            shutil.copyfileobj(received, target, COPY_BUFFER_BYTES)
            target.flush()
            os.fsync(target.fileno())

        duplicate = _place(temp_path, final_path)
        _fsync_dir(final_path.parent)
        # A new directory entry is durable only once its parent directory is fsynced.
        for directory in created_dirs:
            _fsync_dir(directory.parent)
    finally:
        temp_path.unlink(missing_ok=True)
    return duplicate


def _place(temp_path: Path, final_path: Path) -> bool:
    """Move the temporary file to its final path without replacing an existing file.

    A hard link fails when the final path exists, so a concurrent copy of the
    same instance is never overwritten. Returns True when the path existed.
    """
    try:
        os.link(temp_path, final_path)
    except FileExistsError:
        return True
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # NOTE: on file systems without hard links, two workers storing the same
        # instance at once may replace one copy with the other. Both copies are
        # the same instance and neither is ever partial.
        if final_path.exists():
            return True
        os.replace(temp_path, final_path)
    return False


def _make_dirs(directory: Path, storage_dir: Path) -> list[Path]:
    """Create `directory` and its missing parents below `storage_dir`; return those created."""
    missing = []
    current = directory
    while current != storage_dir and not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            pass
    return list(reversed(missing))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _text(dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip("\0 ")
    return text or None


def _element_name(field: str) -> str:
    names = {
        "sop_class_uid": "SOP Class UID",
        "sop_instance_uid": "SOP Instance UID",
        "study_instance_uid": "Study Instance UID",
        "series_instance_uid": "Series Instance UID",
    }
    return names[field]
