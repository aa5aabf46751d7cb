"""TLS for the DICOM TLS listener: the server's SSL context, the handshake, and what it negotiated.

The handshake runs in the connection's own thread with its own timeout (see
`dicomd.listener.TLSSocketServer`), never in the accept loop.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509

from portal.certificates import TlsFiles, fingerprint, resolve_tls_files
from portal.settings import Settings

log = logging.getLogger(__name__)

MINIMUM_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# TLS 1.2 cipher suites in the spirit of BCP 195 (RFC 9325): forward secrecy
# and AEAD only. OpenSSL fixes the TLS 1.3 suites, which all meet that rule.
# NOTE: the list was written from memory of RFC 9325, not checked line by line.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
])

# Recorded as the client certificate subject of a TLS association without one.
ANONYMOUS = "anonymous"


class TlsConfigurationError(Exception):
    """The certificate, key or CA files cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class TlsSession:
    """The parameters a completed handshake negotiated, as recorded on the association."""

    version: str | None
    cipher: str | None
    client_certificate_subject: str
    client_certificate_fingerprint: str | None

    @property
    def anonymous(self) -> bool:
        return self.client_certificate_fingerprint is None


def build_server_context(settings: Settings, files: TlsFiles) -> ssl.SSLContext:
    """Return a server SSLContext from the files, or raise TlsConfigurationError naming the file that failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSIONS[settings.dicom_tls_min_version]
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # A client certificate is optional in the handshake, so that anonymous TLS
    # reaches the association policy, which reads the identity. A certificate
    # that is presented must still chain to the client CA.
    context.verify_mode = ssl.CERT_OPTIONAL
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigurationError(
            f"cannot load the server certificate {files.cert} with key {files.key}: {error}"
        ) from error
    try:
        context.load_verify_locations(cafile=files.client_ca)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigurationError(f"cannot load the client CA bundle {files.client_ca}: {error}") from error
    return context


def handshake(context: ssl.SSLContext, connection: socket.socket, timeout: float) -> ssl.SSLSocket:
    """Run the server side of the TLS handshake on an accepted connection within `timeout` seconds.

    Raises ssl.SSLError, TimeoutError or OSError when the handshake fails,
    after closing the connection.
    """
    connection.settimeout(timeout)
    try:
        tls_socket = context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
    except BaseException:
        connection.close()
        raise
    try:
        tls_socket.do_handshake()
    except BaseException:
        tls_socket.close()
        raise
    # pynetdicom polls the socket with select() and reads with blocking calls.
    tls_socket.settimeout(None)
    return tls_socket


def session_of(tls_socket: ssl.SSLSocket) -> TlsSession:
    """Return the version, cipher and client certificate that a completed handshake negotiated."""
    cipher = tls_socket.cipher()
    der = tls_socket.getpeercert(binary_form=True)
    if der:
        certificate = x509.load_der_x509_certificate(der)
        subject = certificate.subject.rfc4514_string()
        certificate_fingerprint = fingerprint(certificate)
    else:
        subject = ANONYMOUS
        certificate_fingerprint = None
    return TlsSession(
        version=tls_socket.version(),
        cipher=cipher[0] if cipher else None,
        client_certificate_subject=subject,
        client_certificate_fingerprint=certificate_fingerprint,
    )


def describe_handshake_error(error: BaseException, timeout: float, minimum_version: str) -> str:
    """Explain a failed handshake in words an administrator can act on, followed by OpenSSL's own message."""
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"the device sent no TLS handshake within {timeout:g} seconds (DICOM_TLS_HANDSHAKE_TIMEOUT)"

    reason = getattr(error, "reason", None) or ""
    verify_message = getattr(error, "verify_message", None) or ""
    technical = str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        if "expired" in verify_message:
            return f"the device's client certificate has expired; renew it on the device ({technical})"
        if "not yet valid" in verify_message:
            return f"the device's client certificate is not valid yet; check the device's clock ({technical})"
        return (
            "the device's client certificate is not signed by a CA that this PACS trusts "
            f"(DICOM_TLS_CLIENT_CA); bind or issue a certificate from the portal ({technical})"
        )
    explanations = {
        "UNSUPPORTED_PROTOCOL": f"the device offered only TLS versions older than TLS {minimum_version}, "
                                "the minimum this PACS accepts (DICOM_TLS_MIN_VERSION)",
        "TLSV1_ALERT_PROTOCOL_VERSION": f"the device offered only TLS versions older than TLS {minimum_version}",
        "WRONG_VERSION_NUMBER": "the device did not start a TLS handshake: it probably sends plain DICOM to the "
                                "TLS port; configure it for TLS or use the plain DICOM port",
        "HTTP_REQUEST": "the device sent an HTTP request, not a TLS handshake",
        "NO_SHARED_CIPHER": "the device and this PACS have no TLS cipher suite in common (BCP 195 suites only)",
        "TLSV1_ALERT_UNKNOWN_CA": "the device does not trust this PACS's server certificate: "
                                  "install the PACS CA certificate on the device",
        "SSLV3_ALERT_BAD_CERTIFICATE": "the device rejected this PACS's server certificate",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the device rejected this PACS's server certificate",
        "TLSV1_ALERT_DECRYPT_ERROR": "the device rejected the handshake (decrypt error)",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the device sent no client certificate",
    }
    if reason in explanations:
        return f"{explanations[reason]} ({technical})"
    if isinstance(error, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)) or "EOF" in technical:
        return f"the device closed the connection during the TLS handshake ({technical})"
    return f"the TLS handshake failed: {technical}"


class ServerTls:
    """The TLS listener's current SSL context and handshake timeout; `reload()` swaps in new certificate files.

    Connections read `context` when their handshake starts, so a reload
    applies to the next connection and leaves open associations untouched.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.handshake_timeout = settings.dicom_tls_handshake_timeout
        self.minimum_version = settings.dicom_tls_min_version
        self.context = build_server_context(settings, resolve_tls_files(settings))

    def reload(self) -> bool:
        """Load the certificate, key and CA files again; on failure log the error, keep the old context and return False."""
        try:
            self.context = build_server_context(self.settings, resolve_tls_files(self.settings))
        except (TlsConfigurationError, OSError, ValueError) as error:
            log.error("reloading the TLS certificate failed, the previous one stays in use: %s", error)
            return False
        log.info("TLS certificate files reloaded")
        return True
