import logging

from flask import abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from portal import audit
from portal.extensions import db
from portal.htmx import is_htmx_request, vary_on_htmx
from portal.identities import bp
from portal.identities.forms import DeleteForm, EnabledForm, IdentityForm, NetworksForm, PermittedForm, RetrieveForm
from portal.identities.service import (
    OPERATION_LABELS,
    PRESETS,
    IdentityValidationError,
    create_identity,
    update_identity,
)
from portal.models import DicomIdentity, Permission
from portal.permissions import permission_required
from portal.networks import split_entries, validate_networks
from portal.usage.queries import last_association, listener_statuses, recent_peer_addresses, unrecognised_devices

log = logging.getLogger(__name__)

NAMING_EXAMPLES = ["Room1_EPIQ7", "ClinicA_Vivid95", "Mobile_CT_Unit"]


def get_identity_or_404(identity_id: int) -> DicomIdentity:
    return db.get_or_404(DicomIdentity, identity_id)


@bp.get("")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def index():
    identities = db.session.scalars(select(DicomIdentity).order_by(DicomIdentity.name)).all()
    return render_template("identities/index.html", identities=identities, toggle=EnabledForm(),
                           unrecognised=unrecognised_devices(db.session),
                           listeners=listener_statuses(db.session))


@bp.route("/new", methods=["GET", "POST"])
@permission_required(Permission.INTEGRATIONS_MANAGE)
def new():
    # "Create identity" on an unrecognised device opens the form with its AE title.
    form = IdentityForm(data={"ae_title": request.args.get("ae_title", "")} if request.method == "GET" else None)
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


@bp.get("/<id:identity_id>")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def show(identity_id: int):
    identity = get_identity_or_404(identity_id)
    settings = current_settings()
    return render_template(
        "identities/show.html",
        identity=identity,
        settings=settings,
        connect_host=settings.dicom_public_host or connect_host(settings.dicom_host),
        toggle=EnabledForm(),
        **networks_context(identity, entries=identity.allowed_networks, errors={}),
        **retrieve_context(identity),
        last_association=last_association(db.session, identity),
        **permitted_context(errors=[]),
    )


def permitted_context(errors: list[str]) -> dict:
    return {"operation_labels": OPERATION_LABELS, "presets": PRESETS, "permitted_errors": errors}


@bp.post("/<id:identity_id>/permitted")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def set_permitted(identity_id: int):
    identity = get_identity_or_404(identity_id)
    form = PermittedForm()
    form.validate_on_submit()
    if "csrf_token" in form.errors:
        abort(400)

    errors = [message for messages in form.errors.values() for message in messages]
    if not errors:
        permitted = PRESETS[form.preset.data][1] if form.preset.data else (form.permitted.data or [])
        before = {"permitted": list(identity.permitted)}
        update_identity(db.session, identity, permitted=permitted)
        audit.record("identity.permitted", "dicom_identity", identity.ae_title, before=before,
                     after={"permitted": list(identity.permitted)})
        db.session.commit()
        log.info("permitted requests of identity %r set to %s by %s", identity.ae_title,
                 ", ".join(identity.permitted) or "none", current_user.username)

    if is_htmx_request():
        # Errors come back in the fragment, because htmx does not swap error responses.
        fragment = render_template("identities/_permitted.html", identity=identity, **permitted_context(errors))
        return vary_on_htmx(make_response(fragment))

    if errors:
        flash(f"Permitted requests not saved: {'; '.join(errors)}", "error")
    else:
        flash(f"Saved the permitted requests of {identity.name}.", "success")
    return redirect(url_for("identities.show", identity_id=identity.id))


def retrieve_context(identity: DicomIdentity, values: dict | None = None, errors: dict | None = None) -> dict:
    if values is None:
        values = {"retrieve_host": identity.retrieve_host or "",
                  "retrieve_port": "" if identity.retrieve_port is None else str(identity.retrieve_port)}
    return {"retrieve_values": values, "retrieve_errors": errors or {}}


