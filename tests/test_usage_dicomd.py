"""Usage pages and the connection log after real associations through dicomd."""

import csv
import io
import subprocess
import time

import pytest

from portal.models import utcnow
from tests.dicomd_process import TOOL_TIMEOUT_SECONDS, add_identity, echoscu, storescu, wait_for_end
from tests.tools import dcmtk_environ, require_tool

pytestmark = pytest.mark.dcmtk


def echoscu_abort(port: int, calling: str) -> subprocess.CompletedProcess:
    command = require_tool("echoscu", "dcmtk")
    return subprocess.run([command, "--abort", "-aet", calling, "-aec", "PACS", "127.0.0.1", str(port)],
                          env=dcmtk_environ(), capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS)


def test_pages_show_real_associations(dicomd, session, admin_client, tmp_path):
    from pydicom.data import get_testdata_file

    echo = add_identity(session, "ECHO1")
    add_identity(session, "OFF1", enabled=False)
    add_identity(session, "SECURE1", require_tls=True)
    add_identity(session, "PING1", permitted=["echo"])

    assert echoscu(dicomd.port, "ECHO1").returncode == 0
    assert storescu(dicomd.port, "ECHO1", [get_testdata_file("CT_small.dcm")]).returncode == 0
    assert echoscu_abort(dicomd.port, "ECHO1").returncode == 0
    assert echoscu(dicomd.port, "echo1").returncode != 0
    assert echoscu(dicomd.port, "OFF1").returncode != 0
    assert echoscu(dicomd.port, "ECHO1", called="NOT_PACS").returncode != 0
    assert echoscu(dicomd.port, "SECURE1").returncode != 0
    storescu(dicomd.port, "PING1", [get_testdata_file("MR_small.dcm")])
    rows = wait_for_end(session)
    assert len(rows) == 8

    log_page = admin_client.get("/settings/devices/dicom/log").get_data(as_text=True)
    for title in ("Unknown calling AE title", "Identity disabled", "Wrong called AE title", "TLS required",
                  "Request type not permitted"):
        assert title in log_page
    assert "<td>aborted</td>" in log_page
    # The called AE title the device used, for a wrong one.
    assert "called AE title <code>NOT_PACS</code>" in log_page

    exported = list(csv.DictReader(io.StringIO(
        admin_client.get("/settings/devices/dicom/log.csv").get_data(as_text=True))))
    reasons = sorted(row["reason"] for row in exported if row["reason"])
    assert reasons == ["called_ae_mismatch", "identity_disabled", "operation_not_permitted", "tls_required",
                       "unknown_calling_ae"]
    assert [row["outcome"] for row in exported].count("aborted") == 1
    [stored] = [row for row in exported if "store=1" in row["operations"]]
    assert stored["identity"] == "Device ECHO1"
    assert stored["instances_received"] == "1"

    usage = admin_client.get(f"/settings/devices/dicom/{echo.id}/usage").get_data(as_text=True)
    periods = usage.split('id="periods"')[1].split("</table>")[0]
    accepted = periods.split("<th>Associations accepted</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in accepted.split("<td>")[1:]] == ["3", "3", "3", "3"]
    rejected = periods.split("<th>Associations rejected</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in rejected.split("<td>")[1:]] == ["1", "1", "1", "1"]
    stores = periods.split("<th>C-STORE requests</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in stores.split("<td>")[1:]] == ["1", "1", "1", "1"]
    today = utcnow().date().isoformat()
    assert f"<title>{today}: 4 associations</title>" in usage
    assert f"<title>{today}: 1 instances</title>" in usage
    assert "CT" in usage.split('id="studies"')[1]

    identities_page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
    unrecognised = identities_page.split('id="unrecognised"')[1].split("</section>")[0]
    assert "<code>echo1</code>" in unrecognised
    assert "<code>ECHO1</code> (Device ECHO1, differs only by case)" in unrecognised


def test_service_status_reports_listener(dicomd, admin_client):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
        panel = page.split('id="service-status"')[1].split("</section>")[0]
        if f"127.0.0.1:{dicomd.port}" in panel:
            break
        time.sleep(0.5)
    assert f"127.0.0.1:{dicomd.port}" in panel
    assert ">up<" in panel


PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1"


def test_abort_before_requests_explained(dicomd, session, admin_client, tmp_path):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    add_identity(session, "ECHO1")
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    private = tmp_path / "private.dcm"
    dataset.save_as(private)

    # storescu's default proposals leave out this class, so it finds no context for the file and aborts.
    result = storescu(dicomd.port, "ECHO1", [private])

    assert "No presentation context" in result.stderr
    [row] = wait_for_end(session)
    assert row.outcome == "aborted"
    assert row.reason == "aborted_before_requests"
    assert row.detail.startswith("aborted_before_requests: the association was aborted before any request; ")
    assert row.detail.endswith("proposed presentation contexts were accepted")
    log_page = admin_client.get("/settings/devices/dicom/log").get_data(as_text=True)
    assert "Aborted before any request" in log_page


def test_no_accepted_presentation_context_explained(dicomd, session, admin_client):
    from pynetdicom import AE

    add_identity(session, "ECHO1")
    device = AE(ae_title="ECHO1")
    device.add_requested_context(PRIVATE_SOP_CLASS)

    # pynetdicom, as the device, aborts an association on which none of its contexts was accepted.
    assoc = device.associate("127.0.0.1", dicomd.port, ae_title="PACS")
    assert assoc.is_aborted

    [row] = wait_for_end(session)
    assert row.outcome == "aborted"
    assert row.reason == "no_presentation_context"
    assert row.detail == (f"no_presentation_context: no proposed presentation context was accepted: "
                          f"{PRIVATE_SOP_CLASS} (abstract syntax not supported)")
    log_page = admin_client.get("/settings/devices/dicom/log").get_data(as_text=True)
    assert "No presentation context accepted" in log_page
