import pytest

from tests.conftest import PASSWORD, login


def test_login_success_redirects_home(client):
    response = login(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize(
    ("username", "password"),
    [("admin", "wrong-password-1"), ("nobody", PASSWORD), ("", ""), ("admin", "")],
)
def test_login_failure_is_generic(client, username, password):
    response = login(client, username, password)
    assert response.status_code in (200, 401)
    assert b"Invalid username or password." in response.data or b"This field is required." in response.data
    assert b"unknown user" not in response.data.lower()
    assert client.get("/settings/devices/dicom").status_code == 302


def test_wrong_user_and_wrong_password_same_message(client):
    unknown = login(client, "nobody", PASSWORD).data
    wrong = login(client, "admin", "not-the-password").data
    assert b"Invalid username or password." in unknown
    assert b"Invalid username or password." in wrong


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/settings/devices/dicom", "/settings/devices/dicom"),
        ("https://evil.example/", "/"),
        ("//evil.example/path", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("settings", "/"),
    ],
)
def test_next_stays_on_site(client, target, expected):
    response = client.post(f"/login?next={target}", data={"username": "admin", "password": PASSWORD})
    assert response.status_code == 302
    assert response.headers["Location"] == expected


def test_pages_require_login(client):
    response = client.get("/settings/devices/dicom")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_logout_needs_post(admin_client):
    assert admin_client.get("/logout").status_code == 200
    assert admin_client.get("/settings/devices/dicom").status_code == 200
    response = admin_client.post("/logout")
    assert response.status_code == 302
    assert admin_client.get("/settings/devices/dicom").status_code == 302


def test_disabled_user_cannot_login(app, client):
    from portal.extensions import db
    from portal.users import find_user

    with app.app_context():
        find_user(db.session, "support").enabled = False
        db.session.commit()
    response = login(client, "support")
    assert b"Invalid username or password." in response.data


def test_csrf_enforced_on_login(settings):
    from portal import create_app

    app = create_app(settings, TESTING=True)
    response = app.test_client().post("/login", data={"username": "admin", "password": PASSWORD})
    assert response.status_code == 400
