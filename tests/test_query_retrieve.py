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
    StudyRootQueryRetrieveInformationModelMove,
)

from sqlalchemy import update

from benchmarks.datasets import CT_IMAGE_STORAGE, ImageShape, write_instance
from dicomd.handlers import STATUS_CANCEL, STATUS_PENDING
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
    running_storescp,
    start_storescp,
)

ALL_OPERATIONS = ["echo", "store", "find", "move", "get", "commit"]
# The Study Root Query/Retrieve models by request.
STUDY_ROOT_MODELS = {
    "find": StudyRootQueryRetrieveInformationModelFind,
    "get": StudyRootQueryRetrieveInformationModelGet,
    "move": StudyRootQueryRetrieveInformationModelMove,
}
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
    with running_storescp(port, "VIEWER1", output, tmp_path / "storescp.log"):
        result = movescu(stored.port, "WS1", "VIEWER1",
                         {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": MR.StudyInstanceUID,
                          "SeriesInstanceUID": MR.SeriesInstanceUID})

    assert result.returncode == 0, result.stderr
    [received] = list(output.iterdir())
    assert dataset_bytes(received) == dataset_bytes(stored_file(settings, MR))
    assert "Received Final Move Response (Success)" in result.stderr
    assert "Associating with VIEWER1" not in stored.log()
    assert "C-MOVE of 1 instances to VIEWER1 at 127.0.0.1" in stored.log()


