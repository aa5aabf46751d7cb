from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import Association, AuditEvent, DicomIdentity
from portal.tokens import create_token, revoke_token
from portal.users import find_user

PROBLEM = "application/problem+json"


def token_for(app, username: str = "admin") -> str:
    """Create an API token for `username` and return the secret."""
    with app.app_context():
        _, secret = create_token(db.session, find_user(db.session, username), "test")
        db.session.commit()
        return secret


def auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin_token(app):
    return token_for(app, "admin")


@pytest.fixture
def support_token(app):
    return token_for(app, "support")


@pytest.fixture
def api(client, admin_token):
    """A client whose requests carry the admin's token."""

    class Api:
        def __getattr__(self, method):
            def call(url, **kwargs):
                kwargs.setdefault("headers", auth(admin_token))
                return getattr(client, method)(url, **kwargs)
            return call

    return Api()


def create(api, **fields):
    body = {"name": "Echo Room 1", "ae_title": "ECHO1", **fields}
    response = api.post("/api/v1/identities", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def add_association(app, **fields) -> int:
    values = {"peer_address": "127.0.0.1", "transport": "plain", "outcome": "accepted", **fields}
    with app.app_context():
        association = Association(**values)
        db.session.add(association)
        db.session.commit()
        return association.id


def audit_events(app, action):
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()
        db.session.expunge_all()
        return events


# Identities


def test_create_identity(app, api):
    response = api.post("/api/v1/identities", json={"name": "Cath Lab", "ae_title": " CATH1 ",
                                                    "permitted": ["store", "echo"], "require_tls": True})
    created = response.get_json()
    assert response.status_code == 201
    assert response.headers["Location"] == f"/api/v1/identities/{created['id']}"
    assert created["ae_title"] == "CATH1"
    assert created["permitted"] == ["echo", "store"]
    assert created["require_tls"] is True
    assert created["enabled"] is True


def test_create_identity_audited_with_owner(app, api):
    create(api)
    [event] = audit_events(app, "identity.create")
    assert event.actor == "admin"
    assert event.target == "ECHO1"
    assert event.after["name"] == "Echo Room 1"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"name": "X"}, "ae_title", "required"),
        ({"ae_title": "X1"}, "name", "required"),
        ({"name": "X", "ae_title": "SEVENTEEN_CHARS_X"}, "ae_title", "at most 16 characters"),
        ({"name": "X", "ae_title": "A\\B"}, "ae_title", "backslash"),
        ({"name": "  ", "ae_title": "X1"}, "name", "a name is required"),
        ({"name": "X", "ae_title": 5}, "ae_title", "must be a string"),
        ({"name": "X", "ae_title": "X1", "enabled": "yes"}, "enabled", "must be a boolean"),
        ({"name": "X", "ae_title": "X1", "allow_anonymous_tls": 1}, "allow_anonymous_tls", "must be a boolean"),
        ({"name": "X", "ae_title": "X1", "require_tls": None}, "require_tls", "must be a boolean"),
        ({"name": "X", "ae_title": "X1", "permitted": "echo"}, "permitted", "list of operation names"),
        ({"name": "X", "ae_title": "X1", "permitted": ["delete"]}, "permitted", "unknown operation 'delete'"),
        ({"name": "X", "ae_title": "X1", "retrieve_host": "h"}, "retrieve_port", "needs both a host and a port"),
        ({"name": "X", "ae_title": "X1", "retrieve_host": "a b", "retrieve_port": 104}, "retrieve_host",
         "invalid host"),
        ({"name": "X", "ae_title": "X1", "retrieve_host": "h", "retrieve_port": 70000}, "retrieve_port",
         "invalid port"),
        ({"name": "X", "ae_title": "X1", "retrieve_host": "h", "retrieve_port": "104"}, "retrieve_port",
         "must be an integer or null"),
        ({"name": "X", "ae_title": "X1", "colour": "red"}, "colour", "unknown field"),
        ({"name": "Echo Room 1", "ae_title": "X1"}, "name", "already used"),
        ({"name": "X", "ae_title": "echo1"}, "ae_title", "differs only by case from 'ECHO1'"),
    ],
)
def test_create_identity_validation(app, api, body, field, message):
    create(api)
    response = api.post("/api/v1/identities", json=body)
    problem = response.get_json()
    assert response.status_code == 422
    assert response.mimetype == PROBLEM
    assert problem["status"] == 422
    assert problem["title"].startswith("Unprocessable")
    assert message in problem["errors"][field]
    assert field in problem["detail"]
    with app.app_context():
        assert len(db.session.scalars(select(DicomIdentity)).all()) == 1


