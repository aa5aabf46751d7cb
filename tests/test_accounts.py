import time

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import AuditEvent, Role, User
from tests.conftest import PASSWORD, login

NEW_PASSWORD = "another-long-password"


def user(app, username) -> User | None:
    with app.app_context():
        found = db.session.scalar(select(User).where(User.username == username))
        if found is not None:
            _ = found.role.name
            db.session.expunge(found)
        return found


def role(app, name) -> Role | None:
    with app.app_context():
        found = db.session.scalar(select(Role).where(Role.name == name))
        if found is not None:
            db.session.expunge(found)
        return found


def audit_events(app, action) -> list[AuditEvent]:
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        for event in events:
            db.session.expunge(event)
        return events


def create_user_form(client, username="nurse.kim", role_name="Support", password=NEW_PASSWORD, confirm=None):
    return client.post("/settings/users/new", data={
        "username": username, "role": role_name, "password": password,
        "confirm": password if confirm is None else confirm,
    })


def test_create_user(app, admin_client):
    response = create_user_form(admin_client)
    assert response.status_code == 302
    created = user(app, "nurse.kim")
    assert created.role.name == "Support"
    [event] = audit_events(app, "user.create")
    assert event.actor == "admin"
    assert event.after == {"username": "nurse.kim", "role": "Support", "enabled": True}
    assert event.source_address == "127.0.0.1"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"username": ""}, "This field is required."),
        ({"username": "bad name"}, "invalid username &#39;bad name&#39;"),
        ({"username": "admin"}, "a user named &#39;admin&#39; already exists"),
        ({"username": "Admin"}, "usernames differing only by case are not allowed"),
        ({"role_name": "Janitor"}, "Not a valid choice."),
        ({"password": "short"}, "Use at least 12 characters."),
        ({"confirm": "something-else-entirely"}, "The two passwords differ."),
    ],
)
def test_create_user_invalid(app, admin_client, fields, message):
    response = create_user_form(admin_client, **fields)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(User)) == 3


def test_change_role_and_audit(app, admin_client):
    support = user(app, "support")
    response = admin_client.post(f"/settings/users/{support.id}/role", data={"role": "Clinician"})
    assert response.status_code == 302
    assert user(app, "support").role.name == "Clinician"
    [event] = audit_events(app, "user.role")
    assert event.before["role"] == "Support"
    assert event.after["role"] == "Clinician"


def test_disable_user_ends_session(app, admin_client, client_factory):
    support_client = client_factory()
    login(support_client, "support")
    assert support_client.get("/usage").status_code == 200

    support = user(app, "support")
    admin_client.post(f"/settings/users/{support.id}/enabled", data={"enabled": "false"})
    assert user(app, "support").enabled is False
    assert support_client.get("/usage").status_code == 302
    assert audit_events(app, "user.disable")[0].after["enabled"] is False