def get_all_studies(port: int, store_status: dict[str, int]) -> tuple[list, list[str]]:
    """C-GET the three sample studies as WS1 with pynetdicom; return (responses, SOP Instance UIDs received).

    The requestor returns, for each C-STORE sub-operation, the status that
    `store_status` gives for its SOP Instance UID, or 0x0000. pynetdicom is
    the requestor because getscu (DCMTK 3.6.7) does not read the identifier
    of a C-GET response.
    """
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for header in HEADERS.values():
        ae.add_requested_context(header.SOPClassUID, ExplicitVRLittleEndian)
        roles.append(build_role(header.SOPClassUID, scp_role=True))
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return store_status.get(event.request.AffectedSOPInstanceUID, 0x0000)

    association = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert association.is_established
    identifier = Dataset()
    for keyword, value in ALL_STUDIES.items():
        setattr(identifier, keyword, value)
    responses = list(association.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    association.release()
    return responses, received


@pytest.mark.dcmtk
def test_get_lists_failed_instance(stored, session, settings):
    """A stored file missing from disk fails its C-STORE sub-operation, and the others are still sent."""
    stored_file(settings, MR).unlink()

    responses, received = get_all_studies(stored.port, {})

    status, response_identifier = responses[-1]
    assert status.Status == 0xB000
    assert status.NumberOfCompletedSuboperations == 2
    assert status.NumberOfFailedSuboperations == 1
    assert response_identifier.FailedSOPInstanceUIDList == MR.SOPInstanceUID
    assert sorted(received) == sorted([CT.SOPInstanceUID, US.SOPInstanceUID])
    rows = wait_for_end(session)
    assert rows[-1].operations == {"get": 1, "get_sub_operations_failed": 1}
    assert rows[-1].reason == "sub_operations_failed"
    assert rows[-1].detail.startswith("sub_operations_failed: C-GET: 1 of 3 C-STORE sub-operations failed: ")
    assert f"(SOP instance {MR.SOPInstanceUID})" in rows[-1].detail


@pytest.mark.dcmtk
def test_get_records_store_status(stored, session):
    """A failure status from the requestor's storage is recorded with the instances it refused."""
    refused = {CT.SOPInstanceUID: 0xA700, US.SOPInstanceUID: 0xA700}

    responses, received = get_all_studies(stored.port, refused)

    status, response_identifier = responses[-1]
    assert status.Status == 0xB000
    assert status.NumberOfFailedSuboperations == 2
    assert len(received) == 3
    rows = wait_for_end(session)
    assert rows[-1].operations == {"get": 1, "get_sub_operations_failed": 2}
    assert rows[-1].reason == "sub_operations_failed"
    prefix = ("sub_operations_failed: C-GET: 2 of 3 C-STORE sub-operations failed: "
              "C-STORE status 0xA700 (Refused: Out of Resources) (SOP instance ")
    assert rows[-1].detail.startswith(prefix), rows[-1].detail
    assert rows[-1].detail.removeprefix(prefix) in {f"{uid} and 1 more)" for uid in refused}


@pytest.mark.dcmtk
def test_move_lists_failed_instance(stored, session, settings, admin_client, tmp_path):
    """A stored file missing from disk fails its C-STORE sub-operation, and the others still reach the destination."""
    stored_file(settings, MR).unlink()
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    output = tmp_path / "moved"
    with running_storescp(port, "VIEWER1", output, tmp_path / "storescp.log"):
        result = movescu(stored.port, "WS1", "VIEWER1", ALL_STUDIES, "-d")

    final = final_move_response(result.stderr)
    assert final["DIMSE Status"].startswith("0xb000"), result.stderr
    assert final["Completed Suboperations"] == "2"
    assert final["Failed Suboperations"] == "1"
    assert final["FailedSOPInstanceUIDList"] == MR.SOPInstanceUID
    assert len(list(output.iterdir())) == 2
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move": 1, "move_sub_operations_failed": 1}
    assert rows[-1].reason == "sub_operations_failed"
    assert rows[-1].detail.startswith("sub_operations_failed: C-MOVE to VIEWER1: 1 of 3 C-STORE sub-operations failed: ")
    assert f"(SOP instance {MR.SOPInstanceUID})" in rows[-1].detail
    log_page = admin_client.get("/settings/devices/dicom/log").get_data(as_text=True)
    assert "Retrieve sub-operations failed" in log_page
    assert "move_sub_operations_failed 1" in log_page


def query_retrieve_requestor(calling: str):
    """Return a pynetdicom AE that proposes the Study Root C-FIND, C-GET and C-MOVE models."""
    ae = AE(ae_title=calling)
    for model in STUDY_ROOT_MODELS.values():
        ae.add_requested_context(model)
    return ae


def send_request(association, operation: str, identifier: Dataset) -> list:
    """Send one C-FIND, C-GET or C-MOVE (to VIEWER1) request and return its (status, identifier) responses."""
    if operation == "find":
        return list(association.send_c_find(identifier, STUDY_ROOT_MODELS["find"]))
    if operation == "get":
        return list(association.send_c_get(identifier, STUDY_ROOT_MODELS["get"]))
    return list(association.send_c_move(identifier, "VIEWER1", STUDY_ROOT_MODELS["move"]))


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("operation", "keys", "error"),
    [
        ("find", {"QueryRetrieveLevel": "FOO"},
         "Query/Retrieve Level 'FOO' is not one of PATIENT, STUDY, SERIES, IMAGE"),
        ("get", {"QueryRetrieveLevel": "STUDY"}, "a STUDY level retrieve needs StudyInstanceUID"),
        ("move", {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3"},
         "a SERIES level retrieve needs SeriesInstanceUID"),
    ],
)
def test_invalid_identifier_explained(stored, session, operation, keys, error):
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=free_port())
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    association = query_retrieve_requestor("WS1").associate("127.0.0.1", stored.port, ae_title="PACS")
    assert association.is_established

    [(status, _)] = send_request(association, operation, identifier)
    association.release()

    assert status.Status == 0xA900
    # Error Comment is LO, at most 64 characters.
    assert status.ErrorComment == (error if len(error) <= 64 else error[:61] + "...")
    rows = wait_for_end(session)
    assert rows[-1].operations == {f"{operation}_invalid": 1}
    assert rows[-1].reason == "invalid_identifier"
    assert rows[-1].detail == f"invalid_identifier: C-{operation.upper()} identifier: {error}"


