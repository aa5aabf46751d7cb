"""The audit trail of administrative actions."""

from __future__ import annotations

from flask import has_request_context, request
from flask_login import current_user

from portal.extensions import db
from portal.models import AuditEvent


def record(action: str, target_type: str, target: str, *, before: dict | None = None,
           after: dict | None = None, actor: str | None = None) -> AuditEvent:
    """Add an audit event to the session; the caller commits it with the change."""
    if actor is None:
        actor = _current_actor()
    event = AuditEvent(
        actor=actor,
        source_address=request.remote_addr if has_request_context() else None,
        action=action,
        target_type=target_type,
        target=target,
        before=before,
        after=after,
    )
    db.session.add(event)
    return event


def _current_actor() -> str:
    if has_request_context() and current_user.is_authenticated:
        return current_user.username
    return "cli"
