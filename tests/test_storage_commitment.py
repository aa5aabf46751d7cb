"""Storage commitment push model against `dicomd run`, with pynetdicom as the device on loopback."""

from __future__ import annotations

import queue

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification
from sqlalchemy import update

from portal.models import DicomIdentity

from tests.conftest import free_port
from tests.dicomd_process import add_identity, storescu, wait_for_end
from tests.test_query_retrieve import CT, SAMPLES

REPORT_TIMEOUT_SECONDS = 15
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def commitment_request(*references: tuple[str, str]) -> Dataset:
    request = Dataset()
    request.TransactionUID = generate_uid()
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    request.ReferencedSOPSequence = items
    return request


def report_collector():
    reports: queue.Queue = queue.Queue()

    def on_report(event):
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    return reports, on_report


@pytest.fixture
def device(dicomd, session):
    """dicomd with CT_small stored by the identity CART1, which may store and request storage commitment."""
    add_identity(session, "CART1", permitted=["echo", "store", "commit"])
    result = storescu(dicomd.port, "CART1", [SAMPLES["CT_small.dcm"]])
    assert result.returncode == 0, result.stderr
    wait_for_end(session)
    return dicomd


def test_commitment_same_association(device, session):
    reports, on_report = report_collector()
    ae = AE(ae_title="CART1")
    ae.add_requested_context(StorageCommitmentPushModel)
    missing_uid = generate_uid()
    request = commitment_request((CT.SOPClassUID, CT.SOPInstanceUID), (CT.SOPClassUID, missing_uid))

    association = ae.associate("127.0.0.1", device.port, ae_title="PACS",
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert association.is_established
    try:
        status, _ = association.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        event_type, information = reports.get(timeout=REPORT_TIMEOUT_SECONDS)
    finally:
        association.release()

    assert status.Status == 0x0000
    assert event_type == 2
    assert information.TransactionUID == request.TransactionUID
    assert [item.ReferencedSOPInstanceUID for item in information.ReferencedSOPSequence] == [CT.SOPInstanceUID]
    [failed] = information.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == missing_uid
    assert failed.FailureReason == 0x0112
    rows = wait_for_end(session)
    assert rows[-1].operations == {"commit": 1}


def test_commitment_new_association(device, session):
    reports, on_report = report_collector()
    port = free_port()
    session.execute(update(DicomIdentity).where(DicomIdentity.ae_title == "CART1")
                    .values(retrieve_host="127.0.0.1", retrieve_port=port))
    session.commit()
    receiver = AE(ae_title="CART1")
    receiver.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = receiver.start_server(("127.0.0.1", port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        ae = AE(ae_title="CART1")
        ae.add_requested_context(StorageCommitmentPushModel)
        request = commitment_request((CT.SOPClassUID, CT.SOPInstanceUID))
        association = ae.associate("127.0.0.1", device.port, ae_title="PACS")
        assert association.is_established
        status, _ = association.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        # dicomd may send the report on this association as the release
        # request crosses it. It then responds to the release with an
        # A-RELEASE-RP and sends the report on a new association.
        association.release()
        released = association.is_released
        event_type, information = reports.get(timeout=REPORT_TIMEOUT_SECONDS)
    finally:
        server.shutdown()

    assert released
    assert status.Status == 0x0000
    assert event_type == 1
    assert information.TransactionUID == request.TransactionUID
    assert [item.ReferencedSOPInstanceUID for item in information.ReferencedSOPSequence] == [CT.SOPInstanceUID]
    assert "FailedSOPSequence" not in information


def test_commitment_refused_without_permission(dicomd, session):
    add_identity(session, "CART2")
    ae = AE(ae_title="CART2")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(Verification)

    association = ae.associate("127.0.0.1", dicomd.port, ae_title="PACS")
    status, _ = association.send_n_action(commitment_request((CT.SOPClassUID, CT.SOPInstanceUID)), 1,
                                          StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    echo = association.send_c_echo() if association.is_established else None
    association.release()

    assert status.Status == 0x0124
    assert echo is not None
    assert echo.Status == 0x0000