@pytest.mark.dcmtk
def test_repeated_refusal_recorded_once(stored, session):
    add_identity(session, "READER1", permitted=["echo"])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = CT.StudyInstanceUID
    association = query_retrieve_requestor("READER1").associate("127.0.0.1", stored.port, ae_title="PACS")
    assert association.is_established

    statuses = [status.Status for operation in ("find", "find", "get")
                for status, _ in send_request(association, operation, identifier)]
    association.release()

    assert statuses == [0x0124, 0x0124, 0x0124]
    rows = wait_for_end(session)
    assert rows[-1].operations == {"find_not_permitted": 2, "get_not_permitted": 1}
    assert rows[-1].detail == "operation_not_permitted: find\noperation_not_permitted: get"


@pytest.mark.dcmtk
def test_move_destination_rejects_association(stored, session, tmp_path):
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    with running_storescp(port, "VIEWER1", tmp_path / "moved", tmp_path / "storescp.log", "--refuse"):
        result = movescu(stored.port, "WS1", "VIEWER1", ALL_STUDIES, "-d")

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
def test_getscu_invalid_identifier_released(stored, tmp_path):
    """A C-GET that fails before any sub-operation carries no identifier, so getscu reads it and releases."""
    result = getscu(stored.port, "WS1", {"QueryRetrieveLevel": "STUDY"}, tmp_path / "got")

    # DCMTK's name for 0xA900.
    assert "Received C-GET Response (Error: DataSetDoesNotMatchSOPClass)" in result.stderr, result.stderr
    assert "Release Failed" not in result.stderr
    assert "Aborting Association" not in result.stderr
    assert re.search(r"Number of Failed Suboperations\s*: 0\n", result.stderr), result.stderr


# Matches for the cancel tests: enough that a C-CANCEL which does not stop the
# request is plain to see in the number of responses.
MANY_INSTANCES = 400
# Pending responses the requestor receives before it sends C-CANCEL.
CANCEL_AFTER = 3
# Requests per cancel test: one cancel that lands mid-stream may be luck.
CANCEL_ROUNDS = 5
# The maximum number of responses a cancelled request may get. dicomd still
# sends the responses it queued or built while the C-CANCEL was on its way:
# 30 C-FINDs got 5 to 16 responses and 15 C-GETs or C-MOVEs 5 each, on an
# idle 2-core machine. This bound leaves room for a loaded machine and is
# still far below MANY_INSTANCES.
MAX_RESPONSES_AFTER_CANCEL = 100


@pytest.fixture
def many_stored(dicomd, session, tmp_path) -> Dataset:
    """Store MANY_INSTANCES small instances of one series from WS1 in dicomd; return the series' UIDs."""
    add_identity(session, "WS1", permitted=ALL_OPERATIONS)
    study, series = generate_uid(), generate_uid()
    directory = tmp_path / "many"
    directory.mkdir()
    files = []
    for number in range(MANY_INSTANCES):
        files.append(directory / f"{number:03d}.dcm")
        write_instance(files[-1], ImageShape(rows=8, columns=8), sop_class_uid=CT_IMAGE_STORAGE,
                       study_uid=study, series_uid=series, seed=number)
    result = storescu(dicomd.port, "WS1", files)
    assert result.returncode == 0, result.stderr
    wait_for_end(session)

    keys = Dataset()
    keys.StudyInstanceUID = study
    keys.SeriesInstanceUID = series
    return keys


