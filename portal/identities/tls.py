"""TLS settings of a DICOM identity: its bound client certificate, issued certificates and their one-time download.

Shared by the configuration page and the CLI, so both apply the same checks.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.certificates import (
    CertificateError,
    CertificateInfo,
    chains_to,
    describe,
    issue_client_certificate,
    parse_certificate,
    pem_bundle,
    pkcs12_bundle,
    private_ca_paths,
    tls_dir,
)
from portal.identities.service import IdentityValidationError
from portal.models import DicomIdentity
from portal.settings import Settings

# Issued key material waits this long for its one-time download, then is deleted.
DOWNLOAD_LIFETIME_SECONDS = 15 * 60
DOWNLOAD_FORMATS = {"p12": "application/x-pkcs12", "pem": "application/x-pem-file"}
_TOKEN_PATTERN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the portal issued and bound; the key material waits under `token` for one download per format."""

    info: CertificateInfo
    token: str
    password: str


def certificate_info(identity: DicomIdentity) -> CertificateInfo | None:
    """Describe the identity's bound client certificate, or return None when none is bound."""
    if not identity.client_certificate_pem:
        return None
    return describe(parse_certificate(identity.client_certificate_pem.encode("ascii")))


def bind_certificate(session: Session, settings: Settings, identity: DicomIdentity, data: bytes) -> list[str]:
    """Bind the PEM or DER certificate in `data` to the identity; return warnings for the administrator.

    Raises IdentityValidationError (field `client_certificate`) for data that
    is not a single certificate, or a certificate bound to another identity.
    The caller commits.
    """
    try:
        certificate = parse_certificate(data)
    except CertificateError as error:
        raise IdentityValidationError({"client_certificate": str(error)}) from None

    info = describe(certificate)
    owner = session.scalar(
        select(DicomIdentity).where(
            DicomIdentity.client_certificate_fingerprint == info.fingerprint, DicomIdentity.id != identity.id
        )
    )
    if owner is not None:
        raise IdentityValidationError({
            "client_certificate": f"this certificate is already bound to {owner.name!r} ({owner.ae_title}): "
                                  "each device needs its own certificate"
        })

    _store(identity, info)
    return certificate_warnings(settings, certificate, info)


def certificate_warnings(settings: Settings, certificate, info: CertificateInfo) -> list[str]:
    """Return what the administrator should know about a bound certificate: expiry and an untrusted issuer."""
    warnings = []
    if info.expired():
        warnings.append(
            f"The certificate expired on {info.not_after:%Y-%m-%d}: TLS handshakes with it fail until the device has a new one."
        )
    elif info.expires_soon():
        warnings.append(f"The certificate expires on {info.not_after:%Y-%m-%d}: renew it on the device soon.")

    client_ca = settings.dicom_tls_client_ca or private_ca_paths(settings)[0]
    if client_ca.exists() and not chains_to(certificate, client_ca):
        warnings.append(
            f"The certificate is issued by {info.issuer}, which is not a CA in {client_ca.name}: "
            "dicomd rejects it in the TLS handshake unless DICOM_TLS_CLIENT_CA trusts that issuer."
        )
    return warnings


def remove_certificate(identity: DicomIdentity) -> None:
    """Unbind the identity's client certificate. The caller commits."""
    identity.client_certificate_pem = None
    identity.client_certificate_fingerprint = None
    identity.client_certificate_subject = None
    identity.client_certificate_not_after = None


def can_issue(settings: Settings) -> bool:
    """Return whether certificates issued by the private CA are trusted, i.e. DICOM_TLS_CLIENT_CA is unset."""
    return settings.dicom_tls_client_ca is None


def issue_certificate(settings: Settings, identity: DicomIdentity) -> IssuedCertificate:
    """Issue a client certificate for the identity from the private CA, bind it, and hold its key for download.

    An identity with a retrieve address gets a certificate that also serves
    TLS for that host, for the C-MOVE and storage commitment associations
    dicomd opens to it.

    The key is written only to the one-time download files, encrypted with a
    new random password that is returned here and stored nowhere. The caller commits.
    """
    key, certificate, ca_certificate = issue_client_certificate(
        settings, identity.ae_title, server_host=identity.retrieve_host
    )
    info = describe(certificate)
    password = secrets.token_urlsafe(12)
    token = secrets.token_hex(16)

    directory = _download_dir(settings)
    remove_expired_downloads(settings)
    _write_private(directory / f"{token}.p12", pkcs12_bundle(identity.ae_title, key, certificate, ca_certificate, password))
    _write_private(directory / f"{token}.pem", pem_bundle(key, certificate, password))

    _store(identity, info)
    return IssuedCertificate(info=info, token=token, password=password)


def take_download(settings: Settings, token: str, file_format: str) -> bytes | None:
    """Return the issued key material under `token` in `file_format` and delete it; None if already taken or expired."""
    if not _TOKEN_PATTERN.match(token or "") or file_format not in DOWNLOAD_FORMATS:
        return None
    remove_expired_downloads(settings)
    path = _download_dir(settings) / f"{token}.{file_format}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return data


def remove_expired_downloads(settings: Settings) -> None:
    cutoff = time.time() - DOWNLOAD_LIFETIME_SECONDS
    for path in _download_dir(settings).iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            continue


def certificate_audit_values(identity: DicomIdentity) -> dict:
    """Return the identity's TLS settings for the audit trail (no key material)."""
    return {
        "allow_anonymous_tls": identity.allow_anonymous_tls,
        "require_tls": identity.require_tls,
        "client_certificate_subject": identity.client_certificate_subject,
        "client_certificate_fingerprint": identity.client_certificate_fingerprint,
        "client_certificate_not_after": (
            identity.client_certificate_not_after.isoformat() if identity.client_certificate_not_after else None
        ),
    }


def _store(identity: DicomIdentity, info: CertificateInfo) -> None:
    identity.client_certificate_pem = info.pem
    identity.client_certificate_fingerprint = info.fingerprint
    identity.client_certificate_subject = info.subject[:512]
    identity.client_certificate_not_after = info.not_after


def _download_dir(settings: Settings) -> Path:
    directory = tls_dir(settings) / "downloads"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
