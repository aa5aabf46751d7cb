"""API tokens: creation, revocation and bearer authentication.

A token is 32 random bytes, URL-safe base64, after a fixed prefix that makes
it easy to spot in logs and secret scanners. Only its SHA-256 digest is
stored, so a copy of the database does not reveal usable tokens.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.models import ApiToken, User, utcnow

TOKEN_PREFIX = "pacs_"
TOKEN_BYTES = 32
MAX_TOKEN_NAME_LENGTH = 64
# Characters kept in clear (prefix included) so a user can tell tokens apart.
DISPLAY_PREFIX_LENGTH = 12


class TokenError(ValueError):
    """A token cannot be created as requested. The message gives the reason."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def clean_token_name(name: str | None) -> str:
    cleaned = " ".join((name or "").split())
    if not cleaned:
        raise TokenError("a token name is required, for example the script or system that uses it")
    if len(cleaned) > MAX_TOKEN_NAME_LENGTH:
        raise TokenError(
            f"a token name has at most {MAX_TOKEN_NAME_LENGTH} characters; this one has {len(cleaned)}"
        )
    return cleaned


def create_token(session: Session, user: User, name: str | None) -> tuple[ApiToken, str]:
    """Add a new token for `user` and return it with the secret, which is not stored. The caller commits."""
    if not user.enabled:
        raise TokenError(f"user {user.username!r} is disabled: enable the user before creating a token")

    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = ApiToken(
        user=user,
        name=clean_token_name(name),
        token_hash=hash_token(secret),
        prefix=secret[:DISPLAY_PREFIX_LENGTH],
    )
    session.add(token)
    session.flush()
    return token, secret


def revoke_token(token: ApiToken) -> None:
    """Mark `token` revoked; revoking twice keeps the first time. The caller commits."""
    if token.revoked_at is None:
        token.revoked_at = utcnow()


def tokens_of(session: Session, user: User) -> list[ApiToken]:
    """Return the user's tokens, newest first, revoked ones included."""
    query = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at.desc(),
                                                                          ApiToken.id.desc())
    return list(session.scalars(query))


def authenticate_token(session: Session, secret: str) -> ApiToken | None:
    """Return the active token for `secret` whose owner is enabled, or None.

    Records the time of use on the token. The caller commits.
    """
    if not secret.startswith(TOKEN_PREFIX):
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None or token.revoked_at is not None or not token.user.enabled:
        return None
    token.last_used_at = utcnow()
    return token