def test_reset_password_ends_sessions(app, admin_client, client_factory):
    support_client = client_factory()
    login(support_client, "support")
    support = user(app, "support")
    admin_client.post(f"/settings/users/{support.id}/password",
                      data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert support_client.get("/usage").status_code == 302
    assert login(client_factory(), "support", NEW_PASSWORD).status_code == 302
    [event] = audit_events(app, "user.password_reset")
    assert NEW_PASSWORD not in str(event.before) + str(event.after)


@pytest.mark.parametrize(
    ("password", "confirm"),
    [("short", "short"), (NEW_PASSWORD, "different-long-password")],
)
def test_reset_password_invalid(app, admin_client, password, confirm):
    support = user(app, "support")
    admin_client.post(f"/settings/users/{support.id}/password", data={"password": password, "confirm": confirm})
    assert user(app, "support").password_hash == support.password_hash


def test_own_password_change_ends_other_sessions(app, client_factory):
    first, second = client_factory(), client_factory()
    login(first, "support")
    login(second, "support")
    response = first.post("/account/password", data={
        "current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 302
    assert first.get("/usage").status_code == 200
    assert second.get("/usage").status_code == 302


def test_own_password_wrong_current(app, client_factory):
    client = client_factory()
    login(client, "support")
    response = client.post("/account/password", data={
        "current": "not-my-password", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 422
    assert "The current password is wrong." in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("url", "data"),
    [
        ("/settings/users/{id}/enabled", {"enabled": "false"}),
        ("/settings/users/{id}/role", {"role": "Support"}),
        ("/settings/users/{id}/delete", {}),
    ],
)
def test_last_administrator_kept(app, admin_client, url, data):
    admin = user(app, "admin")
    response = admin_client.post(url.format(id=admin.id), data=data, follow_redirects=True)
    assert "last enabled user who can manage users" in response.get_data(as_text=True)
    kept = user(app, "admin")
    assert kept.enabled is True
    assert kept.role.name == "Administrator"


def test_second_administrator_allows_demotion(app, admin_client):
    create_user_form(admin_client, "second.admin", "Administrator")
    admin = user(app, "admin")
    admin_client.post(f"/settings/users/{admin.id}/role", data={"role": "Support"})
    assert user(app, "admin").role.name == "Support"


def test_revoking_users_manage_from_last_admin_role(app, admin_client):
    administrator = role(app, "Administrator")
    response = admin_client.post(f"/settings/roles/{administrator.id}/permissions",
                                 data={"permission": "users.manage", "granted": "false"},
                                 headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "no enabled user would be left who can manage users" in response.get_data(as_text=True)
    assert "users.manage" in role(app, "Administrator").permissions


def test_permission_toggle_inline(app, admin_client, client_factory):
    support_role = role(app, "Support")
    response = admin_client.post(f"/settings/roles/{support_role.id}/permissions",
                                 data={"permission": "integrations.manage", "granted": "true"},
                                 headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith(f'<tr id="role-{support_role.id}"')
    assert role(app, "Support").permissions == ["integrations.manage", "usage.view"]
    [event] = audit_events(app, "role.permissions")
    assert event.before == {"permissions": ["usage.view"]}
    assert event.after == {"permissions": ["integrations.manage", "usage.view"]}

    support_client = client_factory()
    login(support_client, "support")
    assert support_client.get("/settings/devices/dicom").status_code == 200


@pytest.mark.parametrize(
    "data",
    [{"permission": "root.everything", "granted": "true"}, {"permission": "usage.view", "granted": "yes"}, {}],
)
def test_permission_toggle_invalid(app, admin_client, data):
    support_role = role(app, "Support")
    response = admin_client.post(f"/settings/roles/{support_role.id}/permissions", data=data)
    assert response.status_code == 400
    assert role(app, "Support").permissions == ["usage.view"]


def test_create_rename_delete_role(app, admin_client):
    assert admin_client.post("/settings/roles", data={"name": "Cardiology IT"}).status_code == 302
    created = role(app, "Cardiology IT")
    assert created.permissions == []
    admin_client.post(f"/settings/roles/{created.id}/name", data={"name": "Cath Lab IT"})
    assert role(app, "Cath Lab IT").id == created.id
    admin_client.post(f"/settings/roles/{created.id}/delete")
    assert role(app, "Cath Lab IT") is None
    actions = [event.action for event in audit_events(app, "role.create") + audit_events(app, "role.rename")
               + audit_events(app, "role.delete")]
    assert actions == ["role.create", "role.rename", "role.delete"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "This field is required."), ("support", "a role named &#39;support&#39; already exists"),
     ("x" * 65, "Field cannot be longer than 64 characters.")],
)
def test_create_role_invalid(app, admin_client, name, message):
    response = admin_client.post("/settings/roles", data={"name": name})
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)


def test_rename_role_clash_refused(app, admin_client):
    support_role = role(app, "Support")
    response = admin_client.post(f"/settings/roles/{support_role.id}/name", data={"name": "Clinician"},
                                 follow_redirects=True)
    assert "a role named &#39;Clinician&#39; already exists" in response.get_data(as_text=True)
    assert role(app, "Support") is not None


def test_role_with_users_not_deleted(app, admin_client):
    support_role = role(app, "Support")
    response = admin_client.post(f"/settings/roles/{support_role.id}/delete", follow_redirects=True)
    assert "1 users have this role" in response.get_data(as_text=True)
    assert role(app, "Support") is not None


def test_sign_ins_audited(app, client):
    login(client, "admin", "wrong-password-12")
    login(client, "admin")
    assert audit_events(app, "auth.login_failed")[0].target == "admin"
    assert audit_events(app, "auth.login")[0].actor == "admin"


def test_audit_page_filters_and_csv(app, admin_client, runner):
    runner.invoke(args=["identity", "create", "--name", "Echo", "--ae-title", "ECHO1"])
    page = admin_client.get("/settings/audit?action=identity.").get_data(as_text=True)
    assert "identity.create" in page
    assert "auth.login" not in page

    csv_text = admin_client.get("/settings/audit/export.csv?action=identity.").get_data(as_text=True)
    lines = csv_text.strip().splitlines()
    assert lines[0] == "id,at,actor,source_address,action,target_type,target,before,after"
    assert len(lines) == 2
    assert ",cli,,identity.create,dicom_identity,ECHO1," in lines[1]


@pytest.mark.parametrize("query", ["since=yesterday", "until=2026-13-01"])
def test_audit_invalid_date_filter(admin_client, query):
    response = admin_client.get(f"/settings/audit?{query}")
    assert response.status_code == 400
    assert "use YYYY-MM-DD" in response.get_data(as_text=True)
    assert admin_client.get(f"/settings/audit/export.csv?{query}").status_code == 400


def test_audit_pagination_by_keyset(app, admin_client, runner):
    for number in range(55):
        runner.invoke(args=["identity", "create", "--name", f"Device {number}", "--ae-title", f"DEV{number}"])
    first = admin_client.get("/settings/audit?action=identity.").get_data(as_text=True)
    assert first.count("<code>identity.create</code>") == 50
    next_link = first.split('href="/settings/audit?before=')[1].split('"')[0]
    second = admin_client.get("/settings/audit?before=" + next_link.replace("&amp;", "&")).get_data(as_text=True)
    assert second.count("<code>identity.create</code>") == 5


def test_login_throttled_per_account(client):
    for _ in range(10):
        assert login(client, "support", "wrong-password-12").status_code == 401
    response = login(client, "support", PASSWORD)
    assert response.status_code == 429
    assert "Too many attempts" in response.get_data(as_text=True)
    assert login(client, "admin").status_code == 302


def test_successful_logins_not_throttled(client):
    for _ in range(12):
        assert login(client, "support").status_code == 302
        client.post("/logout")


def test_idle_session_expires(app, admin_client):
    with admin_client.session_transaction() as session:
        session["last_active"] = int(time.time()) - 31 * 60
    response = admin_client.get("/settings/devices/dicom")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_active_session_kept(app, admin_client):
    with admin_client.session_transaction() as session:
        session["last_active"] = int(time.time()) - 29 * 60
    assert admin_client.get("/settings/devices/dicom").status_code == 200


def test_security_headers(client):
    response = client.get("/login")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_session_cookie_flags(client):
    response = login(client)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_secure_over_https(client):
    response = client.post("/login", data={"username": "admin", "password": PASSWORD},
                           base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


def test_no_inline_script_in_pages(admin_client):
    for url in ("/settings/devices/dicom", "/settings/users", "/settings/roles", "/settings/audit", "/usage"):
        page = admin_client.get(url).get_data(as_text=True)
        assert "<script>" not in page
        assert " style=" not in page
        assert " onclick=" not in page


def test_no_password_in_logs(app, admin_client, caplog):
    caplog.set_level("DEBUG")
    create_user_form(admin_client, "tech.lee", "Support", NEW_PASSWORD)
    created = user(app, "tech.lee")
    admin_client.post(f"/settings/users/{created.id}/password",
                      data={"password": "third-long-password", "confirm": "third-long-password"})
    login(admin_client, "tech.lee", "wrong-password-99")
    logged = caplog.text
    for secret in (NEW_PASSWORD, "third-long-password", "wrong-password-99", PASSWORD):
        assert secret not in logged


def test_trusted_proxy_address_in_audit(settings):
    from dataclasses import replace

    from portal import create_app

    app = create_app(replace(settings, trusted_proxies=1), TESTING=True, WTF_CSRF_ENABLED=False)
    client = app.test_client()
    response = client.post("/login", data={"username": "admin", "password": PASSWORD},
                           headers={"X-Forwarded-For": "10.20.30.40", "X-Forwarded-Proto": "https"})
    assert "Secure" in response.headers["Set-Cookie"]
    [event] = audit_events(app, "auth.login")
    assert event.source_address == "10.20.30.40"


def test_forwarded_headers_ignored_without_trusted_proxy(app, client):
    client.post("/login", data={"username": "admin", "password": PASSWORD},
                headers={"X-Forwarded-For": "10.20.30.40"})
    [event] = audit_events(app, "auth.login")
    assert event.source_address == "127.0.0.1"


def test_new_user_form_defaults_to_least_privilege(admin_client):
    page = admin_client.get("/settings/users/new").get_data(as_text=True)
    assert '<option selected value="Clinician">' in page or '<option value="Clinician" selected>' in page
    assert "At least 12 characters." in page