def test_create_identity_not_json(api):
    response = api.post("/api/v1/identities", data="name=X", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.mimetype == PROBLEM


@pytest.mark.parametrize("body", ["[1, 2]", "not json", '"text"'])
def test_create_identity_body_not_object(api, body):
    response = api.post("/api/v1/identities", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["detail"] == "the body must be a JSON object"


def test_list_identities_with_filters(api):
    create(api, name="Echo Room 1", ae_title="ECHO1")
    create(api, name="Cath Lab", ae_title="CATH1", enabled=False)
    create(api, name="Echo Room 2", ae_title="ECHO2")

    def names(query=""):
        response = api.get(f"/api/v1/identities{query}")
        assert response.status_code == 200
        return [item["name"] for item in response.get_json()["items"]]

    assert names() == ["Cath Lab", "Echo Room 1", "Echo Room 2"]
    assert names("?enabled=false") == ["Cath Lab"]
    assert names("?enabled=true") == ["Echo Room 1", "Echo Room 2"]
    assert names("?ae_title=ECHO2") == ["Echo Room 2"]
    assert names("?ae_title=echo2") == []
    assert names("?q=echo") == ["Echo Room 1", "Echo Room 2"]
    assert names("?q=ROOM 2") == ["Echo Room 2"]
    assert names("?q=%25") == []


def test_list_identities_invalid_enabled(api):
    response = api.get("/api/v1/identities?enabled=maybe")
    assert response.status_code == 400
    assert response.mimetype == PROBLEM
    assert "true or false" in response.get_json()["errors"]["enabled"]


def test_list_identities_with_usage_view_only(api, client, support_token):
    create(api)
    response = client.get("/api/v1/identities", headers=auth(support_token))
    assert response.status_code == 200
    assert response.get_json()["items"][0]["ae_title"] == "ECHO1"


def test_read_identity(api):
    created = create(api)
    response = api.get(f"/api/v1/identities/{created['id']}")
    assert response.status_code == 200
    assert response.get_json() == created


@pytest.mark.parametrize("path", ["/api/v1/identities/999", "/api/v1/identities/99999999999999999999999",
                                  "/api/v1/identities/abc", "/api/v1/nothing"])
def test_unknown_resource(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response.mimetype == PROBLEM


def test_update_identity(app, api):
    created = create(api)
    response = api.patch(f"/api/v1/identities/{created['id']}", json={
        "enabled": False, "allow_anonymous_tls": True, "require_tls": True, "permitted": ["echo", "find"],
        "retrieve_host": "10.0.0.5", "retrieve_port": 104, "name": "Echo Room One", "ae_title": "ECHO_ONE",
    })
    updated = response.get_json()
    assert response.status_code == 200
    assert updated["enabled"] is False
    assert updated["allow_anonymous_tls"] is True
    assert updated["require_tls"] is True
    assert updated["permitted"] == ["echo", "find"]
    assert (updated["retrieve_host"], updated["retrieve_port"]) == ("10.0.0.5", 104)
    assert (updated["name"], updated["ae_title"]) == ("Echo Room One", "ECHO_ONE")
    [event] = audit_events(app, "identity.update")
    assert event.actor == "admin"
    assert event.before["enabled"] is True
    assert event.after["enabled"] is False


def test_update_identity_without_change_not_audited(app, api):
    created = create(api)
    assert api.patch(f"/api/v1/identities/{created['id']}", json={"enabled": True}).status_code == 200
    assert api.patch(f"/api/v1/identities/{created['id']}", json={}).status_code == 200
    assert audit_events(app, "identity.update") == []


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"ae_title": "CATH1"}, "ae_title", "already registered"),
        ({"ae_title": "cath1"}, "ae_title", "differs only by case"),
        ({"name": "Cath Lab"}, "name", "already used"),
        ({"enabled": "false"}, "enabled", "must be a boolean"),
        ({"retrieve_port": 104}, "retrieve_host", "needs both a host and a port"),
        ({"id": 5}, "id", "unknown field"),
    ],
)
def test_update_identity_validation(app, api, body, field, message):
    created = create(api)
    create(api, name="Cath Lab", ae_title="CATH1")
    response = api.patch(f"/api/v1/identities/{created['id']}", json=body)
    assert response.status_code == 422
    assert response.mimetype == PROBLEM
    assert message in response.get_json()["errors"][field]
    assert api.get(f"/api/v1/identities/{created['id']}").get_json() == created


