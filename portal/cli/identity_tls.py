"""`portal identity certificate …`: bind, issue and remove an identity's client certificate."""

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from portal import audit
from portal.cli.identities import identity
from portal.extensions import db
from portal.identities.service import IdentityValidationError
from portal.identities.tls import (
    bind_certificate,
    can_issue,
    certificate_audit_values,
    issue_certificate,
    remove_certificate,
    take_download,
)
from portal.identity_lookup import find_by_ae_title
from portal.models import DicomIdentity


def _get(ae_title: str) -> DicomIdentity:
    found = find_by_ae_title(db.session, ae_title)
    if found is None:
        raise click.ClickException(f"no identity with AE title {ae_title!r}: `portal identity list` shows them")
    return found


@identity.group("certificate")
def certificate():
    """Bind, issue or remove the client certificate of a DICOM identity."""


@certificate.command("bind")
@click.argument("ae_title")
@click.argument("certificate_file", type=click.File("rb"))
@with_appcontext
def bind(ae_title, certificate_file):
    """Bind the device certificate in CERTIFICATE_FILE (PEM or DER) to the identity with AE_TITLE."""
    target = _get(ae_title)
    before = certificate_audit_values(target)
    try:
        warnings = bind_certificate(db.session, current_app.config["SETTINGS"], target, certificate_file.read())
    except IdentityValidationError as error:
        db.session.rollback()
        raise click.ClickException(f"{certificate_file.name}: {error.errors['client_certificate']}") from None

    audit.record("identity.certificate.bind", "dicom_identity", target.ae_title,
                 before=before, after=certificate_audit_values(target))
    db.session.commit()
    click.echo(f"Bound {target.client_certificate_subject} (SHA-256 {target.client_certificate_fingerprint}) "
               f"to {target.ae_title}.")
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)


@certificate.command("issue")
@click.argument("ae_title")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write AE_TITLE.p12 and AE_TITLE.pem to; it must exist.")
@with_appcontext
def issue(ae_title, out_dir: Path):
    """Issue a client certificate from the private CA, bind it, and write the key material to --out."""
    settings = current_app.config["SETTINGS"]
    if not can_issue(settings):
        raise click.ClickException("DICOM_TLS_CLIENT_CA is set, so certificates from the portal's CA would "
                                   "not be trusted: issue the certificate from that CA and use `certificate bind`")
    if not out_dir.is_dir():
        raise click.ClickException(f"--out {out_dir}: no such directory")
    target = _get(ae_title)

    before = certificate_audit_values(target)
    issued = issue_certificate(settings, target)
    for file_format in ("p12", "pem"):
        path = out_dir / f"{target.ae_title}.{file_format}"
        path.touch(mode=0o600)
        path.write_bytes(take_download(settings, issued.token, file_format))
    audit.record("identity.certificate.issue", "dicom_identity", target.ae_title,
                 before=before, after=certificate_audit_values(target))
    db.session.commit()
    click.echo(f"Issued and bound {issued.info.subject}; wrote {target.ae_title}.p12 and {target.ae_title}.pem "
               f"to {out_dir}. Their password, shown only now: {issued.password}")


@certificate.command("remove")
@click.argument("ae_title")
@with_appcontext
def remove(ae_title):
    """Unbind the client certificate of the identity with AE_TITLE."""
    target = _get(ae_title)
    before = certificate_audit_values(target)
    remove_certificate(target)
    audit.record("identity.certificate.remove", "dicom_identity", target.ae_title,
                 before=before, after=certificate_audit_values(target))
    db.session.commit()
    click.echo(f"{target.ae_title} has no bound client certificate now.")