def series_identifier(series: Dataset, level: str) -> Dataset:
    """Return an identifier at `level` (SERIES or IMAGE) that selects every instance of `series`."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = series.StudyInstanceUID
    identifier.SeriesInstanceUID = series.SeriesInstanceUID
    if level == "IMAGE":
        identifier.SOPInstanceUID = ""
    return identifier


def cancelled_responses(association, responses, message_id: int) -> list[Dataset]:
    """Consume `responses` of request `message_id`, sending C-CANCEL after CANCEL_AFTER pending ones; return the statuses."""
    statuses = []
    for status, _ in responses:
        statuses.append(status)
        if len(statuses) == CANCEL_AFTER:
            association.send_c_cancel(message_id, association.accepted_contexts[0].context_id)
    return statuses


@pytest.mark.dcmtk
def test_find_cancel_stops_matches(dicomd, many_stored, session):
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert association.is_established
    identifier = series_identifier(many_stored, "IMAGE")

    rounds = []
    for message_id in range(1, CANCEL_ROUNDS + 1):
        responses = association.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind,
                                            msg_id=message_id)
        rounds.append([status.Status for status in cancelled_responses(association, responses, message_id)])
    association.release()

    for statuses in rounds:
        assert statuses[-1] == STATUS_CANCEL, (len(statuses), statuses[-3:])
        assert set(statuses[:-1]) == {STATUS_PENDING}
        assert len(statuses) <= MAX_RESPONSES_AFTER_CANCEL
    rows = wait_for_end(session)
    assert rows[-1].operations == {"find": CANCEL_ROUNDS}


@pytest.mark.dcmtk
def test_findscu_cancel_stops_matches(dicomd, many_stored, tmp_path):
    keys = {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": many_stored.StudyInstanceUID,
            "SeriesInstanceUID": many_stored.SeriesInstanceUID, "SOPInstanceUID": ""}

    for attempt in range(CANCEL_ROUNDS):
        result, responses = findscu(dicomd.port, "WS1", keys, tmp_path / f"find{attempt}",
                                    "--cancel", str(CANCEL_AFTER))

        assert result.returncode == 0, result.stderr
        final = result.stderr.rpartition("Received Final Find Response")[2].partition("\n")[0]
        assert final.startswith(" (Cancel"), (len(responses), final)
        assert CANCEL_AFTER <= len(responses) <= MAX_RESPONSES_AFTER_CANCEL


@pytest.mark.dcmtk
def test_get_cancel_stops_sub_operations(dicomd, many_stored, session):
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    association = ae.associate("127.0.0.1", dicomd.port, ae_title="PACS",
                               ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert association.is_established
    identifier = series_identifier(many_stored, "SERIES")

    rounds = []
    for message_id in range(1, CANCEL_ROUNDS + 1):
        responses = association.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet,
                                           msg_id=message_id)
        rounds.append(cancelled_responses(association, responses, message_id))
    association.release()

    for statuses in rounds:
        final = statuses[-1]
        assert final.Status == STATUS_CANCEL, (len(statuses), final)
        assert len(statuses) <= MAX_RESPONSES_AFTER_CANCEL
        assert final.NumberOfRemainingSuboperations >= MANY_INSTANCES - MAX_RESPONSES_AFTER_CANCEL
        assert final.NumberOfFailedSuboperations == 0
    assert len(received) <= CANCEL_ROUNDS * MAX_RESPONSES_AFTER_CANCEL
    rows = wait_for_end(session)
    assert rows[-1].operations == {"get": CANCEL_ROUNDS}


@pytest.mark.dcmtk
def test_move_cancel_stops_sub_operations(dicomd, many_stored, session, tmp_path):
    port = free_port()
    add_identity(session, "VIEWER1", retrieve_host="127.0.0.1", retrieve_port=port)
    receiver = start_storescp(port, "VIEWER1", tmp_path / "moved", tmp_path / "storescp.log")
    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    association = ae.associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert association.is_established
    identifier = series_identifier(many_stored, "SERIES")

    rounds = []
    try:
        for message_id in range(1, CANCEL_ROUNDS + 1):
            responses = association.send_c_move(identifier, "VIEWER1", StudyRootQueryRetrieveInformationModelMove,
                                                msg_id=message_id)
            rounds.append(cancelled_responses(association, responses, message_id))
        association.release()
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)

    for statuses in rounds:
        final = statuses[-1]
        assert final.Status == STATUS_CANCEL, (len(statuses), final)
        assert len(statuses) <= MAX_RESPONSES_AFTER_CANCEL
        assert final.NumberOfRemainingSuboperations >= MANY_INSTANCES - MAX_RESPONSES_AFTER_CANCEL
    rows = wait_for_end(session)
    assert rows[-1].operations == {"move": CANCEL_ROUNDS}