def test_update_unknown_identity(api):
    assert api.patch("/api/v1/identities/999", json={"enabled": False}).status_code == 404


def test_delete_identity(app, api):
    created = create(api)
    response = api.delete(f"/api/v1/identities/{created['id']}")
    assert response.status_code == 204
    assert api.get(f"/api/v1/identities/{created['id']}").status_code == 404
    [event] = audit_events(app, "identity.delete")
    assert event.actor == "admin"
    assert event.before["ae_title"] == "ECHO1"
    assert api.delete(f"/api/v1/identities/{created['id']}").status_code == 404


def test_identity_changes_need_integrations_manage(app, api, client, support_token):
    created = create(api)
    headers = auth(support_token)
    calls = [
        client.post("/api/v1/identities", json={"name": "X", "ae_title": "X1"}, headers=headers),
        client.patch(f"/api/v1/identities/{created['id']}", json={"enabled": False}, headers=headers),
        client.delete(f"/api/v1/identities/{created['id']}", headers=headers),
    ]
    for response in calls:
        assert response.status_code == 403
        assert response.mimetype == PROBLEM
        assert "integrations.manage" in response.get_json()["detail"]
    assert api.get(f"/api/v1/identities/{created['id']}").get_json() == created


# Usage, the connection log and status


def test_identity_usage(app, api):
    created = create(api)
    with app.app_context():
        identity = db.session.get(DicomIdentity, created["id"])
        identity.associations_accepted = 3
        identity.instances_received = 7
        identity.bytes_received = 2048
        identity.last_seen_at = datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc)
        identity.last_peer_address = "10.1.2.3"
        identity.last_transport = "tls"
        db.session.commit()

    usage = api.get(f"/api/v1/identities/{created['id']}/usage").get_json()
    assert usage["associations_accepted"] == 3
    assert usage["associations_rejected"] == 0
    assert usage["instances_received"] == 7
    assert usage["bytes_received"] == 2048
    assert usage["last_seen"] == "2026-01-05T08:30:00+00:00"
    assert usage["last_peer_address"] == "10.1.2.3"
    assert usage["last_transport"] == "tls"


def test_identity_usage_unknown(api):
    assert api.get("/api/v1/identities/999/usage").status_code == 404


def test_associations_filters(app, api):
    created = create(api)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    accepted = add_association(app, identity_id=created["id"], started_at=start, calling_ae_title="ECHO1")
    rejected = add_association(app, started_at=start + timedelta(hours=1), outcome="rejected",
                               reason="unknown_calling_ae", peer_address="10.0.0.9", transport="tls")

    def ids(query):
        response = api.get(f"/api/v1/associations{query}")
        assert response.status_code == 200
        return [item["id"] for item in response.get_json()["items"]]

    assert ids("") == [rejected, accepted]
    assert ids(f"?identity_id={created['id']}") == [accepted]
    assert ids("?outcome=rejected") == [rejected]
    assert ids("?reason=unknown_calling_ae") == [rejected]
    assert ids("?transport=plain") == [accepted]
    assert ids("?peer_address=10.0.0.9") == [rejected]
    assert ids("?since=2026-01-01T00:30:00Z") == [rejected]
    assert ids("?until=2026-01-01T00:30:00%2B00:00") == [accepted]
    assert ids("?since=2026-01-01T00:30:00") == [rejected]


