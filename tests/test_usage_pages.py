"""Usage pages, the connection log and troubleshooting, on recorded rows."""

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.identities.service import create_identity
from portal.models import Association, DicomIdentity, Instance, ListenerHeartbeat, Study, UsageDay, utcnow
from portal.usage.queries import edit_distance, suggest_identities
from portal.usage_days import add_usage, request_counts
from tests.conftest import login


def record(session, identity=None, *, ago=timedelta(minutes=5), outcome="accepted", reason=None,
           calling=None, peer="127.0.0.1", operations=None, instances=0, size=0, transport="plain"):
    started = utcnow() - ago
    if calling is None and identity is not None:
        calling = identity.ae_title
    association = Association(
        started_at=started, ended_at=started + timedelta(seconds=2),
        identity_id=identity.id if identity else None,
        calling_ae_title=calling,
        called_ae_title="PACS", peer_address=peer, peer_port=40000, transport=transport, local_port=11112,
        outcome=outcome, reason=reason, operations=operations or {}, instances_received=instances,
        bytes_received=size,
    )
    session.add(association)
    if identity is not None:
        counter = "associations_rejected" if outcome == "rejected" else "associations_accepted"
        add_usage(session, identity.id, started.date(), **{counter: 1}, instances_received=instances,
                  bytes_received=size, **{f"{name}_requests": count for name, count in (operations or {}).items()})
    session.flush()
    return association


@pytest.fixture
def echo(app):
    with app.app_context():
        identity = create_identity(db.session, name="Echo Room 1", ae_title="ECHO1")
        db.session.commit()
        return identity.id


def with_identity(app, identity_id, action):
    with app.app_context():
        identity = db.session.get(DicomIdentity, identity_id)
        result = action(db.session, identity)
        db.session.commit()
        return result


def test_usage_periods_and_operations(app, admin_client, echo):
    def seed(session, identity):
        record(session, identity, ago=timedelta(hours=1), operations={"echo": 1, "store": 3}, instances=3, size=3000)
        record(session, identity, ago=timedelta(hours=2), outcome="rejected", reason="tls_required")
        record(session, identity, ago=timedelta(days=3), operations={"store": 2}, instances=2, size=2000)
        record(session, identity, ago=timedelta(days=20), operations={"echo": 1})
        record(session, identity, ago=timedelta(days=100), operations={"echo": 1})
    with_identity(app, echo, seed)

    page = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)
    periods = page.split('id="periods"')[1].split("</table>")[0]
    accepted_row = periods.split("<th>Associations accepted</th>")[1].split("</tr>")[0]
    assert accepted_row.count("<td>") == 4
    assert [cell.split("</td>")[0] for cell in accepted_row.split("<td>")[1:]] == ["1", "2", "3", "4"]
    echo_row = periods.split("<th>C-ECHO requests</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in echo_row.split("<td>")[1:]] == ["1", "1", "2", "3"]
    store_row = periods.split("<th>C-STORE requests</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in store_row.split("<td>")[1:]] == ["3", "5", "5", "5"]
    rejected_row = periods.split("<th>Associations rejected</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in rejected_row.split("<td>")[1:]] == ["1", "1", "1", "1"]
    # dicomd counts a refused or failed request under its operation too.
    assert "Request counts include requests that were refused as not permitted or failed" in page


def test_usage_chart_is_server_side_svg(app, admin_client, echo):
    with_identity(app, echo, lambda session, identity: record(session, identity, ago=timedelta(days=2),
                                                               instances=4, size=10))
    page = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)
    assert "<svg" in page
    assert page.count('class="bar-associations"') == 30
    assert page.count('class="bar-instances"') == 30
    day = (utcnow() - timedelta(days=2)).date().isoformat()
    assert f"<title>{day}: 1 associations</title>" in page
    assert f"<title>{day}: 4 instances</title>" in page


def test_recent_associations_paginated(app, admin_client, echo):
    def seed(session, identity):
        # dicomd inserts rows as associations happen, so the oldest goes first.
        for minutes in reversed(range(60)):
            record(session, identity, ago=timedelta(minutes=minutes + 1), peer=f"10.0.0.{minutes}")
    with_identity(app, echo, seed)

    first = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)
    rows = first.split('id="associations"')[1].split("</table>")[0]
    assert rows.count("<tr class=") == 50
    assert "10.0.0.0<" in rows
    assert "10.0.0.59<" not in rows
    link = first.split('class="pager"><a href="')[1].split('"')[0].replace("&amp;", "&")
    second = admin_client.get(link).get_data(as_text=True)
    rows = second.split('id="associations"')[1].split("</table>")[0]
    assert rows.count("<tr class=") == 10
    assert "10.0.0.59<" in rows


def test_studies_without_patient_data(app, admin_client, echo):
    def seed(session, identity):
        association = record(session, identity, instances=2)
        study = Study(study_instance_uid="1.2.3", identity_id=identity.id, study_date="20261201",
                      modalities="US", study_description="Transthoracic echo")
        session.add(study)
        session.flush()
        for number in (1, 2):
            session.add(Instance(sop_instance_uid=f"1.2.3.4.{number}", sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1",
                                 series_instance_uid="1.2.3.4", study_id=study.id, identity_id=identity.id,
                                 association_id=association.id, modality="US", transfer_syntax_uid="1.2.840.10008.1.2.1",
                                 size_bytes=100, path=f"1.2.3/1.2.3.4/1.2.3.4.{number}.dcm"))
    with_identity(app, echo, seed)
    page = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)
    studies = page.split('id="studies"')[1].split("</table>")[0]
    assert "2026-12-01" in studies
    assert "Transthoracic echo" in studies
    assert "<td>2</td>" in studies
    assert "Patient" not in page


