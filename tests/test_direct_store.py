"""C-STORE requests that dicomd's DUL thread receives itself: the encodings against pynetdicom's and pydicom's, and the wire.

The wire tests speak DICOM over a raw socket, so that a test decides how the
presentation data values are split into PDUs, as a device might.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.pdu import P_DATA_TF

from dicomd.direct_store import (
    MalformedPDU,
    echo_response_pdu,
    file_meta_information,
    parse_echo_command,
    parse_store_command,
    split_pdvs,
    store_response_pdu,
)
from tests.dicomd_process import Dicomd, add_identity, start_dicomd, stop_dicomd, wait_for_end, wait_until_ready
from tests.reliability_tools import (
    association_request_pdu,
    final_files,
    incoming_files,
    make_instance,
    read_pdu,
    sender,
    stored_identically,
    wait_for,
)

WAIT_SECONDS = 30
CONTEXT_ID = 1
# Message control headers (PS3.8 E.2).
DATA_LAST = 0x02
COMMAND_LAST = 0x03


def store_request_values(dataset, message_id: int) -> list[tuple[int, bytes]]:
    """Return the presentation data values of a C-STORE-RQ for `dataset`, encoded by pynetdicom, as (control header, fragment)."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = dataset.SOPClassUID
    request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(dataset, True, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return _values(message)


def echo_request_values(message_id: int) -> list[tuple[int, bytes]]:
    request = C_ECHO()
    request.MessageID = message_id
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return _values(message)


def _values(message) -> list[tuple[int, bytes]]:
    values = []
    for primitive in message.encode_msg(CONTEXT_ID, 0):
        for _, data in primitive.presentation_data_value_list:
            values.append((data[0], data[1:]))
    return values


def pdu_of(values: list[tuple[int, bytes]], context_id: int = CONTEXT_ID) -> bytes:
    """Return one P-DATA-TF PDU carrying all of `values`."""
    items = b"".join(
        struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment for control, fragment in values
    )
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def response_command(pdu: bytes):
    """Decode the command set of a P-DATA-TF PDU that carries one whole command."""
    assert pdu[:1] == b"\x04", f"expected a P-DATA-TF PDU, got {pdu[:1]!r}"
    [(context_id, control, fragment)] = split_pdvs(memoryview(pdu)[6:])
    assert (context_id, control) == (CONTEXT_ID, COMMAND_LAST)
    return decode(BytesIO(bytes(fragment)), True, True)


@pytest.fixture
def storage_association(dicomd, session):
    """A raw connection to dicomd with an accepted association for Secondary Capture in Implicit VR Little Endian."""
    add_identity(session, "MODALITY1")
    connection = socket.create_connection(("127.0.0.1", dicomd.port), timeout=WAIT_SECONDS)
    connection.sendall(association_request_pdu(b"MODALITY1", abstract_syntax=SecondaryCaptureImageStorage.encode()))
    accept = read_pdu(connection)
    assert accept[:1] == b"\x02", f"the association was not accepted: {accept!r}"
    yield connection
    connection.close()


def test_store_command_parsed_as_pynetdicom_encodes_it():
    dataset = make_instance(4096)
    [(control, command), _] = store_request_values(dataset, message_id=7)

    parsed = parse_store_command(memoryview(command))

    assert control == COMMAND_LAST
    assert parsed.message_id == 7
    assert parsed.sop_class_uid == SecondaryCaptureImageStorage
    assert parsed.sop_instance_uid == dataset.SOPInstanceUID


def test_other_commands_not_parsed_as_store():
    [(_, echo)] = echo_request_values(message_id=1)
    [(_, store), _] = store_request_values(make_instance(1024), message_id=2)

    assert parse_store_command(memoryview(echo)) is None
    assert parse_store_command(memoryview(store[:-10])) is None
    assert parse_store_command(memoryview(b"\x00\x00\x00\x00\xff\xff\xff\xff")) is None
    assert parse_store_command(memoryview(b"")) is None


def pynetdicom_store_response_pdu(dataset, message_id: int, status: int, error_comment: str | None = None) -> bytes:
    """Return the P-DATA-TF PDU in which pynetdicom sends a C-STORE-RSP for `dataset`."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = dataset.SOPClassUID
    response.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    response.Status = status
    if error_comment is not None:
        response.ErrorComment = error_comment
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    [primitive] = message.encode_msg(CONTEXT_ID, 0)
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return pdu.encode()


def test_store_response_is_pynetdicom_encoding():
    dataset = make_instance(1024)
    [(_, command), _] = store_request_values(dataset, message_id=513)
    parsed = parse_store_command(memoryview(command))

    assert store_response_pdu(CONTEXT_ID, parsed, 0xA700) == pynetdicom_store_response_pdu(dataset, 513, 0xA700)


@pytest.mark.parametrize("comment", ["Study Instance UID is missing", "odd length"])
def test_store_response_with_error_comment_is_pynetdicom_encoding(comment):
    dataset = make_instance(1024)
    [(_, command), _] = store_request_values(dataset, message_id=7)
    parsed = parse_store_command(memoryview(command))

    expected = pynetdicom_store_response_pdu(dataset, 7, 0xC000, comment)
    assert store_response_pdu(CONTEXT_ID, parsed, 0xC000, comment) == expected


def test_echo_command_parsed_as_pynetdicom_encodes_it():
    [(control, command)] = echo_request_values(message_id=300)

    parsed = parse_echo_command(memoryview(command))

    assert control == COMMAND_LAST
    assert parsed.message_id == 300
    assert parsed.sop_class_uid_value == b"1.2.840.10008.1.1\0"


def test_other_commands_not_parsed_as_echo():
    [(_, echo)] = echo_request_values(message_id=1)
    [(_, store), _] = store_request_values(make_instance(1024), message_id=2)

    assert parse_echo_command(memoryview(store)) is None
    assert parse_echo_command(memoryview(echo[:-4])) is None
    assert parse_echo_command(memoryview(b"\x00\x00\x00\x00\xff\xff\xff\xff")) is None
    assert parse_echo_command(memoryview(b"")) is None


@pytest.mark.parametrize("status", [0x0000, 0x0124, 0x0110])
def test_echo_response_is_pynetdicom_encoding(status):
    [(_, command)] = echo_request_values(message_id=65535)
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = 65535
    response.AffectedSOPClassUID = "1.2.840.10008.1.1"
    response.Status = status
    message = C_ECHO_RSP()
    message.primitive_to_message(response)
    [primitive] = message.encode_msg(CONTEXT_ID, 0)
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)

    assert echo_response_pdu(CONTEXT_ID, parse_echo_command(memoryview(command)), status) == pdu.encode()


@pytest.mark.parametrize(("ae_title", "permitted", "status", "operations"), [
    ("PING1", ["echo"], 0x0000, {"echo": 2}),
    ("STORE1", ["store"], 0x0124, {"echo_not_permitted": 2}),
], ids=["permitted", "not-permitted"])
def test_echo_on_raw_association(dicomd, session, ae_title, permitted, status, operations):
    add_identity(session, ae_title, permitted=permitted)
    connection = socket.create_connection(("127.0.0.1", dicomd.port), timeout=WAIT_SECONDS)
    connection.sendall(association_request_pdu(ae_title.encode()))
    assert read_pdu(connection)[:1] == b"\x02"

    responses = []
    for message_id in (1, 2):
        connection.sendall(pdu_of(echo_request_values(message_id)))
        responses.append(response_command(read_pdu(connection)))
    connection.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    assert read_pdu(connection)[:1] == b"\x06"
    connection.close()

    assert [r.MessageIDBeingRespondedTo for r in responses] == [1, 2]
    assert [r.Status for r in responses] == [status, status]
    assert [r.CommandField for r in responses] == [0x8030, 0x8030]
    [row] = wait_for_end(session)
    assert row.operations == operations
    assert row.reason == (None if status == 0x0000 else "operation_not_permitted")


def test_empty_pdu_before_echo(dicomd, session):
    add_identity(session, "PING1", permitted=["echo"])
    connection = socket.create_connection(("127.0.0.1", dicomd.port), timeout=WAIT_SECONDS)
    connection.sendall(association_request_pdu(b"PING1"))
    assert read_pdu(connection)[:1] == b"\x02"

    connection.sendall(pdu_of([]))
    connection.sendall(pdu_of(echo_request_values(message_id=9)))
    response = response_command(read_pdu(connection))
    connection.close()

    assert response.MessageIDBeingRespondedTo == 9
    assert response.Status == 0x0000


@pytest.mark.parametrize("sop_instance_uid", ["1.2.3", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_file_meta_information_is_pydicom_encoding(sop_instance_uid, syntax):
    expected = DicomBytesIO()
    write_file_meta_info(expected, create_file_meta(
        sop_class_uid=SecondaryCaptureImageStorage, sop_instance_uid=sop_instance_uid, transfer_syntax=syntax,
    ))

    assert file_meta_information(SecondaryCaptureImageStorage, sop_instance_uid, syntax) == expected.getvalue()


@pytest.mark.parametrize("body", [
    b"\x00\x00\x00\x01\x01",
    b"\x00\x00\x00\x10\x01\x03abc",
    b"\x00\x00\x00\x01\x01\x03",
])
def test_malformed_items_rejected(body):
    with pytest.raises(MalformedPDU):
        split_pdvs(memoryview(body))


def test_two_requests_in_one_pdu(dicomd, session, settings, storage_association):
    first, second = make_instance(4096), make_instance(8192)
    values = store_request_values(first, message_id=1) + store_request_values(second, message_id=2)

    storage_association.sendall(pdu_of(values))
    responses = [response_command(read_pdu(storage_association)) for _ in range(2)]

    assert [(r.MessageIDBeingRespondedTo, r.Status) for r in responses] == [(1, 0x0000), (2, 0x0000)]
    assert stored_identically(settings.storage_dir, first)
    assert stored_identically(settings.storage_dir, second)


def test_data_set_in_many_pdus(dicomd, session, settings, storage_association):
    dataset = make_instance(64 * 1024)
    [command, (_, data)] = store_request_values(dataset, message_id=5)
    pieces = [data[start:start + 1000] for start in range(0, len(data), 1000)]

    storage_association.sendall(pdu_of([command]))
    for index, piece in enumerate(pieces):
        storage_association.sendall(pdu_of([(DATA_LAST if index == len(pieces) - 1 else 0x00, piece)]))
    response = response_command(read_pdu(storage_association))

    assert (response.MessageIDBeingRespondedTo, response.Status) == (5, 0x0000)
    stored = dcmread(settings.storage_dir / final_path_of(dataset))
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert stored.PixelData == dataset.PixelData


def final_path_of(dataset) -> str:
    return f"{dataset.StudyInstanceUID}/{dataset.SeriesInstanceUID}/{dataset.SOPInstanceUID}.dcm"


@pytest.mark.parametrize("interruption", ["command", "other context", "malformed item"])
def test_interrupted_data_set_aborts(dicomd, session, settings, storage_association, interruption):
    dataset = make_instance(64 * 1024)
    [command, (_, data)] = store_request_values(dataset, message_id=1)
    storage_association.sendall(pdu_of([command, (0x00, data[:1000])]))

    if interruption == "command":
        storage_association.sendall(pdu_of([command]))
    elif interruption == "other context":
        storage_association.sendall(pdu_of([(DATA_LAST, data[1000:])], context_id=3))
    else:
        # The item declares 100 bytes more than the PDU carries.
        item = struct.pack(">LBB", len(data) - 1000 + 102, CONTEXT_ID, DATA_LAST) + data[1000:]
        storage_association.sendall(struct.pack(">BBL", 0x04, 0, len(item)) + item)

    # A-ABORT (type 7), then the connection closes.
    assert read_pdu(storage_association)[:1] == b"\x07"
    [row] = wait_for_end(session)
    assert row.outcome == "aborted"
    assert row.reason == "transfer_interrupted"
    assert row.detail.startswith(f"transfer_interrupted: SOP instance {dataset.SOPInstanceUID} after 1000 bytes")
    assert final_files(settings.storage_dir) == set()
    assert incoming_files(settings.storage_dir) == []


def test_connection_closed_during_data_set(dicomd, session, settings, storage_association):
    dataset = make_instance(64 * 1024)
    [command, (_, data)] = store_request_values(dataset, message_id=1)
    storage_association.sendall(pdu_of([command, (0x00, data[:5000])]))
    # Half of the next PDU, then the connection closes.
    storage_association.sendall(pdu_of([(DATA_LAST, data[5000:])])[:100])
    storage_association.close()

    [row] = wait_for_end(session)
    assert row.outcome == "aborted"
    assert row.reason == "transfer_interrupted"
    assert row.detail == (f"transfer_interrupted: SOP instance {dataset.SOPInstanceUID} after 5000 bytes "
                          "of its data set: the connection closed")
    assert "removed the partial data set" in dicomd.log()
    assert final_files(settings.storage_dir) == set()


def test_association_released_during_data_set(dicomd, session, settings, storage_association):
    dataset = make_instance(64 * 1024)
    [command, (_, data)] = store_request_values(dataset, message_id=1)
    storage_association.sendall(pdu_of([command, (0x00, data[:1000])]))

    # A-RELEASE-RQ in the middle of a data set.
    storage_association.sendall(struct.pack(">BBLL", 0x05, 0, 4, 0))
    read_pdu(storage_association)

    [row] = wait_for_end(session)
    assert row.reason == "transfer_interrupted"
    assert row.detail.endswith("an A-RELEASE-RQ arrived")
    assert final_files(settings.storage_dir) == set()
    assert incoming_files(settings.storage_dir) == []


def test_data_set_goes_to_unnamed_file(dicomd, session, settings, storage_association):
    dataset = make_instance(64 * 1024)
    [command, (_, data)] = store_request_values(dataset, message_id=1)
    # More than the file's 8 KiB write buffer, so that the data reaches the file.
    storage_association.sendall(pdu_of([command, (0x00, data[:20000])]))

    [receiving] = wait_for(lambda: incoming_files(settings.storage_dir), "the data set arrives")
    # An open descriptor of the worker: /proc/PID/fd/N.
    assert receiving.parts[1] == "proc"
    assert not any(path.is_file() for path in (settings.storage_dir / ".incoming").rglob("*"))

    storage_association.sendall(pdu_of([(DATA_LAST, data[20000:])]))
    response = response_command(read_pdu(storage_association))
    assert response.Status == 0x0000
    assert stored_identically(settings.storage_dir, dataset)


def test_pynetdicom_receives_when_its_log_is_on(app, environ, tmp_path, session, settings):
    add_identity(session, "MODALITY1")
    log_path = tmp_path / "dicomd.log"
    server = Dicomd(start_dicomd(environ, log_path, "--pynetdicom-log-level", "INFO"), log_path,
                    int(environ["DICOM_PORT"]))
    try:
        wait_until_ready(server)
        dataset = make_instance(4096)
        assoc = sender("MODALITY1").associate("127.0.0.1", server.port, ae_title="PACS")
        assert assoc.is_established
        assert assoc.send_c_store(dataset).Status == 0x0000
        assoc.release()
    finally:
        stop_dicomd(server)

    assert stored_identically(settings.storage_dir, dataset)
    # pynetdicom's own INFO line for each request it serves.
    assert "Received Store Request" in server.log()



@pytest.mark.parametrize("pynetdicom_log", [False, True], ids=["direct", "pynetdicom"])
def test_failed_store_has_error_comment(app, environ, tmp_path, session, settings, pynetdicom_log):
    """A failed C-STORE gives the device its cause as Error Comment, on dicomd's own receive path and on pynetdicom's."""
    add_identity(session, "MODALITY1")
    add_identity(session, "PING1", permitted=["echo"])
    log_path = tmp_path / "dicomd.log"
    options = ["--pynetdicom-log-level", "INFO"] if pynetdicom_log else []
    server = Dicomd(start_dicomd(environ, log_path, *options), log_path, int(environ["DICOM_PORT"]))
    invalid = make_instance(4096)
    del invalid.StudyInstanceUID
    try:
        wait_until_ready(server)
        assoc = sender("MODALITY1").associate("127.0.0.1", server.port, ae_title="PACS")
        assert assoc.is_established
        missing_study = assoc.send_c_store(invalid)
        assoc.release()
        assoc = sender("PING1").associate("127.0.0.1", server.port, ae_title="PACS")
        assert assoc.is_established
        not_permitted = assoc.send_c_store(make_instance(4096))
        assoc.release()
    finally:
        stop_dicomd(server)

    assert missing_study.Status == 0xC000
    assert missing_study.ErrorComment == "Study Instance UID is missing"
    assert not_permitted.Status == 0x0124
    assert not_permitted.ErrorComment == "C-STORE is not permitted for this AE title"
    rows = wait_for_end(session)
    assert rows[0].detail == f"invalid_dataset: SOP instance {invalid.SOPInstanceUID}: Study Instance UID is missing"
