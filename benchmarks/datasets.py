"""Synthetic DICOM Part 10 files for the ingest benchmark and the large-instance test.

Pixel data is streamed to the file in chunks, so writing a 256 MiB instance
takes about 1 MiB of memory.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ImageShape:
    """The pixel matrix of one instance: 8 or 16 bits per sample, 1 (grey) or 3 (RGB) samples."""

    rows: int
    columns: int
    frames: int = 1
    samples: int = 1
    bits: int = 16

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.frames * self.samples * self.bits // 8


def write_instance(path: Path, shape: ImageShape, *, sop_class_uid: str, study_uid: str, series_uid: str,
                   seed: int = 0) -> str:
    """Write an Explicit VR Little Endian instance with pseudo-random pixel data to `path`; return its SOP Instance UID."""
    instance_uid = generate_uid()
    dataset = Dataset()
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = instance_uid
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.PatientName = "Bench^Ingest"
    dataset.PatientID = "BENCH"
    dataset.StudyDate = "20240101"
    dataset.StudyTime = "120000"
    dataset.AccessionNumber = "BENCH1"
    dataset.Modality = "US" if sop_class_uid == US_MULTIFRAME_IMAGE_STORAGE else "CT"
    dataset.StudyDescription = "Ingest benchmark"
    dataset.InstanceNumber = seed
    dataset.Rows = shape.rows
    dataset.Columns = shape.columns
    dataset.SamplesPerPixel = shape.samples
    dataset.PhotometricInterpretation = "RGB" if shape.samples == 3 else "MONOCHROME2"
    if shape.samples == 3:
        dataset.PlanarConfiguration = 0
    if shape.frames > 1:
        dataset.NumberOfFrames = shape.frames
    dataset.BitsAllocated = shape.bits
    dataset.BitsStored = shape.bits
    dataset.HighBit = shape.bits - 1
    dataset.PixelRepresentation = 0

    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = instance_uid
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)

    # Pixel Data is appended by hand: tag, VR OB or OW, two reserved bytes, 32-bit length.
    vr = b"OW" if shape.bits == 16 else b"OB"
    with path.open("ab") as output:
        output.write(struct.pack("<HH2s2xI", *PIXEL_DATA_TAG, vr, shape.pixel_bytes))
        for offset in range(0, shape.pixel_bytes, CHUNK_BYTES):
            output.write(pixel_chunk(seed, offset, min(CHUNK_BYTES, shape.pixel_bytes - offset)))
    return instance_uid


def pixel_chunk(seed: int, offset: int, size: int) -> bytes:
    """Return `size` bytes of pixel data starting at `offset`, different for each seed and offset."""
    block = os.urandom(64) + struct.pack("<QQ", seed, offset)
    return (block * (size // len(block) + 1))[:size]
