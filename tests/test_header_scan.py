"""The header elements dicomd indexes, found without pydicom's reader, against pydicom's own decoding."""

from __future__ import annotations

import random
from pathlib import Path
from unittest import mock

import pytest
from pydicom import Dataset
from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomd import header_scan, storage



def local_sample_files() -> list[Path]:
    """Return pydicom's own test and character set files and those of the installed pydicom-data package.

    pydicom's get_testdata_files would also try to download files from the
    internet; this lists only what is installed.
    """
    roots = [Path(DATA_ROOT) / "test_files", Path(DATA_ROOT) / "charset_files"]
    paths = [path for root in roots for path in root.rglob("*")]
    for source in external_data_sources().values():
        paths += [Path(name) for name in source.get_paths("*", DataTypes.DATASET)]
    return sorted({path for path in paths if path.is_file() and path.suffix != ".py"}, key=lambda path: path.name)


SAMPLE_FILES = local_sample_files()
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def decoded(path: Path, contents: bytes | None = None):
    """Return read_header's result for the file, or the message of its InvalidDataset."""
    try:
        return storage.read_header(path, contents)
    except storage.InvalidDataset as error:
        return f"InvalidDataset: {error}"


def decoded_by_pydicom(path: Path, contents: bytes | None = None):
    """Return what read_header gives when pydicom reads the file and converts every value."""
    with mock.patch.object(header_scan, "scan", return_value=None), \
            mock.patch.object(storage, "_has_plain_character_set", return_value=False):
        return decoded(path, contents)


def scanned(contents: bytes):
    return header_scan.scan(contents, storage.HEADER_TAG_NUMBERS, whole_file=True)


def write_part10(path: Path, dataset: Dataset, transfer_syntax_uid: str = ExplicitVRLittleEndian) -> Path:
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = transfer_syntax_uid
    dataset.save_as(path, enforce_file_format=True)
    return path


def header_dataset(**values) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = CT_IMAGE_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda path: path.name)
def test_header_of_every_sample_file_matches_pydicom(path):
    contents = path.read_bytes()

    expected = decoded_by_pydicom(path)

    assert decoded(path) == expected
    assert decoded(path, contents) == expected


def test_scan_reads_most_sample_files_itself():
    """Without this, a scan that always handed over to pydicom would pass the comparison above."""
    read = [path for path in SAMPLE_FILES if scanned(path.read_bytes()) is not None]

    assert len(read) > len(SAMPLE_FILES) * 2 // 3


@pytest.mark.parametrize("name", [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "JPEG2000.dcm",  # encapsulated pixel data
    "US1_J2KR.dcm",  # ultrasound, from pydicom-data
    "chrH31.dcm",  # Japanese names in ISO 2022 with escape sequences
])
def test_scan_reads_common_encodings(name):
    path = next(path for path in SAMPLE_FILES if path.name == name)

    assert scanned(path.read_bytes()) is not None


@pytest.mark.parametrize("name", [
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated
    "no_meta.dcm",  # no preamble and no File Meta Information
    "SC_rgb_jpeg.dcm",  # implicit VR under an explicit VR transfer syntax
])
def test_scan_hands_other_encodings_to_pydicom(name):
    path = next(path for path in SAMPLE_FILES if path.name == name)

    assert scanned(path.read_bytes()) is None


