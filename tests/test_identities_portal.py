import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import AuditEvent, DicomIdentity
from tests.conftest import login

HTMX = {"HX-Request": "true"}


def create(client, name="Echo Room 1", ae_title="ECHO1"):
    return client.post("/settings/devices/dicom/new", data={"name": name, "ae_title": ae_title})


def identity(app, ae_title) -> DicomIdentity | None:
    with app.app_context():
        found = db.session.scalar(select(DicomIdentity).where(DicomIdentity.ae_title == ae_title))
        if found is not None:
            db.session.expunge(found)
        return found


def test_create_identity_with_defaults(app, admin_client):
    response = create(admin_client, "Room1 EPIQ7", "  Room1_EPIQ7 ")
    created = identity(app, "Room1_EPIQ7")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/settings/devices/dicom/{created.id}"
    assert created.name == "Room1 EPIQ7"
    assert created.enabled is True
    assert created.permitted == ["echo", "store"]
    assert created.allow_anonymous_tls is False


def test_create_page_shows_hint(admin_client):
    page = admin_client.get("/settings/devices/dicom/new").get_data(as_text=True)
    assert "Create DICOM Identity" in page
    for example in ("Room1_EPIQ7", "ClinicA_Vivid95", "Mobile_CT_Unit"):
        assert example in page


@pytest.mark.parametrize(
    ("name", "ae_title", "message"),
    [
        ("", "ECHO2", "a name is required"),
        ("x" * 129, "ECHO2", "at most 128 characters"),
        ("Echo 2", "", "at least one character other than a space"),
        ("Echo 2", "   ", "at least one character other than a space"),
        ("Echo 2", "SEVENTEEN_CHARS_X", "at most 16 characters"),
        ("Echo 2", "BAD\\AE", "backslash"),
        ("Echo 2", "ÉCHO", "printable ASCII"),
        ("Echo Room 1", "ECHO2", "already used by the identity with AE title &#39;ECHO1&#39;"),
        ("echo room 1", "ECHO2", "already used"),
        ("Echo 2", "ECHO1", "AE title &#39;ECHO1&#39; is already registered as &#39;Echo Room 1&#39;"),
        ("Echo 2", " ECHO1 ", "already registered"),
        ("Echo 2", "echo1", "differs only by case from &#39;ECHO1&#39;, registered as &#39;Echo Room 1&#39;"),
    ],
)
def test_create_identity_validation(app, admin_client, name, ae_title, message):
    assert create(admin_client).status_code == 302
    response = create(admin_client, name, ae_title)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert message in page
    assert 'class="error"' in page
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(DicomIdentity)) == 1


def test_invalid_form_keeps_typed_values(admin_client):
    page = create(admin_client, "My Cath Lab", "BAD\\AE").get_data(as_text=True)
    assert 'value="My Cath Lab"' in page
    assert 'value="BAD\\AE"' in page


def test_list_shows_status_and_last_seen(app, admin_client):
    create(admin_client, "Echo Room 1", "ECHO1")
    create(admin_client, "Cath Lab", "CATH1")
    admin_client.post(f"/settings/devices/dicom/{identity(app, 'CATH1').id}/enabled", data={"enabled": "false"})
    page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
    assert "Echo Room 1" in page
    assert "ECHO1" in page
    assert "never connected" in page
    assert "disabled" in page
    assert page.count("never</td>") == 2


def test_toggle_with_htmx_returns_row(app, admin_client):
    create(admin_client)
    identity_id = identity(app, "ECHO1").id
    response = admin_client.post(
        f"/settings/devices/dicom/{identity_id}/enabled",
        data={"enabled": "false", "fragment": "row"},
        headers=HTMX,
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert body.lstrip().startswith(f'<tr id="identity-{identity_id}"')
    assert "<html" not in body
    assert "status-disabled" in body
    assert "HX-Request" in response.headers["Vary"]
    assert identity(app, "ECHO1").enabled is False


def test_toggle_with_htmx_returns_status_panel(app, admin_client):
    create(admin_client)
    identity_id = identity(app, "ECHO1").id
    admin_client.post(f"/settings/devices/dicom/{identity_id}/enabled", data={"enabled": "false"})
    response = admin_client.post(
        f"/settings/devices/dicom/{identity_id}/enabled",
        data={"enabled": "true", "fragment": "status"},
        headers=HTMX,
    )
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith('<div id="identity-status"')
    assert "Disable" in body
    assert identity(app, "ECHO1").enabled is True


def test_toggle_without_javascript_redirects(app, admin_client):
    create(admin_client)
    identity_id = identity(app, "ECHO1").id
    response = admin_client.post(f"/settings/devices/dicom/{identity_id}/enabled", data={"enabled": "false"})
    assert response.status_code == 302
    assert response.headers["Location"] == f"/settings/devices/dicom/{identity_id}"
    assert identity(app, "ECHO1").enabled is False


def test_boosted_request_gets_full_page(app, admin_client):
    create(admin_client)
    response = admin_client.get("/settings/devices/dicom", headers={**HTMX, "HX-Boosted": "true"})
    assert "<html" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "data",
    [{"enabled": "maybe"}, {"enabled": ""}, {"enabled": "false", "fragment": "table"}, {}],
)
def test_toggle_invalid_value_rejected(app, admin_client, data):
    create(admin_client)
    response = admin_client.post(f"/settings/devices/dicom/{identity(app, 'ECHO1').id}/enabled", data=data)
    assert response.status_code == 400
    assert identity(app, "ECHO1").enabled is True


