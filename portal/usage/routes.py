"""Read-only usage pages for administrators and support staff."""

import csv
import io
from datetime import date, datetime, time, timedelta, timezone

from flask import Response, render_template, request, stream_with_context
from sqlalchemy import func, select

from portal.database import MAX_ROW_ID
from portal.extensions import db
from portal.models import Association, DicomIdentity, Instance, Permission, Study
from portal.permissions import permission_required
from portal.usage import bp
from portal.usage.charts import daily_chart
from portal.usage.queries import (
    LogFilters,
    last_association,
    listener_statuses,
    log_page,
    unrecognised_devices,
    usage_periods,
)
from portal.usage.reasons import REASONS, explain

PAGE_SIZE = 50
OUTCOMES = ["accepted", "rejected", "aborted"]
TRANSPORTS = ["plain", "tls"]
CSV_COLUMNS = ["id", "started_at", "ended_at", "identity", "calling_ae_title", "called_ae_title",
               "peer_address", "peer_port", "transport", "local_port", "outcome", "reason", "detail",
               "operations", "instances_received", "bytes_received"]


class FilterError(ValueError):
    """A connection log filter with an invalid value. The message names the filter."""


@bp.get("/usage")
@permission_required(Permission.USAGE_VIEW)
def index():
    identities = db.session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    return render_template("usage/index.html", identities=identities,
                           unrecognised=unrecognised_devices(db.session),
                           listeners=listener_statuses(db.session))


@bp.get("/settings/devices/dicom/<id:identity_id>/usage")
@permission_required(Permission.USAGE_VIEW)
def identity(identity_id: int):
    device = db.get_or_404(DicomIdentity, identity_id)
    before_id = request.args.get("before", type=int)
    if before_id is not None and not 0 <= before_id <= MAX_ROW_ID:
        before_id = None
    associations, next_before = log_page(db.session, LogFilters(identity_id=device.id), before_id, PAGE_SIZE)
    studies = db.session.scalars(
        select(Study).where(Study.identity_id == device.id).order_by(Study.last_received_at.desc()).limit(PAGE_SIZE)
    ).all()
    return render_template(
        "usage/identity.html",
        identity=device,
        periods=usage_periods(db.session, device),
        last_association=last_association(db.session, device),
        chart=daily_chart(db.session, device),
        associations=associations,
        next_before=next_before,
        studies=studies,
        instance_counts=instance_counts([study.id for study in studies]),
        explain=explain,
    )


def instance_counts(study_ids: list[int]) -> dict[int, int]:
    if not study_ids:
        return {}
    rows = db.session.execute(
        select(Instance.study_id, func.count()).where(Instance.study_id.in_(study_ids)).group_by(Instance.study_id)
    )
    return dict(rows.all())


@bp.get("/settings/devices/dicom/log")
@permission_required(Permission.USAGE_VIEW)
def log():
    identities = db.session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    try:
        filters = parse_filters()
        before_id = parse_int("before")
    except FilterError as error:
        return render_template("usage/log.html", associations=[], next_before=None, error=str(error),
                               identities=identities, args=request.args, options=filter_options(),
                               explain=explain), 400

    associations, next_before = log_page(db.session, filters, before_id, PAGE_SIZE)
    names = {item.id: item.name for item in identities}
    return render_template("usage/log.html", associations=associations, next_before=next_before, error=None,
                           identities=identities, names=names, args=request.args, options=filter_options(),
                           explain=explain)


@bp.get("/settings/devices/dicom/log.csv")
@permission_required(Permission.USAGE_VIEW)
def log_csv():
    try:
        filters = parse_filters()
    except FilterError as error:
        return Response(f"{error}\n", status=400, mimetype="text/plain")

    names = dict(db.session.execute(select(DicomIdentity.id, DicomIdentity.name)).all())
    query = filters.apply(select(Association)).order_by(Association.id)

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        # Streamed in batches, so a large export never sits in memory whole.
        for association in db.session.scalars(query.execution_options(yield_per=1000)):
            writer.writerow(csv_row(association, names))
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=connection-log.csv"})


def csv_row(association: Association, names: dict[int, str]) -> list:
    operations = ";".join(f"{name}={count}" for name, count in sorted((association.operations or {}).items()))
    return [
        association.id,
        association.started_at.isoformat(),
        association.ended_at.isoformat() if association.ended_at else "",
        names.get(association.identity_id, ""),
        association.calling_ae_title or "",
        association.called_ae_title or "",
        association.peer_address,
        association.peer_port or "",
        association.transport,
        association.local_port or "",
        association.outcome,
        association.reason or "",
        association.detail or "",
        operations,
        association.instances_received,
        association.bytes_received,
    ]


def filter_options() -> dict[str, list[str]]:
    return {"outcome": OUTCOMES, "transport": TRANSPORTS, "reason": sorted(REASONS)}


def parse_filters() -> LogFilters:
    """Read the connection log filters from the query string; raise FilterError on a bad value."""
    outcome = choice("outcome", OUTCOMES)
    transport = choice("transport", TRANSPORTS)
    reason = choice("reason", sorted(REASONS))
    peer_address = (request.args.get("peer") or "").strip() or None
    if peer_address and len(peer_address) > 64:
        raise FilterError("invalid peer address: at most 64 characters")

    since = parse_time("since", end_of_day=False)
    until = parse_time("until", end_of_day=True)
    if since and until and since >= until:
        raise FilterError("the start of the time range must be before its end")

    return LogFilters(identity_id=parse_int("identity"), outcome=outcome, reason=reason, transport=transport,
                      peer_address=peer_address, since=since, until=until)


def choice(name: str, allowed: list[str]) -> str | None:
    value = (request.args.get(name) or "").strip()
    if value and value not in allowed:
        raise FilterError(f"invalid {name} {value!r}: use one of {', '.join(allowed)}")
    return value or None


def parse_int(name: str) -> int | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > MAX_ROW_ID:
        raise FilterError(f"invalid {name} {raw!r}: use a whole number from 0 to {MAX_ROW_ID}")
    return int(raw)


def parse_time(name: str, end_of_day: bool) -> datetime | None:
    """Parse YYYY-MM-DD or YYYY-MM-DDTHH:MM as UTC. A bare end date includes that whole day."""
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            moment = datetime.combine(day + timedelta(days=1) if end_of_day else day, time.min)
        else:
            moment = datetime.fromisoformat(raw)
    except ValueError:
        raise FilterError(f"invalid {name} {raw!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