def test_connection_log_filters(app, admin_client, echo):
    def seed(session, identity):
        record(session, identity, ago=timedelta(minutes=1), peer="10.1.4.23")
        record(session, identity, ago=timedelta(minutes=2), outcome="rejected", reason="identity_disabled")
        record(session, None, ago=timedelta(minutes=3), outcome="rejected", reason="unknown_calling_ae",
               calling="STRANGER", peer="10.9.9.9")
        record(session, None, ago=timedelta(days=3), outcome="rejected", reason="tls_handshake_failed",
               transport="tls", peer="10.7.7.7")
    with_identity(app, echo, seed)

    def log_rows(query=""):
        page = admin_client.get(f"/settings/devices/dicom/log?{query}").get_data(as_text=True)
        return page.split('id="log"')[1].split("</table>")[0].count("<tr class=") if 'id="log"' in page else 0

    assert log_rows() == 4
    assert log_rows("outcome=rejected") == 3
    assert log_rows("reason=unknown_calling_ae") == 1
    assert log_rows("transport=tls") == 1
    assert log_rows("peer=10.1.4.23") == 1
    assert log_rows(f"identity={echo}") == 2
    today = utcnow().date()
    assert log_rows(f"since={(today - timedelta(days=1)).isoformat()}") == 3
    assert log_rows(f"until={(today - timedelta(days=2)).isoformat()}") == 1


def test_connection_log_explains_reasons(app, admin_client, echo):
    with_identity(app, echo, lambda session, identity: record(
        session, identity, outcome="rejected", reason="called_ae_mismatch"))
    page = admin_client.get("/settings/devices/dicom/log").get_data(as_text=True)
    assert "Wrong called AE title" in page
    assert "set the remote (called) AE title of the PACS destination" in page


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("outcome=maybe", "invalid outcome &#39;maybe&#39;"),
        ("reason=bad_luck", "invalid reason"),
        ("transport=carrier-pigeon", "invalid transport"),
        ("identity=abc", "invalid identity &#39;abc&#39;"),
        ("identity=99999999999", "invalid identity &#39;99999999999&#39;"),
        ("since=yesterday", "invalid since"),
        ("until=2026-02-30", "invalid until"),
        ("since=2026-12-02&until=2026-12-01", "must be before its end"),
        ("before=-1", "invalid before"),
        ("peer=" + "1" * 65, "invalid peer address"),
    ],
)
def test_connection_log_invalid_filters(admin_client, query, message):
    response = admin_client.get(f"/settings/devices/dicom/log?{query}")
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)


def test_connection_log_keyset_pages(app, admin_client, echo):
    def seed(session, identity):
        for minutes in range(120):
            record(session, identity, ago=timedelta(minutes=minutes + 1), outcome="rejected", reason="tls_required")
    with_identity(app, echo, seed)
    seen = 0
    url = "/settings/devices/dicom/log?reason=tls_required"
    while url:
        page = admin_client.get(url).get_data(as_text=True)
        seen += page.split('id="log"')[1].split("</table>")[0].count("<tr class=")
        url = page.split('class="pager"><a href="')[1].split('"')[0].replace("&amp;", "&") if 'class="pager"' in page else None
        if url:
            assert "reason=tls_required" in url
    assert seen == 120


