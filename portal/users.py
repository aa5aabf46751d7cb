"""User accounts: creation, passwords and the first administrator."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from portal.models import Permission, Role, User, new_session_token

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD_LENGTH = 12
ADMINISTRATOR_ROLE = "Administrator"


class UserError(ValueError):
    """A user change that cannot be made as requested. The message gives the reason."""


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
    clash = session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if clash is not None:
        raise UserError(f"a user named {clash.username!r} already exists; usernames differing only by case "
                        "are not allowed")

    role = session.scalar(select(Role).where(Role.name == role_name))
    if role is None:
        names = ", ".join(session.scalars(select(Role.name).order_by(Role.name)))
        raise UserError(f"role {role_name!r} not found: use one of {names}")

    user = User(username=username, role=role)
    set_password(user, password)
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


def count_enabled_administrators(session: Session, excluding_user: User | None = None,
                                 role_override: tuple[Role, list[str]] | None = None) -> int:
    """Count enabled users whose role has users.manage.

    `role_override` counts a role as if it had the given permissions, so a
    permission change can be checked before it is made.
    """
    count = 0
    for user in session.scalars(select(User).where(User.enabled.is_(True))):
        if excluding_user is not None and user.id == excluding_user.id:
            continue
        permissions = user.role.permissions
        if role_override is not None and user.role.id == role_override[0].id:
            permissions = role_override[1]
        if Permission.USERS_MANAGE.value in permissions:
            count += 1
    return count


def _require_another_administrator(session: Session, user: User, action: str) -> None:
    if user.can(Permission.USERS_MANAGE) and count_enabled_administrators(session, excluding_user=user) == 0:
        raise UserError(
            f"cannot {action} {user.username}: it is the last enabled user who can manage users. "
            "Give another user that permission first."
        )


def set_user_enabled(session: Session, user: User, enabled: bool) -> None:
    if not enabled:
        _require_another_administrator(session, user, "disable")
        # Disabling ends the user's open sessions.
        user.session_token = new_session_token()
    user.enabled = enabled


def set_user_role(session: Session, user: User, role_name: str) -> None:
    role = session.scalar(select(Role).where(Role.name == role_name))
    if role is None:
        raise UserError(f"role {role_name!r} not found")
    if Permission.USERS_MANAGE.value not in role.permissions:
        _require_another_administrator(session, user, "change the role of")
    user.role = role


def delete_user(session: Session, user: User) -> None:
    _require_another_administrator(session, user, "delete")
    session.delete(user)


def set_password(user: User, password: str) -> None:
    """Set a new password and end every session of the user."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = generate_password_hash(password)
    user.session_token = new_session_token()
