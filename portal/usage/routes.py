"""Read-only usage pages for administrators and support staff."""

from sqlalchemy import select

from flask import render_template

from portal.extensions import db
from portal.identities.routes import get_identity_or_404
from portal.models import Association, DicomIdentity, Permission
from portal.permissions import permission_required
from portal.usage import bp

RECENT_ASSOCIATIONS = 50


@bp.get("/usage")
@permission_required(Permission.USAGE_VIEW)
def index():
    identities = db.session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    return render_template("usage/index.html", identities=identities)


@bp.get("/settings/devices/dicom/<int:identity_id>/usage")
@permission_required(Permission.USAGE_VIEW)
def identity(identity_id: int):
    device = get_identity_or_404(identity_id)
    recent = db.session.scalars(
        select(Association)
        .where(Association.identity_id == device.id)
        .order_by(Association.started_at.desc(), Association.id.desc())
        .limit(RECENT_ASSOCIATIONS)
    ).all()
    return render_template("usage/identity.html", identity=device, associations=recent)