def test_connection_log_csv(app, admin_client, echo):
    def seed(session, identity):
        record(session, identity, operations={"store": 2}, instances=2, size=1234)
        record(session, None, outcome="rejected", reason="unknown_calling_ae", calling="STRANGER")
    with_identity(app, echo, seed)
    response = admin_client.get("/settings/devices/dicom/log.csv?outcome=accepted")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1
    assert rows[0]["identity"] == "Echo Room 1"
    assert rows[0]["operations"] == "store=2"
    assert rows[0]["bytes_received"] == "1234"
    assert admin_client.get("/settings/devices/dicom/log.csv?outcome=nope").status_code == 400


@pytest.mark.parametrize(
    ("unknown", "registered", "similarity"),
    [
        ("echo1", "ECHO1", "differs only by case"),
        ("ECHO 1", "ECHO1", "differs only by spaces"),
        ("EPIQ7-RM1", "EPIQ7_RM1", "1 character different"),
        ("EPIQ7RM1", "EPIQ7_RM1", "1 character different"),
        ("CATH_LAB_2", "CATH_LAB_12", "1 character different"),
        ("VIVID59", "VIVID95", "2 characters different"),
    ],
)
def test_did_you_mean(unknown, registered, similarity):
    [suggestion] = suggest_identities(unknown, [DicomIdentity(name="x", ae_title=registered)])
    assert suggestion.identity.ae_title == registered
    assert suggestion.similarity == similarity


def test_did_you_mean_no_match():
    assert suggest_identities("CT_SCANNER", [DicomIdentity(name="x", ae_title="ECHO1")]) == []


def test_edit_distance():
    assert edit_distance("", "") == 0
    assert edit_distance("ECHO1", "ECHO1") == 0
    assert edit_distance("ECHO1", "ECHO2") == 1
    assert edit_distance("ECHO", "ECHO12") == 2
    assert edit_distance("ECHO", "CATH_LAB_1", limit=2) == 3
    assert edit_distance("ECHO1", "ECHO2", limit=2) == 1
    assert edit_distance("ABCDEF", "UVWXYZ", limit=2) == 3


def test_unrecognised_devices_panel(app, admin_client, echo):
    def seed(session, identity):
        for minutes in (3, 2, 1):
            record(session, None, ago=timedelta(minutes=minutes), outcome="rejected", reason="unknown_calling_ae",
                   calling="echo1", peer=f"10.1.4.{minutes}")
        record(session, None, ago=timedelta(days=8), outcome="rejected", reason="unknown_calling_ae",
               calling="OLD_DEVICE")
    with_identity(app, echo, seed)
    page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
    panel = page.split('id="unrecognised"')[1].split("</section>")[0]
    assert "<code>echo1</code>" in panel
    assert "<td>3</td>" in panel
    assert "10.1.4.1" in panel
    assert "<code>ECHO1</code> (Echo Room 1, differs only by case)" in panel
    assert "OLD_DEVICE" not in panel
    assert "Correct the AE title on the device" in panel
    assert 'href="/settings/devices/dicom/new?ae_title=echo1"' not in panel


def test_unrecognised_device_offers_create(app, admin_client, echo):
    with_identity(app, echo, lambda session, identity: record(
        session, None, outcome="rejected", reason="unknown_calling_ae", calling="CATH_LAB_2"))
    panel = admin_client.get("/settings/devices/dicom").get_data(as_text=True).split('id="unrecognised"')[1]
    assert 'href="/settings/devices/dicom/new?ae_title=CATH_LAB_2"' in panel


@pytest.mark.parametrize("url", ["/settings/devices/dicom/99999999999", "/settings/devices/dicom/99999999999/usage",
                                 "/settings/users/99999999999", "/settings/devices/dicom/0"])
def test_out_of_range_ids_not_found(admin_client, url):
    assert admin_client.get(url).status_code == 404


def test_create_identity_prefilled(admin_client):
    page = admin_client.get("/settings/devices/dicom/new?ae_title=STRANGER").get_data(as_text=True)
    assert 'value="STRANGER"' in page


def test_service_status_panel(app, admin_client):
    with app.app_context():
        db.session.add_all([
            ListenerHeartbeat(node="pacs-a", host="0.0.0.0", port=11112, transport="plain", state="up",
                              version="0.1.0", last_heartbeat_at=utcnow()),
            ListenerHeartbeat(node="pacs-a", host="0.0.0.0", port=2762, transport="tls", state="up",
                              version="0.1.0", last_heartbeat_at=utcnow() - timedelta(minutes=5)),
        ])
        db.session.commit()
    page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
    panel = page.split('id="service-status"')[1].split("</section>")[0]
    assert "0.0.0.0:11112" in panel
    assert panel.count(">up<") == 1
    assert panel.count(">down<") == 1


