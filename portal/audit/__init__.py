"""The audit trail of administrative actions, and its page."""

from __future__ import annotations

from flask import Blueprint, has_request_context, request
from flask_login import current_user

from portal.extensions import db
from portal.models import AuditEvent

bp = Blueprint("audit", __name__)


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


from portal.audit import routes  # noqa: E402,F401  (registers the views on bp)
