"""Roles and their permissions."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.models import Permission, Role
from portal.users import count_enabled_administrators

MAX_ROLE_NAME_LENGTH = 64

PERMISSION_LABELS = {
    Permission.INTEGRATIONS_MANAGE: "Integrations: manage DICOM identities and their settings",
    Permission.USAGE_VIEW: "Usage: view usage, the connection log and troubleshooting",
    Permission.USERS_MANAGE: "Users: manage users and roles",
    Permission.AUDIT_VIEW: "Audit: view the audit trail",
}


class RoleError(ValueError):
    """A role change that is not allowed. The message gives the reason."""


def clean_role_name(session: Session, name: str, existing: Role | None = None) -> str:
    cleaned = " ".join((name or "").split())
    if not cleaned:
        raise RoleError("a role name is required")
    if len(cleaned) > MAX_ROLE_NAME_LENGTH:
        raise RoleError(f"a role name has at most {MAX_ROLE_NAME_LENGTH} characters")

    clash = select(Role).where(func.lower(Role.name) == cleaned.lower())
    if existing is not None:
        clash = clash.where(Role.id != existing.id)
    if session.scalar(clash) is not None:
        raise RoleError(f"a role named {cleaned!r} already exists")
    return cleaned


def create_role(session: Session, name: str) -> Role:
    role = Role(name=clean_role_name(session, name), permissions=[])
    session.add(role)
    session.flush()
    return role


def rename_role(session: Session, role: Role, name: str) -> None:
    role.name = clean_role_name(session, name, existing=role)


def set_permission(session: Session, role: Role, permission: Permission, granted: bool) -> None:
    """Grant or revoke `permission`, keeping at least one enabled user who can manage users."""
    permissions = [item for item in role.permissions if item != permission.value]
    if granted:
        permissions.append(permission.value)

    if permission is Permission.USERS_MANAGE and not granted:
        if count_enabled_administrators(session, role_override=(role, permissions)) == 0:
            raise RoleError(
                f"cannot remove {permission.value} from {role.name}: no enabled user would be left "
                "who can manage users"
            )
    # A new list, so SQLAlchemy detects the change of the JSON column.
    role.permissions = [item.value for item in Permission if item.value in permissions]


def delete_role(session: Session, role: Role) -> None:
    if role.users:
        raise RoleError(f"cannot delete {role.name}: {len(role.users)} users have this role")
    session.delete(role)
