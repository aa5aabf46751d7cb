"""The permitted request types card of an identity's configuration page: checkboxes, presets and wrong values."""

from __future__ import annotations

import pytest

from portal.extensions import db
from portal.identities.service import create_identity
from portal.models import AuditEvent, DicomIdentity


@pytest.fixture
def identity_id(app):
    with app.app_context():
        identity = create_identity(db.session, name="Echo cart", ae_title="CART1")
        db.session.commit()
        return identity.id


def permitted_of(app, identity_id: int) -> list[str]:
    with app.app_context():
        return db.session.get(DicomIdentity, identity_id).permitted


def test_page_shows_checkboxes(admin_client, identity_id):
    page = admin_client.get(f"/settings/devices/dicom/{identity_id}").get_data(as_text=True)

    assert 'name="permitted" value="echo" checked' in page
    assert 'name="permitted" value="find" >' in page or 'name="permitted" value="find" ' in page
    assert "Modality (echo, store, storage commitment)" in page
    assert "Workstation (echo, find, move, get)" in page


def test_checkboxes_saved_without_javascript(app, admin_client, identity_id):
    response = admin_client.post(f"/settings/devices/dicom/{identity_id}/permitted",
                                 data={"permitted": ["echo", "find", "get"]})

    assert response.status_code == 302
    assert permitted_of(app, identity_id) == ["echo", "find", "get"]


def test_checkboxes_saved_by_htmx(app, admin_client, identity_id):
    response = admin_client.post(f"/settings/devices/dicom/{identity_id}/permitted",
                                 data={"permitted": ["store"]}, headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert 'id="permitted-requests"' in response.get_data(as_text=True)
    assert "HX-Request" in response.headers["Vary"]
    assert permitted_of(app, identity_id) == ["store"]


def test_no_checkbox_permits_nothing(app, admin_client, identity_id):
    admin_client.post(f"/settings/devices/dicom/{identity_id}/permitted", data={})

    assert permitted_of(app, identity_id) == []


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("modality", ["echo", "store", "commit"]), ("workstation", ["echo", "find", "move", "get"])],
)
def test_preset_replaces_permissions(app, admin_client, identity_id, preset, expected):
    admin_client.post(f"/settings/devices/dicom/{identity_id}/permitted", data={"preset": preset})

    assert permitted_of(app, identity_id) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"permitted": ["echo", "delete"]}, "not a valid choice"),
        ({"permitted": ["ECHO"]}, "not a valid choice"),
        ({"preset": "scanner"}, "unknown preset"),
    ],
)
def test_wrong_values_not_saved(app, admin_client, identity_id, data, message):
    response = admin_client.post(f"/settings/devices/dicom/{identity_id}/permitted", data=data,
                                 headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert "Nothing was saved." in response.get_data(as_text=True)
    assert permitted_of(app, identity_id) == ["echo", "store"]


def test_change_is_audited(app, admin_client, identity_id):
    admin_client.post(f"/settings/devices/dicom/{identity_id}/permitted", data={"preset": "workstation"})

    with app.app_context():
        event = db.session.query(AuditEvent).filter_by(action="identity.permitted").one()
        assert event.before == {"permitted": ["echo", "store"]}
        assert event.after == {"permitted": ["echo", "find", "move", "get"]}


def test_support_user_cannot_change(app, client, identity_id):
    from tests.conftest import login

    login(client, "support")
    response = client.post(f"/settings/devices/dicom/{identity_id}/permitted", data={"permitted": ["find"]})

    assert response.status_code in (302, 403)
    assert permitted_of(app, identity_id) == ["echo", "store"]