def test_toggle_unknown_identity_404(admin_client):
    response = admin_client.post("/settings/devices/dicom/999/enabled", data={"enabled": "false"})
    assert response.status_code == 404


def test_configuration_page_connect_panel(app, admin_client, settings):
    create(admin_client)
    page = admin_client.get(f"/settings/devices/dicom/{identity(app, 'ECHO1').id}").get_data(as_text=True)
    assert "Connect this device" in page
    assert f'value="{settings.dicom_port}"' in page
    assert 'value="PACS"' in page
    assert 'value="ECHO1"' in page
    assert 'value="127.0.0.1"' in page
    assert "General usage" in page
    assert "never connected" in page


def test_delete_confirms_with_identity_name(app, admin_client):
    create(admin_client)
    identity_id = identity(app, "ECHO1").id
    page = admin_client.get(f"/settings/devices/dicom/{identity_id}/delete").get_data(as_text=True)
    assert "Delete Echo Room 1?" in page
    assert identity(app, "ECHO1") is not None

    response = admin_client.post(f"/settings/devices/dicom/{identity_id}/delete")
    assert response.status_code == 302
    assert identity(app, "ECHO1") is None


def test_changes_recorded_in_audit_trail(app, admin_client):
    create(admin_client)
    identity_id = identity(app, "ECHO1").id
    admin_client.post(f"/settings/devices/dicom/{identity_id}/enabled", data={"enabled": "false"})
    admin_client.post(f"/settings/devices/dicom/{identity_id}/delete")
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        actions = [(event.action, event.actor, event.target) for event in events]
    assert ("identity.create", "admin", "ECHO1") in actions
    assert ("identity.disable", "admin", "ECHO1") in actions
    assert ("identity.delete", "admin", "ECHO1") in actions


@pytest.mark.parametrize("username", ["support", "clinician"])
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/settings/devices/dicom"),
        ("get", "/settings/devices/dicom/new"),
        ("post", "/settings/devices/dicom/new"),
        ("get", "/settings/devices/dicom/1"),
        ("post", "/settings/devices/dicom/1/enabled"),
        ("get", "/settings/devices/dicom/1/delete"),
        ("post", "/settings/devices/dicom/1/delete"),
    ],
)
def test_dicom_settings_forbidden_without_integrations(app, client, username, method, url):
    create(login(client) and client)
    client.post("/logout")
    login(client, username)
    response = getattr(client, method)(url, data={"name": "X", "ae_title": "X", "enabled": "false"})
    assert response.status_code == 403
    assert "integrations.manage" in response.get_data(as_text=True)
    assert identity(app, "ECHO1").enabled is True


@pytest.mark.parametrize("username", ["support", "clinician"])
def test_menu_hides_dicom_settings(client, username):
    login(client, username)
    page = client.get("/").get_data(as_text=True)
    assert "DICOM identities" not in page


def test_menu_shows_dicom_settings_to_admin(admin_client):
    page = admin_client.get("/settings/devices/dicom").get_data(as_text=True)
    assert 'href="/settings/devices/dicom">DICOM identities</a>' in page


def test_csrf_token_on_body_for_htmx(settings):

    from portal import create_app

    app = create_app(settings, TESTING=True)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    assert 'hx-headers=\'{"X-CSRFToken": "' in page


def test_connect_panel_uses_public_host(settings, runner):
    from dataclasses import replace

    from portal import create_app
    from tests.conftest import login

    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    app = create_app(replace(settings, dicom_host="0.0.0.0", dicom_public_host="pacs.hospital.example"),
                     TESTING=True, WTF_CSRF_ENABLED=False)
    client = app.test_client()
    login(client)
    page = client.get("/settings/devices/dicom/1").get_data(as_text=True)
    assert 'value="pacs.hospital.example"' in page