@pytest.mark.parametrize("transfer_syntax_uid", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_undefined_length_sequences_skipped(tmp_path, transfer_syntax_uid):
    inner = Dataset()
    inner.CodeValue = "T-32000"
    inner.CodeMeaning = "Heart"
    outer = Dataset()
    outer.AnatomicRegionSequence = Sequence([inner])
    outer.AnatomicRegionSequence.is_undefined_length = True
    outer.is_undefined_length_sequence_item = True
    dataset = header_dataset(PatientName="Doe^Jane", InstanceNumber="7")
    dataset.ReferencedImageSequence = Sequence([outer, Dataset()])
    dataset.ReferencedImageSequence.is_undefined_length = True
    path = write_part10(tmp_path / "nested.dcm", dataset, transfer_syntax_uid)
    contents = path.read_bytes()

    assert scanned(contents) is not None
    header = decoded(path, contents)
    assert header == decoded_by_pydicom(path, contents)
    assert (header.patient_name, header.instance_number) == ("Doe^Jane", 7)


def test_long_header_read_by_pydicom(tmp_path):
    dataset = header_dataset(PatientID="ECHO-1", SeriesNumber="3")
    dataset.add_new(0x0019_0010, "LO", "VENDOR")
    dataset.add_new(0x0019_1000, "OB", bytes(storage.HEADER_PREFIX_BYTES))
    path = write_part10(tmp_path / "long-header.dcm", dataset)
    prefix = path.read_bytes()[:storage.HEADER_PREFIX_BYTES]

    assert header_scan.scan(prefix, storage.HEADER_TAG_NUMBERS, whole_file=False) is None
    header = decoded(path)
    assert (header.patient_id, header.series_number) == ("ECHO-1", 3)
    assert header == decoded_by_pydicom(path)


@pytest.mark.parametrize("cut", [200, 330, 400])
def test_truncated_file_matches_pydicom(tmp_path, cut):
    path = write_part10(tmp_path / "whole.dcm", header_dataset(PatientName="Doe^Jane", StudyID="S1"))
    short = tmp_path / "short.dcm"
    short.write_bytes(path.read_bytes()[:cut])

    assert scanned(short.read_bytes()) is None
    assert decoded(short) == decoded_by_pydicom(short)
    assert isinstance(decoded(short), str)


@pytest.mark.parametrize(("values", "field", "expected"), [
    ({"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Anna"}, "patient_name", "Müller^Anna"),
    ({"SpecificCharacterSet": "ISO_IR 192", "StudyDescription": "Échocardiographie"}, "study_description",
     "Échocardiographie"),
    ({"PatientID": "A\\B"}, "patient_id", "['A', 'B']"),
    ({"PatientName": "Yamada^Tarou=山田^太郎"}, "patient_name", None),
    ({"AccessionNumber": "  ACC 1  "}, "accession_number", "ACC 1"),
    ({"InstanceNumber": "1e3"}, "instance_number", None),
    ({"InstanceNumber": " +12 "}, "instance_number", 12),
    ({"SeriesNumber": ""}, "series_number", None),
])
def test_value_decoding_matches_pydicom(tmp_path, values, field, expected):
    charset = values.get("SpecificCharacterSet", "ISO_IR 192")
    dataset = header_dataset(**{"SpecificCharacterSet": charset, **values})
    path = write_part10(tmp_path / "values.dcm", dataset)

    header = decoded(path)

    assert header == decoded_by_pydicom(path)
    if expected is not None:
        assert getattr(header, field) == expected


def test_uid_white_space_stripped_as_pydicom(tmp_path):
    path = write_part10(tmp_path / "uids.dcm", header_dataset(SeriesInstanceUID="1.2.3.44"))
    contents = path.read_bytes()
    # The same lengths: a leading tab in a UID, and a tab in place of the transfer syntax's padding.
    contents = contents.replace(b"1.2.3.44", b"\t1.2.3.4").replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.1\t")

    assert scanned(contents) is not None
    header = decoded(path, contents)
    assert header == decoded_by_pydicom(path, contents)
    assert header.series_instance_uid == "1.2.3.4"
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian


# Bytes that change how values and element headers read: white space, delimiters, escapes, non-ASCII.
DAMAGING_BYTES = b"\t\n\r\x0b\x0c\x1c\x1f \\=\x1b\x00\x80\xe9+-.0e"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small_implicit.dcm", "US1_UNCR.dcm", "chrH31.dcm", "JPEG2000.dcm", "rtplan.dcm",
])
def test_damaged_file_decodes_as_pydicom(name):
    """Damage a few bytes of the header, or cut the file short, many times: both decodings agree each time."""
    path = next(path for path in SAMPLE_FILES if path.name == name)
    original = path.read_bytes()[:20000]
    generator = random.Random(name)

    for _ in range(200):
        damaged = bytearray(original)
        for _ in range(generator.randint(1, 4)):
            position = generator.randrange(128, min(len(damaged), 1500))
            special = generator.random() < 0.6
            damaged[position] = generator.choice(DAMAGING_BYTES) if special else generator.randrange(256)
        if generator.random() < 0.3:
            damaged = damaged[:generator.randrange(132, len(damaged))]

        assert decoded(path, bytes(damaged)) == decoded_by_pydicom(path, bytes(damaged))
