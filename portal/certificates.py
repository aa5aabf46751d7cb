"""X.509 material for DICOM TLS: the private CA, the generated server pair and device certificates.

Shared by dicomd, which generates the server pair on its first start, and the
portal, which shows, binds and issues device (client) certificates. Files live
in `$DATA_DIR/tls/`; private keys are written with mode 0600.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portal.settings import Settings

log = logging.getLogger(__name__)

TLS_DIR_NAME = "tls"
CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server.key"

RSA_KEY_BITS = 2048
CA_VALIDITY_DAYS = 3650
SERVER_VALIDITY_DAYS = 825
CLIENT_VALIDITY_DAYS = 825
# The configuration page warns this long before a bound certificate expires.
EXPIRY_WARNING_DAYS = 30
MAX_UPLOAD_BYTES = 64 * 1024


class CertificateError(ValueError):
    """Uploaded certificate data that cannot be used. The message gives the reason and what to send instead."""


@dataclass(frozen=True)
class TlsFiles:
    """The server certificate and key that dicomd presents, and the CA bundle client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path
    generated: bool


@dataclass(frozen=True)
class CertificateInfo:
    """A certificate's details as the configuration page shows them."""

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint: str
    pem: str

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(timezone.utc)) > self.not_after

    def expires_soon(self, now: datetime | None = None) -> bool:
        """Return True when the certificate expires within EXPIRY_WARNING_DAYS (or already has)."""
        return (now or datetime.now(timezone.utc)) + timedelta(days=EXPIRY_WARNING_DAYS) > self.not_after


def tls_dir(settings: Settings) -> Path:
    return settings.data_dir / TLS_DIR_NAME


def private_ca_paths(settings: Settings) -> tuple[Path, Path]:
    """Return the paths of the private CA's certificate and key (which may not exist yet)."""
    directory = tls_dir(settings)
    return directory / CA_CERT_NAME, directory / CA_KEY_NAME


def resolve_tls_files(settings: Settings) -> TlsFiles:
    """Return the TLS files dicomd uses, generating the private CA and server pair where settings leave them unset."""
    generated = settings.dicom_tls_cert is None
    if generated:
        cert, key = ensure_server_pair(settings)
    else:
        cert, key = settings.dicom_tls_cert, settings.dicom_tls_key
    client_ca = settings.dicom_tls_client_ca or ensure_private_ca(settings)[0]
    return TlsFiles(cert=cert, key=key, client_ca=client_ca, generated=generated)


def ensure_private_ca(settings: Settings) -> tuple[Path, Path]:
    """Create the private CA in `$DATA_DIR/tls/` unless it exists; return its certificate and key paths."""
    cert_path, key_path = private_ca_paths(settings)
    with _tls_dir_lock(settings):
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path

        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DICOM identities gateway"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"DICOM TLS private CA ({socket.gethostname()})"),
        ])
        now = datetime.now(timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, private_key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path


def ensure_server_pair(settings: Settings) -> tuple[Path, Path]:
    """Create a server certificate signed by the private CA unless a usable one exists, and return its certificate and key paths.

    dicomd also presents this certificate as the client certificate of its
    own outgoing TLS associations (C-MOVE and storage commitment reports),
    so it carries both the serverAuth and the clientAuth extended key usage.
    A generated certificate without clientAuth, as earlier versions made
    them, is replaced, because TLS peers reject it as a client certificate.
    """
    directory = tls_dir(settings)
    cert_path, key_path = directory / SERVER_CERT_NAME, directory / SERVER_KEY_NAME
    ca_cert_path, ca_key_path = ensure_private_ca(settings)
    with _tls_dir_lock(settings):
        if cert_path.exists() and key_path.exists():
            if not _lacks_client_auth(cert_path):
                return cert_path, key_path
            log.warning("replacing the generated server certificate %s: it lacks the clientAuth extended key "
                        "usage that outgoing TLS associations need", cert_path)

        ca_cert, ca_key = load_ca(ca_cert_path, ca_key_path)
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        host = socket.gethostname()
        names = server_names(settings.dicom_host)
        builder = _leaf_builder(ca_cert, key, common_name=host, days=SERVER_VALIDITY_DAYS)
        cert = (
            builder
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(key_path, private_key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path


def _lacks_client_auth(cert_path: Path) -> bool:
    """Return whether the first certificate in `cert_path` limits its use by an extended key usage without clientAuth.

    A file that cannot be read counts as usable here, so that loading it
    later fails with a message naming the file.
    """
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, OSError, ValueError):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH not in usage


def server_names(listen_host: str) -> list[x509.GeneralName]:
    """Return the subject alternative names of a generated server certificate: the host's names and loopback."""
    dns_names = {"localhost", socket.gethostname(), socket.getfqdn()}
    addresses = {"127.0.0.1", "::1"}
    try:
        ipaddress.ip_address(listen_host)
    except ValueError:
        dns_names.add(listen_host)
    else:
        if listen_host not in ("0.0.0.0", "::"):
            addresses.add(listen_host)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(dns_names) if name]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in sorted(addresses)]
    return names


