import logging

from flask import abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal import audit
from portal.extensions import db
from portal.htmx import is_htmx_request, vary_on_htmx
from portal.identities import bp
from portal.identities.forms import DeleteForm, EnabledForm, IdentityForm
from portal.identities.service import IdentityValidationError, create_identity
from portal.models import DicomIdentity, Permission
from portal.permissions import permission_required

log = logging.getLogger(__name__)

NAMING_EXAMPLES = ["Room1_EPIQ7", "ClinicA_Vivid95", "Mobile_CT_Unit"]


def get_identity_or_404(identity_id: int) -> DicomIdentity:
    identity = db.session.get(DicomIdentity, identity_id)
    if identity is None:
        abort(404)
    return identity


@bp.get("")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def index():
    identities = db.session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    return render_template("identities/index.html", identities=identities, toggle=EnabledForm())


@bp.route("/new", methods=["GET", "POST"])
@permission_required(Permission.INTEGRATIONS_MANAGE)
def new():
    form = IdentityForm()
    if form.validate_on_submit():
        try:
            identity = create_identity(db.session, name=form.name.data or "", ae_title=form.ae_title.data or "")
        except IdentityValidationError as error:
            db.session.rollback()
            for field, message in error.errors.items():
                form[field].errors.append(message)
        else:
            audit.record("identity.create", "dicom_identity", identity.ae_title, after=identity.to_dict())
            db.session.commit()
            log.info("identity %r (%s) created by %s", identity.ae_title, identity.name, current_user.username)
            flash(f"Created DICOM identity {identity.name}.", "success")
            return redirect(url_for("identities.show", identity_id=identity.id))

    status = 422 if form.errors else 200
    return render_template("identities/new.html", form=form, examples=NAMING_EXAMPLES), status


@bp.get("/<int:identity_id>")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def show(identity_id: int):
    identity = get_identity_or_404(identity_id)
    settings = current_settings()
    return render_template(
        "identities/show.html",
        identity=identity,
        settings=settings,
        connect_host=connect_host(settings.dicom_host),
        toggle=EnabledForm(),
    )


@bp.post("/<int:identity_id>/enabled")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def set_enabled(identity_id: int):
    identity = get_identity_or_404(identity_id)
    form = EnabledForm()
    if not form.validate_on_submit():
        abort(400)

    enabled = form.enabled.data == "true"
    if identity.enabled != enabled:
        before = {"enabled": identity.enabled}
        identity.enabled = enabled
        audit.record("identity.enable" if enabled else "identity.disable", "dicom_identity",
                     identity.ae_title, before=before, after={"enabled": enabled})
        db.session.commit()
        log.info("identity %r %s by %s", identity.ae_title, "enabled" if enabled else "disabled",
                 current_user.username)

    if is_htmx_request():
        template = "identities/_identity_row.html" if form.fragment.data == "row" else "identities/_status.html"
        fragment = make_response(render_template(template, identity=identity, toggle=EnabledForm()))
        return vary_on_htmx(fragment)

    flash(f"{identity.name} is now {'enabled' if enabled else 'disabled'}.", "success")
    if form.fragment.data == "row":
        return redirect(url_for("identities.index"))
    return redirect(url_for("identities.show", identity_id=identity.id))


@bp.route("/<int:identity_id>/delete", methods=["GET", "POST"])
@permission_required(Permission.INTEGRATIONS_MANAGE)
def delete(identity_id: int):
    identity = get_identity_or_404(identity_id)
    form = DeleteForm()
    if not form.validate_on_submit():
        return render_template("identities/delete.html", identity=identity, form=form)

    before = identity.to_dict()
    name = identity.name
    db.session.delete(identity)
    audit.record("identity.delete", "dicom_identity", before["ae_title"], before=before)
    db.session.commit()
    log.info("identity %r (%s) deleted by %s", before["ae_title"], name, current_user.username)

    flash(f"Deleted DICOM identity {name}.", "success")
    return redirect(url_for("identities.index"))


def current_settings():
    return current_app.config["SETTINGS"]


def connect_host(listen_host: str) -> str:
    """Return the address a device should call: the listen address unless it is a wildcard."""
    if listen_host in ("0.0.0.0", "::", ""):
        return request.host.rsplit(":", 1)[0].strip("[]") if request.host else "this server"
    return listen_host
