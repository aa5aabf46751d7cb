"""C-FIND, C-GET and C-MOVE against `dicomd run`, with DCMTK's findscu, getscu, movescu and storescp on loopback."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from sqlalchemy import update

from portal.models import DicomIdentity
from tests.conftest import free_port
from tests.dicomd_process import add_identity, storescu, wait_for_end
from tests.qr_tools import (
    dataset_bytes,
    final_move_response,
    findscu,
    getscu,
    movescu,
    response_values,
    start_storescp,
)

ALL_OPERATIONS = ["echo", "store", "find", "move", "get", "commit"]
SAMPLES = {name: Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm")}
HEADERS = {name: dcmread(path, stop_before_pixels=True) for name, path in SAMPLES.items()}
CT, MR, US = HEADERS["CT_small.dcm"], HEADERS["MR_small.dcm"], HEADERS["US1_UNCR.dcm"]
ALL_STUDIES = {"QueryRetrieveLevel": "STUDY",
               "StudyInstanceUID": "\\".join(header.StudyInstanceUID for header in HEADERS.values())}


def stored_file(settings, header) -> Path:
    """Return the stored copy of a sample, which storescu sent without its trailing padding."""
    return settings.storage_dir / header.StudyInstanceUID / header.SeriesInstanceUID / f"{header.SOPInstanceUID}.dcm"


@pytest.fixture
def stored(dicomd, session):
    """dicomd with the three sample files stored by the identity WS1, which may send every request type."""
    add_identity(session, "WS1", permitted=ALL_OPERATIONS)
    result = storescu(dicomd.port, "WS1", list(SAMPLES.values()))
    assert result.returncode == 0, result.stderr
    wait_for_end(session)
    return dicomd


@pytest.mark.dcmtk
def test_find_study_wildcard_name(stored, tmp_path):
    keys = {"QueryRetrieveLevel": "STUDY", "PatientName": "CompressedSamples^?R*", "StudyInstanceUID": "",
            "PatientID": "", "StudyDate": "", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find")

    assert result.returncode == 0, result.stderr
    assert response_values(responses, "StudyInstanceUID") == [MR.StudyInstanceUID]
    [response] = responses
    assert response.PatientID == MR.PatientID
    assert response.StudyDate == MR.StudyDate
    assert response.ModalitiesInStudy == "MR"
    assert response.NumberOfStudyRelatedInstances == 1
    assert response.QueryRetrieveLevel == "STUDY"


@pytest.mark.dcmtk
def test_find_study_date_range(stored, tmp_path):
    keys = {"QueryRetrieveLevel": "STUDY", "StudyDate": "20040801-20040831", "StudyInstanceUID": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find")

    assert result.returncode == 0, result.stderr
    assert sorted(response_values(responses, "StudyInstanceUID")) == sorted([MR.StudyInstanceUID, US.StudyInstanceUID])


@pytest.mark.dcmtk
def test_find_study_time_range(stored, tmp_path):
    keys = {"QueryRetrieveLevel": "STUDY", "StudyTime": "-0800", "StudyInstanceUID": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find")

    assert result.returncode == 0, result.stderr
    assert response_values(responses, "StudyInstanceUID") == [CT.StudyInstanceUID]


@pytest.mark.dcmtk
def test_find_patient_level(stored, tmp_path):
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientID": "?CT1", "PatientName": "", "PatientSex": "",
            "NumberOfPatientRelatedStudies": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find", model="-P")

    assert result.returncode == 0, result.stderr
    [response] = responses
    assert response.PatientID == CT.PatientID
    assert str(response.PatientName) == str(CT.PatientName)
    assert response.PatientSex == CT.PatientSex
    assert response.NumberOfPatientRelatedStudies == 1


@pytest.mark.dcmtk
def test_find_series_uid_list(stored, tmp_path):
    uid_list = f"{CT.SeriesInstanceUID}\\{US.SeriesInstanceUID}"
    keys = {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": uid_list, "Modality": "", "SeriesNumber": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find")

    assert result.returncode == 0, result.stderr
    assert sorted(response_values(responses, "SeriesInstanceUID")) == sorted([CT.SeriesInstanceUID, US.SeriesInstanceUID])
    assert sorted(response_values(responses, "Modality")) == ["CT", "US"]


@pytest.mark.dcmtk
def test_find_image_level(stored, tmp_path):
    keys = {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": CT.StudyInstanceUID,
            "SeriesInstanceUID": CT.SeriesInstanceUID, "SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find")

    assert result.returncode == 0, result.stderr
    [response] = responses
    assert response.SOPInstanceUID == CT.SOPInstanceUID
    assert response.SOPClassUID == CT.SOPClassUID
    assert response.InstanceNumber == CT.InstanceNumber


@pytest.mark.dcmtk
def test_find_universal_matching(stored, tmp_path):
    keys = {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": ""}

    result, responses = findscu(stored.port, "WS1", keys, tmp_path / "find")

    assert result.returncode == 0, result.stderr
    assert sorted(response_values(responses, "SOPInstanceUID")) == sorted(h.SOPInstanceUID for h in HEADERS.values())


@pytest.mark.dcmtk
def test_find_counted_in_usage(stored, session, tmp_path):
    findscu(stored.port, "WS1", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, tmp_path / "find")

    rows = wait_for_end(session)
    assert rows[-1].operations == {"find": 1}


@pytest.mark.dcmtk
def test_get_byte_identical(stored, settings, tmp_path):
    output = tmp_path / "get"

    result = getscu(stored.port, "WS1", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT.StudyInstanceUID},
                    output)

    assert result.returncode == 0, result.stderr
    [received] = list(output.iterdir())
    assert dataset_bytes(received) == dataset_bytes(stored_file(settings, CT))
    assert re.search(r"Number of Completed Suboperations\s*: 1\n", result.stderr)
    assert re.search(r"Number of Failed Suboperations\s*: 0\n", result.stderr)


@pytest.mark.dcmtk
def test_move_to_storescp(stored, session, settings, tmp_path):
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    output = tmp_path / "moved"
    receiver = start_storescp(port, "VIEWER1", output, tmp_path / "storescp.log")
    try:
        result = movescu(stored.port, "WS1", "VIEWER1",
                         {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": MR.StudyInstanceUID,
                          "SeriesInstanceUID": MR.SeriesInstanceUID})
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)

    assert result.returncode == 0, result.stderr
    [received] = list(output.iterdir())
    assert dataset_bytes(received) == dataset_bytes(stored_file(settings, MR))
    assert "Received Final Move Response (Success)" in result.stderr
    assert "Associating with VIEWER1" not in stored.log()
    assert "C-MOVE of 1 instances to VIEWER1 at 127.0.0.1" in stored.log()


@pytest.mark.dcmtk
def test_get_lists_failed_instance(stored, settings):
    """A stored file missing from disk fails its C-STORE sub-operation, and the others are still sent.

    pynetdicom is the requestor because getscu (DCMTK 3.6.7) does not read the identifier of a C-GET response.
    """
    stored_file(settings, MR).unlink()
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for header in HEADERS.values():
        ae.add_requested_context(header.SOPClassUID, ExplicitVRLittleEndian)
        roles.append(build_role(header.SOPClassUID, scp_role=True))
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    association = ae.associate("127.0.0.1", stored.port, ae_title="PACS", ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert association.is_established
    identifier = Dataset()
    for keyword, value in ALL_STUDIES.items():
        setattr(identifier, keyword, value)
    responses = list(association.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    association.release()

    status, response_identifier = responses[-1]
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 2
    assert status.NumberOfFailedSuboperations == 1
    assert response_identifier.FailedSOPInstanceUIDList == MR.SOPInstanceUID
    assert sorted(received) == sorted([CT.SOPInstanceUID, US.SOPInstanceUID])


@pytest.mark.dcmtk
def test_move_lists_failed_instance(stored, session, settings, tmp_path):
    """A stored file missing from disk fails its C-STORE sub-operation, and the others still reach the destination."""
    stored_file(settings, MR).unlink()
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    output = tmp_path / "moved"
    receiver = start_storescp(port, "VIEWER1", output, tmp_path / "storescp.log")
    try:
        result = movescu(stored.port, "WS1", "VIEWER1", ALL_STUDIES, "-d")
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)

    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0xb000"), result.stderr
    assert final["Completed Suboperations"] == "2"
    assert final["Failed Suboperations"] == "1"
    assert final["FailedSOPInstanceUIDList"] == MR.SOPInstanceUID
    assert len(list(output.iterdir())) == 2
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move": 1}


@pytest.mark.dcmtk
def test_move_destination_rejects_association(stored, session, tmp_path):
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    receiver = start_storescp(port, "VIEWER1", tmp_path / "moved", tmp_path / "storescp.log", "--refuse")
    try:
        result = movescu(stored.port, "WS1", "VIEWER1", ALL_STUDIES, "-d")
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)

    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0xa702"), result.stderr
    assert final["Completed Suboperations"] == "0"
    assert final["Failed Suboperations"] == "3"
    assert sorted(final["FailedSOPInstanceUIDList"].split("\\")) == sorted(h.SOPInstanceUID for h in HEADERS.values())
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move_destination_failed": 1}
    assert rows[-1].reason == "move_destination_failed"
    assert f"no association with VIEWER1 at 127.0.0.1:{port}: " in rows[-1].detail


@pytest.mark.dcmtk
def test_move_unknown_destination(stored, session):
    result = movescu(stored.port, "WS1", "NOBODY",
                     {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT.StudyInstanceUID})

    assert "Refused: MoveDestinationUnknown" in result.stderr
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move_unknown_destination": 1}
    assert rows[-1].reason == "move_destination_unknown"


@pytest.mark.dcmtk
def test_move_destination_without_address(stored, session):
    add_identity(session, "NOADDR")

    result = movescu(stored.port, "WS1", "NOADDR",
                     {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT.StudyInstanceUID})

    assert "Refused: MoveDestinationUnknown" in result.stderr


@pytest.mark.dcmtk
@pytest.mark.parametrize("operation", ["find", "get", "move"])
def test_refused_until_ticked(stored, session, admin_client, tmp_path, operation):
    device = add_identity(session, "READER1", permitted=["echo"])
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT.StudyInstanceUID}
    run = {
        "find": lambda attempt: findscu(stored.port, "READER1", keys, tmp_path / f"find{attempt}")[0],
        "get": lambda attempt: getscu(stored.port, "READER1", keys, tmp_path / f"get{attempt}"),
        "move": lambda attempt: movescu(stored.port, "READER1", "WS1", keys),
    }[operation]
    session.execute(update(DicomIdentity).where(DicomIdentity.ae_title == "WS1")
                    .values(retrieve_host="127.0.0.1", retrieve_port=free_port()))
    session.commit()

    refused = run(1)
    response = admin_client.post(f"/settings/devices/dicom/{device.id}/permitted",
                                 data={"permitted": ["echo", operation]})
    accepted = run(2)

    # DCMTK 3.6.7 names 0x0124 only for C-ECHO and C-STORE; here it prints the number.
    assert "Status: 0x124)" in refused.stderr, refused.stderr
    assert response.status_code == 302
    assert "0x124" not in accepted.stderr, accepted.stderr
    rows = wait_for_end(session)
    assert rows[-2].operations == {f"{operation}_not_permitted": 1}
    assert rows[-2].reason == "operation_not_permitted"
    assert operation in rows[-1].operations or f"{operation}_failed" not in rows[-1].operations


@pytest.mark.dcmtk
def test_find_cancelled_by_peer(dicomd, session, tmp_path):
    """A C-CANCEL after the first pending response ends the matches with status Cancel."""
    add_identity(session, "WS1", permitted=ALL_OPERATIONS)
    source = dcmread(SAMPLES["CT_small.dcm"])
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    files = []
    for number in range(300):
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        files.append(tmp_path / f"{number}.dcm")
        source.save_as(files[-1], enforce_file_format=True)
    assert storescu(dicomd.port, "WS1", files).returncode == 0

    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert association.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = source.StudyInstanceUID
    identifier.SeriesInstanceUID = source.SeriesInstanceUID
    identifier.SOPInstanceUID = ""

    # dicomd may send all 300 matches before the cancel arrives on a loaded
    # machine, so the query is repeated until a cancel lands mid-stream.
    for message_id in range(1, 6):
        statuses = []
        for status, _ in association.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind,
                                                 msg_id=message_id):
            statuses.append(status.Status)
            if len(statuses) == 1:
                association.send_c_cancel(message_id, association.accepted_contexts[0].context_id)
        assert statuses[0] == 0xFF00, statuses[:3]
        if statuses[-1] == 0xFE00:
            break
    association.release()

    assert statuses[-1] == 0xFE00
    assert len(statuses) < 300