def test_support_reads_usage_read_only(app, client, echo):
    with_identity(app, echo, lambda session, identity: record(
        session, None, outcome="rejected", reason="unknown_calling_ae", calling="echo1"))
    login(client, "support")
    for url in ("/usage", f"/settings/devices/dicom/{echo}/usage", "/settings/devices/dicom/log",
                "/settings/devices/dicom/log.csv"):
        response = client.get(url)
        assert response.status_code == 200, url
        page = response.get_data(as_text=True)
        assert "Create identity" not in page
        assert "Disable" not in page
        assert "Delete" not in page


def test_prune_keeps_totals(app, runner, admin_client, echo):
    def seed(session, identity):
        record(session, identity, ago=timedelta(days=100), operations={"store": 5}, instances=5, size=500)
        record(session, identity, ago=timedelta(days=1), operations={"store": 1}, instances=1, size=100)
    with_identity(app, echo, seed)
    before = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)

    result = runner.invoke(args=["usage", "prune", "--older-than", "90"])
    assert result.exit_code == 0, result.output
    assert "Removed 1 association rows" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Association)) == 1
        assert db.session.scalar(select(func.count()).select_from(UsageDay)) == 2

    after = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)
    assert before.split('id="periods"')[1].split("</table>")[0] == after.split('id="periods"')[1].split("</table>")[0]


@pytest.mark.parametrize(("value", "message"), [("0", "0 is not in the range x>=1"), ("soon", "'soon' is not a valid integer")])
def test_prune_invalid_days(runner, value, message):
    result = runner.invoke(args=["usage", "prune", "--older-than", value])
    assert result.exit_code != 0
    assert message in result.output


def test_add_usage_rejects_unknown_counter(app, echo):
    with app.app_context(), pytest.raises(ValueError, match="unknown usage counters: bogus"):
        add_usage(db.session, echo, utcnow().date(), bogus=1)


def test_request_counts_skip_sub_operations():
    operations = {"get": 2, "get_sub_operations_failed": 7, "move": 1, "move_sub_operations_failed": 3,
                  "move_destination_failed": 1, "store": 4, "store_duplicate": 4}

    counts = request_counts(operations)

    assert counts["get"] == 2
    assert counts["move"] == 2
    assert counts["store"] == 4


def test_connection_log_shows_sub_operation_failures(app, admin_client, echo):
    def seed(session, identity):
        association = record(session, identity, reason="sub_operations_failed", operations={"move": 1})
        # record() adds each operations key to a daily request counter, which has no sub-operation column.
        association.operations = {"move": 1, "move_sub_operations_failed": 2}
        association.detail = "sub_operations_failed: C-MOVE to VIEWER1: 2 of 3 C-STORE sub-operations failed"
    with_identity(app, echo, seed)

    page = admin_client.get("/settings/devices/dicom/log").get_data(as_text=True)
    usage = admin_client.get(f"/settings/devices/dicom/{echo}/usage").get_data(as_text=True)

    assert "Retrieve sub-operations failed" in page
    assert "move_sub_operations_failed 2" in page
    assert "2 of 3 C-STORE sub-operations failed" in page
    periods = usage.split('id="periods"')[1].split("</table>")[0]
    moves = periods.split("<th>C-MOVE requests</th>")[1].split("</tr>")[0]
    assert [cell.split("</td>")[0] for cell in moves.split("<td>")[1:]] == ["1", "1", "1", "1"]


def test_last_tls_session_shown(app, admin_client, echo):
    def seed(session, identity):
        association = record(session, identity, transport="tls")
        association.tls_version = "TLSv1.3"
        association.tls_cipher = "TLS_AES_256_GCM_SHA384"
        association.client_certificate_subject = "CN=Echo Room 1"
    with_identity(app, echo, seed)
    for url in (f"/settings/devices/dicom/{echo}/usage", f"/settings/devices/dicom/{echo}"):
        page = admin_client.get(url).get_data(as_text=True)
        assert "Last TLS session" in page
        assert "TLSv1.3, TLS_AES_256_GCM_SHA384;" in page
        assert "client certificate: CN=Echo Room 1" in page