@bp.post("/<id:identity_id>/retrieve")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def set_retrieve(identity_id: int):
    identity = get_identity_or_404(identity_id)
    form = RetrieveForm()
    if not form.validate_on_submit():
        abort(400)

    values = {"retrieve_host": (form.retrieve_host.data or "").strip(),
              "retrieve_port": (form.retrieve_port.data or "").strip()}
    errors: dict[str, str] = {}
    port = None
    if values["retrieve_port"]:
        if values["retrieve_port"].isdigit():
            port = int(values["retrieve_port"])
        else:
            errors["retrieve_port"] = f"invalid port {values['retrieve_port']!r}: use a number from 1 to 65535"

    if not errors:
        before = {"retrieve_host": identity.retrieve_host, "retrieve_port": identity.retrieve_port}
        try:
            update_identity(db.session, identity, retrieve_host=values["retrieve_host"] or None, retrieve_port=port)
        except IdentityValidationError as error:
            db.session.rollback()
            errors = error.errors
        else:
            after = {"retrieve_host": identity.retrieve_host, "retrieve_port": identity.retrieve_port}
            audit.record("identity.retrieve_address", "dicom_identity", identity.ae_title, before=before, after=after)
            db.session.commit()
            log.info("retrieve address of identity %r set to %s:%s by %s", identity.ae_title,
                     identity.retrieve_host, identity.retrieve_port, current_user.username)

    if is_htmx_request():
        # Errors come back in the fragment, because htmx does not swap error responses.
        context = retrieve_context(identity, values if errors else None, errors)
        fragment = render_template("identities/_retrieve.html", identity=identity, **context)
        return vary_on_htmx(make_response(fragment))

    if errors:
        flash(f"Retrieve address not saved: {'; '.join(errors.values())}", "error")
    else:
        flash(f"Saved the retrieve address of {identity.name}.", "success")
    return redirect(url_for("identities.show", identity_id=identity.id))


def networks_context(identity: DicomIdentity, entries: list[str], errors: dict[int, str]) -> dict:
    return {
        "network_entries": entries,
        "network_errors": errors,
        "recent_addresses": recent_peer_addresses(db.session, identity),
    }


@bp.post("/<id:identity_id>/networks")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def set_networks(identity_id: int):
    identity = get_identity_or_404(identity_id)
    form = NetworksForm()
    if not form.validate_on_submit():
        abort(400)

    entries = split_entries(form.networks.data or "")
    normalized, errors = validate_networks(entries)
    if not errors:
        before = {"allowed_networks": list(identity.allowed_networks)}
        update_identity(db.session, identity, allowed_networks=normalized)
        audit.record("identity.networks", "dicom_identity", identity.ae_title, before=before,
                     after={"allowed_networks": normalized})
        db.session.commit()
        log.info("allowed networks of identity %r set to %s by %s", identity.ae_title,
                 ", ".join(normalized) or "any address", current_user.username)
        entries = normalized

    if is_htmx_request():
        # Invalid entries come back in the fragment with their messages, because
        # htmx does not swap error responses.
        fragment = render_template("identities/_networks.html", identity=identity,
                                   **networks_context(identity, entries, errors))
        return vary_on_htmx(make_response(fragment))

    if errors:
        for position, message in errors.items():
            flash(f"Allowed networks not saved: {message}", "error")
    else:
        flash(f"Saved the allowed networks of {identity.name}.", "success")
    return redirect(url_for("identities.show", identity_id=identity.id))


@bp.post("/<id:identity_id>/enabled")
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


@bp.route("/<id:identity_id>/delete", methods=["GET", "POST"])
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
    """Return the address a device should call: the listen address, or the portal's host for a wildcard.

    DICOM_PUBLIC_HOST, when set, is used instead of this guess.
    """
    if listen_host in ("0.0.0.0", "::", ""):
        return request.host.rsplit(":", 1)[0].strip("[]") if request.host else "this server"
    return listen_host
