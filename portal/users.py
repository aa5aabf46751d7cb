"""User accounts: creation, passwords and the first administrator."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from portal.models import Permission, Role, User

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD_LENGTH = 12
ADMINISTRATOR_ROLE = "Administrator"


class UserError(ValueError):
    """A user cannot be created as requested; the message says why."""


def find_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Return the enabled user with these credentials, or None."""
    user = find_user(session, username)
    if user is None:
        # Hash anyway, so a wrong username takes as long as a wrong password.
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(user.password_hash, password) or not user.enabled:
        return None
    return user


def create_user(session: Session, username: str, role_name: str, password: str) -> User:
    """Validate and add a user. The caller commits."""
    if not USERNAME_PATTERN.match(username):
        raise UserError(
            f"invalid username {username!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-'"
        )
    if find_user(session, username) is not None:
        raise UserError(f"a user named {username!r} already exists")

    role = session.scalar(select(Role).where(Role.name == role_name))
    if role is None:
        names = ", ".join(session.scalars(select(Role.name).order_by(Role.name)))
        raise UserError(f"role {role_name!r} not found: use one of {names}")

    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters")

    user = User(username=username, role=role, password_hash=generate_password_hash(password))
    session.add(user)
    return user


def ensure_initial_admin(session: Session, data_dir: Path) -> str | None:
    """Create user `admin` when no administrator exists.

    Returns the generated password, which is also written to
    `$DATA_DIR/initial-admin-password` with mode 0600, or None when an
    administrator already exists.
    """
    admins = select(User).join(Role).where(Role.name == ADMINISTRATOR_ROLE)
    if session.scalar(admins.limit(1)) is not None:
        return None

    password = secrets.token_urlsafe(15)
    create_user(session, "admin", ADMINISTRATOR_ROLE, password)
    session.commit()

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "initial-admin-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    os.chmod(path, 0o600)
    return password


def has_permission(user, permission: Permission) -> bool:
    return bool(user and getattr(user, "is_authenticated", False) and user.can(permission))


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))
