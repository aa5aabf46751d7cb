"""The TLS part of an identity's configuration page: toggles, the client certificate, issuing, and the CA download."""

from __future__ import annotations

import logging

from flask import abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from portal import audit
from portal.certificates import describe, ensure_private_ca, format_fingerprint, parse_certificate
from portal.extensions import db
from portal.htmx import is_htmx_request, vary_on_htmx
from portal.identities import bp
from portal.identities.forms import CertificateDownloadForm, ClientCertificateForm, TlsSettingForm
from portal.identities.forms import DeleteForm as CsrfOnlyForm
from portal.identities.service import IdentityValidationError, update_identity
from portal.identities.tls import (
    DOWNLOAD_FORMATS,
    bind_certificate,
    can_issue,
    certificate_audit_values,
    certificate_info,
    certificate_warnings,
    issue_certificate,
    remove_certificate,
    take_download,
)
from portal.models import DicomIdentity, Permission
from portal.permissions import permission_required

log = logging.getLogger(__name__)

TLS_SETTING_LABELS = {"allow_anonymous_tls": "Allow anonymous TLS", "require_tls": "Require TLS"}


@bp.context_processor
def tls_helpers() -> dict:
    """Give the identity templates what the TLS card shows."""
    return {
        "client_certificate_of": certificate_info,
        "client_certificate_warnings": _warnings_for,
        "format_fingerprint": format_fingerprint,
        "can_issue_certificates": lambda: can_issue(_settings()),
    }


@bp.post("/<id:identity_id>/tls")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def set_tls(identity_id: int):
    identity = db.get_or_404(DicomIdentity, identity_id)
    form = TlsSettingForm()
    if not form.validate_on_submit():
        abort(400)

    setting, value = form.setting.data, form.value.data == "true"
    if getattr(identity, setting) != value:
        before = certificate_audit_values(identity)
        update_identity(db.session, identity, **{setting: value})
        audit.record("identity.tls", "dicom_identity", identity.ae_title,
                     before=before, after=certificate_audit_values(identity))
        db.session.commit()
        log.info("identity %r: %s set to %s by %s", identity.ae_title, setting, value, current_user.username)

    if is_htmx_request():
        return vary_on_htmx(make_response(render_template("identities/_tls_settings.html", identity=identity)))

    flash(f"{TLS_SETTING_LABELS[setting]} is now {'on' if value else 'off'} for {identity.name}.", "success")
    return redirect(url_for("identities.show", identity_id=identity.id, _anchor="tls"))


@bp.route("/<id:identity_id>/certificate", methods=["GET", "POST"])
@permission_required(Permission.INTEGRATIONS_MANAGE)
def bind_client_certificate(identity_id: int):
    identity = db.get_or_404(DicomIdentity, identity_id)
    form = ClientCertificateForm()
    if not form.validate_on_submit():
        return render_template("identities/certificate.html", identity=identity, form=form)

    upload = form.certificate_file.data
    data = upload.read() if upload else (form.certificate_text.data or "").encode("utf-8", "replace")
    before = certificate_audit_values(identity)
    try:
        warnings = bind_certificate(db.session, _settings(), identity, data)
    except IdentityValidationError as error:
        db.session.rollback()
        form.certificate_text.errors.append(error.errors["client_certificate"])
        return render_template("identities/certificate.html", identity=identity, form=form), 422

    audit.record("identity.certificate.bind", "dicom_identity", identity.ae_title,
                 before=before, after=certificate_audit_values(identity))
    db.session.commit()
    log.info("identity %r: client certificate %s bound by %s", identity.ae_title,
             identity.client_certificate_fingerprint, current_user.username)

    flash(f"Bound the certificate {identity.client_certificate_subject} to {identity.name}.", "success")
    for warning in warnings:
        flash(warning, "warning")
    return redirect(url_for("identities.show", identity_id=identity.id, _anchor="tls"))