def issue_client_certificate(settings: Settings, common_name: str, *, server_host: str | None = None,
                             ) -> tuple[rsa.RSAPrivateKey, x509.Certificate, x509.Certificate]:
    """Create a key and a client certificate signed by the private CA; return the key, the certificate and the CA certificate.

    With `server_host`, the certificate also names that host and allows
    serverAuth, so the device can present it as a TLS server too: to dicomd's
    C-MOVE sub-associations and storage commitment reports sent to its
    retrieve address.
    """
    ca_cert, ca_key = load_ca(*ensure_private_ca(settings))
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    builder = _leaf_builder(ca_cert, key, common_name=common_name, days=CLIENT_VALIDITY_DAYS)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_host:
        builder = builder.add_extension(x509.SubjectAlternativeName([host_name(server_host)]), critical=False)
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(ca_key, hashes.SHA256())
    return key, cert, ca_cert


def host_name(host: str) -> x509.GeneralName:
    """Return `host` as a subject alternative name: an IP address entry for an address, a DNS entry otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return cert, key


def parse_certificate(data: bytes) -> x509.Certificate:
    """Parse one certificate in PEM or DER; raise CertificateError with an explanation otherwise."""
    if not data or not data.strip():
        raise CertificateError("no certificate was given: paste the PEM text or choose a .pem, .crt or .der file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise CertificateError(f"the file has {len(data)} bytes, more than a certificate ({MAX_UPLOAD_BYTES} bytes at most)")
    if b"PRIVATE KEY-----" in data:
        raise CertificateError(
            "this is a private key, which must stay on the device: send the device's certificate "
            "(-----BEGIN CERTIFICATE-----) instead, and treat this key as exposed"
        )

    if b"-----BEGIN CERTIFICATE-----" in data:
        certificates = x509.load_pem_x509_certificates(data) if data.count(b"-----BEGIN CERTIFICATE-----") > 1 else None
        if certificates is not None:
            raise CertificateError(
                f"the PEM text contains {len(certificates)} certificates: send only the device's own certificate"
            )
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError as error:
            raise CertificateError(f"the PEM certificate cannot be read: {error}") from None
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError(
            "this is not an X.509 certificate: send the device's certificate as PEM "
            "(text starting with -----BEGIN CERTIFICATE-----) or as a DER file"
        ) from None


def describe(cert: x509.Certificate) -> CertificateInfo:
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint(cert),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of the certificate's DER encoding, in lower-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def format_fingerprint(hex_digest: str) -> str:
    """Return a fingerprint as colon-separated upper-case pairs, as openssl and browsers show it."""
    return ":".join(hex_digest[index:index + 2] for index in range(0, len(hex_digest), 2)).upper()


def is_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Return whether `issuer` signed `cert` directly (no chain, no validity check)."""
    if cert.issuer != issuer.subject:
        return False
    public_key = issuer.public_key()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def chains_to(cert: x509.Certificate, bundle_path: Path) -> bool:
    """Return whether a CA in the PEM bundle at `bundle_path` signed `cert` directly."""
    try:
        authorities = x509.load_pem_x509_certificates(bundle_path.read_bytes())
    except (OSError, ValueError):
        return False
    return any(is_signed_by(cert, authority) for authority in authorities)


def private_key_pem(key, password: str | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def pkcs12_bundle(name: str, key, cert: x509.Certificate, ca_cert: x509.Certificate, password: str) -> bytes:
    """Return a PKCS#12 file with the key, the certificate and the CA, protected by `password`."""
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())
    )


def pem_bundle(key, cert: x509.Certificate, password: str) -> bytes:
    """Return the key, encrypted with `password`, followed by the certificate, in one PEM file.

    DCMTK takes the same file for its key and certificate arguments (`+tls FILE FILE +pw PASSWORD`).
    """
    return private_key_pem(key, password) + cert.public_bytes(serialization.Encoding.PEM)


def _leaf_builder(ca_cert: x509.Certificate, key, *, common_name: str, days: int) -> x509.CertificateBuilder:
    now = datetime.now(timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )


@contextmanager
def _tls_dir_lock(settings: Settings):
    """Serialise generation between the portal and dicomd processes, which may start together."""
    directory = tls_dir(settings)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _write_public(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
