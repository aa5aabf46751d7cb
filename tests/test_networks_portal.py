"""Allowed source networks on the identity's configuration page."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.identities.service import create_identity
from portal.models import Association, AuditEvent, DicomIdentity, utcnow

HTMX = {"HX-Request": "true"}


@pytest.fixture
def echo(app):
    with app.app_context():
        identity = create_identity(db.session, name="Echo Room 1", ae_title="ECHO1")
        db.session.commit()
        return identity.id


def networks(app, identity_id):
    with app.app_context():
        return db.session.get(DicomIdentity, identity_id).allowed_networks


def test_save_networks_inline(app, admin_client, echo):
    response = admin_client.post(f"/settings/devices/dicom/{echo}/networks",
                                 data={"networks": "10.1.4.0/24\n fd00::/64 \n10.1.5.7"}, headers=HTMX)
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert body.lstrip().startswith('<section class="card" id="allowed-networks">')
    assert networks(app, echo) == ["10.1.4.0/24", "fd00::/64", "10.1.5.7/32"]
    with app.app_context():
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "identity.networks"))
        assert event.before == {"allowed_networks": []}
        assert event.after == {"allowed_networks": ["10.1.4.0/24", "fd00::/64", "10.1.5.7/32"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.1.4.5/24", "has host bits set: the range is 10.1.4.0/24"),
        ("10.1.4.0/24\nnot-an-address", "&#39;not-an-address&#39; is not an IP address or range"),
        ("10.1.4.23\n10.1.4.23/32", "&#39;10.1.4.23/32&#39; repeats &#39;10.1.4.23&#39;"),
        ("fd00::/129", "is not an IP address or range"),
    ],
)
def test_invalid_networks_not_saved(app, admin_client, echo, text, message):
    admin_client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": "192.0.2.0/24"})
    response = admin_client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": text}, headers=HTMX)
    body = response.get_data(as_text=True)
    assert message in body
    assert "Nothing was saved." in body
    assert networks(app, echo) == ["192.0.2.0/24"]


def test_invalid_networks_without_javascript(app, admin_client, echo):
    response = admin_client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": "10.1.4.5/24"},
                                 follow_redirects=True)
    assert "Allowed networks not saved" in response.get_data(as_text=True)
    assert networks(app, echo) == []


def test_clear_networks(app, admin_client, echo):
    admin_client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": "10.1.4.0/24"})
    admin_client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": "  \n"})
    assert networks(app, echo) == []


def test_recent_addresses_suggested(app, admin_client, echo):
    with app.app_context():
        for address in ("10.1.4.23", "10.1.4.23", "::ffff:10.1.4.24"):
            db.session.add(Association(started_at=utcnow() - timedelta(hours=1), identity_id=echo,
                                       calling_ae_title="ECHO1", called_ae_title="PACS", peer_address=address,
                                       transport="plain", outcome="accepted", operations={}))
        db.session.add(Association(started_at=utcnow() - timedelta(days=40), identity_id=echo,
                                   calling_ae_title="ECHO1", called_ae_title="PACS", peer_address="10.9.9.9",
                                   transport="plain", outcome="accepted", operations={}))
        db.session.commit()

    page = admin_client.get(f"/settings/devices/dicom/{echo}").get_data(as_text=True)
    recent = page.split('id="recent-addresses"')[1].split("</table>")[0]
    assert "<code>10.1.4.23</code>" in recent
    assert "<td>2</td>" in recent
    assert "Allow 10.1.4.24/32" in recent
    assert "10.9.9.9" not in recent
    assert 'value="10.1.4.23/32\n10.1.4.24/32"' in page

    admin_client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": "10.1.4.23/32\n10.1.4.24/32"})
    assert networks(app, echo) == ["10.1.4.23/32", "10.1.4.24/32"]
    page = admin_client.get(f"/settings/devices/dicom/{echo}").get_data(as_text=True)
    assert "Allow only these addresses" not in page


def test_networks_forbidden_for_support(app, client, echo):
    from tests.conftest import login

    login(client, "support")
    response = client.post(f"/settings/devices/dicom/{echo}/networks", data={"networks": "10.1.4.0/24"})
    assert response.status_code == 403
    assert networks(app, echo) == []


def retrieve(app, identity_id):
    with app.app_context():
        identity = db.session.get(DicomIdentity, identity_id)
        return identity.retrieve_host, identity.retrieve_port


def test_retrieve_address_saved_inline(app, admin_client, echo):
    response = admin_client.post(f"/settings/devices/dicom/{echo}/retrieve",
                                 data={"retrieve_host": " 10.1.4.23 ", "retrieve_port": "104"}, headers=HTMX)
    assert response.get_data(as_text=True).lstrip().startswith('<section class="card" id="retrieve-address">')
    assert retrieve(app, echo) == ("10.1.4.23", 104)

    admin_client.post(f"/settings/devices/dicom/{echo}/retrieve", data={"retrieve_host": "", "retrieve_port": ""})
    assert retrieve(app, echo) == (None, None)


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("10.1.4.23", "", "a retrieve address needs both a host and a port"),
        ("", "104", "a retrieve address needs both a host and a port"),
        ("10.1.4.23", "abc", "invalid port &#39;abc&#39;"),
        ("10.1.4.23", "70000", "invalid port 70000"),
        ("10.1.4.23", "0", "invalid port 0"),
        ("bad host", "104", "invalid host &#39;bad host&#39;"),
    ],
)
def test_retrieve_address_invalid(app, admin_client, echo, host, port, message):
    response = admin_client.post(f"/settings/devices/dicom/{echo}/retrieve",
                                 data={"retrieve_host": host, "retrieve_port": port}, headers=HTMX)
    body = response.get_data(as_text=True)
    assert message in body
    assert f'value="{host}"' in body
    assert retrieve(app, echo) == (None, None)