@bp.post("/<id:identity_id>/certificate/remove")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def remove_client_certificate(identity_id: int):
    identity = db.get_or_404(DicomIdentity, identity_id)
    if not CsrfOnlyForm().validate_on_submit():
        abort(400)

    if identity.client_certificate_fingerprint is not None and not replacement_confirmed():
        return redirect(url_for("identities.show", identity_id=identity.id, _anchor="tls"))

    if identity.client_certificate_fingerprint is not None:
        before = certificate_audit_values(identity)
        remove_certificate(identity)
        audit.record("identity.certificate.remove", "dicom_identity", identity.ae_title,
                     before=before, after=certificate_audit_values(identity))
        db.session.commit()
        log.info("identity %r: client certificate removed by %s", identity.ae_title, current_user.username)

    flash(f"{identity.name} has no bound client certificate now.", "success")
    return redirect(url_for("identities.show", identity_id=identity.id, _anchor="tls"))


@bp.post("/<id:identity_id>/certificate/issue")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def issue_client_certificate(identity_id: int):
    identity = db.get_or_404(DicomIdentity, identity_id)
    if not CsrfOnlyForm().validate_on_submit():
        abort(400)
    if identity.client_certificate_fingerprint is not None and not replacement_confirmed():
        return redirect(url_for("identities.show", identity_id=identity.id, _anchor="tls"))
    settings = _settings()
    if not can_issue(settings):
        flash("DICOM_TLS_CLIENT_CA is set, so certificates from the portal's CA would not be trusted: "
              "issue the device certificate from that CA and bind it here.", "error")
        return redirect(url_for("identities.show", identity_id=identity.id, _anchor="tls"))

    before = certificate_audit_values(identity)
    issued = issue_certificate(settings, identity)
    audit.record("identity.certificate.issue", "dicom_identity", identity.ae_title,
                 before=before, after=certificate_audit_values(identity))
    db.session.commit()
    log.info("identity %r: client certificate %s issued by %s", identity.ae_title, issued.info.fingerprint,
             current_user.username)

    # The password exists only in this response: the page is not cached and not reachable again.
    response = make_response(render_template(
        "identities/certificate_issued.html", identity=identity, issued=issued, form=CertificateDownloadForm(),
    ))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/<id:identity_id>/certificate/download")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def download_issued_certificate(identity_id: int):
    identity = db.get_or_404(DicomIdentity, identity_id)
    form = CertificateDownloadForm()
    if not form.validate_on_submit():
        abort(400)

    data = take_download(_settings(), form.token.data or "", form.file_format.data)
    if data is None:
        return render_template("identities/certificate_gone.html", identity=identity), 410

    audit.record("identity.certificate.download", "dicom_identity", identity.ae_title,
                 after={"format": form.file_format.data,
                        "client_certificate_fingerprint": identity.client_certificate_fingerprint})
    db.session.commit()
    response = make_response(data)
    response.headers["Content-Type"] = DOWNLOAD_FORMATS[form.file_format.data]
    response.headers["Content-Disposition"] = f'attachment; filename="{identity.ae_title}.{form.file_format.data}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/ca.pem")
@permission_required(Permission.INTEGRATIONS_MANAGE)
def ca_certificate():
    """Return the certificate(s) a device needs to trust the TLS listener: the private CA, or the configured chain."""
    settings = _settings()
    if settings.dicom_tls_cert is None:
        body = ensure_private_ca(settings)[0].read_bytes()
    else:
        body = _public_certificates(settings.dicom_tls_cert.read_bytes())
    response = make_response(body)
    response.headers["Content-Type"] = "application/x-pem-file"
    response.headers["Content-Disposition"] = 'attachment; filename="dicom-tls-ca.pem"'
    return response


def _public_certificates(pem: bytes) -> bytes:
    """Return only the CERTIFICATE blocks of a PEM file, so that a key stored in the same file never leaves."""
    blocks = []
    for block in pem.split(b"-----END CERTIFICATE-----")[:-1]:
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start != -1:
            blocks.append(block[start:] + b"-----END CERTIFICATE-----\n")
    return b"".join(blocks)


def _warnings_for(identity: DicomIdentity) -> list[str]:
    if not identity.client_certificate_pem:
        return []
    certificate = parse_certificate(identity.client_certificate_pem.encode("ascii"))
    return certificate_warnings(_settings(), certificate, describe(certificate))


def _settings():
    return current_app.config["SETTINGS"]


def replacement_confirmed() -> bool:
    """Return whether the form confirms replacing or removing a bound certificate; flash why not."""
    if request.form.get("confirm") == "yes":
        return True
    flash("Nothing changed: tick the box that confirms the device using the bound certificate will be "
          "rejected.", "error")
    return False
