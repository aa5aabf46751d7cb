"""Find a few top-level elements of a Part 10 file without pydicom's reader.

dicomd indexes about twenty elements of every instance, all in groups 0008
to 0020, near the start of the data set. pydicom's `dcmread` decodes the
File Meta Information into a data set and reads every element up to the
pixel data, which took 0.3 to 0.5 ms for a 64 KB CT instance in dicomd.
This module walks the element headers of the encoded bytes up to the pixel
data too, as `dcmread(stop_before_pixels=True)` does, but skips the values
it does not need (nested sequences included) and returns the requested
ones as pydicom RawDataElements. A pydicom Dataset built from them
converts the values exactly as `dcmread` would, with the data set's
Specific Character Set.

Only the common encodings are scanned: a 128-byte preamble and "DICM",
File Meta Information in explicit VR little endian, and a data set in
implicit or explicit VR little endian, undeflated. For anything else, or
anything this walk does not expect, `scan` returns None and the caller
reads the file with pydicom, which also produces the error messages for
malformed input.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from struct import Struct

from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag, TupleTag
from pydicom.uid import UID, ImplicitVRLittleEndian

PREAMBLE_BYTES = 128
PREFIX = b"DICM"
TRANSFER_SYNTAX_UID_TAG = 0x0002_0010
# Pixel Data, Float Pixel Data and Double Float Pixel Data: where pydicom's
# stop_before_pixels stops reading, and so does the scan.
PIXEL_DATA_TAGS = frozenset({0x7FE0_0010, 0x7FE0_0008, 0x7FE0_0009})

# VRs whose explicit VR encoding has two reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
SHORT_LENGTH_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
})

UNDEFINED_LENGTH = 0xFFFF_FFFF
ITEM_TAG = 0xFFFE_E000
ITEM_DELIMITATION_TAG = 0xFFFE_E00D
SEQUENCE_DELIMITATION_TAG = 0xFFFE_E0DD

_TAG = Struct("<HH")
_TAG_AND_LENGTH = Struct("<HHL")
_SHORT_LENGTH = Struct("<H")
_LONG_LENGTH = Struct("<L")


class _Unexpected(Exception):
    """The bytes are not in a form this scan reads; pydicom reads them instead."""


def scan(data: bytes, tags: Collection[int], *, whole_file: bool) -> tuple[str, dict[BaseTag, RawDataElement]] | None:
    """Return the transfer syntax UID and the top-level elements with `tags` of the Part 10 file `data`.

    `tags` contains the tags to return, as integers. Unless `whole_file`,
    `data` is only the start of the file and must reach the pixel data.
    Returns None when `data` is not in a form this scan reads, ends before
    the pixel data (unless it is the whole file), or is malformed.
    """
    try:
        transfer_syntax_uid, offset = _file_meta(data)
        implicit = transfer_syntax_uid == ImplicitVRLittleEndian
        if not implicit and not _is_explicit_little_endian(transfer_syntax_uid):
            return None
        return transfer_syntax_uid, _top_level_elements(data, offset, implicit, tags, whole_file)
    except _Unexpected:
        return None


def _file_meta(data: bytes) -> tuple[str, int]:
    """Return the transfer syntax UID of the File Meta Information and the offset of the data set."""
    if data[PREAMBLE_BYTES:PREAMBLE_BYTES + len(PREFIX)] != PREFIX:
        raise _Unexpected
    offset = PREAMBLE_BYTES + len(PREFIX)
    transfer_syntax_uid = None
    while offset + 8 <= len(data):
        group, element = _TAG.unpack_from(data, offset)
        if group != 0x0002:
            break
        vr, length, value_offset = _explicit_header(data, offset)
        if length == UNDEFINED_LENGTH:
            raise _Unexpected
        if (group << 16 | element) == TRANSFER_SYNTAX_UID_TAG:
            # pydicom's UID also strips other white space, such as a tab, from both ends.
            transfer_syntax_uid = _value(data, value_offset, length).decode("ascii", "replace").rstrip("\0 ").strip()
        offset = value_offset + length
    if not transfer_syntax_uid:
        raise _Unexpected
    return transfer_syntax_uid, offset


# Bounded, because the UIDs come from the received files.
@functools.lru_cache(maxsize=64)
def _is_explicit_little_endian(transfer_syntax_uid: str) -> bool:
    uid = UID(transfer_syntax_uid)
    return uid.is_transfer_syntax and uid.is_little_endian and not uid.is_implicit_VR and not uid.is_deflated


def _top_level_elements(data: bytes, offset: int, implicit: bool, tags: Collection[int],
                        whole_file: bool) -> dict[BaseTag, RawDataElement]:
    found = {}
    while True:
        if offset + 8 > len(data):
            if not whole_file or offset != len(data):
                raise _Unexpected
            return found
        group, element = _TAG.unpack_from(data, offset)
        tag = group << 16 | element
        if group == 0xFFFE:
            raise _Unexpected
        # pydicom reads the pixel data element's header before it stops, and fails where it is cut short.
        vr, length, value_offset = _header(data, offset, implicit)
        if tag in PIXEL_DATA_TAGS:
            return found
        if length == UNDEFINED_LENGTH:
            if tag in tags or vr not in (None, b"SQ"):
                raise _Unexpected
            offset = _skip_sequence(data, value_offset, implicit)
            continue
        if tag in tags:
            found[TupleTag((group, element))] = RawDataElement(
                TupleTag((group, element)),
                vr.decode("ascii") if vr is not None else None,
                length,
                _value(data, value_offset, length),
                value_offset,
                implicit,
                True,
            )
        offset = value_offset + length


def _skip_sequence(data: bytes, offset: int, implicit: bool) -> int:
    """Return the offset after the sequence of undefined length whose items start at `offset`."""
    while True:
        tag, length = _item_header(data, offset)
        offset += 8
        if tag == SEQUENCE_DELIMITATION_TAG:
            return offset
        if tag != ITEM_TAG:
            raise _Unexpected
        if length == UNDEFINED_LENGTH:
            offset = _skip_item(data, offset, implicit)
        else:
            offset += length


def _skip_item(data: bytes, offset: int, implicit: bool) -> int:
    """Return the offset after the item of undefined length whose elements start at `offset`."""
    while True:
        if offset + 4 > len(data):
            raise _Unexpected
        group, _ = _TAG.unpack_from(data, offset)
        if group == 0xFFFE:
            tag, _ = _item_header(data, offset)
            if tag != ITEM_DELIMITATION_TAG:
                raise _Unexpected
            return offset + 8
        vr, length, offset = _header(data, offset, implicit)
        if length == UNDEFINED_LENGTH:
            if vr not in (None, b"SQ"):
                raise _Unexpected
            offset = _skip_sequence(data, offset, implicit)
        else:
            offset += length


def _header(data: bytes, offset: int, implicit: bool) -> tuple[bytes | None, int, int]:
    """Return the VR (None in implicit VR), value length and value offset of the element at `offset`."""
    if implicit:
        if offset + 8 > len(data):
            raise _Unexpected
        return None, _LONG_LENGTH.unpack_from(data, offset + 4)[0], offset + 8
    return _explicit_header(data, offset)


def _explicit_header(data: bytes, offset: int) -> tuple[bytes, int, int]:
    vr = bytes(data[offset + 4:offset + 6])
    if vr in SHORT_LENGTH_VRS:
        if offset + 8 > len(data):
            raise _Unexpected
        return vr, _SHORT_LENGTH.unpack_from(data, offset + 6)[0], offset + 8
    if vr in LONG_LENGTH_VRS:
        if offset + 12 > len(data):
            raise _Unexpected
        return vr, _LONG_LENGTH.unpack_from(data, offset + 8)[0], offset + 12
    raise _Unexpected


def _item_header(data: bytes, offset: int) -> tuple[int, int]:
    if offset + 8 > len(data):
        raise _Unexpected
    group, element, length = _TAG_AND_LENGTH.unpack_from(data, offset)
    return group << 16 | element, length


def _value(data: bytes, offset: int, length: int) -> bytes:
    if offset + length > len(data):
        raise _Unexpected
    return bytes(data[offset:offset + length])

