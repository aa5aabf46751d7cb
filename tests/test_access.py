"""Every route, walked with each default role and with no session."""

import re

import pytest

from portal import create_app
from tests.conftest import login

INTEGRATIONS = "integrations.manage"
USAGE = "usage.view"
USERS = "users.manage"
AUDIT = "audit.view"
SIGNED_IN = "signed in"
PUBLIC = "public"

# (method, URL, what it needs). Ids 1 exist: identity 1 is created by the
# fixture, user 1 is admin and role 1 is Administrator.
ROUTES = [
    ("GET", "/", SIGNED_IN),
    ("GET", "/account", SIGNED_IN),
    ("POST", "/account/tokens", SIGNED_IN),
    ("POST", "/account/tokens/1/revoke", SIGNED_IN),
    ("GET", "/account/password", SIGNED_IN),
    ("POST", "/account/password", SIGNED_IN),
    ("GET", "/healthz", PUBLIC),
    ("GET", "/login", PUBLIC),
    ("POST", "/login", PUBLIC),
    ("GET", "/logout", SIGNED_IN),
    ("POST", "/logout", SIGNED_IN),
    ("GET", "/static/app.css", PUBLIC),
    ("GET", "/settings/audit", AUDIT),
    ("GET", "/settings/audit/export.csv", AUDIT),
    ("GET", "/settings/devices/dicom", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/new", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/export.csv", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/import", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/import", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/import/confirm", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/new", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/1", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/1/delete", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/delete", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/enabled", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/networks", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/retrieve", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/permitted", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/tls", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/1/certificate", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/certificate", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/certificate/remove", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/certificate/issue", INTEGRATIONS),
    ("POST", "/settings/devices/dicom/1/certificate/download", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/ca.pem", INTEGRATIONS),
    ("GET", "/settings/devices/dicom/1/usage", USAGE),
    ("GET", "/settings/devices/dicom/log", USAGE),
    ("GET", "/settings/devices/dicom/log.csv", USAGE),
    ("GET", "/usage", USAGE),
    ("GET", "/settings/roles", USERS),
    ("POST", "/settings/roles", USERS),
    ("POST", "/settings/roles/1/delete", USERS),
    ("POST", "/settings/roles/1/name", USERS),
    ("POST", "/settings/roles/1/permissions", USERS),
    ("GET", "/settings/users", USERS),
    ("GET", "/settings/users/new", USERS),
    ("POST", "/settings/users/new", USERS),
    ("GET", "/settings/users/1", USERS),
    ("POST", "/settings/users/1/delete", USERS),
    ("POST", "/settings/users/1/enabled", USERS),
    ("POST", "/settings/users/1/password", USERS),
    ("POST", "/settings/users/1/role", USERS),
]

ROLE_PERMISSIONS = {
    "admin": {INTEGRATIONS, USAGE, USERS, AUDIT},
    "support": {USAGE},
    "clinician": set(),
}


def test_route_table_covers_every_route(app):
    listed = {(method, re.sub(r"/1(?=/|$)", "/<id>", url)) for method, url, _ in ROUTES}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            continue  # token-authenticated; tests/test_api.py checks each endpoint's access
        path = re.sub(r"<(?:int|id):\w+>", "<id>", re.sub(r"<path:\w+>", "app.css", rule.rule))
        path = path.replace("/static/app.css", "/static/app.css")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method, path) in listed, f"{method} {rule.rule} is missing from ROUTES"


@pytest.fixture
def seeded(runner):
    assert runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"]).exit_code == 0


@pytest.mark.parametrize(("method", "url", "needs"), ROUTES)
def test_anonymous_access(client, seeded, method, url, needs):
    response = client.open(url, method=method)
    if needs == PUBLIC:
        assert response.status_code in (200, 400, 401)
    else:
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("username", sorted(ROLE_PERMISSIONS))
@pytest.mark.parametrize(("method", "url", "needs"), ROUTES)
def test_role_access(client, seeded, username, method, url, needs):
    login(client, username)
    response = client.open(url, method=method)
    allowed = needs in (PUBLIC, SIGNED_IN) or needs in ROLE_PERMISSIONS[username]
    if allowed:
        assert response.status_code != 403
        assert response.status_code < 500
    else:
        assert response.status_code == 403
        assert needs in response.get_data(as_text=True)


STATE_CHANGES = [(method, url) for method, url, _ in ROUTES if method == "POST"]


@pytest.mark.parametrize(("method", "url"), STATE_CHANGES)
def test_post_without_csrf_token_rejected(settings, method, url):

    app = create_app(settings, TESTING=True)
    client = app.test_client()
    if url != "/login":
        with client.session_transaction() as session:
            session["_user_id"] = "1:" + "0" * 32
    response = client.post(url, data={"enabled": "false", "name": "X", "ae_title": "X"})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)


def test_htmx_post_with_csrf_header_accepted(settings):

    app = create_app(settings, TESTING=True)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    response = client.post("/login", data={"username": "admin", "password": "correct-horse-battery"},
                           headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert response.status_code == 302


@pytest.mark.parametrize("username", ["support", "clinician"])
def test_forbidden_page_names_permission_and_granter(client, username):
    login(client, username)
    page = client.get("/settings/devices/dicom").get_data(as_text=True)
    assert "needs the <code>integrations.manage</code> permission" in page
    assert "can grant it: admin" in page


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("get", "/settings/devices/dicom/log?peer=10.0.0.1%00", None),
        ("get", "/settings/audit?actor=%00", None),
        ("post", "/settings/devices/dicom/new", {"name": "Echo\x00", "ae_title": "ECHO9"}),
        ("post", "/login", {"username": "admin\x00", "password": "x"}),
    ],
)
def test_nul_character_rejected(admin_client, method, url, data):
    response = getattr(admin_client, method)(url, data=data)
    assert response.status_code == 400
    assert "NUL character" in response.get_data(as_text=True)


def test_nul_character_rejected_by_api(client, runner):
    token = runner.invoke(args=["token", "create", "admin"]).output.strip().splitlines()[-1]
    response = client.get("/api/v1/identities?ae_title=%00", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
