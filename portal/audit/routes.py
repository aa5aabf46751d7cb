import csv
import io
import json
from datetime import date, datetime, time, timedelta, timezone

from flask import Response, render_template, request
from sqlalchemy import Select, select

from portal.audit import bp
from portal.database import MAX_ROW_ID
from portal.extensions import db
from portal.models import AuditEvent, Permission
from portal.permissions import permission_required

PAGE_SIZE = 50
CSV_COLUMNS = ["id", "at", "actor", "source_address", "action", "target_type", "target", "before", "after"]


class FilterError(ValueError):
    pass


def parse_day(name: str) -> date | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise FilterError(f"invalid date {raw!r} for {name}: use YYYY-MM-DD") from None


def filtered_query() -> tuple[Select, dict]:
    """Build the audit query from the request's filters; raise FilterError on a bad value."""
    filters = {name: (request.args.get(name) or "").strip() for name in ("actor", "action", "target")}
    query = select(AuditEvent)
    if filters["actor"]:
        query = query.where(AuditEvent.actor == filters["actor"])
    if filters["action"]:
        query = query.where(AuditEvent.action.startswith(filters["action"], autoescape=True))
    if filters["target"]:
        query = query.where(AuditEvent.target.contains(filters["target"], autoescape=True))

    since, until = parse_day("since"), parse_day("until")
    if since:
        query = query.where(AuditEvent.at >= datetime.combine(since, time.min, timezone.utc))
    if until:
        query = query.where(AuditEvent.at < datetime.combine(until + timedelta(days=1), time.min, timezone.utc))
    filters.update(since=since.isoformat() if since else "", until=until.isoformat() if until else "")
    return query, filters


@bp.get("/settings/audit")
@permission_required(Permission.AUDIT_VIEW)
def index():
    try:
        query, filters = filtered_query()
        before_id = request.args.get("before", type=int)
        if before_id is not None and not 0 <= before_id <= MAX_ROW_ID:
            raise FilterError(f"invalid before {before_id}: use a whole number from 0 to {MAX_ROW_ID}")
    except FilterError as error:
        return render_template("audit/index.html", events=[], filters=request.args, error=str(error),
                               next_before=None), 400

    # Keyset pagination: newest first, continuing below the last id shown.
    if before_id:
        query = query.where(AuditEvent.id < before_id)
    events = db.session.scalars(query.order_by(AuditEvent.id.desc()).limit(PAGE_SIZE + 1)).all()
    next_before = events[PAGE_SIZE - 1].id if len(events) > PAGE_SIZE else None
    return render_template("audit/index.html", events=events[:PAGE_SIZE], filters=filters, error=None,
                           next_before=next_before)


@bp.get("/settings/audit/export.csv")
@permission_required(Permission.AUDIT_VIEW)
def export():
    try:
        query, _ = filtered_query()
    except FilterError as error:
        return Response(str(error) + "\n", status=400, mimetype="text/plain")

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for event in db.session.scalars(query.order_by(AuditEvent.id)):
        writer.writerow([
            event.id, event.at.isoformat(), event.actor, event.source_address or "", event.action,
            event.target_type, event.target,
            json.dumps(event.before) if event.before is not None else "",
            json.dumps(event.after) if event.after is not None else "",
        ])
    return Response(buffer.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=audit.csv"})
