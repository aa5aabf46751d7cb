"""Bearer-token authentication and permission checks for API views."""

from __future__ import annotations

from functools import wraps

from flask import g, request

from portal.api.problems import TYPE_FORBIDDEN, TYPE_UNAUTHORIZED, Problem
from portal.extensions import db
from portal.models import ApiToken, Permission, User
from portal.tokens import authenticate_token

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}


def token_required(*permissions: Permission):
    """Require a valid bearer token whose owner has at least one of `permissions`.

    Without a token, or with an unknown, revoked or malformed one, or one whose
    owner is disabled, the response is 401. An owner without the permission gets 403.
    """

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            token = _authenticate()
            if permissions and not any(token.user.can(permission) for permission in permissions):
                names = " or ".join(permission.value for permission in permissions)
                raise Problem(403, f"the token's owner {token.user.username!r} lacks the permission {names}",
                              type_=TYPE_FORBIDDEN)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def api_user() -> User:
    """Return the owner of the token that authenticated this request."""
    return g.api_token.user


def _authenticate() -> ApiToken:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise Problem(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                      type_=TYPE_UNAUTHORIZED, headers=CHALLENGE)
    if scheme.lower() != "bearer" or not secret.strip():
        raise Problem(401, "malformed Authorization header: use 'Bearer <token>'",
                      type_=TYPE_UNAUTHORIZED, headers=CHALLENGE)

    token = authenticate_token(db.session, secret.strip())
    if token is None:
        raise Problem(401, "invalid token: it is unknown, revoked, or its owner is disabled",
                      type_=TYPE_UNAUTHORIZED, headers=CHALLENGE)
    db.session.commit()
    g.api_token = token
    return token