def test_associations_entry_fields(app, api):
    add_association(app, calling_ae_title="ECHO1", called_ae_title="PACS", operations={"store": 2},
                    instances_received=2, bytes_received=100)
    [entry] = api.get("/api/v1/associations").get_json()["items"]
    assert entry["calling_ae_title"] == "ECHO1"
    assert entry["called_ae_title"] == "PACS"
    assert entry["operations"] == {"store": 2}
    assert entry["instances_received"] == 2
    assert entry["outcome"] == "accepted"


def test_associations_keyset_pages(app, api):
    created = [add_association(app) for _ in range(5)]
    first = api.get("/api/v1/associations?limit=2&outcome=accepted").get_json()
    assert [item["id"] for item in first["items"]] == created[:2:-1][:2]
    assert "outcome=accepted" in first["next"]

    seen = [item["id"] for item in first["items"]]
    url = first["next"]
    while url:
        page = api.get(url).get_json()
        seen += [item["id"] for item in page["items"]]
        url = page["next"]
    assert seen == list(reversed(created))


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("after=-1", "after"),
        ("identity_id=x", "identity_id"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("outcome=bogus", "outcome"),
        ("outcome=Accepted", "outcome"),
        ("reason=nonsense", "reason"),
        ("transport=carrier-pigeon", "transport"),
    ],
)
def test_associations_invalid_query(api, query, parameter):
    response = api.get(f"/api/v1/associations?{query}")
    assert response.status_code == 400
    assert response.mimetype == PROBLEM
    assert parameter in response.get_json()["errors"]


def test_status(app, api):
    create(api, enabled=False)
    add_association(app)
    response = api.get("/api/v1/status")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "identities": 1,
                                   "identities_enabled": 0, "associations": 1}


@pytest.mark.parametrize("path", ["/api/v1/associations", "/api/v1/identities/1/usage"])
def test_usage_reads_need_usage_view(app, api, client, path):
    create(api)
    with app.app_context():
        from portal.models import Role
        role = db.session.scalar(select(Role).where(Role.name == "Support"))
        role.permissions = ["integrations.manage"]
        db.session.commit()
    response = client.get(path, headers=auth(token_for(app, "support")))
    assert response.status_code == 403
    assert "usage.view" in response.get_json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/status", "/api/v1/identities", "/api/v1/identities/1",
                                  "/api/v1/associations"])
def test_reads_forbidden_without_permission(client, app, path):
    response = client.get(path, headers=auth(token_for(app, "clinician")))
    assert response.status_code == 403
    assert response.mimetype == PROBLEM


# Authentication


ENDPOINTS = [
    ("get", "/api/v1/status"),
    ("get", "/api/v1/identities"),
    ("post", "/api/v1/identities"),
    ("get", "/api/v1/identities/1"),
    ("patch", "/api/v1/identities/1"),
    ("delete", "/api/v1/identities/1"),
    ("get", "/api/v1/identities/1/usage"),
    ("get", "/api/v1/associations"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_without_token_401(client, method, path):
    response = getattr(client, method)(path, json={})
    assert response.status_code == 401
    assert response.mimetype == PROBLEM
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "missing bearer token" in response.get_json()["detail"]


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic YWRtaW46eA==", "pacs_abc",
                                    "Bearer pacs_not-a-real-token", "Bearer not-even-a-prefix"])
def test_malformed_or_unknown_token_401(client, header):
    response = client.get("/api/v1/identities", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.mimetype == PROBLEM


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_revoked_token_401(app, client, method, path):
    with app.app_context():
        token, secret = create_token(db.session, find_user(db.session, "admin"), "old")
        revoke_token(token)
        db.session.commit()
    response = getattr(client, method)(path, json={}, headers=auth(secret))
    assert response.status_code == 401


def test_session_cookie_does_not_authenticate(admin_client):
    assert admin_client.get("/api/v1/identities").status_code == 401


def test_api_needs_no_csrf_token(app, admin_token):
    app.config["WTF_CSRF_ENABLED"] = True
    response = app.test_client().post("/api/v1/identities", json={"name": "X", "ae_title": "X1"},
                                      headers=auth(admin_token))
    assert response.status_code == 201
