import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import ApiToken, AuditEvent
from portal.tokens import TOKEN_PREFIX, hash_token
from portal.users import find_user, set_user_enabled
from tests.conftest import login


def stored_tokens(app, username="admin") -> list[ApiToken]:
    with app.app_context():
        user = find_user(db.session, username)
        tokens = db.session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)).all()
        db.session.expunge_all()
        return tokens


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def test_cli_token_create_prints_once(app, runner, client):
    result = runner.invoke(args=["token", "create", "support", "--name", "inventory script"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith(TOKEN_PREFIX)
    [token] = stored_tokens(app, "support")
    assert token.name == "inventory script"
    assert token.token_hash == hash_token(secret)
    assert secret not in token.prefix + token.token_hash
    assert client.get("/api/v1/associations", headers=bearer(secret)).status_code == 200


def test_cli_token_create_default_name(app, runner):
    result = runner.invoke(args=["token", "create", "admin"])
    assert result.exit_code == 0, result.output
    assert stored_tokens(app)[0].name == "CLI token"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["token", "create", "nobody"], "no user named 'nobody'"),
        (["token", "create", "admin", "--name", "   "], "a token name is required"),
        (["token", "create", "admin", "--name", "x" * 65], "at most 64 characters"),
        (["token", "create"], "Missing argument 'USERNAME'"),
    ],
)
def test_cli_token_create_errors(app, runner, arguments, message):
    result = runner.invoke(args=arguments)
    assert result.exit_code != 0
    assert message in result.output
    assert stored_tokens(app) == []


def test_cli_token_create_for_disabled_user(app, runner):
    with app.app_context():
        set_user_enabled(db.session, find_user(db.session, "clinician"), False)
        db.session.commit()
    result = runner.invoke(args=["token", "create", "clinician"])
    assert result.exit_code != 0
    assert "is disabled" in result.output


def test_profile_page_lists_no_tokens(admin_client):
    page = admin_client.get("/account").get_data(as_text=True)
    assert "API tokens" in page
    assert "You have no API tokens." in page


def test_profile_needs_sign_in(client):
    response = client.get("/account")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_profile_create_shows_token_once(app, admin_client):
    response = admin_client.post("/account/tokens", data={"name": "monitoring"})
    page = response.get_data(as_text=True)
    assert response.status_code == 201
    [token] = stored_tokens(app)
    secret = page.split('<code class="secret">')[1].split("</code>")[0]
    assert hash_token(secret) == token.token_hash
    assert "shown only this once" in page

    later = admin_client.get("/account").get_data(as_text=True)
    assert secret not in later
    assert token.prefix in later
    assert "monitoring" in later


def test_profile_create_audited(app, admin_client):
    admin_client.post("/account/tokens", data={"name": "monitoring"})
    with app.app_context():
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "token.create"))
        assert event.actor == "admin"
        assert event.target == "admin/monitoring"


@pytest.mark.parametrize(("name", "message"), [
    ("", "a token name is required"),
    ("   ", "a token name is required"),
    ("x" * 65, "at most 64 characters"),
])
def test_profile_create_name_errors(app, admin_client, name, message):
    response = admin_client.post("/account/tokens", data={"name": name})
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert stored_tokens(app) == []


def test_profile_revoke_token(app, admin_client, client_factory):
    page = admin_client.post("/account/tokens", data={"name": "short-lived"}).get_data(as_text=True)
    secret = page.split('<code class="secret">')[1].split("</code>")[0]
    [token] = stored_tokens(app)

    response = admin_client.post(f"/account/tokens/{token.id}/revoke")
    assert response.status_code == 302
    assert stored_tokens(app)[0].revoked_at is not None
    assert "revoked" in admin_client.get("/account").get_data(as_text=True)
    assert client_factory().get("/api/v1/status", headers=bearer(secret)).status_code == 401


def test_profile_revoke_other_users_token(app, runner, client):
    runner.invoke(args=["token", "create", "admin"])
    [token] = stored_tokens(app)
    login(client, "support")
    assert client.post(f"/account/tokens/{token.id}/revoke").status_code == 404
    assert client.post("/account/tokens/999999/revoke").status_code == 404
    assert stored_tokens(app)[0].revoked_at is None


def test_last_used_recorded(app, runner, client):
    secret = runner.invoke(args=["token", "create", "admin"]).stdout.strip()
    assert stored_tokens(app)[0].last_used_at is None
    client.get("/api/v1/status", headers=bearer(secret))
    assert stored_tokens(app)[0].last_used_at is not None


def test_disabled_owner_token_rejected(app, runner, client):
    secret = runner.invoke(args=["token", "create", "support"]).stdout.strip()
    assert client.get("/api/v1/status", headers=bearer(secret)).status_code == 200
    with app.app_context():
        set_user_enabled(db.session, find_user(db.session, "support"), False)
        db.session.commit()
    assert client.get("/api/v1/status", headers=bearer(secret)).status_code == 401


def test_profile_token_form_needs_csrf(app):
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    csrf = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    client.post("/login", data={"username": "admin", "password": "correct-horse-battery", "csrf_token": csrf})
    assert client.post("/account/tokens", data={"name": "no csrf"}).status_code == 400
    assert stored_tokens(app) == []
